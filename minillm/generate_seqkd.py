"""SeqKD data: the teacher's output for every training prompt.

    torchrun [launcher flags] --module minillm.generate_seqkd --model-path TEACHER --data-dir GOLD --out-dir GEN

(``t5-scripts/tools/generate_data_seqkd.sh`` and ``scripts/{gpt2,opt,llama}/tools/generate_data_seqkd.sh`` wrap it
through ``launch_module``; plain ``python -m`` runs one process, the ``deepspeed`` launcher several nodes.)

Input: a processed gold data folder (``process_data_anli.sh`` or ``process_data_dolly.sh``), for any model family
(the teacher's adapter, :func:`minillm.models.adapter_for`, generates). ``--rounds`` are rounds its ``meta.json``
lists (default: all of them but the concatenated ``all``; ANLI r1 r2 r3, Dolly dolly). Prompts come from its
``prompt/{round}/{split}`` shards, exactly the ids a student is trained on (causal: without EOS; T5: ending in it);
the examples' records, in the same order, from ``text/{round}/{split}.jsonl`` for ANLI (its premise and hypothesis,
which the SeqKD shards re-cut from) and from ``prompt/{round}/{split}.jsonl`` otherwise (Dolly's text stage also
holds the examples dropped for their prompt length).
Work: the prompts are dealt out to the processes (strided: process k takes items k, k + P, ...), each process sorts
its share by length and generates in batches (greedy, or sampling with temperature / top-k / top-p and
``--num-samples`` outputs per prompt), and the outputs are gathered on process 0, which writes
``OUT_DIR/{round}/{split}.jsonl`` and ``OUT_DIR/meta.json`` (into a temporary folder, renamed when complete).
Each process holds the whole teacher, unless ``--deepspeed-config`` is a ZeRO-3 file (training's
``configs/deepspeed/zero3*_*.json``): then the teacher is held by a DeepSpeed ZeRO-3 inference engine
(:func:`minillm.engine.gathering.shard_for_inference`; each process keeps 1/P of every parameter, the layers are gathered
one at a time for each forward call), so a teacher larger than one device (Flan-T5-XXL) generates. The prompts are
dealt out as above, the shorter shares padded with a repeat of one of their prompts (generated, not kept) so that
every process makes the same number of ``generate`` calls, and ``generate`` runs with ``synced_gpus=True`` (every
process decodes until the last one is done); greedy outputs are those of one process holding the whole teacher.
``--dtype auto`` is then the file's precision (fp32 or bf16).

Each output record keeps the gold record's fields (ANLI: uid, round, premise, hypothesis, label, reason, prompt,
options; Dolly: uid, round, prompt, label null, options [], instruction, context, category) with ``target`` set to
the teacher's output text, and adds ``target_ids`` (the teacher's token ids, exactly as generated: ending in EOS when
it stopped within ``--max-new-tokens``, else the ``--max-new-tokens`` ids it had; never a banned id such as T5's pad
or OPT's, which the adapter's ``generate`` suppresses; GPT-2's pad is its EOS and stays allowed), ``gold_target``,
``sample`` (0 .. n-1), ``finished`` (it stopped at EOS) and, for a record with options, ``teacher_answer`` (the
option its text states, parsed as in evaluation, or None). ``meta.json`` holds the settings, the adapter's
``banned_ids``, the counts ``outputs`` and ``unfinished``, and ``unparsed`` / ``agree_with_gold`` (teacher answers
that match the gold label), which are null for data without options (Dolly).
``process_pseudo_data_seqkd.sh`` turns the folder into training shards whose targets are those ids.

Resuming: each process records every finished batch in ``OUT_DIR/../.{OUT_DIR name}.batches/rank{k}/``
(:class:`BatchRecord`), and sampling reseeds before every batch from (``--seed``, process, batch), so a run killed
midway and started again with the same command takes the recorded batches as they are and generates the rest,
drawing what the first run would have drawn: the output is byte for byte that of an uninterrupted run. The record
is removed once the output is written; one made with other settings (flags, process count, prompts, teacher
files) is discarded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .console import progress, quiet_libraries
from .data.anli import ROUNDS
from .data.indexed_dataset import ShardedIndexedDataset
from .data.process import ALL_ROUNDS
from .data.seq2seq import collate_prompts, read_meta
from .engine.distributed import device_for, init_distributed, stop_heartbeat
from .engine.gathering import parameters_held, shard_for_inference
from .evaluation import parse_answer, read_inference_config
from .faults import kill_point
from .folders import replace_folder
from .models import IGNORE_INDEX, adapter_for, check_tokenizer_matches, load_model, load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    # prog: under `python -m` argparse would call itself __main__.py in every error line
    p = argparse.ArgumentParser(prog="python -m minillm.generate_seqkd", allow_abbrev=False,
                                description="Generate SeqKD targets: the teacher's output for every prompt.")
    p.add_argument("--model-path", required=True, help="teacher checkpoint (hub name or folder)")
    p.add_argument("--data-dir", required=True,
                   help="processed gold data (output of process_data_anli.sh or process_data_dolly.sh)")
    p.add_argument("--out-dir", required=True, help="where {round}/{split}.jsonl and meta.json are written")
    p.add_argument("--rounds", nargs="+", help="rounds of --data-dir's meta.json (default: all but 'all')")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per generate call per process")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--decoding", default="greedy", choices=("greedy", "sample"))
    p.add_argument("--temperature", type=float, default=1.0, help="sampling only")
    p.add_argument("--top-k", type=int, default=0, help="sampling only; 0: no top-k cut")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling only; 1: no nucleus cut")
    p.add_argument("--num-samples", type=int, default=1, help="outputs per prompt (sampling only)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: the --deepspeed-config file's precision; without one bf16 on a GPU that has it, "
                   "else fp32")
    p.add_argument("--seed", type=int, default=42,
                   help="sampling seed; batch b of process k draws from a seed derived from (seed, k, b)")
    p.add_argument("--deepspeed-config", default=None,
                   help="a DeepSpeed JSON (configs/deepspeed/); ZeRO stage 3 shards the teacher over the processes "
                   "(ZeRO-3 inference); default: none, each process holds the whole teacher")
    p.add_argument("--allow-pickle-weights", action="store_true",
                   help="load a teacher whose weights are pickles (pytorch_model.bin, no safetensors): unpickling "
                   "can run code stored in the file, so only for a source you trust")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """:func:`build_parser`'s arguments, with the checks that need no files (the rounds are checked against the
    data folder in :func:`resolve_rounds`)."""
    p = build_parser()
    args = p.parse_args(argv)
    problems = []
    if args.batch_size < 1 or args.max_new_tokens < 1 or args.num_samples < 1:
        problems.append("--batch-size, --max-new-tokens and --num-samples must be >= 1")
    if args.decoding == "greedy" and args.num_samples != 1:
        problems.append(f"--num-samples {args.num_samples} needs --decoding sample (greedy has one output)")
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        problems.append("--temperature must be > 0, --top-p in (0, 1] and --top-k >= 0")
    if problems:
        p.error("; ".join(problems))
    return args


def resolve_rounds(requested, gold_meta: dict, data_dir: Path) -> list[str]:
    """``requested`` (None: every round) checked against the rounds of the data folder's ``meta.json`` less the
    concatenated ``all``, which has no records of its own (a folder whose meta.json lists no rounds is ANLI's, from
    before it did); a ValueError naming ``--rounds`` for one it does not hold."""
    available = [r for r in gold_meta.get("rounds", ROUNDS) if r != ALL_ROUNDS]
    unknown = [r for r in requested or [] if r not in available]
    if unknown:
        raise ValueError(f"--rounds {' '.join(unknown)}: not a round of --data-dir {data_dir} "
                         f"(its rounds: {' '.join(available)})")
    return list(requested or available)


def records_path(data_dir: Path, task: str, round_name: str, split: str) -> Path:
    """Where the records of the prompts of ``prompt/{round}/{split}`` are (module docstring)."""
    return data_dir / ("text" if task == "anli" else "prompt") / round_name / f"{split}.jsonl"


def load_prompts(data_dir: Path, rounds, split: str) -> list[tuple[dict, np.ndarray]]:
    """(gold record, prompt ids) of every example of ``split`` in ``rounds``, rounds in the order given."""
    task = read_meta(data_dir).get("task", "anli")
    items = []
    for round_name in rounds:
        text_path = records_path(data_dir, task, round_name, split)
        if not text_path.is_file():
            raise FileNotFoundError(f"{text_path}: missing; --data-dir must be a processed {task} folder with a "
                                    f"{split} split in round {round_name}")
        with open(text_path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        prompts = ShardedIndexedDataset(data_dir / "prompt" / round_name, split)
        if len(prompts) != len(records):
            raise ValueError(f"{text_path}: {len(records)} records but prompt/{round_name}/{split} holds "
                             f"{len(prompts)} items; process --data-dir again")
        items += [(record, prompts[i].astype(np.int64)) for i, record in enumerate(records)]
    return items


def file_stamps(folder: Path) -> dict:
    """Name -> [size, modification time in ns] of the files directly in ``folder`` ({} when it is not a local
    folder: a hub name), so that a record is not resumed over a teacher or data folder written since."""
    if not folder.is_dir():
        return {}
    return {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(folder.iterdir()) if f.is_file()}


class BatchRecord:
    """This process's finished ``generate`` batches on disk, so that a killed generation resumes where it stopped:
    ``FOLDER/rank{k}/settings.json`` (what the outputs depend on) and ``{b:06d}.json`` per finished batch b (its
    kept outputs), each written under a temporary name and renamed (the rename is the completion record). A record
    with other settings is discarded. :meth:`agree` sets ``resume_from``, the batches every process has finished
    (ZeRO-3 processes must make the same ``generate`` calls, so they go on from the same batch)."""

    def __init__(self, folder: Path, rank: int, settings: dict):
        self.root, self.folder, self.rank = folder, folder / f"rank{rank}", rank
        settings = json.loads(json.dumps(settings))  # as read back from disk (lists, string keys)
        saved_path = self.folder / "settings.json"
        saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
        self.discarded = saved is not None and saved != settings
        if saved != settings:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            self._write(saved_path, settings)
        self.seed = settings["seed"]
        self.finished = 0
        while self._path(self.finished).is_file():
            self.finished += 1
        self.resume_from = self.finished

    def _path(self, batch: int) -> Path:
        return self.folder / f"{batch:06d}.json"

    @staticmethod
    def _write(path: Path, obj) -> None:
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(obj))
        os.replace(temporary, path)

    def agree(self, device) -> None:
        """``resume_from``: the fewest batches any process has finished (a collective)."""
        if dist.get_world_size() > 1:
            finished = torch.tensor([self.finished], device=device)
            dist.all_reduce(finished, op=dist.ReduceOp.MIN)
            self.resume_from = int(finished)

    def outputs(self, batch: int) -> dict | None:
        """Batch ``batch``'s recorded outputs, or None when it is to be generated."""
        if batch >= self.resume_from:
            return None
        return {int(i): samples for i, samples in json.loads(self._path(batch).read_text()).items()}

    def record(self, batch: int, outputs: dict) -> None:
        self._write(self._path(batch), outputs)

    def batch_seed(self, batch: int) -> int:
        return int(np.random.default_rng([self.seed, self.rank, batch]).integers(2**62))

    def remove(self) -> None:
        """Drop this process's record once the output is written (and the common folder with the last one)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:  # another process's record is still there; it removes the folder
            pass


def generate_share(model, adapter, prompts: list[np.ndarray], indices: list[int], args, device, progress,
                   padding: int = 0, synced_gpus: bool = False, record: BatchRecord | None = None) -> dict:
    """Generated ids (lists, -100 padding dropped) of ``prompts[i]`` for ``i`` in ``indices``: ``{i: [ids per
    sample]}``. Longest prompts first, so that batches hold similar lengths and memory peaks at the start.
    ``padding`` more prompts (repeats of ``indices[0]``, or of prompt 0) are generated and not kept, so that shares
    of unequal size make the same calls; ``synced_gpus`` goes to ``generate`` (ZeRO-3: every process decodes as
    long as the longest). With a ``record``, its finished batches are taken as recorded, every other batch is
    sampled after reseeding from (seed, process, batch) and recorded."""
    filler = indices[0] if indices else 0
    order = sorted([(i, True) for i in indices] + [(filler, False)] * padding, key=lambda item: -len(prompts[item[0]]))
    decoding = dict(do_sample=False) if args.decoding == "greedy" else dict(
        do_sample=True, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
        num_return_sequences=args.num_samples)
    if synced_gpus:
        decoding["synced_gpus"] = True
    outputs = {}
    for number, start in enumerate(range(0, len(order), args.batch_size)):
        batch = order[start:start + args.batch_size]
        recorded = record.outputs(number) if record is not None else None
        if recorded is None:
            if record is not None:
                torch.manual_seed(record.batch_seed(number))
            encoder_side = collate_prompts([prompts[i] for i, _ in batch], adapter.pad_token_id)
            targets = adapter.generate(model, encoder_side["input_ids"].to(device),
                                       encoder_side["attention_mask"].to(device), args.max_new_tokens,
                                       **decoding).cpu()
            targets = targets.view(len(batch), args.num_samples, -1)
            recorded = {i: [[int(t) for t in sample if t != IGNORE_INDEX] for sample in targets[row]]
                        for row, (i, kept) in enumerate(batch) if kept}
            if record is not None:
                record.record(number, recorded)
                kill_point("seqkd")
        outputs.update(recorded)
        progress.update(sum(kept for _, kept in batch))
    return outputs


def output_record(record: dict, ids: list[int], sample: int, tokenizer, eos_token_id: int) -> dict:
    """The gold ``record`` with the teacher's output (module docstring); ``teacher_answer`` only with options."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    out = {key: value for key, value in record.items() if key != "target"}
    out.update(target=text, target_ids=ids, gold_target=record["target"], sample=sample,
               finished=bool(ids) and ids[-1] == eos_token_id)
    if record["options"]:
        out["teacher_answer"] = parse_answer(text, record["options"])
    return out


def write_outputs(out_dir: Path, items, outputs: dict, split: str, meta: dict, tokenizer, eos_token_id: int) -> dict:
    """Rank 0: the records per round, then meta.json, in a temporary folder renamed into place
    (:func:`minillm.folders.replace_folder`: the previous output is moved aside first and removed last).
    Returns meta with the figures added (counts, unfinished outputs, and for records with options the unparsed
    answers and those that match the gold label; None for data without options). An OSError leaves no temporary
    folder behind."""
    staging = out_dir.parent / f".{out_dir.name}.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        meta = _write_staging(staging, items, outputs, split, meta, tokenizer, eos_token_id)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_folder(staging, out_dir)
    return meta


def _write_staging(staging: Path, items, outputs: dict, split: str, meta: dict, tokenizer, eos_token_id: int) -> dict:
    """``staging/{round}/{split}.jsonl`` and ``staging/meta.json``; returns meta with the counts added."""
    files, stats = {}, {"outputs": 0, "unfinished": 0, "unparsed": 0, "agree_with_gold": 0}
    with_options = 0
    for i, (record, _) in enumerate(items):
        if record["round"] not in files:
            (staging / record["round"]).mkdir(parents=True)
            files[record["round"]] = open(staging / record["round"] / f"{split}.jsonl", "w", encoding="utf-8")
        for sample, ids in enumerate(outputs[i]):
            out = output_record(record, ids, sample, tokenizer, eos_token_id)
            files[record["round"]].write(json.dumps(out, ensure_ascii=False) + "\n")
            stats["outputs"] += 1
            stats["unfinished"] += not out["finished"]
            if "teacher_answer" in out:
                with_options += 1
                stats["unparsed"] += out["teacher_answer"] is None
                stats["agree_with_gold"] += out["teacher_answer"] == record["label"]
    for f in files.values():
        f.close()
    if not with_options:
        stats.update(unparsed=None, agree_with_gold=None)
    meta = {**meta, **stats}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def shut_down() -> None:
    """Before the interpreter exits, not in its exit-time teardown: stop the heartbeat thread (it must not be inside a
    store call while the interpreter stops threads) and destroy the process group."""
    stop_heartbeat()
    dist.destroy_process_group()


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()  # before deepspeed is imported (init_distributed) and the teacher is loaded
    rank, world_size, local_rank = init_distributed()
    device = device_for(local_rank)
    try:
        data_dir, out_dir = Path(args.data_dir), Path(args.out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out-dir {out_dir}: exists and is not a folder")
        out_dir.parent.mkdir(parents=True, exist_ok=True)  # before the (long) generation: fails here, not after
        if not os.access(out_dir.parent, os.W_OK):
            raise ValueError(f"--out-dir {out_dir}: {out_dir.parent} is not writable")
        gold_meta = read_meta(data_dir)
        rounds = resolve_rounds(args.rounds, gold_meta, data_dir)
        items = load_prompts(data_dir, rounds, args.split)
        inference = None if args.deepspeed_config is None else read_inference_config(args.deepspeed_config)
        dtype = args.dtype
        if dtype == "auto" and inference is not None:
            dtype = inference["precision"]
            if dtype not in ("bf16", "fp32"):
                raise ValueError(f"--deepspeed-config {args.deepspeed_config}: {dtype} precision; generation runs "
                                 "in bf16 or fp32: pass --dtype, or a *_bf16.json / *_fp32.json file")
        elif dtype == "auto":
            # A V100 emulates bf16 (is_bf16_supported() is True there by default): only native bf16 counts
            native_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
            dtype = "bf16" if native_bf16 else "fp32"
        sharded = inference is not None and inference["zero_stage"] == 3
        # the library's attention and error messages, as reported below
        model = load_model(args.model_path, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
                           attn_implementation=None, flag=None, allow_pickle=args.allow_pickle_weights).eval()
        if model.config.vocab_size < gold_meta["vocab_size"]:
            raise ValueError(f"--model-path {args.model_path}: vocabulary of {model.config.vocab_size} tokens, but "
                             f"--data-dir {data_dir} was tokenised with {gold_meta['vocab_size']}")
        tokenizer = load_tokenizer(gold_meta["tokenizer"], flag=None)
        # the data, its tokenizer and the model agree (the training's check)
        check_tokenizer_matches(tokenizer, model, gold_meta, tokenizer_flag="tokenizer",
                                tokenizer_path=gold_meta["tokenizer"], model_flag="--model-path",
                                model_path=args.model_path, data_dir=data_dir)
        adapter = adapter_for(model, tokenizer)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"generate_seqkd: error: {e}", file=sys.stderr)
        shut_down()
        return 2

    engine, sharding = None, None
    if sharded:
        engine = shard_for_inference(model, inference["zero_optimization"])  # kept while the teacher generates
        model = engine.module
        total, held = parameters_held(model)
        sharding = {"zero_stage": 3, "parameters": total, "held_per_process": [None] * world_size}
        dist.all_gather_object(sharding["held_per_process"], held)
    else:
        model = model.to(device)
    mine = list(range(rank, len(items), world_size))
    padding = -(-len(items) // world_size) - len(mine) if sharded else 0  # ZeRO-3: equal calls on every process
    if rank == 0:
        print(f"generate_seqkd: {len(items)} prompts ({' '.join(rounds)}/{args.split}) over {world_size} "
              f"process(es), {args.decoding}, {args.num_samples} output(s) each, {dtype}, teacher {args.model_path}",
              flush=True)
    record = BatchRecord(out_dir.parent / f".{out_dir.name}.batches", rank,
                         {**vars(args), "processes": world_size, "prompts": len(items),
                          "teacher_files": file_stamps(Path(args.model_path)),
                          "data_files": file_stamps(data_dir)})
    record.agree(device)
    if record.discarded:
        print(f"generate_seqkd: {record.folder} held batches made with other settings; discarded", flush=True)
    if rank == 0 and record.resume_from:
        print(f"generate_seqkd: resuming: the first {record.resume_from} batches of each process are recorded in "
              f"{record.root}", flush=True)
    started = time.perf_counter()
    status = 0
    if rank == 0 and sharding is not None:
        print(f"generate_seqkd: ZeRO-3 over {world_size} processes, each holding at most "
              f"{max(sharding['held_per_process']):,} of the teacher's {sharding['parameters']:,} parameters",
              flush=True)
    with progress(len(mine), "generate (process 0)", enabled=rank == 0, unit="prompts") as report:
        outputs = generate_share(model, adapter, [p for _, p in items], mine, args, device, report,
                                 padding=padding, synced_gpus=sharded and world_size > 1, record=record)
    gathered = [None] * world_size
    if world_size > 1:
        dist.all_gather_object(gathered, outputs)
    else:
        gathered = [outputs]
    if rank == 0:
        merged = {}
        for part in gathered:
            merged.update(part)
        if sorted(merged) != list(range(len(items))) or sum(map(len, gathered)) != len(items):
            raise RuntimeError("generate_seqkd: the processes' outputs do not cover every prompt exactly once")
        meta = {"teacher": args.model_path, "data_dir": str(data_dir), "task": gold_meta.get("task", "anli"),
                "split": args.split, "rounds": rounds, "tokenizer": gold_meta["tokenizer"],
                "vocab_size": gold_meta["vocab_size"], "banned_ids": list(adapter.banned_ids),
                "template": gold_meta["template"], "target": gold_meta["target"], "decoding": args.decoding,
                "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "dtype": dtype,
                "seed": args.seed, "processes": world_size, "prompts": len(items),
                "prompts_per_process": [len(part) for part in gathered],
                "deepspeed_config": args.deepspeed_config, "sharding": sharding}
        try:
            meta = write_outputs(out_dir, items, merged, args.split, meta, tokenizer, adapter.eos_token_id)
        except OSError as e:  # a full disk, a folder made read-only meanwhile
            print(f"generate_seqkd: error: --out-dir {out_dir}: cannot write the outputs ({e.strerror or e})",
                  file=sys.stderr)
            status = 2
        else:
            seconds = time.perf_counter() - started
            answers = "" if meta["agree_with_gold"] is None else (
                f", {meta['unparsed']} unparsed, teacher answer = gold label for "
                f"{100.0 * meta['agree_with_gold'] / meta['outputs']:.1f}%")
            print(f"generate_seqkd: {meta['outputs']} outputs in {seconds:.1f}s ({len(items) / seconds:.1f} "
                  f"prompts/s); {meta['unfinished']} without EOS{answers} -> {out_dir}", flush=True)
    if world_size > 1:  # every rank waits for rank 0's writing, failed or not, and learns how it went
        written = [status]
        dist.broadcast_object_list(written, src=0)
        status = written[0]
    if status == 0:
        record.remove()
    shut_down()
    return status


if __name__ == "__main__":
    sys.exit(main())
