"""Models: loading and the adapter that goes with each family (the seam described in :mod:`minillm.models.base`).

The family comes from the checkpoint's config: ``is_encoder_decoder`` -> :class:`~minillm.models.seq2seq.
Seq2SeqAdapter`, else :class:`~minillm.models.causal.CausalLMAdapter` (imported when first needed).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

import torch

from .base import IGNORE_INDEX, ModelAdapter, unwrap
from .seq2seq import Seq2SeqAdapter


def _family(is_encoder_decoder: bool):
    if is_encoder_decoder:
        return Seq2SeqAdapter
    from .causal import CausalLMAdapter

    return CausalLMAdapter


def load_model(path, *, dtype=torch.float32, attn_implementation: str | None = "auto", fused_kernels: bool = False,
               device_type: str = "cpu", dropout: float | None = None, flag: str | None = "--model-path",
               allow_pickle: bool = False):
    """The model at ``path`` (hub name or folder), loaded by its family's adapter (``load``, with these keyword
    arguments). A checkpoint that cannot be loaded (not on the hub, offline, a folder without weights) is bad input:
    a one-line ValueError naming ``flag``; with ``flag`` None the error is left as it is, for callers that report
    load failures their own way.

    Weights load from safetensors only: a folder with pickle weights alone is refused (:func:`check_weight_files`)
    and the library is told to use safetensors, unless ``allow_pickle`` (``--allow-pickle-weights``). A folder with
    a manifest (one this project wrote) must match it (:func:`check_whole_checkpoint`); one without, such as a Hugging
    Face download, loads as before."""
    from transformers import AutoConfig

    path = check_local_path(path, flag)
    check_whole_checkpoint(path, flag)
    if not allow_pickle:
        check_weight_files(path, flag)
    with _load_errors_as_value_errors(flag, path):
        family = _family(AutoConfig.from_pretrained(path).is_encoder_decoder)
        return family.load(path, dtype=dtype, attn_implementation=attn_implementation, fused_kernels=fused_kernels,
                           device_type=device_type, dropout=dropout, allow_pickle=allow_pickle)


# Weight files that are pickles: loading one unpickles it, and a pickle can run any code it names.
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weight_files(path, flag: str | None) -> None:
    """A local folder whose weights are pickles only (``pytorch_model.bin``, no ``*.safetensors``) is refused in one
    line naming ``flag``, the file and the two ways on: converting it, or ``--allow-pickle-weights`` for a source
    one trusts."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        raise ValueError(f"{flag or 'model'} {path}: its weights are pickle files ({', '.join(pickles)}) and there "
                         "is no .safetensors: unpickling can run code stored in the file, so it is not loaded; "
                         "convert it to safetensors (from_pretrained, then save_pretrained) where you trust it, or "
                         "pass --allow-pickle-weights if you trust its source")


def check_whole_checkpoint(path, flag: str | None) -> None:
    """A local folder with a manifest (written last by :func:`minillm.engine.checkpoint.save_checkpoint`) must
    match it, training state aside: a file missing, truncated or corrupted is a one-line ValueError naming ``flag``
    and the file. Costs one read of the model's files (SHA-256, ~1.7 GB/s)."""
    from ..folders import has_manifest, manifest_problem

    folder = Path(path).expanduser()
    if folder.is_dir() and has_manifest(folder):
        problem = manifest_problem(folder, skip=("training_state",))
        if problem is not None:
            raise ValueError(f"{flag or 'model'} {path}: not a whole checkpoint: {problem}; load another one (the "
                             "run's last.prev/ or best/) or write it again")


def load_tokenizer(path, flag: str | None = "--tokenizer-path"):
    """The tokenizer at ``path``; errors as in :func:`load_model`."""
    from transformers import AutoTokenizer

    path = check_local_path(path, flag)
    check_tokenizer_files(path, flag)
    with _load_errors_as_value_errors(flag, path):
        return AutoTokenizer.from_pretrained(path)


def adapter_for(model, tokenizer=None) -> ModelAdapter:
    """The adapter of ``model``'s family (a DeepSpeed engine is unwrapped to read the config)."""
    return _family(unwrap(model).config.is_encoder_decoder).for_model(model, tokenizer)


# Any one of these in a folder is a tokenizer (Flan-T5: tokenizer.json / spiece.model; GPT-2, OPT: vocab.json;
# LLaMA: tokenizer.model). Without one, transformers builds a fallback from config.json alone (Flan-T5: 104 tokens,
# "Yes" and "No" the same ids) and training would run, and save, with it.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "vocab.json",
                   "vocab.txt")


def looks_like_path(value) -> bool:
    """A model/tokenizer argument that can only be a local folder, never a hub id: a ``Path``, anything starting with
    ``/``, ``.`` or ``~``, or with more than one ``/`` (a hub id is ``name`` or ``org/name``), or with the OS's own
    separator where that is not ``/``."""
    if isinstance(value, os.PathLike):
        return True
    text = str(value)
    return (text.startswith(("/", ".", "~")) or text.count("/") > 1
            or (os.sep != "/" and os.sep in text))


def check_local_path(path, flag: str | None):
    """``path`` with ``~`` expanded when it is a local folder; a path-like value (:func:`looks_like_path`) that is
    not a folder here is a one-line ValueError "no such folder" naming ``flag`` (not the hub's repo-id message).
    A value that exists here is a folder whatever it looks like; anything else is left to the hub."""
    if looks_like_path(path):
        expanded = Path(path).expanduser()
        if not expanded.is_dir():
            what = "a file, not a folder" if expanded.exists() else "no such folder"
            raise ValueError(f"{flag or 'path'} {path}: cannot load it ({what}); give a checkpoint folder (config.json + weights) or "
                             "a hub name such as google/flan-t5-base")
        return str(expanded) if str(path).startswith("~") else path
    return path


def check_tokenizer_files(path, flag: str | None) -> None:
    """A local folder given as a tokenizer must hold a tokenizer (:data:`TOKENIZER_FILES`), not just config.json."""
    folder = Path(path).expanduser()
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{flag or 'tokenizer'} {path}: no tokenizer files in the folder (none of "
                         f"{', '.join(TOKENIZER_FILES)}); copy in the tokenizer the data was processed with, or "
                         "point --tokenizer-path at it")


def embedding_rows(model) -> int:
    """Rows of the model's input embedding (token ids it can read)."""
    return int(unwrap(model).get_input_embeddings().weight.shape[0])


def check_tokenizer_matches(tokenizer, model, meta: dict, *, tokenizer_flag: str, tokenizer_path, model_flag: str,
                            model_path, data_dir) -> None:
    """Before training or evaluating: the data (its ``meta.json``: vocab_size, eos/pad ids as written by
    :func:`minillm.data.process.tokenizer_meta`), the tokenizer and the model must agree. One-line ValueError
    naming the folder, the field and what to do; a field the meta.json lacks (or a null pad id) is not checked."""
    rows = embedding_rows(model)
    data_vocab = meta.get("vocab_size")
    meta_path = Path(data_dir) / "meta.json"
    if data_vocab is not None and data_vocab > rows:
        raise ValueError(f"{model_flag} {model_path}: embedding has {rows} rows but the data's vocab_size is "
                         f"{data_vocab} ({meta_path}); the checkpoint was built with another tokenizer: use one of "
                         "the data's family, or reprocess the data with the checkpoint's tokenizer")
    fix = (f"point --tokenizer-path at the tokenizer {meta_path} names ({meta.get('tokenizer', '?')}) or reprocess "
           "the data with this one")
    if data_vocab is not None and len(tokenizer) != data_vocab:
        raise ValueError(f"{tokenizer_flag} {tokenizer_path}: tokenizer vocab_size {len(tokenizer)} but {meta_path} "
                         f"has {data_vocab}; {fix}")
    for field in ("eos_token_id", "pad_token_id"):
        expected = meta.get(field)
        if expected is not None and getattr(tokenizer, field) != expected:
            raise ValueError(f"{tokenizer_flag} {tokenizer_path}: tokenizer {field} {getattr(tokenizer, field)} but "
                             f"{meta_path} has {expected}; {fix}")
    if len(tokenizer) > rows:
        raise ValueError(f"{tokenizer_flag} {tokenizer_path}: tokenizer has {len(tokenizer)} tokens but "
                         f"{model_flag} {model_path} has {rows} embedding rows; use the checkpoint's own tokenizer")


@contextlib.contextmanager
def _load_errors_as_value_errors(flag: str | None, path):
    if flag is None:
        yield
        return
    try:
        yield
    except OSError as err:
        first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"{flag} {path}: cannot load it ({first_line})") from None
    except pickle.UnpicklingError as err:  # pickle weights, read weights-only by the library, that hold code
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        raise ValueError(f"{flag} {path}: cannot load it (its pickle weights hold "
                         f"{found.group(1) if found else 'objects other than tensors'}, which loading would run; "
                         "they are read weights-only, even with --allow-pickle-weights)") from None


__all__ = ["IGNORE_INDEX", "PICKLE_WEIGHT_SUFFIXES", "TOKENIZER_FILES", "ModelAdapter", "Seq2SeqAdapter",
           "adapter_for", "check_local_path", "check_tokenizer_files", "check_tokenizer_matches", "check_weight_files",
           "check_whole_checkpoint", "embedding_rows", "load_model", "load_tokenizer", "looks_like_path"]
