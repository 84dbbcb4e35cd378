"""Sharded inference (issue 26): ``minillm.evaluate`` and ``minillm.generate_seqkd`` with ``--deepspeed-config`` a
ZeRO-3 file hold every model in a DeepSpeed ZeRO-3 inference engine over the launched processes. Here 2 processes
(gloo, CPU), started by t5-scripts/eval/run_eval.sh and t5-scripts/tools/generate_data_seqkd.sh (DS_CONFIG and
NUM_GPUS=2: launch_module, torchrun), against the unsharded single-process run on the same data and models.

The parameters really are split: the DeepSpeed file sets ``stage3_param_persistence_threshold`` 0 (the repository's
files keep parameters under 1e5 elements whole, which is every parameter of a tiny model), and each process is
checked to hold half of them. The shares are uneven (15 test examples, 9 train prompts: one process gets a padding
repeat) and greedy answers end at different steps (the models' EOS row is scaled up), in batches of 2 (evaluation) and
1 (SeqKD) whose last answers end at different steps on the two processes: without the padding to equal calls or
without ``synced_gpus=True`` these runs abort (checked by removing either).

Tolerances: every prediction (rank label, generated text and label, Rouge-L, exact match, the SeqKD target ids) is
identical; the option scores (the teacher's too) and target NLLs are within 1e-5 relative + 1e-5 absolute of the
single run. They cannot be bitwise equal: a process's batches hold other examples, hence other padding widths and
matrix shapes, whose fp32 rounding moved scores of 10-30 nats by up to 7.6e-6 (the sharded run is bitwise equal to
an unsharded run with the same process count). About 60 s on 2 cores, mostly the three 2-process runs' start-up.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from minillm_helpers import assert_ok, read_jsonl, run_t5_script, script_env

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"rel": 1e-5, "abs": 1e-5}
EXACT_KEYS = ("uid", "round", "gold_label", "rank_label", "generated", "generated_label", "rougeL", "exact_match",
              "target", "target_tokens")
CLOSE_KEYS = ("option_scores", "teacher_option_scores", "target_nll")


def write_zero3_config(path: Path) -> Path:
    path.write_text(json.dumps({"gradient_clipping": 1.0, "bf16": {"enabled": False},
                                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}))
    return path


def scale_eos_row(model, eos_id: int, factor: float = 4.0):
    """Greedy answers of a random model never end; a larger EOS row makes some end within a few tokens."""
    with torch.no_grad():
        model.get_output_embeddings().weight[eos_id] *= factor
    return model


@pytest.fixture(scope="module")
def t5_work(tmp_path_factory) -> Path:
    """Synthetic ANLI (3 train, 6 test per round) processed for a tokenizer trained on it, a tiny T5 student and
    teacher (different shapes and seeds) and the ZeRO-3 file."""
    from minillm.data.process import build_shards, build_text
    from minillm.data.synthetic import generate, write_hf_layout
    from minillm.models.tiny import build_model, model_vocab_size, save_checkpoint, train_tokenizer

    work = tmp_path_factory.mktemp("sharded_t5")
    write_hf_layout(generate(seed=0, train_per_round=3, dev_per_round=3, test_per_round=6), work / "raw")
    build_text(work / "raw", work / "data", "flan", "label")
    texts = [record["prompt"] + "\n" + record["target"] for path in sorted((work / "data" / "text").glob("r*/*.jsonl"))
             for record in map(json.loads, path.read_text().splitlines())]
    tokenizer = train_tokenizer(texts, work / "tokenizer", vocab_size=300)
    for name, seed, eos_factor in (("tiny-student", 1, 2.0), ("tiny-teacher", 2, 4.0)):
        model = build_model(name, model_vocab_size(tokenizer), seed=seed)
        scale_eos_row(model, tokenizer.eos_token_id, eos_factor)
        save_checkpoint(model, tokenizer, work / name)
    build_shards(work / "data", str(work / "tokenizer"))
    write_zero3_config(work / "zero3.json")
    return work


def launch(script: str, **env) -> subprocess.CompletedProcess:
    """A t5-scripts script with BASE the repository, 2 processes, one thread each."""
    done = run_t5_script(script, script_env(dict(NUM_GPUS=2, OMP_NUM_THREADS=1, HF_HUB_OFFLINE=1), **env), timeout=240)
    assert_ok(done)
    return done


def evaluate_in_process(monkeypatch, flags: list[str]) -> None:
    """The unsharded single-process run: ``minillm.evaluate`` without a process group (no launcher variables)."""
    from minillm.evaluate import main

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert main(flags) == 0


def read_predictions(out_dir: Path) -> list[dict]:
    return read_jsonl(out_dir / "predictions.jsonl")


def assert_same_predictions(sharded: list[dict], single: list[dict]) -> None:
    assert len(sharded) == len(single) > 0
    for mine, reference in zip(sharded, single):
        for key in EXACT_KEYS:
            assert mine[key] == reference[key], (key, mine["uid"])
        for key in CLOSE_KEYS:  # None where not computed (no teacher)
            expected = reference[key] if reference[key] is None else pytest.approx(reference[key], **TOLERANCE)
            assert mine[key] == expected, (key, mine["uid"])


def assert_half_each(sharding: dict) -> None:
    """Each of the 2 processes holds about half of the parameters (a partition is padded to divide evenly)."""
    assert sharding["zero_stage"] == 3 and len(sharding["held_per_process"]) == 2
    for held in sharding["held_per_process"]:
        assert sharding["parameters"] / 2 <= held < sharding["parameters"] / 2 + 1000


def test_evaluation_on_zero3_over_two_processes_matches_one_process(t5_work, tmp_path, monkeypatch):
    """run_eval.sh with DS_CONFIG: student and teacher sharded; rank classification, option KLs, loss and greedy
    generation as one unsharded process computes them."""
    flags = ["--data-dir", str(t5_work / "data"), "--split", "test", "--batch-size", "2", "--max-examples", "5",
             "--max-new-tokens", "6"]
    evaluate_in_process(monkeypatch, ["--model-path", str(t5_work / "tiny-student"), "--teacher-model-path",
                                      str(t5_work / "tiny-teacher"), *flags, "--out-dir", str(tmp_path / "single")])
    done = launch("eval/run_eval.sh", CKPTS=t5_work / "tiny-student", TEACHER_CKPT=t5_work / "tiny-teacher",
                  DS_CONFIG=t5_work / "zero3.json", DATA_DIR=t5_work / "data", SPLIT="test", BATCH_SIZE=2,
                  MAX_NEW_TOKENS=6, EXTRA_ARGS=f"--max-examples 5 --out-dir {tmp_path / 'sharded'}")
    assert "ZeRO-3 over 2 processes" in done.stdout and done.stdout.count("== summary") == 1  # process 0 prints

    single, sharded = read_predictions(tmp_path / "single"), read_predictions(tmp_path / "sharded")
    assert_same_predictions(sharded, single)
    assert len(single) == 15 and all(p["teacher_option_scores"] is not None for p in single)
    assert len({len(p["generated"]) for p in single}) > 1  # answers end at different steps: synced_gpus matters
    results = json.loads((tmp_path / "sharded" / "results.json").read_text())
    reference = json.loads((tmp_path / "single" / "results.json").read_text())
    assert results["settings"]["world_size"] == 2 and reference["settings"]["sharding"] is None
    assert_half_each(results["settings"]["sharding"])
    for key in ("n", "accuracy_rank", "accuracy_generate", "rougeL", "confusion_rank", "confusion_generate"):
        assert results["overall"][key] == reference["overall"][key], key
    for key in ("loss", "gold_option_nll", "option_rev_kl", "option_fwd_kl", "ece"):
        assert results["overall"][key] == pytest.approx(reference["overall"][key], **TOLERANCE), key


def test_seqkd_generation_on_zero3_over_two_processes_matches_one_process(t5_work, tmp_path):
    """generate_data_seqkd.sh with DS_CONFIG: the sharded teacher's greedy targets are the ids one process holding
    the whole teacher generates (its generation, :func:`generate_share` over every prompt, in this process)."""
    from argparse import Namespace

    from tqdm import tqdm

    from minillm.generate_seqkd import generate_share, load_prompts
    from minillm.models import adapter_for, load_model, load_tokenizer

    done = launch("tools/generate_data_seqkd.sh", TEACHER_CKPT=t5_work / "tiny-teacher", DATA_DIR=t5_work / "data",
                  GEN_DIR=tmp_path / "gen", BATCH_SIZE=1, MAX_NEW_TOKENS=6, DS_CONFIG=t5_work / "zero3.json")
    assert "ZeRO-3 over 2 processes" in done.stdout
    meta = json.loads((tmp_path / "gen" / "meta.json").read_text())
    assert meta["prompts_per_process"] == [5, 4] and meta["dtype"] == "fp32"
    assert_half_each(meta["sharding"])

    items = load_prompts(t5_work / "data", ["r1", "r2", "r3"], "train")
    teacher = load_model(t5_work / "tiny-teacher", attn_implementation=None, flag=None).eval()
    adapter = adapter_for(teacher, load_tokenizer(t5_work / "tokenizer"))
    args = Namespace(decoding="greedy", batch_size=1, max_new_tokens=6, num_samples=1)
    with tqdm(disable=True) as progress:
        single = generate_share(teacher, adapter, [ids for _, ids in items], list(range(len(items))), args, "cpu",
                                progress)
    sharded = [json.loads(line) for round_name in ("r1", "r2", "r3")
               for line in (tmp_path / "gen" / round_name / "train.jsonl").read_text().splitlines()]
    assert [r["uid"] for r in sharded] == [record["uid"] for record, _ in items]
    assert [r["target_ids"] for r in sharded] == [single[i][0] for i in range(len(items))]
    assert len({len(r["target_ids"]) for r in sharded}) > 1 and any(r["finished"] for r in sharded)


@pytest.fixture(scope="module")
def causal_work(tmp_path_factory) -> Path:
    """Synthetic ANLI processed for a tiny LLaMA (causal: options scored as continuations, left-padded generation)
    and that model."""
    from minillm.data.process import build_shards, build_text
    from minillm.data.synthetic import generate, write_hf_layout
    from minillm.data.templates import get_template
    from minillm.models.tiny import build_causal_model, save_checkpoint, train_causal_tokenizer

    work = tmp_path_factory.mktemp("sharded_causal")
    data = generate(seed=0, train_per_round=3, dev_per_round=3, test_per_round=3)
    write_hf_layout(data, work / "raw")
    template = get_template("flan")
    texts = [template.prompt(r["premise"], r["hypothesis"], answer_cue=True) for rows in data.values() for r in rows]
    tokenizer = train_causal_tokenizer("llama", texts + ["Yes", "It's impossible to say", "No"], work / "tokenizer",
                                       vocab_size=600)
    build_text(work / "raw", work / "data", "flan", "label")
    build_shards(work / "data", str(work / "tokenizer"))
    model = scale_eos_row(build_causal_model("llama", "tiny-student", len(tokenizer), seed=3), tokenizer.eos_token_id)
    save_checkpoint(model, tokenizer, work / "model")
    write_zero3_config(work / "zero3.json")
    return work


def test_causal_evaluation_on_zero3_over_two_processes_matches_one_process(causal_work, tmp_path, monkeypatch):
    """A decoder-only model (LLaMA) sharded the same way: rank classification, loss and greedy generation from
    left-padded prompts as one unsharded process computes them."""
    flags = ["--data-dir", str(causal_work / "data"), "--split", "test", "--batch-size", "2", "--max-new-tokens", "6"]
    evaluate_in_process(monkeypatch, ["--model-path", str(causal_work / "model"), *flags,
                                      "--out-dir", str(tmp_path / "single")])
    launch("eval/run_eval.sh", CKPTS=causal_work / "model", DS_CONFIG=causal_work / "zero3.json",
           DATA_DIR=causal_work / "data", SPLIT="test", BATCH_SIZE=2, MAX_NEW_TOKENS=6,
           EXTRA_ARGS=f"--out-dir {tmp_path / 'sharded'}")
    single, sharded = read_predictions(tmp_path / "single"), read_predictions(tmp_path / "sharded")
    assert len(single) == 9
    assert_same_predictions(sharded, single)
    assert_half_each(json.loads((tmp_path / "sharded" / "results.json").read_text())["settings"]["sharding"])


@pytest.mark.parametrize("script", ["t5-scripts/eval/run_eval.sh", "t5-scripts/tools/generate_data_seqkd.sh",
                                    "scripts/llama/eval/run_eval.sh", "scripts/llama/tools/generate_data_seqkd.sh"])
def test_scripts_shard_only_with_zero_stage_3(script, tmp_path):
    """ZERO_STAGE=3 (as for training) adds --deepspeed-config with the configs/deepspeed file of that stage and
    precision, launched over NUM_GPUS processes; without it (or with ZeRO 0-2) the command is what it was."""
    clean = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if name in os.environ}

    def dry_run(**env) -> str:
        done = subprocess.run(["bash", str(REPO / script), str(tmp_path)], capture_output=True, text=True, timeout=60,
                              env={**clean, "DRY_RUN": "1", "PRECISION": "bf16", "MASTER_PORT": "29500",
                                   "CKPTS": "ckpt", **env})
        assert done.returncode == 0, done.stderr
        return done.stdout

    sharded = dry_run(ZERO_STAGE="3", NUM_GPUS="4")
    assert f"--deepspeed-config {REPO}/configs/deepspeed/zero3_bf16.json" in sharded
    assert sharded.startswith("torchrun --nproc-per-node 4 ")
    assert "configs/deepspeed/zero3_offload_bf16.json" in dry_run(ZERO_STAGE="3_offload")
    for plain in (dry_run(), dry_run(ZERO_STAGE="2", NUM_GPUS="1")):  # SeqKD's default: data-parallel over 8 or 16
        assert "--deepspeed-config" not in plain
    if script.endswith("run_eval.sh"):  # one process, as before, whatever NUM_GPUS says
        assert dry_run(NUM_GPUS="4").startswith("python -m minillm.evaluate ")
