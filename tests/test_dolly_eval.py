"""Evaluation of data without answer options (Dolly, MiniLLM's evaluation): loss and generation figures only,
sampled once per seed with the mean and standard deviation over the seeds, through minillm.evaluate's CLI.

The Dolly folders are built on the spot from the offline sample (tools/make_dolly_sample.py and
tools/process_data_dolly.py), once for a tiny GPT-2 with a tokenizer trained on the sample, once for a tiny T5 with
the real Flan-T5 tokenizer; the models are random, which is all the figures' bookkeeping needs.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from minillm.data.seq2seq import Seq2SeqExamples
from minillm.data.templates import get_instruction_template
from minillm.evaluate import main as evaluate_main
from minillm.evaluation import Decoding, evaluate, exact_match, format_table, rouge_l
from minillm.models import adapter_for
from minillm.models.tiny import (build_causal_model, build_model, model_vocab_size, save_checkpoint,
                                 train_causal_tokenizer)

REPO = Path(__file__).resolve().parents[1]
ROWS, DEV_NUM, TEST_NUM = 40, 6, 6
SEEDS = ("10", "20")
OPTION_FIELDS = ("accuracy_rank", "accuracy_generate", "unparsed", "unparsed_examples", "confusion_rank",
                 "confusion_generate", "label_share_rank", "label_share_generate", "gold_option_nll", "ece",
                 "off_option_mass", "option_rev_kl", "option_fwd_kl")


def run(args):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def dolly(tmp_path_factory, flan_t5_tokenizer_dir):
    """``{"causal": (model folder, data folder), "seq2seq": (...)}``: tiny random models and their Dolly folders."""
    work = tmp_path_factory.mktemp("dolly_eval")
    raw = work / "sample.jsonl"
    done = run([sys.executable, "tools/make_dolly_sample.py", "--out", str(raw), "--rows", str(ROWS)])
    assert done.returncode == 0, done.stderr[-2000:]

    template = get_instruction_template("alpaca")
    texts = [template.prompt("x", "y"), template.prompt("x", "")]
    texts += [" ".join(json.loads(line).values()) for line in raw.read_text().splitlines()]
    gpt2_tokenizer = train_causal_tokenizer("gpt2", texts, work / "gpt2_tokenizer", vocab_size=600)
    t5_tokenizer = AutoTokenizer.from_pretrained(flan_t5_tokenizer_dir)
    folders = {
        "causal": (save_checkpoint(build_causal_model("gpt2", "tiny-student", len(gpt2_tokenizer)), gpt2_tokenizer,
                                   work / "gpt2"), work / "gpt2_tokenizer"),
        "seq2seq": (save_checkpoint(build_model("tiny-student", model_vocab_size(t5_tokenizer)), t5_tokenizer,
                                    work / "t5"), flan_t5_tokenizer_dir),
    }
    out = {}
    for model_type, (model_dir, tokenizer_dir) in folders.items():
        data_dir = work / f"data_{model_type}"
        done = run([sys.executable, "tools/process_data_dolly.py", "--raw-file", str(raw), "--out-dir", str(data_dir),
                    "--tokenizer", str(tokenizer_dir), "--dev-num", str(DEV_NUM), "--test-num", str(TEST_NUM)])
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads((data_dir / "meta.json").read_text())["model_type"] == model_type
        out[model_type] = (model_dir, data_dir)
    return out


def load(model_dir, model_type):
    model_class = AutoModelForCausalLM if model_type == "causal" else AutoModelForSeq2SeqLM
    return model_class.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def cli(model_dir, data_dir, out_dir, *flags):
    return run([sys.executable, "-m", "minillm.evaluate", "--model-path", str(model_dir), "--data-dir", str(data_dir),
                "--rounds", "dolly", "--batch-size", "4", "--max-new-tokens", "12", "--out-dir", str(out_dir),
                *flags])


# ----------------------------------------------------------------------------------------- seeds, mean and std

@pytest.mark.parametrize("model_type", ["causal", "seq2seq"])
def test_cli_samples_once_per_seed_and_reports_mean_and_std(dolly, tmp_path, model_type):
    model_dir, data_dir = dolly[model_type]
    done = cli(model_dir, data_dir, tmp_path / "sampled", "--decoding", "sample", "--seeds", *SEEDS,
               "--temperature", "1.0", "--top-k", "0", "--top-p", "1.0")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "sampled" / "results.json").read_text())
    predictions = [json.loads(line) for line in (tmp_path / "sampled" / "predictions.jsonl").read_text().splitlines()]
    records = Seq2SeqExamples(data_dir, "dolly", "test").records()
    assert [p["uid"] for p in predictions] == [r["uid"] for r in records] and len(records) == TEST_NUM
    assert results["settings"]["decoding"] == {"mode": "sample", "seeds": [10, 20], "temperature": 1.0, "top_k": 0,
                                               "top_p": 1.0, "no_repeat_ngram_size": 6}

    # each pass's figures are those of its texts; the texts of the two seeds differ
    for prediction, record in zip(predictions, records):
        assert [g["seed"] for g in prediction["generations"]] == [10, 20]
        for generation in prediction["generations"]:
            assert generation["rougeL"] == pytest.approx(rouge_l(generation["generated"], record["target"]))
            assert generation["exact_match"] == exact_match(generation["generated"], record["target"], False)
        assert prediction["generated"] == prediction["generations"][0]["generated"]
    assert [p["generations"][0]["generated"] for p in predictions] != [p["generations"][1]["generated"]
                                                                       for p in predictions]
    overall = results["overall"]
    per_seed = overall["per_seed"]
    assert [figures["seed"] for figures in per_seed] == [10, 20]
    for j, figures in enumerate(per_seed):
        assert figures["rougeL"] == pytest.approx(statistics.fmean(p["generations"][j]["rougeL"] for p in predictions))
        assert figures["exact_match"] == pytest.approx(
            statistics.fmean(p["generations"][j]["exact_match"] for p in predictions))
        assert figures["accuracy_generate"] is None
    assert per_seed[0]["rougeL"] != per_seed[1]["rougeL"]
    rouge = [figures["rougeL"] for figures in per_seed]
    assert overall["rougeL"] == pytest.approx(statistics.fmean(rouge))
    assert overall["rougeL_std"] == pytest.approx(abs(rouge[0] - rouge[1]) / 2 ** 0.5)  # sample std of two values
    em = [figures["exact_match"] for figures in per_seed]
    assert overall["exact_match"] == pytest.approx(statistics.fmean(em))
    assert overall["exact_match_std"] == pytest.approx(abs(em[0] - em[1]) / 2 ** 0.5)
    assert results["rounds"]["dolly"]["rougeL"] == overall["rougeL"]

    # no option figures: None in the results, absent from the table
    for field in OPTION_FIELDS:
        assert overall[field] is None, field
    assert all(p["option_scores"] is None and p["rank_label"] is None and p["gold_label"] is None
               for p in predictions)
    header = done.stdout.split(" on test:\n")[1].splitlines()[0].split()
    assert header == ["round", "n", "loss", "rougeL", "sd(rougeL)", "EM", "sd(EM)"]
    assert f"seed 20: rougeL {rouge[1]:.2f}" in done.stdout
    assert f"overall {overall['rougeL']:.2f} ± {overall['rougeL_std']:.2f}" in done.stdout.split("== summary")[1]

    # a pass depends on its seed only (and the batching): seed 20 alone gives the texts of the second pass
    model, tokenizer = load(model_dir, model_type)
    alone = evaluate(model, tokenizer, data_dir, "test", ("dolly",), batch_size=4, max_new_tokens=12,
                     decoding=Decoding("sample", (20,), no_repeat_ngram_size=6))
    assert [p["generated"] for p in alone["predictions"]] == [p["generations"][1]["generated"] for p in predictions]
    assert alone["overall"]["rougeL_std"] is None and len(alone["overall"]["per_seed"]) == 1

    # the loss is computed once, and the same under any decoding
    greedy = cli(model_dir, data_dir, tmp_path / "greedy")
    assert greedy.returncode == 0, greedy.stderr[-2000:]
    greedy_results = json.loads((tmp_path / "greedy" / "results.json").read_text())
    assert greedy_results["overall"]["loss"] == pytest.approx(overall["loss"], rel=1e-6)
    assert greedy_results["settings"]["decoding"] == {"mode": "greedy", "seeds": None, "temperature": None,
                                                      "top_k": None, "top_p": None, "no_repeat_ngram_size": 6}
    assert greedy_results["overall"]["per_seed"] is None and greedy_results["overall"]["rougeL_std"] is None


def test_in_training_call_gives_rouge_for_selection(dolly):
    """The trainer's positional call (greedy, one pass): ``rougeL`` for ``--select-by auto``, no rank figures."""
    model_dir, data_dir = dolly["causal"]
    model, tokenizer = load(model_dir, "causal")
    result = evaluate(model, tokenizer, data_dir, "dev", ("dolly",), 4, 8, True, None, adapter_for(model, tokenizer),
                      512, 128, teacher=None)
    assert isinstance(result["overall"]["rougeL"], float) and result["overall"]["accuracy_rank"] is None
    assert result["overall"]["n"] == len(Seq2SeqExamples(data_dir, "dolly", "dev")) > 0
    assert result["settings"]["options"] is False
    assert "acc(rank)" not in format_table(result) and "ECE" not in format_table(result)


def test_generation_passes_the_decoding_to_the_adapter(dolly):
    model_dir, data_dir = dolly["causal"]
    model, tokenizer = load(model_dir, "causal")
    adapter = adapter_for(model, tokenizer)
    seen = []
    real_generate = adapter.generate

    def recording_generate(*args, **kwargs):
        seen.append(kwargs)
        return real_generate(*args, **kwargs)

    adapter.generate = recording_generate
    sampled = Decoding("sample", (1, 2), temperature=0.7, top_k=5, top_p=0.9, no_repeat_ngram_size=3)
    evaluate(model, tokenizer, data_dir, "test", ("dolly",), batch_size=8, max_new_tokens=4, adapter=adapter,
             decoding=sampled)
    assert len(seen) == 2  # one batch, two seeds
    for kwargs in seen:
        assert {k: kwargs[k] for k in ("do_sample", "temperature", "top_k", "top_p", "no_repeat_ngram_size")} == {
            "do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "no_repeat_ngram_size": 3}
    seen.clear()
    evaluate(model, tokenizer, data_dir, "test", ("dolly",), batch_size=8, max_new_tokens=4, adapter=adapter)
    assert seen[0]["do_sample"] is False and seen[0]["no_repeat_ngram_size"] == 0
    assert not {"temperature", "top_k", "top_p"} & set(seen[0])


# ----------------------------------------------------------------------------------------- text metrics

def test_rouge_l_and_exact_match_of_hand_made_texts():
    # rouge_score's tokens: lowercase, non-alphanumerics as spaces, Porter stems ("cats" -> "cat"):
    # prediction "the cat sat on the mat", target "a cat sat on a mat"; LCS "cat sat on mat" = 4 of 6 and 6 tokens,
    # P = R = 4/6, F = 4/6
    assert rouge_l("The cats sat on the mat.", "A cat sat on a mat") == pytest.approx(100 * 4 / 6)
    # LCS 2 ("cat", "mat") of 3 and 5 tokens: P = 2/3, R = 2/5, F = 2PR/(P+R) = 1/2
    assert rouge_l("cat, mat; dog", "Cat on the mat today") == pytest.approx(50.0)
    # MiniLLM's exact match keeps the articles; SQuAD's (ANLI's) drops them
    assert exact_match("Hello,  World!", "hello world", drop_articles=False) == 100.0
    assert exact_match("The answer.", "answer", drop_articles=False) == 0.0
    assert exact_match("The answer.", "answer") == 100.0


# ----------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("flags, message", [
    (["--seeds", "10", "20"], "2 seeds with greedy decoding"),
    (["--decoding", "sample"], "sampling needs seeds"),
    (["--decoding", "sample", "--seeds", "10", "10"], "a seed is repeated"),
    (["--temperature", "0.5"], "--temperature applies to --decoding sample only"),
    (["--decoding", "sample", "--seeds", "1", "--top-p", "0"], "top_p 0.0: must be in (0, 1]"),
    (["--no-generate", "--seeds", "1"], "--seeds sets generation, which --no-generate skips"),
    (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size -1: must be >= 0"),
    (["--rounds", "r1"], "--rounds r1: --data-dir {data} holds no such round (its rounds: dolly)"),
])
def test_bad_flags_are_one_line_errors(dolly, flags, message, capsys):
    model_dir, data_dir = dolly["causal"]
    argv = ["--model-path", str(model_dir), "--data-dir", str(data_dir), *flags]
    try:
        status = evaluate_main(argv)
    except SystemExit as stop:  # argparse's refusals
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minillm.evaluate: error: "), err
    assert message.format(data=data_dir) in lines[0]
    assert not (Path(model_dir) / "eval").exists()
