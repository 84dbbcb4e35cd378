"""Reading raw ANLI-style data in either of its two published layouts, with validation.

Hugging Face layout (``facebook/anli``): ``[plain_text/]{split}_r{k}-*.parquet`` with columns uid, premise,
hypothesis, label (0 entailment, 1 neutral, 2 contradiction) and reason.
Original release layout: ``R{k}/{split}.jsonl`` with fields uid, context, hypothesis, label (e / n / c) and reason.

Both are normalised to one record per example: ``{uid, round, split, premise, hypothesis, label, reason}`` with an
integer label. Every problem raises :class:`DataError` with one line naming the file and field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

ROUNDS = ("r1", "r2", "r3")
SPLITS = ("train", "dev", "test")
ORIGINAL_LABELS = {"e": 0, "n": 1, "c": 2}
HF_COLUMNS = ("uid", "premise", "hypothesis", "label", "reason")
ORIGINAL_FIELDS = ("uid", "context", "hypothesis", "label")  # reason may be absent in older releases


class DataError(ValueError):
    """Bad input data; the message is one line that names the file and the field."""


def detect_layout(raw_dir: Path) -> tuple[str, Path]:
    """Return ("hf", folder with the parquet files) or ("original", folder with R1/R2/R3)."""
    if not raw_dir.is_dir():
        raise DataError(f"{raw_dir}: raw data folder not found; set RAW_DIR to an ANLI folder")
    for candidate in (raw_dir / "plain_text", raw_dir):
        if any(candidate.glob("*_r[123]-*.parquet")):
            return "hf", candidate
    for candidate in (raw_dir, raw_dir / "original_v1.0", raw_dir / "anli_v1.0"):
        if any((candidate / f"R{k}").is_dir() for k in (1, 2, 3)):
            return "original", candidate
    raise DataError(
        f"{raw_dir}: no ANLI data found; expected plain_text/{{train,dev,test}}_r{{1,2,3}}-*.parquet "
        "(Hugging Face layout) or R{1,2,3}/{train,dev,test}.jsonl (original layout)"
    )


def _hf_rows(files: list[Path]) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: unreadable parquet file ({type(err).__name__}: {err})") from None
        missing = [c for c in HF_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(HF_COLUMNS)}")
        columns = {c: table.column(c).to_pylist() for c in HF_COLUMNS}
        for i in range(table.num_rows):
            label = columns["label"][i]
            if type(label) is not int or label not in (0, 1, 2):  # not 1.0, not True: an integer column
                raise DataError(f"{path}: row {i} (uid {columns['uid'][i]}): field label is {label!r}, expected the "
                                "integer 0, 1 or 2")
            rows.append({"uid": columns["uid"][i], "premise": columns["premise"][i],
                         "hypothesis": columns["hypothesis"][i], "label": label,
                         "reason": columns["reason"][i], "_where": f"{path}: row {i}"})
    return rows


def _original_rows(path: Path) -> list[dict]:
    rows = []
    for where, obj in read_jsonl_objects(path):
        missing = [k for k in ORIGINAL_FIELDS if k not in obj]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(obj["label"], str) or obj["label"] not in ORIGINAL_LABELS:
            raise DataError(f"{where}: field label is {obj['label']!r}, expected one of e, n, c")
        rows.append({"uid": obj["uid"], "premise": obj["context"], "hypothesis": obj["hypothesis"],
                     "label": ORIGINAL_LABELS[obj["label"]], "reason": obj.get("reason"), "_where": where})
    return rows


def read_jsonl_objects(path: Path):
    """``("path:line", object)`` for every non-blank line of a JSON-lines file; a line that is not UTF-8, not JSON
    or not a JSON object raises :class:`DataError` naming the file and line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: not UTF-8 text; save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: a JSON {type(obj).__name__}, expected an object with named fields")
            yield where, obj


def _normalise(rows: list[dict], round_name: str, split: str, source: str) -> list[dict]:
    """Check texts and uids, strip whitespace, and drop the location bookkeeping."""
    seen: set[str] = set()
    out = []
    for row in rows:
        where = row.pop("_where")
        for field in ("uid", "premise", "hypothesis"):
            value = row[field]
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field {field} is {'empty' if isinstance(value, str) else repr(value)}; "
                                f"every example needs a non-empty {field} string")
        uid = row["uid"].strip()
        if uid in seen:
            raise DataError(f"{source}: duplicate uid {uid!r} in split {split} of round {round_name}")
        seen.add(uid)
        reason = row["reason"] if isinstance(row["reason"], str) else ""
        out.append({"uid": uid, "round": round_name, "split": split, "premise": row["premise"].strip(),
                    "hypothesis": row["hypothesis"].strip(), "label": row["label"], "reason": reason.strip()})
    return out


def load_raw(raw_dir: str | Path) -> dict[tuple[str, str], list[dict]]:
    """Every (round, split) present under ``raw_dir``, as lists of normalised records."""
    layout, root = detect_layout(Path(raw_dir))
    data = {}
    for k, round_name in enumerate(ROUNDS, 1):
        for split in SPLITS:
            if layout == "hf":
                files = sorted(root.glob(f"{split}_r{k}-*.parquet"))
                if not files:
                    continue
                rows, source = _hf_rows(files), ", ".join(map(str, files))
            else:
                path = root / f"R{k}" / f"{split}.jsonl"
                if not path.is_file():
                    continue
                rows, source = _original_rows(path), str(path)
            if not rows:
                raise DataError(f"{source}: no examples in split {split} of round {round_name}")
            data[(round_name, split)] = _normalise(rows, round_name, split, source)
    if not data:
        raise DataError(f"{root}: no {layout}-layout split files found for rounds r1-r3")
    return data


def download_anli(dest: Path) -> Path:
    """Download ``facebook/anli`` from the Hugging Face hub into ``dest/plain_text`` (Hugging Face layout). The
    files go to ``dest/.plain_text.tmp`` first, renamed when every split is written: an interrupted download never
    looks like data. A failure (no ``datasets`` package, no network) raises :class:`DataError`."""
    out = dest / "plain_text"
    staging = dest / ".plain_text.tmp"
    try:
        import datasets

        splits = datasets.load_dataset("facebook/anli")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name, split in splits.items():
            if re.fullmatch(r"(train|dev|test)_r[123]", name):
                split.to_parquet(str(staging / f"{name}-00000-of-00001.parquet"))
    except Exception as err:  # ImportError, hub and network errors, disk errors: all one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"downloading facebook/anli into {dest} failed ({type(err).__name__}: {message}); "
                        "pip install datasets and go online, or set RAW_DIR to a local copy") from None
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    return dest
