"""Training losses as pure functions of logits, labels and masks (no models, no files, no distributed state).

Conventions: ``logits`` ``[B, T, V]`` aligned with ``labels`` ``[B, T]`` (see :mod:`minillm.models.base`);
label -100 marks padding. Each loss returns a *sum* over valid target tokens and the number of those tokens, so
the training loop can normalise by the token count of the whole global batch: that keeps the gradient identical
whatever the split of a batch over processes and accumulation steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.base import IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT loss terms: ``(sum_{t valid} -log q(y_t | y_<t, x), number of valid t)``, in fp32."""
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()
