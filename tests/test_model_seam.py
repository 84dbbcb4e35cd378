"""The model seam (minillm/models/): family dispatch, the Protocol, and the adapter's decoding against its teacher
forcing. Nothing outside minillm/models/ names a model class."""

import re
from pathlib import Path

import pytest
import torch

from minillm.data.seq2seq import pad_right
from minillm.models import ModelAdapter, Seq2SeqAdapter, adapter_for, load_model
from minillm.models.base import IGNORE_INDEX, unwrap
from minillm.models.tiny import build_model
from minillm_helpers import EOS, PAD, Engine, tiny_t5

REPO = Path(__file__).resolve().parents[1]
VOCAB = 12


@pytest.fixture(scope="module")
def models():
    """fp32 student (width 16) and teacher (width 24): each decoder only works on its own encoder's states."""
    return (tiny_t5(VOCAB, d_model=16, seed=3, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True),
            tiny_t5(VOCAB, d_model=24, seed=4, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True))


def prompts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(2, VOCAB, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() + [EOS]
            for _ in range(n)]
    return pad_right(rows, PAD), pad_right([[1] * len(r) for r in rows], 0)


def test_adapter_for_a_tiny_t5_is_the_seq2seq_adapter_and_satisfies_the_protocol(models):
    student, _ = models
    adapter = adapter_for(student)
    assert type(adapter) is Seq2SeqAdapter and isinstance(adapter, ModelAdapter)
    assert (adapter.pad_token_id, adapter.eos_token_id, adapter.banned_ids) == (PAD, EOS, (PAD,))
    assert type(adapter_for(Engine(student))) is Seq2SeqAdapter and unwrap(Engine(student)) is student


def test_load_model_picks_the_family_from_the_config_and_names_the_flag(models, tmp_path):
    student, _ = models
    student.save_pretrained(tmp_path / "t5")
    loaded = load_model(tmp_path / "t5", attn_implementation="auto", device_type="cpu", dropout=0.25)
    assert loaded.config.is_encoder_decoder and loaded.config.dropout_rate == 0.25
    assert loaded.config._attn_implementation == "eager"  # auto on a CPU
    assert type(adapter_for(loaded)) is Seq2SeqAdapter
    with pytest.raises(ValueError, match=r"^--teacher-model-path .*absent: cannot load it \("):
        load_model(tmp_path / "absent", flag="--teacher-model-path")


def test_decode_steps_of_two_models_equal_their_teacher_forced_logprobs(models):
    """Student and teacher, each with its own decoding state, stepped together over tokens drawn from the student;
    the log-probs of the drawn tokens recorded at each step equal those of teacher-forced ``logits`` on the finished
    targets, for both models."""
    student, teacher = models
    adapter = adapter_for(student)
    input_ids, attention_mask = prompts(16, seed=1)
    generator = torch.Generator().manual_seed(0)
    states = {m: adapter.start_decoding(m, input_ids, attention_mask) for m in (student, teacher)}
    recorded = {student: [], teacher: []}
    labels, tokens = [], None
    done = torch.zeros(len(input_ids), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(6):
            logits = {}
            for m in (student, teacher):
                logits[m], states[m] = adapter.decode_step(m, states[m], tokens)
            sampled = torch.multinomial(torch.softmax(logits[student], -1), 1, generator=generator).squeeze(-1)
            for m in (student, teacher):
                recorded[m].append(torch.log_softmax(logits[m], -1).gather(-1, sampled[:, None]).squeeze(-1))
            labels.append(sampled.masked_fill(done, IGNORE_INDEX))
            done = done | (sampled == EOS)
            tokens = sampled.masked_fill(done, adapter.pad_token_id)
        labels = torch.stack(labels, 1)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        mask = labels != IGNORE_INDEX
        assert bool((~mask).any()) and bool(mask[:, 1].any())  # some targets ended early, some went on
        for m in (student, teacher):
            forced = adapter.token_logprobs(adapter.logits(m, batch), labels)
            stepped = torch.stack(recorded[m], 1).masked_fill(~mask, 0.0)
            torch.testing.assert_close(stepped, forced, atol=1e-5, rtol=0)


def test_prompt_context_serves_repeated_scoring_and_generation():
    """``context_logits`` with ``repeat`` equals ``logits`` on the prompts repeated row by row; ``generate`` with the
    context equals ``generate`` without it and never emits a banned id."""
    student = build_model("tiny-student", VOCAB).eval()
    adapter = adapter_for(student)
    input_ids, attention_mask = prompts(4, seed=2)
    labels = pad_right([[3, 4, EOS], [5, EOS], [6, 7, 8, EOS]] * 4, IGNORE_INDEX)
    with torch.no_grad():
        context = adapter.encode_prompts(student, input_ids, attention_mask)
        repeated = adapter.context_logits(student, context, labels, repeat=3)
        expected = adapter.logits(student, {"input_ids": input_ids.repeat_interleave(3, 0),
                                            "attention_mask": attention_mask.repeat_interleave(3, 0),
                                            "labels": labels})
    torch.testing.assert_close(repeated, expected, atol=1e-5, rtol=0)
    plain = adapter.generate(student, input_ids, attention_mask, 5, do_sample=False)
    reused = adapter.generate(student, input_ids, attention_mask, 5, context=context, do_sample=False)
    assert torch.equal(plain, reused) and not bool((plain == PAD).any())


def test_no_module_outside_models_names_a_model_class():
    """The seam holds: outside minillm/models/ no module names a model class, the encoder or its output type."""
    forbidden = re.compile(r"AutoModelFor|T5ForConditionalGeneration|get_encoder|BaseModelOutput")
    offenders = [f"{path.relative_to(REPO)}:{number}" for path in sorted((REPO / "minillm").rglob("*.py"))
                 if "models" not in path.relative_to(REPO / "minillm").parts[:1]
                 for number, line in enumerate(path.read_text().splitlines(), 1) if forbidden.search(line)]
    assert offenders == []
