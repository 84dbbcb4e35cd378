"""The decoder-only adapter (minillm/models/causal.py) on tiny GPT-2, OPT and LLaMA models, in fp32.

Prompts of mixed lengths come right-padded (the batch convention), so every path goes through the adapter's left
padding and position ids; each check compares with an unpadded, single-row computation, so an off-by-one alignment,
missing position ids or padding that leaks into attention fails it.
"""

from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList

from minillm.models.base import IGNORE_INDEX, ModelAdapter
from minillm.models.causal import CausalLMAdapter, left_pad, position_ids
from minillm.models.tiny import (
    CAUSAL_FAMILIES,
    CAUSAL_SPECIAL_TOKENS,
    build_causal_model,
    save_checkpoint,
    train_causal_tokenizer,
)

VOCAB = 128
# Prompt and response lengths of the test batches: all different, so that left padding matters in every row.
PROMPT_LENGTHS = [7, 3, 5, 1, 6]
LABEL_LENGTHS = [4, 6, 1, 3, 5]


def special_ids(family: str) -> tuple[int, int]:
    """(pad, EOS) as the model config names them."""
    config = CAUSAL_SPECIAL_TOKENS[family]["config"]
    return config["pad_token_id"], config["eos_token_id"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, dict]:
    """Per family: student and teacher checkpoint folders (different widths and depths) with a small tokenizer."""
    root = tmp_path_factory.mktemp("causal")
    corpus = [f"premise {i}: a dog runs in the park number {i}. hypothesis: an animal moves." for i in range(200)]
    paths = {}
    for family in CAUSAL_FAMILIES:
        tokenizer = train_causal_tokenizer(family, corpus, root / family / "tokenizer", vocab_size=300)
        paths[family] = {preset: save_checkpoint(build_causal_model(family, preset, VOCAB, seed=1), tokenizer,
                                                 root / family / preset)
                         for preset in ("tiny-student", "tiny-teacher")}
    return paths


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, dict]:
    return {family: {preset: CausalLMAdapter.load(path) for preset, path in presets.items()}
            for family, presets in checkpoints.items()}


def prompt_rows(family: str, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
    """Random prompts; OPT and LLaMA ones start with BOS as their tokenizers make them, and one has an EOS inside
    (GPT-2's EOS is its pad id: only the attention mask may say what is padding)."""
    generator = torch.Generator().manual_seed(seed)
    bos = CAUSAL_SPECIAL_TOKENS[family]["config"]["bos_token_id"]
    _, eos = special_ids(family)
    rows = []
    for length in lengths:
        row = torch.randint(4, VOCAB, (length,), generator=generator).tolist()
        if family != "gpt2":
            row[0] = bos
        rows.append(row)
    rows[0][3] = eos
    return rows


def label_rows(family: str, lengths=LABEL_LENGTHS, seed: int = 1) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    _, eos = special_ids(family)
    return [torch.randint(4, VOCAB, (length - 1,), generator=generator).tolist() + [eos] for length in lengths]


def right_padded(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(map(len, rows))
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def prompt_batch(family: str, rows: list[list[int]]) -> dict:
    pad, _ = special_ids(family)
    return {"input_ids": right_padded(rows, pad),
            "attention_mask": right_padded([[1] * len(row) for row in rows], 0)}


def ban(logits: torch.Tensor, banned_ids) -> torch.Tensor:
    return logits.index_fill(-1, torch.tensor(banned_ids, dtype=torch.long), -torch.inf) if banned_ids else logits


def as_labels(steps: list[torch.Tensor], eos: int) -> torch.Tensor:
    """Tokens chosen step by step ``[B, T]`` in the labels convention: EOS kept, -100 after it."""
    tokens = torch.stack(steps, dim=1)
    is_eos = (tokens == eos).long()
    return tokens.masked_fill(is_eos.cumsum(-1) - is_eos > 0, IGNORE_INDEX)


def test_the_adapter_implements_the_protocol(models):
    assert isinstance(CausalLMAdapter.for_model(models["opt"]["tiny-student"]), ModelAdapter)


def test_left_pad_moves_padding_to_the_front_and_keeps_token_order():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 0, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    prompts = left_pad(ids, mask, pad_token_id=1)
    assert prompts.input_ids.tolist() == [[1, 5, 6, 7], [1, 1, 8, 9], [1, 1, 3, 4]]
    assert prompts.attention_mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert position_ids(prompts.attention_mask).tolist() == [[0, 0, 1, 2], [0, 0, 0, 1], [0, 0, 0, 1]]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_logits_equal_an_unpadded_single_row_forward_at_each_response_token(family, attn_implementation,
                                                                            checkpoints):
    model = CausalLMAdapter.load(checkpoints[family]["tiny-teacher"], attn_implementation=attn_implementation)
    adapter = CausalLMAdapter.for_model(model)
    prompts, targets = prompt_rows(family), label_rows(family)
    batch = {**prompt_batch(family, prompts), "labels": right_padded(targets, IGNORE_INDEX)}
    with torch.no_grad():
        logits = adapter.logits(model, batch)
        assert logits.shape == (len(prompts), max(LABEL_LENGTHS), VOCAB)
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            # logits for labels[t] are those of the unpadded prompt + labels[:t] at its last position
            single = model(input_ids=torch.tensor([prompt + target])).logits[0]
            expected = single[len(prompt) - 1: len(prompt) - 1 + len(target)]
            torch.testing.assert_close(logits[row, : len(target)], expected, atol=1e-5, rtol=0)
    # the loss covers exactly the response tokens
    logprobs = adapter.token_logprobs(logits, batch["labels"])
    assert torch.equal(logprobs != 0, batch["labels"] != IGNORE_INDEX)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_log_probs_recorded_while_two_models_decode_equal_teacher_forced_ones(family, models):
    """The student samples (pad banned, EOS made likely so that rows end at different steps), student and teacher
    each step on their own state; the recorded log-probs equal the teacher-forced ones of the finished targets."""
    student, teacher = models[family]["tiny-student"], models[family]["tiny-teacher"]
    assert student.config.hidden_size != teacher.config.hidden_size
    adapter = CausalLMAdapter.for_model(student)
    pad, eos = adapter.pad_token_id, adapter.eos_token_id
    batch = prompt_batch(family, prompt_rows(family))
    generator = torch.Generator().manual_seed(0)
    eos_bias = torch.zeros(VOCAB).index_fill(0, torch.tensor([eos]), 3.0)
    max_steps = 10
    with torch.no_grad():
        student_state = adapter.start_decoding(student, batch["input_ids"], batch["attention_mask"])
        teacher_state = adapter.start_decoding(teacher, batch["input_ids"], batch["attention_mask"])
        tokens, finished = None, torch.zeros(len(PROMPT_LENGTHS), dtype=torch.bool)
        steps, student_recorded, teacher_recorded = [], [], []
        for _ in range(max_steps):
            student_logits, student_state = adapter.decode_step(student, student_state, tokens)
            teacher_logits, teacher_state = adapter.decode_step(teacher, teacher_state, tokens)
            probs = torch.softmax(ban(student_logits, adapter.banned_ids) + eos_bias, -1)
            sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            sampled = sampled.masked_fill(finished, pad)
            steps.append(sampled)
            student_recorded.append(torch.log_softmax(student_logits, -1).gather(-1, sampled[:, None]).squeeze(-1))
            teacher_recorded.append(torch.log_softmax(teacher_logits, -1).gather(-1, sampled[:, None]).squeeze(-1))
            finished |= sampled == eos
            tokens = sampled
        labels = as_labels(steps, eos)
        lengths = (labels != IGNORE_INDEX).sum(-1)
        assert len(set(lengths.tolist())) >= 3 and finished.any() and lengths.max() == max_steps
        if adapter.banned_ids:
            assert pad not in labels.tolist()

        full = {**batch, "labels": labels}
        for model, recorded in ((student, student_recorded), (teacher, teacher_recorded)):
            expected = adapter.token_logprobs(adapter.logits(model, full), labels)
            recorded = torch.stack(recorded, 1).masked_fill(labels == IGNORE_INDEX, 0.0)
            torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=0)


class ShiftEOS(LogitsProcessor):
    """Adds ``bias_per_step * step`` to EOS and ``pad_bias`` to pad, ``step`` counted from the end of the prompt."""

    def __init__(self, prompt_width: int, eos: int, pad: int, bias_per_step: float, pad_bias: float = 0.0):
        self.prompt_width, self.eos, self.pad = prompt_width, eos, pad
        self.bias_per_step, self.pad_bias = bias_per_step, pad_bias

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.pad] += self.pad_bias
        scores[:, self.eos] += self.bias_per_step * (input_ids.shape[1] - self.prompt_width)
        return scores


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_greedy_generate_equals_greedy_decoding_with_decode_step(family, models):
    model = models[family]["tiny-student"]
    adapter = CausalLMAdapter.for_model(model)
    pad, eos = adapter.pad_token_id, adapter.eos_token_id
    batch = prompt_batch(family, prompt_rows(family, seed=3))
    width, max_new_tokens = batch["input_ids"].shape[1], 8
    # a rising EOS bias makes rows end at different steps, as their EOS logits differ
    shift_eos = ShiftEOS(width, eos, pad, bias_per_step=0.15)
    context = adapter.encode_prompts(model, batch["input_ids"], batch["attention_mask"])
    generated = adapter.generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens, context=context,
                                 do_sample=False, logits_processor=LogitsProcessorList([shift_eos]))

    with torch.no_grad():
        state = adapter.start_decoding(model, batch["input_ids"], batch["attention_mask"])
        tokens, finished, steps = None, torch.zeros(len(PROMPT_LENGTHS), dtype=torch.bool), []
        for step in range(max_new_tokens):
            logits, state = adapter.decode_step(model, state, tokens)
            logits = ban(logits, adapter.banned_ids)
            logits[:, eos] += shift_eos.bias_per_step * step
            tokens = logits.argmax(-1).masked_fill(finished, pad)
            steps.append(tokens)
            finished |= tokens == eos
            if finished.all():
                break
    expected = as_labels(steps, eos)
    lengths = (expected != IGNORE_INDEX).sum(-1)
    assert len(set(lengths.tolist())) >= 2 and (expected == eos).any()
    assert torch.equal(generated, expected)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_generation_can_end_and_never_emits_a_banned_pad(family, models):
    """A processor pushes pad far above everything: OPT and LLaMA still never emit it (banned, -inf whatever is
    added); GPT-2's pad is its EOS, banned nothing, so every sequence ends at once."""
    model = models[family]["tiny-student"]
    adapter = CausalLMAdapter.for_model(model)
    pad, eos = adapter.pad_token_id, adapter.eos_token_id
    batch = prompt_batch(family, prompt_rows(family))
    push_pad = ShiftEOS(batch["input_ids"].shape[1], eos, pad, bias_per_step=0.3, pad_bias=50.0)
    torch.manual_seed(0)
    generated = adapter.generate(model, batch["input_ids"], batch["attention_mask"], 12, do_sample=True,
                                 top_k=0, logits_processor=LogitsProcessorList([push_pad]))
    if family == "gpt2":
        assert pad == eos and adapter.banned_ids == ()
        assert generated[:, 0].tolist() == [eos] * len(PROMPT_LENGTHS)
        assert (generated[:, 1:] == IGNORE_INDEX).all()
    else:
        assert pad != eos and adapter.banned_ids == (pad,)
        assert pad not in generated.tolist()
        assert (generated == eos).any()  # the rising EOS bias ends some rows


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_context_logits_with_repeat_equal_logits_on_repeated_prompts(family, models):
    model = models[family]["tiny-teacher"]
    adapter = CausalLMAdapter.for_model(model)
    prompts = prompt_batch(family, prompt_rows(family, lengths=[4, 2]))
    labels = right_padded(label_rows(family, lengths=[1, 3, 2, 3, 1, 2]), IGNORE_INDEX)  # 3 options per prompt
    with torch.no_grad():
        context = adapter.encode_prompts(model, prompts["input_ids"], prompts["attention_mask"])
        logits = adapter.context_logits(model, context, labels, repeat=3)
        expected = adapter.logits(model, {"input_ids": prompts["input_ids"].repeat_interleave(3, 0),
                                          "attention_mask": prompts["attention_mask"].repeat_interleave(3, 0),
                                          "labels": labels})
        once = adapter.context_logits(model, context, labels[::3])
    mask = labels != IGNORE_INDEX
    torch.testing.assert_close(logits[mask], expected[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(once[labels[::3] != IGNORE_INDEX], logits[::3][labels[::3] != IGNORE_INDEX],
                               atol=1e-5, rtol=0)


def test_token_counts_cover_the_one_concatenated_sequence():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[10, 11, 2], [12, 2, IGNORE_INDEX]])}
    # fed: [prompt, labels[:, :-1]] = 3 + 2 and 2 + 2 real tokens in 2 rows of 4 + 3 - 1 cells
    assert CausalLMAdapter.token_counts(batch) == (9, 12)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_pad_and_eos_come_from_the_tokenizer_or_config(family, checkpoints, models):
    from transformers import AutoTokenizer

    model = models[family]["tiny-student"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[family]["tiny-student"])
    expected = {"gpt2": (0, 0, ()), "opt": (1, 2, (1,)), "llama": (0, 2, (0,))}[family]
    for adapter in (CausalLMAdapter.for_model(model), CausalLMAdapter.for_model(model, tokenizer)):
        assert (adapter.pad_token_id, adapter.eos_token_id, adapter.banned_ids) == expected


def test_pad_falls_back_to_unk_then_eos():
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None, eos_token_id=2))
    llama_like = SimpleNamespace(pad_token_id=None, unk_token_id=0, eos_token_id=2)
    gpt2_like = SimpleNamespace(pad_token_id=None, unk_token_id=7, eos_token_id=7)
    assert CausalLMAdapter.for_model(model, llama_like).pad_token_id == 0
    gpt2 = CausalLMAdapter.for_model(SimpleNamespace(config=SimpleNamespace(pad_token_id=None, eos_token_id=7)),
                                     gpt2_like)
    assert (gpt2.pad_token_id, gpt2.banned_ids) == (7, ())
    assert CausalLMAdapter.for_model(model).pad_token_id == 2
    with pytest.raises(ValueError, match=r"exactly one EOS id, got \[2, 3\]: pass its tokenizer"):
        CausalLMAdapter.for_model(SimpleNamespace(config=SimpleNamespace(pad_token_id=None, eos_token_id=[2, 3])))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_load_overrides_dropout_and_picks_sdpa(family, checkpoints):
    model = CausalLMAdapter.load(checkpoints[family]["tiny-student"], dtype=torch.bfloat16, dropout=0.25,
                                 fused_kernels=True, device_type="cuda")
    rates = {"gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"), "opt": ("dropout", "attention_dropout"),
             "llama": ("attention_dropout",)}[family]
    assert [getattr(model.config, name) for name in rates] == [0.25] * len(rates)
    assert model.config._attn_implementation == "sdpa"
    assert model.dtype == torch.bfloat16 and not model.training
    assert isinstance(model, GenerationMixin)


def test_load_rejects_a_dropout_override_for_an_unknown_model_type(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    with pytest.raises(ValueError, match="no dropout override for model type 'mistral'; known types: gpt2, opt, llama"):
        CausalLMAdapter.load(tmp_path / "mistral", dropout=0.1)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_fused_kernels_swap_gpt2_gelu_and_keep_its_outputs(family, checkpoints, models):
    """``--fused-kernels`` replaces GPT-2's seven-operation ``gelu_new`` by one-kernel tanh GELU (the same function)
    and its dropout modules by the CPU dropout; OPT and LLaMA have neither and load unchanged. Logits and gradients
    of a left-padded batch agree with the plain load."""
    from transformers.activations import NewGELUActivation

    from minillm.models.fused import CPUDropout, TanhGELU

    plain = models[family]["tiny-student"]
    fused = CausalLMAdapter.load(checkpoints[family]["tiny-student"], fused_kernels=True, device_type="cpu")
    kinds = lambda model: {type(m) for m in model.modules()}  # noqa: E731
    if family == "gpt2":
        assert NewGELUActivation in kinds(plain) and NewGELUActivation not in kinds(fused)
        assert {TanhGELU, CPUDropout} <= kinds(fused)
    else:
        assert kinds(fused) == kinds(plain)
    batch = {**prompt_batch(family, prompt_rows(family)), "labels": right_padded(label_rows(family), IGNORE_INDEX)}
    adapter = CausalLMAdapter.for_model(plain)
    out_plain, out_fused = adapter.logits(plain, batch), adapter.logits(fused, batch)
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=0)
    grads = [torch.autograd.grad(out.logsumexp(-1).sum(), model.get_input_embeddings().weight)[0]
             for out, model in ((out_plain, plain), (out_fused, fused))]
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
