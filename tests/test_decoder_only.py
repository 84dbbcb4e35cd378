"""SFT, KD, SeqKD and MiniLLM of decoder-only students through MiniLLM's scripts (scripts/{gpt2,opt,llama}), a few
steps each on the CPU.

Everything is built on the spot, per family: a tokenizer trained on the offline Dolly sample
(tools/make_dolly_sample.py), a tiny student and a tiny teacher (minillm/models/tiny.py), the Dolly folder
(tools/process_data_dolly.py --model-type causal) and a plain-text corpus folder for MiniLLM's LM term
(tools/process_data_pretrain.py, round ``pretrain``). The recipes run with their variables overridden from the
environment (checkpoints, data, a few steps of a tiny batch, one process, fp32, ZeRO 0, a small evaluation) and
each run must end with status 0, its metric lines finite and holding the objective's terms, and checkpoints that
``AutoModelForCausalLM`` loads and that differ from where training started.

GPT-2 pads with its EOS (nothing banned); OPT has a ``<pad>`` of its own; LLaMA's tokenizer has no pad token at all
(the Dolly folder's meta.json says ``pad_token_id: null``), so batching can only work with the adapter's pad.
"""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from minillm.cli import process_data_dolly, process_data_pretrain
from minillm.engine.config import TrainConfig
from minillm.models.tiny import build_causal_model, model_vocab_size, save_checkpoint, train_causal_tokenizer
from minillm.objectives.minillm.batches import lm_examples, lm_round
from minillm_helpers import read_jsonl, run_ok, write_dolly_sample

REPO = Path(__file__).resolve().parents[1]
ROWS, DEV_NUM, TEST_NUM = 60, 8, 4
EVAL_EXAMPLES, EVAL_NEW_TOKENS = 4, 8
# Every run: one process, fp32 without ZeRO, a micro-batch of 2, a small evaluation (its generation cut short).
COMMON = dict(NUM_GPUS=1, PRECISION="fp32", ZERO_STAGE=0, BATCH_SIZE=2, GRAD_ACC=1, EVAL_BATCH_SIZE=4,
              MODEL_PARALLEL_SIZE="", OMP_NUM_THREADS=1,
              EXTRA_ARGS=f"--eval-max-examples {EVAL_EXAMPLES} --eval-max-new-tokens {EVAL_NEW_TOKENS} "
                         "--log-interval 1 --max-target-length 64")
# MiniLLM: one collection of 4 rollouts of at most 8 tokens, sampled 2 at a time, one PPO epoch (2 steps).
MINILLM = dict(MAX_STEPS=2, NUM_ROLLOUTS=4, CHUNK_SIZE=2, PPO_EPOCHS=1, MAX_NEW_TOKENS=8, WARMUP_STEPS=0,
               EVAL_INTERVAL=2, SAVE_INTERVAL=2, LR=1e-3)


@pytest.fixture(scope="module")
def dolly_sample(tmp_path_factory) -> tuple[Path, list[str]]:
    """The offline sample file and a corpus of its text (the template's and every field of every row)."""
    return write_dolly_sample(tmp_path_factory.mktemp("dolly_raw"), ROWS)


def build_family(family: str, work: Path, dolly_sample) -> dict:
    """Tokenizer, student and teacher checkpoints, Dolly folder and LM corpus folder of one family under ``work``
    (the scripts' BASE)."""
    raw_file, corpus = dolly_sample
    tokenizer = train_causal_tokenizer(family, corpus, work / "tokenizer", vocab_size=600)
    vocab_size = model_vocab_size(tokenizer)
    checkpoints = {name: save_checkpoint(build_causal_model(family, preset, vocab_size, seed=1), tokenizer,
                                         work / "checkpoints" / name)
                   for name, preset in (("student", "tiny-student"), ("teacher", "tiny-teacher"))}
    data = work / "processed_data" / "dolly" / family
    process_data_dolly.main(["--raw-file", str(raw_file), "--out-dir", str(data), "--tokenizer",
                             str(work / "tokenizer"), "--model-type", "causal", "--dev-num", str(DEV_NUM),
                             "--test-num", str(TEST_NUM)])
    (work / "corpus").mkdir()
    (work / "corpus" / "documents.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    lm_data = work / "processed_data" / "pretrain" / family
    process_data_pretrain.main(["--corpus-dir", str(work / "corpus"), "--out-dir", str(lm_data), "--tokenizer",
                                str(work / "tokenizer"), "--model-type", "causal", "--max-length", "48",
                                "--dev-num", "2", "--train-num", "16"])
    return {"work": work, "data": data, "lm_data": lm_data, **checkpoints}


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, dolly_sample) -> dict:
    return build_family("gpt2", tmp_path_factory.mktemp("gpt2"), dolly_sample)


@pytest.fixture(scope="module")
def gpt2_sft(gpt2) -> tuple[Path, str]:
    """SFT of the GPT-2 student (scripts/gpt2/sft/sft_base.sh), 3 steps: its folder, where MiniLLM starts from
    best_loss/, and what it printed."""
    save_dir = gpt2["work"] / "results" / "sft"
    done = run_ok(["bash", "scripts/gpt2/sft/sft_base.sh", str(gpt2["work"])], **COMMON, CKPT=gpt2["student"],
               DATA_DIR=gpt2["data"], SAVE_DIR=save_dir, MAX_STEPS=3, LR=1e-3)
    return save_dir, done.stdout


def train_records(save_dir: Path, steps: int) -> list[dict]:
    """The run's metric lines (metrics.jsonl) of optimizer steps 1..``steps``, each with a finite loss."""
    records = [r for r in read_jsonl(save_dir / "metrics.jsonl") if "lr" in r]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) for r in records)
    return records


def assert_trained_checkpoint(folder: Path, initial: Path) -> None:
    """``folder`` loads with AutoModelForCausalLM and AutoTokenizer, and its weights moved away from ``initial``'s."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    start = AutoModelForCausalLM.from_pretrained(initial)
    assert type(model) is type(start)
    assert AutoTokenizer.from_pretrained(folder).eos_token_id == model.config.eos_token_id
    moved = [not torch.equal(p, q) for p, q in zip(model.state_dict().values(), start.state_dict().values())]
    assert any(moved)


def test_gpt2_sft(gpt2, gpt2_sft):
    save_dir, output = gpt2_sft
    records = train_records(save_dir, 3)
    assert all(r["loss"] > 0 for r in records)
    # Dolly has no answer options: evaluated by loss and generation Rouge-L, best/ selected by Rouge-L
    evaluations = [r for r in read_jsonl(save_dir / "metrics.jsonl") if "split" in r]
    assert evaluations and all(math.isfinite(r["rougeL"]) and r["accuracy_rank"] is None for r in evaluations)
    summary = next(line for line in output.splitlines() if line.startswith("eval step 3:"))
    assert "rougeL" in summary and "acc(rank)" not in summary and "ECE" not in summary
    assert json.loads((save_dir / "best" / "trainer_state.json").read_text())["select_by"] == "rougeL"
    for folder in ("best", "best_loss", "last"):
        assert_trained_checkpoint(save_dir / folder, gpt2["student"])


def test_selecting_by_accuracy_on_dolly_is_refused(gpt2, tmp_path):
    config = TrainConfig(model_path=str(gpt2["student"]), data_dir=str(gpt2["data"]), save_dir=str(tmp_path),
                         deepspeed_config=str(REPO / "configs" / "deepspeed" / "zero0_fp32.json"),
                         select_by="accuracy", also_select_by="accuracy")
    with pytest.raises(ValueError) as refused:
        config.validate()
    for flag in ("--select-by", "--also-select-by"):
        assert f"{flag} accuracy needs answer options; --data-dir {gpt2['data']} holds free-text responses" in str(
            refused.value)


def test_gpt2_kd(gpt2):
    save_dir = gpt2["work"] / "results" / "kd"
    run_ok(["bash", "scripts/gpt2/kd/kd_base.sh", str(gpt2["work"])], **COMMON, CKPT=gpt2["student"],
        TEACHER_CKPT=gpt2["teacher"], DATA_DIR=gpt2["data"], SAVE_DIR=save_dir, MAX_STEPS=2)
    for record in train_records(save_dir, 2):  # (1 - r) CE + r KL(p || q), r = 0.5
        assert record["kd"] > 0 and record["ce"] > 0
        assert record["loss"] == pytest.approx(0.5 * record["ce"] + 0.5 * record["kd"], rel=1e-5)
    assert_trained_checkpoint(save_dir / "last", gpt2["student"])


def assert_minillm_run(save_dir: Path, initial: Path, steps: int) -> None:
    """Rollouts collected, every step's policy-gradient, single-step and LM terms present (the last two > 0), the
    student evaluated before training (step 0) and after, and a trained last/."""
    lines = read_jsonl(save_dir / "metrics.jsonl")
    collections = [r for r in lines if "rollouts" in r]
    assert collections and collections[0]["rollouts"] == MINILLM["NUM_ROLLOUTS"] and collections[0]["tokens"] > 0
    for record in train_records(save_dir, steps):
        assert math.isfinite(record["pg"]) and record["single"] > 0 and record["lm"] > 0
    evaluations = [r for r in lines if "split" in r]
    assert [r["step"] for r in evaluations] == [0, steps]
    assert all(math.isfinite(r["rev_kl"]) and r["student_length"] > 0 for r in evaluations)
    assert_trained_checkpoint(save_dir / "last", initial)


def test_gpt2_minillm_with_the_lm_term(gpt2, gpt2_sft):
    """From the SFT student's best_loss/, as MiniLLM prescribes; the LM term on the corpus folder (round pretrain,
    while the run's --train-round is dolly)."""
    save_dir = gpt2["work"] / "results" / "minillm"
    run_ok(["bash", "scripts/gpt2/minillm/train_base_xl.sh", str(gpt2["work"])], **COMMON, **MINILLM,
        CKPT=gpt2_sft[0] / "best_loss", TEACHER_CKPT=gpt2["teacher"], PROMPT_DATA_DIR=gpt2["data"],
        DATA_DIR=gpt2["data"], LM_DATA_DIR=gpt2["lm_data"], SAVE_DIR=save_dir)
    assert_minillm_run(save_dir, gpt2_sft[0] / "best_loss", 2)


def test_the_lm_term_reads_the_rounds_its_folder_holds(gpt2, tmp_path):
    """A corpus folder holds round pretrain, whatever the task's round is; a folder of several rounds is read at the
    training round, and one without it is refused in one line. Corpus chunks are kept whole (the corpus was cut to
    the length MiniLLM trains at), task pairs cut to the run's limits."""
    assert lm_round(gpt2["lm_data"], "dolly") == "pretrain"
    assert lm_round(gpt2["data"], "dolly") == "dolly"
    several = tmp_path / "several"
    shutil.copytree(gpt2["data"], several)
    meta = json.loads((several / "meta.json").read_text())
    (several / "meta.json").write_text(json.dumps({**meta, "rounds": ["dolly", "other"]}))
    assert lm_round(several, "dolly") == "dolly"
    with pytest.raises(ValueError, match=r"^--lm-data-dir .*several: rounds dolly, other in its meta.json, not "
                                         r"--train-round r1; [^\n]*$"):
        lm_round(several, "r1")

    def longest_target(data_dir) -> int:
        config = SimpleNamespace(lm_data_dir=data_dir, train_round="dolly", max_prompt_length=8,
                                 max_target_length=16)
        examples = lm_examples(config)
        return max(len(examples[i][1]) for i in range(len(examples)))

    assert longest_target(gpt2["lm_data"]) == 47  # 48-token chunks: prompt = the first token
    assert longest_target(gpt2["data"]) == 16


def test_gpt2_seqkd_on_the_teachers_answers(gpt2):
    """The teacher answers every training prompt (scripts/gpt2/tools/generate_data_seqkd.sh), the answers are
    sharded (process_pseudo_data_seqkd.sh), and the student is trained on them (seqkd_base.sh)."""
    work = gpt2["work"]
    paths = dict(TEACHER_CKPT=gpt2["teacher"], DATA_DIR=gpt2["data"], GEN_DIR=work / "seqkd_gen",
                 OUT_DIR=work / "processed_data" / "dolly" / "seqkd")
    run_ok(["bash", "scripts/gpt2/tools/generate_data_seqkd.sh", str(work), "1"], BATCH_SIZE=16, OMP_NUM_THREADS=1,
        EXTRA_ARGS="--max-new-tokens 8", **paths)
    run_ok(["bash", "scripts/gpt2/tools/process_pseudo_data_seqkd.sh", str(work)], **paths)
    save_dir = work / "results" / "seqkd"
    run_ok(["bash", "scripts/gpt2/seqkd/seqkd_base.sh", str(work)], **COMMON, CKPT=gpt2["student"],
        TEACHER_CKPT=gpt2["teacher"], DATA_DIR=paths["OUT_DIR"], SAVE_DIR=save_dir, MAX_STEPS=2)
    assert all(r["loss"] > 0 and "kd" not in r for r in train_records(save_dir, 2))  # KD_RATIO 0: pure SFT
    assert_trained_checkpoint(save_dir / "last", gpt2["student"])


def test_opt_sft(tmp_path_factory, dolly_sample):
    opt = build_family("opt", tmp_path_factory.mktemp("opt"), dolly_sample)
    save_dir = opt["work"] / "results" / "sft"
    run_ok(["bash", "scripts/opt/sft/sft_1.3B.sh", str(opt["work"])], **COMMON, CKPT=opt["student"],
        DATA_DIR=opt["data"], SAVE_DIR=save_dir, MAX_STEPS=2, LR=1e-3)
    train_records(save_dir, 2)
    assert_trained_checkpoint(save_dir / "best_loss", opt["student"])


def test_llama_minillm_without_a_pad_token(tmp_path_factory, dolly_sample):
    """LLaMA's recipe (ZeRO-3 and --model-parallel on GPUs; here ZeRO 0, no model parallelism) from a tokenizer
    without a pad token: the adapter pads with <unk> and bans it."""
    llama = build_family("llama", tmp_path_factory.mktemp("llama"), dolly_sample)
    assert json.loads((llama["data"] / "meta.json").read_text())["pad_token_id"] is None
    save_dir = llama["work"] / "results" / "minillm"
    run_ok(["bash", "scripts/llama/minillm/train_7B_13B.sh", str(llama["work"])], **COMMON, **MINILLM,
        CKPT=llama["student"], TEACHER_CKPT=llama["teacher"], PROMPT_DATA_DIR=llama["data"], DATA_DIR=llama["data"],
        LM_DATA_DIR=llama["lm_data"], SAVE_DIR=save_dir)
    assert_minillm_run(save_dir, llama["student"], 2)
