"""minillm/losses.py against hand computations."""

import math

import torch

from minillm.losses import token_cross_entropy


def test_token_cross_entropy_sums_valid_tokens_and_counts_them():
    """Two sequences over a vocabulary of 3. Row 0: logits (0, ln 3, 0) give (1/5, 3/5, 1/5), label 1 costs
    ln(5/3); logits (ln 2, 0, 0) give (1/2, 1/4, 1/4), label 0 costs ln 2; then padding whose logits (NaN) must not
    count. Row 1: logits (0, 0, ln 2) give (1/4, 1/4, 1/2), label 2 costs ln 2, then two padded positions.
    Sum ln(5/3) + 2 ln 2 = ln(20/3) over 3 tokens."""
    nan = float("nan")
    logits = torch.tensor([[[0.0, math.log(3), 0.0], [math.log(2), 0.0, 0.0], [nan, nan, nan]],
                           [[0.0, 0.0, math.log(2)], [nan, 0.0, 1.0], [5.0, nan, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, -100], [2, -100, -100]])
    total, count = token_cross_entropy(logits, labels)
    assert total.dtype == torch.float32 and total.shape == ()
    assert math.isclose(float(total), math.log(20 / 3), rel_tol=1e-6)
    assert count.dtype == torch.int64 and int(count) == 3


def test_token_cross_entropy_of_bf16_logits_is_fp32():
    """Uniform bf16 logits over 4 tokens: each of the 2 valid tokens costs exactly ln 4, summed in fp32."""
    logits = torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    total, count = token_cross_entropy(logits, torch.tensor([[3, 0, -100]]))
    assert total.dtype == torch.float32
    assert math.isclose(float(total), 2 * math.log(4), rel_tol=1e-6) and int(count) == 2


def test_token_cross_entropy_with_every_label_padded_is_zero_over_zero_tokens():
    total, count = token_cross_entropy(torch.randn(2, 2, 5), torch.full((2, 2), -100))
    assert float(total) == 0.0 and int(count) == 0
