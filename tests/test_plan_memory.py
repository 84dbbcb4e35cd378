"""tools/plan_memory.py: the per-GPU memory plan of every recipe, and the estimate checked against a measured CPU step.

* Every training recipe (t5-scripts/ and scripts/), run with DRY_RUN=1 as on one node of 8 V100-32GB (NUM_GPUS 8,
  PRECISION fp32: the V100 has no bf16), fits the card with the stated allowance (1 GiB context + 10 %).
* The estimate against a measured fp32 training step of tiny models on the CPU, component by component (within
  20 %): parameters, gradients and AdamW states are the bytes of the tensors after ``optimizer.step()``; activations
  are the bytes of the distinct storages autograd saves for backward during the forward pass and the loss
  (``torch.autograd.graph.saved_tensors_hooks``, parameters' storages excluded), i.e. what is alive at the peak
  before backward starts. On a CPU a dropout mask is a float noise tensor (e bytes), on a GPU a bool (1 byte):
  the measurement is compared with the CPU form of the formula (``mask=4``).
* bf16 model states at ZeRO-2/3 are DeepSpeed's own estimator; parameter counts are those of the real models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minillm_helpers import load_tool

REPO = Path(__file__).resolve().parents[1]
pm = load_tool("plan_memory")

TINY = {
    "t5": dict(model_type="t5", vocab_size=512, d_model=64, d_ff=160, d_kv=16, num_heads=4, num_layers=2,
               num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.1,
               decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
    "gpt2": dict(model_type="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                 activation_function="gelu_new", bos_token_id=2, eos_token_id=2, pad_token_id=0),
    "opt": dict(model_type="opt", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                ffn_dim=256, word_embed_proj_dim=64, max_position_embeddings=256, dropout=0.1, bos_token_id=2,
                eos_token_id=2, pad_token_id=1),
    "llama": dict(model_type="llama", vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, intermediate_size=176, max_position_embeddings=256, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0),
}


def measure_step(kind: str, attn: str, b: int = 4, S: int = 48, T: int = 24) -> tuple[dict, dict]:
    """(measured, estimated) bytes of params, grads, optimizer, activations for one fp32 SFT step on the CPU,
    through the trainer's own adapter and loss."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from minillm.losses import token_cross_entropy
    from minillm.models import adapter_for

    torch.manual_seed(0)
    config = pm.hf_config(TINY[kind])
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation=attn).train()
    adapter = adapter_for(model)
    batch = {"input_ids": torch.randint(3, 512, (b, S)), "attention_mask": torch.ones(b, S, dtype=torch.long),
             "labels": torch.randint(3, 512, (b, T))}
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = token_cross_entropy(adapter.logits(model, batch), batch["labels"])
    loss.backward()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer.step()
    measured = {"params": sum(p.numel() * p.element_size() for p in model.parameters()),
                "grads": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
                "optimizer": sum(v.numel() * v.element_size() for s in optimizer.state.values()
                                 for v in s.values() if v.dim() > 0),
                "activations": sum(saved.values())}
    arch = pm.arch_from_config(config)
    recipe = pm.Recipe(student="tiny", micro_batch=b, prompt_length=S, target_length=T)
    states = pm.model_states(arch.params, arch.largest_layer, 0, "fp32", 1, False, False)
    src, tgt = pm.sequence_lengths(recipe, arch, T)
    fused = attn == "sdpa"
    estimated = {k: states[k] for k in ("params", "grads", "optimizer")}
    estimated["activations"] = (pm.stack_bytes(arch, 4, b, src, tgt, fused, False, mask=4)
                                + pm.head_bytes(arch, b, tgt, "sft", 4))
    return measured, estimated


# GPT-2 and OPT keep attention dropout / T5 its position bias, so on a CPU torch's SDPA falls back to the math path
# (scores stored): they are checked eager. LLaMA has no dropout: its CPU SDPA is the fused flash kernel.
@pytest.mark.parametrize("kind,attn", [("t5", "eager"), ("gpt2", "eager"), ("opt", "eager"), ("llama", "eager"),
                                       ("llama", "sdpa")])
def test_estimate_matches_a_measured_cpu_step(kind, attn):
    measured, estimated = measure_step(kind, attn)
    for name in measured:
        ratio = estimated[name] / measured[name]
        assert 0.8 <= ratio <= 1.2, f"{kind}/{attn} {name}: estimated {estimated[name]} vs measured {measured[name]}"
    total = sum(estimated.values()) / sum(measured.values())
    assert 0.8 <= total <= 1.2


def test_activations_scale_with_batch_and_layers_like_the_measurement():
    """The per-layer formula, not a constant: twice the layers and twice the batch are predicted as measured."""
    base = TINY["gpt2"]
    try:
        TINY["gpt2"] = dict(base, n_layer=4)
        deep_m, deep_e = measure_step("gpt2", "eager", b=8)
    finally:
        TINY["gpt2"] = base
    assert 0.8 <= deep_e["activations"] / deep_m["activations"] <= 1.2


@pytest.mark.parametrize("name,billions", [("flan-t5-small", 0.077), ("flan-t5-base", 0.248),
                                           ("flan-t5-large", 0.783), ("flan-t5-xl", 2.85), ("flan-t5-xxl", 11.14),
                                           ("gpt2", 0.124), ("gpt2-xl", 1.56), ("opt-1.3b", 1.32),
                                           ("opt-13b", 12.85), ("llama-7b", 6.74), ("llama-13b", 13.02)])
def test_parameter_counts_are_the_real_models(name, billions):
    assert abs(pm.arch_of(name).params / 1e9 - billions) / billions < 0.02


def test_checkpoint_paths_map_to_architectures():
    assert pm.resolve_model("google/flan-t5-xl") == "flan-t5-xl"
    assert pm.resolve_model("/b/results/anli/sft/xxl/best") == "flan-t5-xxl"
    assert pm.resolve_model("/b/results/gpt2/sft/xlarge/best") == "gpt2-xl"
    assert pm.resolve_model("gpt2") == "gpt2" and pm.resolve_model("gpt2-medium") == "gpt2-medium"
    assert pm.resolve_model("/b/results/opt/sft/13B/best") == "opt-13b"
    assert pm.resolve_model("/b/checkpoints/llama-7B") == "llama-7b"
    with pytest.raises(ValueError):
        pm.resolve_model("/somewhere/else")


@pytest.mark.parametrize("stage,offload,offload_param", [(2, False, False), (2, True, False), (3, False, False),
                                                         (3, True, False), (3, True, True)])
def test_bf16_model_states_are_deepspeeds_estimator(stage, offload, offload_param):
    arch = pm.arch_of("flan-t5-xl")
    states = pm.model_states(arch.params, arch.largest_layer, stage, "bf16", 16, offload, offload_param)
    ours = states["params"] + states["grads"] + states["optimizer"]
    assert ours == pytest.approx(states["deepspeed"], rel=1e-6)


def test_every_recipe_fits_one_node_of_8_v100_32gb():
    scripts = pm.training_recipes()
    families = {s.split("/")[1] if s.startswith("scripts/") else "t5" for s in scripts}
    assert families == {"t5", "gpt2", "opt", "llama"} and len(scripts) >= 40
    failures = []
    for script in scripts:
        p = pm.plan(pm.recipe_from_script(script, "fp32", 8), card_gib=32.0)
        assert p["recipe"].world_size in (8, 16)  # one node, or the two of a hostfile recipe
        if not p["fits"]:
            failures.append(pm.describe(p))
    assert not failures, "\n\n".join(failures)


def test_a_plan_that_does_not_fit_says_so(capsys):
    # LLaMA-7B without ZeRO: 16 bytes per parameter of model states alone, over 100 GB
    assert pm.main(["--model", "llama-7b", "--zero-stage", "0", "--batch-size", "1"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert pm.main(["--model", "flan-t5-small", "--zero-stage", "1", "--batch-size", "8"]) == 0
