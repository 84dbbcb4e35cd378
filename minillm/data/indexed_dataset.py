"""Memory-mapped indexed datasets in the Megatron/fairseq ``MMIDIDX`` format (the format MiniLLM reads).

A dataset ``PREFIX`` is two files:

``PREFIX.bin``
    The C-order concatenation of every item's token array in ``dtype``; no header.
``PREFIX.idx`` (little-endian)
    ``b"MMIDIDX\\x00\\x00"`` (9 bytes), version ``uint64 = 1``, dtype code ``uint8``, item count ``uint64``,
    document count ``uint64``, ``sizes int32[count]`` (tokens per item), ``pointers int64[count]`` (byte offset
    of each item in ``.bin``), ``doc_idx int64[doc_count]`` (always ``[0]`` here).

Shards of one split are numbered ``{split}_0``, ``{split}_1``, ...; :class:`ShardedIndexedDataset` presents
them as one dataset. Items are read as numpy views on the memory map: nothing is loaded until it is indexed.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
    6: np.float32, 7: np.float64, 8: np.uint16, 9: np.uint32,
}
CODE_OF_DTYPE = {np.dtype(v): k for k, v in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, item count, doc count


def separator_id(dtype) -> int:
    """The separator between prompt and target inside an item: the dtype's maximum (65535 for uint16)."""
    return int(np.iinfo(np.dtype(dtype)).max)


def best_fitting_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every token id and the separator (65535) fit, else int32."""
    return np.dtype(np.uint16) if vocab_size < np.iinfo(np.uint16).max else np.dtype(np.int32)


def write_indexed_dataset(prefix: str | os.PathLike, flat: np.ndarray, sizes: np.ndarray) -> None:
    """Write items (``flat`` split into consecutive runs of ``sizes``) as ``prefix.bin`` / ``prefix.idx``.

    Both files are written under temporary names and renamed when complete, ``.idx`` last, so a reader never
    sees a half-written dataset.
    """
    prefix = Path(prefix)
    flat = np.ascontiguousarray(flat)
    sizes = np.asarray(sizes, dtype=np.int32)
    if int(sizes.sum()) != flat.size:
        raise ValueError(f"{prefix}: sizes sum to {int(sizes.sum())} but there are {flat.size} tokens")
    code = CODE_OF_DTYPE[flat.dtype]
    pointers = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1].astype(np.int64) * flat.dtype.itemsize, out=pointers[1:])
    prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    bin_tmp, idx_tmp = Path(f"{bin_path}.tmp"), Path(f"{idx_path}.tmp")
    with open(bin_tmp, "wb") as f:
        f.write(flat.tobytes(order="C"))
    with open(idx_tmp, "wb") as f:
        f.write(_HEADER.pack(MAGIC, VERSION, code, len(sizes), 1))
        f.write(sizes.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(np.zeros(1, dtype=np.int64).tobytes())
    os.replace(bin_tmp, bin_path)
    os.replace(idx_tmp, idx_path)


class IndexedDataset:
    """Random access to the items of one ``PREFIX.bin/.idx`` pair through memory maps."""

    def __init__(self, prefix: str | os.PathLike):
        self.prefix = Path(prefix)
        idx_path, bin_path = Path(f"{self.prefix}.idx"), Path(f"{self.prefix}.bin")
        for path in (idx_path, bin_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run the data processing script first")
        idx = np.memmap(idx_path, dtype=np.uint8, mode="r")
        if idx.size < _HEADER.size:
            raise ValueError(f"{idx_path}: too short to be an MMIDIDX index")
        magic, version, code, count, doc_count = _HEADER.unpack(idx[: _HEADER.size].tobytes())
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"{idx_path}: not an MMIDIDX version-1 index (magic {magic!r}, version {version})")
        if code not in DTYPE_CODES:
            raise ValueError(f"{idx_path}: unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        expected_idx = _HEADER.size + count * (4 + 8) + doc_count * 8
        if idx.size != expected_idx:
            raise ValueError(f"{idx_path}: {idx.size} bytes, but its header ({count} items, {doc_count} documents) "
                             f"needs {expected_idx}: the file is torn or corrupted; run the data processing script "
                             "again")
        offset = _HEADER.size
        self.sizes = np.frombuffer(idx, dtype=np.int32, count=count, offset=offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(idx, dtype=np.int64, count=count, offset=offset)
        offset += self.pointers.nbytes
        self.doc_idx = np.frombuffer(idx, dtype=np.int64, count=doc_count, offset=offset)
        self._idx = idx
        self._check_bin(bin_path, idx_path)
        self._bin = np.memmap(bin_path, dtype=np.uint8, mode="r") if bin_path.stat().st_size else np.zeros(0, np.uint8)

    def _check_bin(self, bin_path: Path, idx_path: Path) -> None:
        """The ``.bin`` must be exactly the items the ``.idx`` describes: consecutive, from byte 0, with no size
        negative; its length the sum of their sizes. A truncated or extended ``.bin`` (or an ``.idx`` of another
        data set) is one ValueError naming the file, the expected and the actual size, raised here rather than as a
        numpy error deep in training."""
        itemsize = self.dtype.itemsize
        lengths = self.sizes.astype(np.int64) * itemsize
        expected_pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=expected_pointers[1:])
        if (self.sizes < 0).any() or not np.array_equal(self.pointers, expected_pointers):
            raise ValueError(f"{idx_path}: item sizes and offsets are inconsistent (the index is corrupted); run the "
                             "data processing script again")
        expected = int(lengths.sum())
        actual = bin_path.stat().st_size
        if actual != expected:
            raise ValueError(f"{bin_path}: expected {expected} bytes ({len(self)} items in {idx_path.name}), found "
                             f"{actual}: the file is {'truncated' if actual < expected else 'longer than its index'}; "
                             "run the data processing script again")

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.prefix}: item {i} out of range for {len(self)} items")
        i %= len(self)
        return np.frombuffer(self._bin, dtype=self.dtype, count=int(self.sizes[i]), offset=int(self.pointers[i]))


def shard_prefixes(directory: str | os.PathLike, split: str) -> list[Path]:
    """``directory/{split}_0``, ``{split}_1``, ... up to the first missing index file."""
    prefixes = []
    while Path(directory, f"{split}_{len(prefixes)}.idx").is_file():
        prefixes.append(Path(directory, f"{split}_{len(prefixes)}"))
    return prefixes


class ShardedIndexedDataset:
    """The numbered shards ``{split}_0``, ``{split}_1``, ... of one split, presented as one dataset."""

    def __init__(self, directory: str | os.PathLike, split: str):
        prefixes = shard_prefixes(directory, split)
        if not prefixes:
            raise FileNotFoundError(f"{Path(directory, split + '_0.idx')}: missing; run the data processing script first")
        self.shards = [IndexedDataset(p) for p in prefixes]
        dtypes = {s.dtype for s in self.shards}
        if len(dtypes) != 1:
            raise ValueError(f"{directory}/{split}_*: shards disagree on dtype ({sorted(map(str, dtypes))})")
        self.dtype = dtypes.pop()
        self._ends = np.cumsum([len(s) for s in self.shards]).tolist()
        self.sizes = np.concatenate([s.sizes for s in self.shards])

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        i %= len(self)
        shard = bisect.bisect_right(self._ends, i)
        return self.shards[shard][i - (self._ends[shard - 1] if shard else 0)]


def split_prompt_target(item: np.ndarray, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a ``full/`` item ``prompt ids, sep, target ids`` at its separator."""
    where = np.flatnonzero(item == sep)
    if len(where) != 1:
        raise ValueError(f"expected exactly one separator {sep} in the item, found {len(where)}")
    return item[: where[0]], item[where[0] + 1:]
