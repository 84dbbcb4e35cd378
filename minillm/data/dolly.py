"""Dolly instruction data (MiniLLM's training set D) -> normalised text -> memory-mapped token shards.

Input: JSON lines with either databricks-dolly-15k's fields (``instruction``, ``context``, ``response``, optional
``category``) or MiniLLM's ``raw.jsonl`` fields (``instruction``, ``input``, ``output``). ``instruction`` and the
response must be non-empty strings; the context may be empty or absent. Fields are stripped of surrounding
whitespace (MiniLLM does not strip; stripping keeps a response that starts with a line break from merging with the
prompt's last one). Sources: a local file, or ``databricks/databricks-dolly-15k`` through ``datasets`` (:func:`
download_dolly`), or the offline sample that :func:`sample_rows` generates.

Splits, MiniLLM's rule (no shuffling, no seed): the first ``dev_num`` rows (1000) are ``dev`` (MiniLLM's
``valid``, which selects checkpoints), the next ``test_num`` rows (500) are ``test``, the rest ``train``. MiniLLM's
test set (DollyEval, 500 examples) ships as a separate file (``data/dolly/valid.jsonl``), so ``test`` here is the
same size but not the same examples. With MiniLLM's ``raw.jsonl``, ``test_num=0`` reproduces its train/valid cut.

Stage ``text`` writes ``OUT_DIR/text/dolly/{train,dev,test}.jsonl`` (the fields above plus ``uid``, ``round``,
``prompt`` and ``target``) and ``text/meta.json``. The prompt is MiniLLM's template (Alpaca's,
:data:`~minillm.data.templates.INSTRUCTION_TEMPLATES`), with or without its input part; the target is the response.

Stage ``shards`` writes the shared format (:mod:`minillm.data.process`) under the round name ``dolly``:
``full/dolly/{split}_{k}.bin/.idx`` (prompt ids, SEP, response ids ending in EOS), ``prompt/dolly/...`` (prompt
ids) and ``{split}.jsonl`` beside both (uid, round, prompt, target, instruction, context, category, and
``label``: null, ``options``: [] so that every processed folder's records have the same keys). Prompts end in EOS
for seq2seq models and not for causal ones (:func:`~minillm.data.process.resolve_model_type`). As in MiniLLM, an
example whose prompt is over ``max_prompt_length`` tokens (256) is dropped (after the split, so ``dev`` may hold
fewer than ``dev_num``), and responses are neither cut nor dropped: training cuts them to its target length.
``meta.json`` records ``task: "dolly"``, ``target: "response"`` (judged by Rouge-L), the template and the counts.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from ..folders import replace_folder
from .anli import DataError, read_jsonl_objects
from .process import (TokenizedSplit, choose_dtype, encode_prompts, encode_targets, fresh_staging, load_tokenizer,
                      publish, resolve_model_type, split_summary, staged_text_dir, tokenizer_meta, write_pairs)
from .templates import get_instruction_template

ROUND = "dolly"
SPLITS = ("train", "dev", "test")
HF_NAME = "databricks/databricks-dolly-15k"
DOWNLOAD_FILE = "databricks-dolly-15k.jsonl"
MINILLM_RAW_FILE = "raw.jsonl"
# Each field of a record: the names accepted for it (databricks-dolly-15k's first, then MiniLLM's raw.jsonl's).
FIELD_NAMES = {"instruction": ("instruction",), "context": ("context", "input"), "response": ("response", "output")}


def log(message: str) -> None:
    print(f"[process_data_dolly] {message}", flush=True)


def _field(obj: dict, field: str, where: str, required: bool) -> str:
    names = [name for name in FIELD_NAMES[field] if name in obj]
    if len(names) > 1:
        raise DataError(f"{where}: fields {' and '.join(names)} both given; keep one")
    if not names:
        if required:
            alias = f" (or {FIELD_NAMES[field][1]})" if len(FIELD_NAMES[field]) > 1 else ""
            raise DataError(f"{where}: missing field {FIELD_NAMES[field][0]}{alias}")
        return ""
    value = obj[names[0]]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {names[0]} is {value!r}, expected a string")
    if required and not value.strip():
        raise DataError(f"{where}: field {names[0]} is empty; every example needs a non-empty {names[0]}")
    return value.strip()


def read_dolly(path: Path) -> list[dict]:
    """Every record of a Dolly JSON-lines file as ``{uid, instruction, context, response, category}``; the uid is
    ``dolly-{row}`` (row counted from 0 over non-blank lines). A problem raises :class:`DataError` naming the file,
    line and field."""
    if not path.is_file():
        raise DataError(f"{path}: Dolly file not found; set RAW_FILE to a JSON-lines file")
    rows = []
    for where, obj in read_jsonl_objects(path):
        category = obj.get("category", "")
        if not isinstance(category, str):
            raise DataError(f"{where}: field category is {category!r}, expected a string")
        rows.append({"uid": f"dolly-{len(rows):05d}", "instruction": _field(obj, "instruction", where, True),
                     "context": _field(obj, "context", where, False),
                     "response": _field(obj, "response", where, True), "category": category})
    if not rows:
        raise DataError(f"{path}: no examples")
    return rows


def split_rows(rows: list[dict], dev_num: int, test_num: int, source: Path) -> dict[str, list[dict]]:
    """MiniLLM's cut: rows [0, dev_num) are dev, the next test_num test, the rest train (at least one)."""
    if dev_num < 0 or test_num < 0:
        raise DataError(f"DEV_NUM={dev_num}, TEST_NUM={test_num}: must be >= 0")
    if len(rows) <= dev_num + test_num:
        raise DataError(f"{source}: {len(rows)} examples leave none for train after DEV_NUM={dev_num} and "
                        f"TEST_NUM={test_num}; lower them")
    return {"train": rows[dev_num + test_num:], "dev": rows[:dev_num], "test": rows[dev_num:dev_num + test_num]}


def build_dolly_text(raw_file: Path, out_dir: Path, template_name: str = "alpaca", dev_num: int = 1000,
                     test_num: int = 500, publish_text: bool = True) -> dict:
    """``raw_file`` -> ``out_dir/text/dolly/{split}.jsonl``; returns the examples per split. With
    ``publish_text=False`` the text stays in :func:`~minillm.data.process.staged_text_dir` for
    :func:`build_dolly_shards` to use and publish with the shards."""
    try:
        template = get_instruction_template(template_name)
    except ValueError as err:
        raise DataError(f"TEMPLATE={template_name}: {err}") from None
    splits = split_rows(read_dolly(raw_file), dev_num, test_num, raw_file)  # validates before writing anything
    staging = staged_text_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    (staging / ROUND).mkdir(parents=True)
    counts = {}
    for split, rows in splits.items():
        with open(staging / ROUND / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                record = {**row, "round": ROUND, "prompt": template.prompt(row["instruction"], row["context"]),
                          "target": row["response"]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[split] = len(rows)
    meta = {"task": "dolly", "raw_file": str(raw_file), "template": template_name, "target": "response",
            "dev_num": dev_num, "test_num": test_num, "examples": counts}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    if publish_text:
        replace_folder(staging, out_dir / "text")
    return counts


def _records(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl_objects(path)]


def build_dolly_shards(out_dir: Path, tokenizer_name: str, max_prompt_length: int = 256, dtype: str = "auto",
                       shard_size: int = 0, model_type: str = "auto", staged_text: bool = False,
                       template_name: str | None = None) -> dict:
    """``out_dir/text`` -> ``out_dir/{full,prompt}/dolly/`` and ``meta.json`` (returned). With ``staged_text``
    the text comes from a text stage run with ``publish_text=False`` and is published with the shards."""
    text_dir = staged_text_dir(out_dir) if staged_text else out_dir / "text"
    meta_path = text_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; run the text stage first (STAGE=text or STAGE=all)")
    text_meta = json.loads(meta_path.read_text())
    if text_meta.get("task") != "dolly":
        raise DataError(f"{meta_path}: task {text_meta.get('task', 'anli')!r}, not dolly; OUT_DIR holds other data")
    if template_name is not None and template_name != text_meta["template"]:
        raise DataError(f"TEMPLATE={template_name} but {text_dir} was built with {text_meta['template']}; "
                        "rerun with STAGE=all")
    if max_prompt_length < 1:
        raise DataError(f"MAX_PROMPT_LENGTH={max_prompt_length}: must be >= 1")

    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name)
    np_dtype = choose_dtype(len(tokenizer), dtype)
    model_type = resolve_model_type(tokenizer, model_type)
    meta = {**tokenizer_meta(tokenizer_name, tokenizer, np_dtype, model_type), "task": "dolly", "rounds": [ROUND],
            "template": text_meta["template"], "target": "response", "raw_file": text_meta["raw_file"],
            "dev_num": text_meta["dev_num"], "test_num": text_meta["test_num"],
            "max_prompt_length": max_prompt_length, "prompts_dropped": {}, "targets_encoded_alone": 0,
            "shard_size": shard_size, "splits": {}}
    log(f"tokenizer {tokenizer_name}: {len(tokenizer)} tokens; dtype {np_dtype.name}, separator {meta['separator']}, "
        f"{model_type} model")
    staging = fresh_staging(out_dir)
    for split in SPLITS:
        path = text_dir / ROUND / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: missing; rerun the text stage")
        records = _records(path)
        prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in records], model_type)
        kept = [i for i, ids in enumerate(prompt_ids) if len(ids) <= max_prompt_length]
        records, prompt_ids = [records[i] for i in kept], [prompt_ids[i] for i in kept]
        target_ids, alone = encode_targets(tokenizer, [r["prompt"] for r in records], prompt_ids,
                                           [r["target"] for r in records], model_type)
        tokenized = TokenizedSplit.from_ids(records, prompt_ids, target_ids, np_dtype)
        write_pairs(staging, ROUND, split, tokenized, meta["separator"], shard_size)
        jsonl = staging / "full" / ROUND / f"{split}.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"uid": r["uid"], "round": ROUND, "prompt": r["prompt"], "target": r["target"],
                                    "label": None, "options": [], "instruction": r["instruction"],
                                    "context": r["context"], "category": r["category"]}, ensure_ascii=False) + "\n")
        shutil.copyfile(jsonl, staging / "prompt" / ROUND / f"{split}.jsonl")
        dropped = text_meta["examples"][split] - len(records)
        meta["prompts_dropped"][split] = dropped
        meta["targets_encoded_alone"] += alone
        meta["splits"][f"{ROUND}/{split}"] = split_summary(tokenized)
        log(f"{ROUND}/{split}: {len(records)} examples, {dropped} dropped with prompts over {max_prompt_length} "
            "tokens")
    publish(out_dir, staging, meta, text_dir if staged_text else None)
    log(f"wrote {out_dir} in {time.perf_counter() - started:.1f}s")
    return meta


def download_dolly(dest: Path) -> Path:
    """Download ``databricks/databricks-dolly-15k`` into ``dest/databricks-dolly-15k.jsonl`` (its own field names),
    written under a temporary name and renamed when complete. A failure (no ``datasets``, no network) raises
    :class:`DataError`."""
    out = dest / DOWNLOAD_FILE
    staging = dest / f".{DOWNLOAD_FILE}.tmp"
    try:
        import datasets

        rows = datasets.load_dataset(HF_NAME, split="train")
        dest.mkdir(parents=True, exist_ok=True)
        with open(staging, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: row[k] for k in ("instruction", "context", "response", "category")},
                                   ensure_ascii=False) + "\n")
    except Exception as err:  # ImportError, hub and network errors, disk errors: all one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        staging.unlink(missing_ok=True)
        raise DataError(f"downloading {HF_NAME} into {dest} failed ({type(err).__name__}: {message}); "
                        "pip install datasets and go online, or set RAW_FILE to a local copy") from None
    os.replace(staging, out)
    return out


# ----------------------------------------------------------------------------------------- offline sample

_SYLLABLES = ("bar", "wen", "to", "lin", "ska", "mor", "ri", "dal", "ven", "quo", "ste", "an", "el", "vik", "su")
_SPECIAL_TOWNS = ("Ærøby", "São Velim", "Kőhalom", "Saint-Aubrac", "Llanfor", "Ojo del Río")
_REGIONS = ("northern", "southern", "coastal", "mountain", "lake", "river delta")
_KNOWN_FOR = ("wool market", "glass works", "spring festival", "stone bridge", "apple orchards", "clock tower",
              "salt mines", "choir", "cheese", "shipyard")
_PROFESSIONS = ("painter", "engineer", "botanist", "composer", "cartographer", "architect", "chemist", "poet")
_NATIONALITIES = ("Danish", "Portuguese", "Hungarian", "French", "Welsh", "Chilean")
_FRUITS = ("apple", "pear", "plum", "cherry", "mango", "fig", "apricot", "lime")
_VEGETABLES = ("carrot", "leek", "cabbage", "turnip", "spinach", "onion", "celery", "pea")
_ACTIVITIES = ("walk along the {river}", "visit the {known_for}", "rent a bicycle", "try the local bakery",
               "climb the hill above {town}", "take a boat trip", "browse the Saturday market", "see the old chapel",
               "swim in the {river}", "join a guided tour")
_CATEGORIES = ("closed_qa", "information_extraction", "summarization", "classification", "brainstorming",
               "open_qa", "creative_writing", "general_qa")


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(parts)).capitalize()


def _town(rng: random.Random) -> dict:
    town = rng.choice(_SPECIAL_TOWNS) if rng.random() < 0.2 else _name(rng, rng.randint(2, 3))
    return {"town": town, "river": _name(rng, 2), "region": rng.choice(_REGIONS), "year": rng.randint(900, 1890),
            "population": rng.randint(800, 250000), "known_for": rng.choice(_KNOWN_FOR)}


def _town_text(t: dict) -> str:
    return (f"{t['town']} is a town in the {t['region']} region, founded in {t['year']}. It lies on the {t['river']} "
            f"river and has about {t['population']:,} inhabitants. The town is known for its {t['known_for']}.")


def _sample_row(rng: random.Random, category: str) -> dict:
    """One instruction/context/response row of ``category``; the response follows from the instruction and
    context alone."""
    t = _town(rng)
    if category == "closed_qa":
        question, answer = rng.choice((
            (f"When was {t['town']} founded?", f"{t['town']} was founded in {t['year']}."),
            (f"Which river flows through {t['town']}?", f"The {t['river']} river."),
            (f"How many people live in {t['town']}?", f"About {t['population']:,} people live in {t['town']}."),
        ))
        return {"instruction": question, "context": _town_text(t), "response": answer}
    if category == "information_extraction":
        name = f"{_name(rng, 2)} {_name(rng, 3)}"
        born = rng.randint(1700, 1950)
        died = born + rng.randint(30, 95)
        job, nationality = rng.choice(_PROFESSIONS), rng.choice(_NATIONALITIES)
        context = (f"{name} ({born}–{died}) was a {nationality} {job} who spent most of their life in {t['town']}. "
                   f"Their \"{_name(rng, 2)} notebooks\" are kept in the town archive.\n\n"
                   f"{_town_text(t)}")
        return {"instruction": f"Extract the profession and the years of birth and death of {name}. Answer as a list.",
                "context": context, "response": f"- Profession: {job}\n- Born: {born}\n- Died: {died}"}
    if category == "summarization":
        context = (_town_text(t) + f" Every year visitors come for the {rng.choice(_KNOWN_FOR)} as well. Its "
                   f"oldest building dates from {t['year'] + rng.randint(5, 120)}.")
        return {"instruction": f"Summarize this paragraph about {t['town']} in one sentence.", "context": context,
                "response": f"{t['town']}, founded in {t['year']} on the {t['river']} river, is a {t['region']} "
                            f"town of about {t['population']:,} people known for its {t['known_for']}."}
    if category == "classification":
        items = rng.sample(_FRUITS, rng.randint(1, 3)) + rng.sample(_VEGETABLES, rng.randint(1, 3))
        rng.shuffle(items)
        return {"instruction": "Classify each of the following as a fruit or a vegetable: " + ", ".join(items) + ".",
                "context": "",
                "response": "\n".join(f"{i.capitalize()}: {'fruit' if i in _FRUITS else 'vegetable'}" for i in items)}
    if category == "brainstorming":
        count = rng.randint(2, 5)
        ideas = [a.format(**t) for a in rng.sample(_ACTIVITIES, count)]
        return {"instruction": f"Give me {count} ideas for a weekend in {t['town']}.", "context": "",
                "response": "\n".join(f"{k}. {idea.capitalize()}" for k, idea in enumerate(ideas, 1))}
    if category == "open_qa":
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        question, answer = rng.choice((
            (f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
            (f"How many minutes are there in {a % 48 + 1} hours?",
             f"There are {(a % 48 + 1) * 60} minutes in {a % 48 + 1} hours."),
        ))
        return {"instruction": question, "context": "", "response": answer}
    if category == "creative_writing":
        return {"instruction": f"Write a short poem about the {t['river']} river.", "context": "",
                "response": f"The {t['river']} runs slow past {t['town']}'s door,\nit carries the {t['known_for']} "
                            f"and more;\nsince {t['year']} it has known the way,\nand it will still be there "
                            f"another day."}
    numbers = rng.sample(range(-50, 1000), rng.randint(3, 7))
    return {"instruction": "Sort these numbers from smallest to largest: " + ", ".join(map(str, numbers)),
            "context": "", "response": ", ".join(map(str, sorted(numbers)))}


def sample_rows(count: int = 300, seed: int = 0) -> list[dict]:
    """``count`` deterministic Dolly-format rows (databricks field names) generated from templates over invented
    towns, people and numbers (no Dolly text): eight of Dolly's categories, about half with a context, responses of
    one line to several, some non-ASCII names and quotes."""
    if count < 1:
        raise ValueError(f"count must be >= 1 (got {count})")
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        category = rng.choice(_CATEGORIES)
        rows.append({**_sample_row(rng, category), "category": category})
    return rows


def write_jsonl_atomically(path: Path, rows: list[dict]) -> None:
    """``rows`` as JSON lines in ``path``, written under a temporary name and renamed when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    os.replace(tmp, path)
