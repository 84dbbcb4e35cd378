"""``--gradient-checkpointing``: the student's layers recompute their activations in backward, and nothing else changes.

Tiny fp32 models (minillm/models/tiny.py: T5 and GPT-2, for SFT also OPT and LLaMA), saved and loaded the way the
trainer loads a student (``load_model`` with the fused CPU kernels, for T5 its CPU dropout and attention too), one
copy checkpointed (:func:`minillm.engine.trainer.enable_gradient_checkpointing`) and one not:

- the gradient of the SFT loss (train mode) and of the MiniLLM objective's loss on sampled rollouts (eval mode, as
  MiniLLM trains) is the same with checkpointing as without, to float tolerance; with dropout on as well (the replay
  restores the RNG state, so the fused CPU dropout draws the same masks);
- checkpointing happens: every linear layer inside a checkpointed layer runs twice per forward-backward (forward,
  then the replay), in both modes (Hugging Face's own switch checkpoints only train-mode calls);
- decoding is untouched: rollouts sampled with the same generator are identical, and decoding grows the key-value
  cache step by step, in either mode, with or without gradients;
- ``python -m minillm.finetune --type minillm --gradient-checkpointing`` trains a tiny T5 on the offline Dolly sample:
  finite losses, the metric lines, the one log line.
"""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minillm.cli import process_data_dolly
from minillm.engine.trainer import enable_gradient_checkpointing
from minillm.models import adapter_for, load_model
from minillm.models.tiny import build_causal_model, build_model, model_vocab_size, save_checkpoint, train_tokenizer
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.sft import SFTObjective
from minillm_helpers import minillm_config, write_dolly_sample

REPO = Path(__file__).resolve().parents[1]
VOCAB = 64
RTOL = 1e-5
# The layer class each family's tiny student is made of (T5: 2 encoder and 2 decoder blocks; the others 2 layers).
LAYERS = {"t5": "T5Block", "gpt2": "GPT2Block", "opt": "OPTDecoderLayer", "llama": "LlamaDecoderLayer"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Folders of a tiny student and teacher per family, as saved checkpoints."""
    root = tmp_path_factory.mktemp("gc_models")
    folders = {}
    for family in LAYERS:
        for role, preset, seed in (("student", "tiny-student", 1), ("teacher", "tiny-teacher", 2)):
            model = (build_model(preset, VOCAB, seed=seed) if family == "t5"
                     else build_causal_model(family, preset, VOCAB, seed=seed))
            folders[family, role] = root / f"{family}-{role}"
            model.save_pretrained(folders[family, role])
    return folders


def pair(checkpoints, family: str, dropout: float = 0.0):
    """(plain student, checkpointed copy, adapter), loaded as the trainer loads a student on a CPU."""
    plain = load_model(checkpoints[family, "student"], fused_kernels=True, device_type="cpu", dropout=dropout)
    checkpointed = copy.deepcopy(plain)
    assert enable_gradient_checkpointing(checkpointed) == [LAYERS[family]] * (4 if family == "t5" else 2)
    return plain, checkpointed, adapter_for(plain)


def gold_batch() -> dict:
    """Three prompts (one padded) and targets (one padded)."""
    generator = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(3, VOCAB, (3, 7), generator=generator),
             "attention_mask": torch.ones(3, 7, dtype=torch.long),
             "labels": torch.randint(3, VOCAB, (3, 5), generator=generator)}
    batch["attention_mask"][0, 5:] = 0
    batch["labels"][1, 3:] = -100
    return batch


def count_inner_linear_calls(model) -> list[int]:
    """A counter of the calls of every ``nn.Linear`` inside a checkpointed layer (hooks stay on: test models)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls = [0]
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":  # GPT-2's projections
                    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def gradients_and_calls(model, loss_fn, seed: int = 5) -> tuple[dict, float, int]:
    """Gradients of ``loss_fn(model)`` (the RNG seeded first: dropout draws alike), the loss and the inner calls."""
    calls = count_inner_linear_calls(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_fn(model)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, float(loss.detach()), \
        calls[0]


def assert_same_gradients(expected: dict, got: dict) -> None:
    assert expected.keys() == got.keys() and len(expected) > 10
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=RTOL, atol=RTOL * float(g.abs().max()), msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("family", list(LAYERS))
def test_sft_gradient_is_unchanged_and_layers_are_replayed(checkpoints, family, dropout):
    plain, checkpointed, adapter = pair(checkpoints, family, dropout)
    batch = gold_batch()
    objective = SFTObjective(None, adapter)
    results = []
    for model in (plain, checkpointed):
        model.train()  # SFT trains in train mode (dropout on when the rate is)
        results.append(gradients_and_calls(model, lambda m: objective(m, batch).loss_sum))
    (expected, loss, calls), (got, loss_checkpointed, calls_checkpointed) = results
    assert loss_checkpointed == pytest.approx(loss, rel=1e-6) and math.isfinite(loss)
    assert calls_checkpointed == 2 * calls > 0  # every layer ran again in backward
    assert_same_gradients(expected, got)


@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_minillm_gradient_in_eval_mode_and_sampling_unchanged(checkpoints, family):
    plain, checkpointed, adapter = pair(checkpoints, family)
    teacher = load_model(checkpoints[family, "teacher"], fused_kernels=True, device_type="cpu").requires_grad_(False)
    config = minillm_config(rollout_max_new_tokens=5, teacher_mixed_alpha=0.2, single_step_reg=True,
                            whiten_advantages=True, cliprange=0.2, length_norm=True)
    objective = MiniLLMObjective(config, adapter, lambda path: teacher)
    generator = torch.Generator().manual_seed(0)
    prompts = {k: v for k, v in gold_batch().items() if k != "labels"}
    stores = []
    for model in (plain, checkpointed):
        model.eval()  # MiniLLM samples and trains in eval mode
        stores.append(objective.collect(model, [prompts], generator.manual_seed(0))[0])
    # sampling (no gradients, key-value cache) is the same with checkpointing as without
    for field in ("labels", "old_logprobs", "mixed_logprobs", "teacher_logprobs"):
        assert torch.equal(getattr(stores[0]["rollouts"], field), getattr(stores[1]["rollouts"], field)), field
    assert (stores[0]["rollouts"].labels != -100).sum() > 3
    batch = objective.micro_batch(stores[0], range(3))
    (expected, loss, calls), (got, loss_checkpointed, calls_checkpointed) = [
        gradients_and_calls(model, lambda m: objective(m, batch).loss_sum) for model in (plain, checkpointed)]
    assert not checkpointed.training and math.isfinite(loss)
    assert loss_checkpointed == pytest.approx(loss, rel=1e-6, abs=1e-6)
    assert calls_checkpointed == 2 * calls > 0  # replayed in eval mode too
    assert_same_gradients(expected, got)


@pytest.mark.parametrize("family", ["t5", "gpt2"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("grad", [False, True])
def test_decoding_keeps_its_cache(checkpoints, family, mode, grad):
    """Step by step on the key-value cache, in either mode, with or without gradients (sampling and generation run
    without; a call that carries a cache is never checkpointed): the cache grows by one position a step, the logits
    are the plain model's, and with gradients backward leaves the cache as it was (a replay would write it again).
    With Hugging Face's switch instead, a train-mode GPT-2 drops its cache even without gradients, and either
    family drops it in train mode with gradients."""
    plain, checkpointed, adapter = pair(checkpoints, family)
    batch = gold_batch()
    first = 1 if family == "t5" else batch["input_ids"].shape[1]  # T5: the decoder start; GPT-2: the whole prompt
    logits = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        model.train(mode == "train")  # dropout rate 0: train mode draws nothing
        with torch.set_grad_enabled(grad):
            state = adapter.start_decoding(model, batch["input_ids"], batch["attention_mask"])
            steps, lengths, tokens = [], [], None
            for _ in range(3):
                step_logits, state = adapter.decode_step(model, state, tokens)
                tokens = step_logits.argmax(-1)
                steps.append(step_logits)
                lengths.append(state.cache.get_seq_length())
        if grad:  # a replay in backward would write the cache again
            torch.stack(steps).logsumexp(-1).sum().backward()
            lengths.append(state.cache.get_seq_length())
        assert lengths == [first, first + 1, first + 2] + [first + 2] * grad, name
        logits[name] = torch.stack(steps).detach()
    torch.testing.assert_close(logits["checkpointed"], logits["plain"], rtol=RTOL, atol=1e-6)


@pytest.fixture(scope="module")
def dolly_t5(tmp_path_factory) -> Path:
    """A tokenizer trained on the offline Dolly sample, a tiny T5 student and teacher with it, and the sample
    processed for T5 (32 train and 4 dev pairs): built in-process in about a second."""
    work = tmp_path_factory.mktemp("gc_dolly")
    raw, corpus = write_dolly_sample(work, 40)
    tokenizer = train_tokenizer(corpus, work / "tokenizer", vocab_size=300)
    for role, preset, seed in (("student", "tiny-student", 1), ("teacher", "tiny-teacher", 2)):
        save_checkpoint(build_model(preset, model_vocab_size(tokenizer), seed=seed), tokenizer, work / role)
    process_data_dolly.main(["--raw-file", str(raw), "--out-dir", str(work / "data"), "--tokenizer",
                             str(work / "tokenizer"), "--model-type", "seq2seq", "--dev-num", "4", "--test-num", "0"])
    return work


def test_finetune_minillm_trains_with_checkpointing(dolly_t5, tmp_path):
    """Rollouts sampled on the cache, eval-mode training checkpointed, evaluation with generation: two steps."""
    done = subprocess.run(
        [sys.executable, "-m", "minillm.finetune", "--type", "minillm", "--gradient-checkpointing",
         "--model-path", str(dolly_t5 / "student"), "--teacher-model-path", str(dolly_t5 / "teacher"),
         "--data-dir", str(dolly_t5 / "data"), "--save-dir", str(tmp_path), "--train-round", "dolly",
         "--eval-rounds", "dolly", "--deepspeed-config", str(REPO / "configs" / "deepspeed" / "zero0_fp32.json"),
         "--max-steps", "2", "--num-rollouts", "4", "--chunk-size", "4", "--ppo-epochs", "1", "--batch-size", "2",
         "--rollout-max-new-tokens", "4", "--eval-max-examples", "4", "--eval-max-new-tokens", "4",
         "--max-prompt-length", "64", "--log-interval", "1"],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert output.count("gradient checkpointing: the student's 4 layers (T5Block) recompute their activations "
                        "in backward") == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "padding" in r]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) and {"pg", "single"} <= set(r)
               for r in train)
    assert [r["step"] for r in records if r.get("split") == "dev"] == [0, 2]
    assert json.loads((tmp_path / "last" / "args.json").read_text())["gradient_checkpointing"] is True
