"""Padding statistics of the trainer's length-bucketed batches (``tools/padding_fraction.py``; the trainer logs
the same count as ``padding``)."""

from __future__ import annotations

from ..models import Seq2SeqAdapter
from .batches import SupervisedBatches


def padding_fraction(examples, steps, batch_size: int, grad_acc: int, world_size: int, seed: int, bucket_window: int,
                     pad_token_id: int, token_counts=Seq2SeqAdapter.token_counts) -> float:
    """Padded share of the cells that all ``world_size`` processes compute over optimizer ``steps`` of
    :class:`SupervisedBatches`: the ``padding`` the trainer logs over those steps. ``token_counts(batch)`` gives a
    micro-batch's (real tokens, computed cells) as the model family computes them (an adapter's ``token_counts``);
    the default is the encoder-decoder count, prompt and target apart, which needs no model."""
    real = cells = 0
    for rank in range(world_size):
        source = SupervisedBatches(examples, batch_size, grad_acc, rank, world_size, seed, bucket_window, pad_token_id)
        for step in steps:
            for batch in source.micro_batches(step):
                batch_real, batch_cells = token_counts(batch)
                real, cells = real + batch_real, cells + batch_cells
    return 1.0 - real / cells
