"""minillm/divergences.py against hand computations, known identities and autograd's numerical gradients."""

import math

import pytest
import torch

from minillm.divergences import (
    DIVERGENCES,
    _mixture_log,
    adaptive_kl,
    coarsen,
    forward_kl,
    kl_from_log_probs,
    generalized_jsd,
    log_probs,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

# Two positions over a vocabulary of 3, given as probabilities (logits = their logs).
S = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]
T = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]


def logits(probabilities) -> torch.Tensor:
    return torch.tensor(probabilities, dtype=torch.float64).log()


def kl(p, q) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def mix(p, q, w):
    return [w * a + (1 - w) * b for a, b in zip(p, q)]


def hand(name: str, s, t, **kw) -> float:
    """The divergence at one position, from the formulas in plain Python floats."""
    if name == "fkl":
        return kl(t, s)
    if name == "rkl":
        return kl(s, t)
    if name == "jsd":
        beta = kw["beta"]
        m = mix(t, s, beta)
        return beta * kl(t, m) + (1 - beta) * kl(s, m)
    if name == "sfkl":
        return kl(t, mix(t, s, kw["alpha"]))
    if name == "srkl":
        return kl(s, mix(s, t, kw["alpha"]))
    if name == "tvd":
        return 0.5 * sum(abs(a - b) for a, b in zip(t, s))
    raise KeyError(name)


CASES = [("fkl", {}), ("rkl", {}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}),
         ("sfkl", {"alpha": 0.1}), ("srkl", {"alpha": 0.3}), ("tvd", {})]
KWARG = {"jsd": "beta", "sfkl": "alpha", "srkl": "alpha"}


def call(name, student, teacher, mask, **kw):
    return DIVERGENCES[name](student, teacher, mask, **kw)


@pytest.mark.parametrize("name,kw", CASES)
def test_matches_hand_computation(name, kw):
    mask = torch.tensor([True, True])
    per_position = call(name, logits(S), logits(T), mask, reduction="none", **kw)
    expected = [hand(name, s, t, **kw) for s, t in zip(S, T)]
    assert torch.allclose(per_position, torch.tensor(expected, dtype=per_position.dtype), rtol=1e-9, atol=1e-12)
    mean = call(name, logits(S), logits(T), mask, **kw)
    assert math.isclose(float(mean), sum(expected) / 2, rel_tol=1e-9)
    total = call(name, logits(S), logits(T), mask, reduction="sum", **kw)
    assert math.isclose(float(total), sum(expected), rel_tol=1e-9)


def test_adaptive_kl_by_hand():
    """mu = 0.8. Position 0: teacher order 0, 1, 2 (0.5, 0.3, 0.2); the head is {0, 1} (mass before token 1 is
    0.5 < 0.8, before token 2 it is 0.8), gaps |0.5 - 0.7| + |0.3 - 0.2| = 0.3 on the head, |0.2 - 0.1| = 0.1 on
    the tail: w_head = 0.75. Position 1: order 1, 2, 0 (0.6, 0.3, 0.1); head {1, 2}, gaps 0.35 + 0.2 = 0.55 against
    0.15: w_head = 0.55 / 0.7. With mu = 0.5, position 0 has head {0} and gaps 0.2 against 0.2: w_head = 1/2."""
    mask = torch.tensor([True, True])
    per_position = adaptive_kl(logits(S), logits(T), mask, mu=0.8, reduction="none")
    w0, w1 = 0.75, 0.55 / 0.7
    expected = [w0 * kl(T[0], S[0]) + (1 - w0) * kl(S[0], T[0]), w1 * kl(T[1], S[1]) + (1 - w1) * kl(S[1], T[1])]
    assert torch.allclose(per_position, torch.tensor(expected, dtype=per_position.dtype), rtol=1e-9)
    half = adaptive_kl(logits(S), logits(T), mask, mu=0.5, reduction="none")
    assert math.isclose(float(half[0]), 0.5 * (kl(T[0], S[0]) + kl(S[0], T[0])), rel_tol=1e-9)


def random_logits(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_non_negative_and_zero_iff_equal(name):
    student, teacher = random_logits(4, 5, 11, seed=1), random_logits(4, 5, 11, seed=2)
    mask = torch.ones(4, 5, dtype=torch.bool)
    assert (call(name, student, teacher, mask, reduction="none") > 1e-6).all()
    assert float(call(name, teacher, teacher, mask).abs()) < 1e-6
    # shifting logits by a constant leaves the distribution, so the divergence, unchanged
    assert float(call(name, teacher + 3.0, teacher, mask).abs()) < 1e-6


def test_known_identities():
    student, teacher = random_logits(3, 4, 9, seed=3), random_logits(3, 4, 9, seed=4)
    mask = torch.ones(3, 4, dtype=torch.bool)
    # JSD is symmetric at beta = 1/2
    assert torch.allclose(generalized_jsd(student, teacher, mask, beta=0.5),
                          generalized_jsd(teacher, student, mask, beta=0.5))
    # the endpoints are the forward and reverse KL, and the limits of JSD/beta, JSD/(1-beta)
    assert torch.equal(generalized_jsd(student, teacher, mask, beta=0.0), forward_kl(student, teacher, mask))
    assert torch.equal(generalized_jsd(student, teacher, mask, beta=1.0), reverse_kl(student, teacher, mask))
    small = 1e-5
    assert torch.allclose(generalized_jsd(student, teacher, mask, beta=small) / small,
                          forward_kl(student, teacher, mask), rtol=1e-3)
    assert torch.allclose(generalized_jsd(student, teacher, mask, beta=1 - small) / small,
                          reverse_kl(student, teacher, mask), rtol=1e-3)
    # skew with alpha = 0 is the plain KL
    assert torch.equal(skew_forward_kl(student, teacher, mask, alpha=0.0), forward_kl(student, teacher, mask))
    assert torch.equal(skew_reverse_kl(student, teacher, mask, alpha=0.0), reverse_kl(student, teacher, mask))
    # TVD is bounded by 1 and reaches it for disjoint supports
    assert (total_variation(student, teacher, mask, reduction="none") <= 1).all()
    disjoint_s = torch.tensor([[0.0, -math.inf, -math.inf]])
    disjoint_t = torch.tensor([[-math.inf, 0.0, 0.0]])
    assert float(total_variation(disjoint_s, disjoint_t, torch.tensor([True]))) == 1.0


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_temperature_divides_both_logits(name):
    student, teacher = random_logits(2, 3, 7, seed=5), random_logits(2, 3, 7, seed=6)
    mask = torch.ones(2, 3, dtype=torch.bool)
    assert torch.allclose(call(name, student, teacher, mask, temperature=2.5),
                          call(name, student / 2.5, teacher / 2.5, mask))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_masked_positions_contribute_nothing(name):
    student = random_logits(2, 4, 7, seed=7).requires_grad_(True)
    teacher = random_logits(2, 4, 7, seed=8)
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    garbage_student = student.detach().clone()
    garbage_student[~mask] = float("nan")
    garbage_student[0, 3] = -math.inf
    garbage_student.requires_grad_(True)
    garbage_teacher = teacher.clone()
    garbage_teacher[~mask] = -math.inf

    value = call(name, garbage_student, garbage_teacher, mask)
    reference = call(name, student[mask], teacher[mask], torch.ones(4, dtype=torch.bool))
    assert torch.allclose(value, reference)
    (grad,) = torch.autograd.grad(value, garbage_student)
    assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()
    # all masked: 0, not NaN, with a zero gradient
    empty = call(name, garbage_student, garbage_teacher, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0
    (grad,) = torch.autograd.grad(empty, garbage_student)
    assert (grad == 0).all()


@pytest.mark.parametrize("name", ["fkl", "jsd", "sfkl", "srkl", "tvd"])
def test_minus_inf_teacher_logits_stay_finite(name):
    """A teacher that rules tokens out (-inf logits, e.g. top-k filtered) gives finite values and gradients for
    the divergences whose formula stays finite there (not reverse KL, which is +inf if the student covers them)."""
    student = random_logits(3, 6, seed=9).requires_grad_(True)
    teacher = random_logits(3, 6, seed=10)
    teacher[:, :2] = -math.inf
    value = call(name, student, teacher, torch.ones(3, dtype=torch.bool))
    (grad,) = torch.autograd.grad(value, student)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert math.isinf(float(reverse_kl(student.detach(), teacher, torch.ones(3, dtype=torch.bool))))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_a_token_both_rule_out_changes_neither_value_nor_gradient(name):
    """A token with -inf logits in both distributions is as if the vocabulary lacked it: the same value and the same
    gradient on the other tokens as without it, and a zero gradient on it (0 log 0 = 0, never NaN)."""
    student = random_logits(3, 6, seed=13).requires_grad_(True)
    teacher = random_logits(3, 6, seed=14)
    mask = torch.ones(3, dtype=torch.bool)
    without = student.detach()[:, 1:].clone().requires_grad_(True)
    expected = call(name, without, teacher[:, 1:], mask)
    (expected_grad,) = torch.autograd.grad(expected, without)
    ruled_out = torch.cat([torch.full((3, 1), -math.inf, dtype=student.dtype), student[:, 1:]], dim=-1)
    value = call(name, ruled_out, torch.cat([torch.full((3, 1), -math.inf, dtype=teacher.dtype), teacher[:, 1:]], -1),
                 mask)
    (grad,) = torch.autograd.grad(value, student)
    assert torch.allclose(value, expected, rtol=1e-12, atol=1e-12)
    assert (grad[:, 0] == 0).all() and torch.allclose(grad[:, 1:], expected_grad, rtol=1e-10, atol=1e-12)


def test_coarsened_kl_gradient_stays_finite_when_the_ids_cover_the_support():
    """MiniLLM's single-step term on top-k bins: when the student puts no mass outside the K ids (a top-k cut, or
    K = V - 1), the remainder bin is empty; the KL over the bins then equals the full KL, gradients included."""
    torch.manual_seed(15)
    teacher_log = torch.log_softmax(torch.randn(4, 8, dtype=torch.float64), -1)
    ids = teacher_log.topk(5, dim=-1).indices
    student_logits = torch.full((4, 8), -math.inf, dtype=torch.float64).scatter(  # no mass outside the ids
        -1, ids, torch.randn(4, 5, dtype=torch.float64)).requires_grad_(True)
    student_log = torch.log_softmax(student_logits, -1)
    binned = kl_from_log_probs(coarsen(student_log, ids), coarsen(teacher_log, ids)).sum()
    (binned_grad,) = torch.autograd.grad(binned, student_logits)
    full = kl_from_log_probs(torch.log_softmax(student_logits, -1), teacher_log).sum()
    (full_grad,) = torch.autograd.grad(full, student_logits)
    assert torch.isfinite(binned_grad).all()
    assert torch.allclose(binned, full, rtol=1e-12) and torch.allclose(binned_grad, full_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_bf16_logits_match_fp32(name):
    student, teacher = random_logits(4, 6, 50, seed=11, dtype=torch.float32), random_logits(4, 6, 50, seed=12,
                                                                                            dtype=torch.float32)
    mask = torch.ones(4, 6, dtype=torch.bool)
    bf16 = call(name, student.bfloat16(), teacher.bfloat16(), mask)
    fp32 = call(name, student.bfloat16().float(), teacher.bfloat16().float(), mask)
    assert bf16.dtype == torch.float32 and torch.allclose(bf16, fp32, rtol=1e-5)


@pytest.mark.parametrize("name,kw", CASES)
def test_gradcheck_float64(name, kw):
    student = random_logits(2, 3, 5, seed=13).requires_grad_(True)
    teacher = random_logits(2, 3, 5, seed=14).requires_grad_(True)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert torch.autograd.gradcheck(lambda s, t: call(name, s, t, mask, reduction="sum", **kw), (student, teacher))


def test_adaptive_kl_gradient_treats_its_weights_as_constants():
    """AKL's gradient is that of w FKL + (1 - w) RKL with w frozen at its current value (whose own gradient is
    checked above), not the derivative of the weight: compare with that frozen mixture."""
    student = random_logits(2, 3, 5, seed=15).requires_grad_(True)
    teacher = random_logits(2, 3, 5, seed=16)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    fkl = forward_kl(student, teacher, mask, reduction="none")
    rkl = reverse_kl(student, teacher, mask, reduction="none")
    akl = adaptive_kl(student, teacher, mask, reduction="none")
    w_head = ((akl - rkl) / (fkl - rkl)).detach()  # solve akl = w fkl + (1 - w) rkl per position
    assert ((w_head[mask] > 0) & (w_head[mask] < 1)).all()
    (grad_akl,) = torch.autograd.grad(akl.sum(), student)
    frozen = torch.where(mask, w_head * fkl + (1 - w_head) * rkl, torch.zeros_like(fkl))
    (grad_frozen,) = torch.autograd.grad(frozen.sum(), student)
    assert torch.allclose(grad_akl, grad_frozen, atol=1e-10)


def test_bad_arguments_are_refused():
    student, teacher, mask = random_logits(2, 5), random_logits(2, 5), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd(student, teacher, mask, beta=1.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        skew_forward_kl(student, teacher, mask, alpha=1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        forward_kl(student, teacher, mask, temperature=0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        forward_kl(student, teacher, mask, reduction="avg")
    with pytest.raises(ValueError, match="share one vocabulary"):
        forward_kl(student, random_logits(2, 6), mask)


def test_log_probs_default_temperature_is_one_and_precision_is_promoted():
    """``log_probs(logits)`` is the plain log-softmax: logits (0, ln 3) give (1/4, 3/4); bf16 logits come back in
    fp32, fp64 logits in fp64."""
    two = torch.tensor([0.0, math.log(3)], dtype=torch.float64)
    assert torch.allclose(log_probs(two), torch.tensor([math.log(0.25), math.log(0.75)], dtype=torch.float64),
                          rtol=1e-12)
    assert log_probs(two).dtype == torch.float64
    uniform = log_probs(torch.zeros(4, dtype=torch.bfloat16))
    assert uniform.dtype == torch.float32 and torch.allclose(uniform, torch.full((4,), -math.log(4)), rtol=1e-6)


def test_mixture_log_by_hand():
    """``log(1/4 a + 3/4 b)`` for a = (1/2, 1/2, 0, 0), b = (0, 1/2, 1/2, 0): (1/8, 1/2, 3/8, 0), the last token -inf
    (zero under both) with a zero gradient, never NaN."""
    a_log = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64).log().requires_grad_(True)
    b_log = torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64).log()
    mixed = _mixture_log(a_log, b_log, 0.25)
    assert torch.allclose(mixed.exp(), torch.tensor([1 / 8, 1 / 2, 3 / 8, 0.0], dtype=torch.float64), rtol=1e-12)
    assert float(mixed[3].detach()) == -math.inf
    (grad,) = torch.autograd.grad(mixed[:3].sum(), a_log)
    # d log m_v / d log a_v = w a_v / m_v: 1 on token 0, (1/8) / (1/2) = 1/4 on token 1, 0 where a_v = 0
    assert torch.allclose(grad, torch.tensor([1.0, 0.25, 0.0, 0.0], dtype=torch.float64), rtol=1e-12)


def test_coarsen_keeps_each_row_apart():
    """A batch where the ids cover the support of one row and not of the other: the first row's remainder bin is
    -inf (its gradient 0), the second's is ln(0.3) (tokens 2 and 3 together), and nothing is NaN."""
    probabilities = torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.5, 0.2, 0.1, 0.2]], dtype=torch.float64)
    log_p = probabilities.log().requires_grad_(True)
    ids = torch.tensor([[0, 1], [0, 1]])
    binned = coarsen(log_p, ids)
    expected = torch.tensor([[0.6, 0.4, 0.0], [0.5, 0.2, 0.3]], dtype=torch.float64).log()
    assert torch.allclose(binned, expected, rtol=1e-12)  # -inf == -inf counts as close
    (grad,) = torch.autograd.grad(binned[:, 2].masked_fill(binned[:, 2] == -math.inf, 0.0).sum(), log_p)
    # d log(p_2 + p_3) / d log p_v = p_v / (p_2 + p_3) on the second row's tokens 2 and 3, 0 elsewhere
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1 / 3, 2 / 3]], dtype=torch.float64),
                          rtol=1e-12)


def test_adaptive_kl_mu_range_and_mu_one_is_forward_kl():
    """mu = 1: the head is every token the teacher covers (the mass before the last one is below 1), the tail gap is
    0, so w_head = 1 and AKL is the forward KL. mu must be in (0, 1]."""
    mask = torch.tensor([True, True])
    assert torch.allclose(adaptive_kl(logits(S), logits(T), mask, mu=1.0, reduction="none"),
                          torch.tensor([kl(t, s) for s, t in zip(S, T)], dtype=torch.float64), rtol=1e-9)
    for mu in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"mu must be in \(0, 1\], got"):
            adaptive_kl(logits(S), logits(T), mask, mu=mu)


def test_adaptive_kl_is_exactly_zero_when_the_distributions_round_to_equal():
    """Logits one ulp apart can give log-probabilities that differ in their last bit while their exponentials are
    equal: every gap is 0, so w_head = 1/2 and the forward and reverse KLs, exact negatives of each other (about
    +-4e-17 here), cancel to exactly 0 (a weight of 0 or 1 would leave a tiny negative or positive value)."""
    student = random_logits(4000, 4, seed=17)
    teacher = student.clone()
    teacher[:, 0] = torch.nextafter(teacher[:, 0], torch.tensor(math.inf, dtype=teacher.dtype))
    s_log, t_log = log_probs(student), log_probs(teacher)
    rounded_equal = (s_log.exp() == t_log.exp()).all(-1) & (s_log != t_log).any(-1)
    mask = torch.ones(4000, dtype=torch.bool)
    fkl = forward_kl(student, teacher, mask, reduction="none")[rounded_equal]
    assert (fkl != 0).any()  # such positions exist and their KLs are not exactly 0
    assert torch.equal(reverse_kl(student, teacher, mask, reduction="none")[rounded_equal], -fkl)
    assert (adaptive_kl(student, teacher, mask, reduction="none")[rounded_equal] == 0).all()


def test_mask_of_another_shape_is_refused():
    """A mask that only broadcasts against the logits (here without its batch dimension) is refused, not spread."""
    with pytest.raises(ValueError, match=r"mask shape \(3,\) does not match the positions \(2, 3\)"):
        forward_kl(random_logits(2, 3, 5), random_logits(2, 3, 5), torch.ones(3, dtype=torch.bool))
