"""core/losses.py, each function against the formula it claims, written out here by hand. Tiny tensors: fast."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from dpl.core import DplError, losses

TAUS = [1.0, 2.0, 4.0]


def rand(*shape, seed=0, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def softmax_rows(logits: torch.Tensor) -> list[list[float]]:
    """Softmax of each row, in plain float64 arithmetic."""
    out = []
    for row in logits.double().tolist():
        top = max(row)
        e = [math.exp(v - top) for v in row]
        out.append([v / sum(e) for v in e])
    return out


# ---- cross_entropy, hard_pseudo_label, accuracy --------------------------------------------------------

@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_is_the_mean_negative_log_probability_of_the_label(smoothing):
    logits, y = rand(5, 4), torch.tensor([0, 3, 1, 1, 2])
    expected = 0.0
    for p, c in zip(softmax_rows(logits), y.tolist()):
        nll = -math.log(p[c])
        uniform = -sum(math.log(v) for v in p) / len(p)          # H(uniform, p): label smoothing's other part
        expected += (1 - smoothing) * nll + smoothing * uniform
    assert losses.cross_entropy(logits, y, smoothing).item() == pytest.approx(expected / 5, rel=1e-5)


def test_hard_pseudo_label_is_the_cross_entropy_of_the_target_s_most_likely_class():
    logits, targets = rand(6, 5, seed=1), rand(6, 5, seed=2).softmax(1)
    expected = 0.0
    for p, t in zip(softmax_rows(logits), targets.tolist()):
        expected += -math.log(p[max(range(len(t)), key=t.__getitem__)])
    assert losses.hard_pseudo_label(logits, targets).item() == pytest.approx(expected / 6, rel=1e-5)


def test_accuracy_is_the_fraction_of_rows_whose_argmax_is_the_target():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 2.0]])
    target = torch.tensor([1, 1, 2, 0])
    right = sum(max(range(3), key=row.__getitem__) == t for row, t in zip(logits.tolist(), target.tolist()))
    assert losses.accuracy(logits, target).item() == pytest.approx(right / 4) == pytest.approx(0.5)


# ---- tempered_kl -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", TAUS)
def test_tempered_kl_is_tau_squared_times_kl_of_targets_to_the_tempered_student(tau):
    logits = rand(4, 5, seed=3)
    targets = rand(4, 5, seed=4).softmax(1)
    targets[1] = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0])           # zeros, as a top-k shard has: 0 log 0 = 0
    expected = 0.0
    for p, q in zip(targets.double().tolist(), softmax_rows(logits / tau)):
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)
    assert losses.tempered_kl(logits, targets, tau).item() == pytest.approx(tau * tau * expected / 4, rel=1e-5)


@pytest.mark.parametrize("tau", TAUS)
def test_tempered_kl_gradient_is_that_of_the_cross_entropy(tau):
    """d/dz tau^2 * H(p, softmax(z / tau)), averaged over B rows, is tau * (softmax(z / tau) - p) / B."""
    logits = rand(3, 4, seed=5).requires_grad_()
    targets = rand(3, 4, seed=6).softmax(1)
    losses.tempered_kl(logits, targets, tau).backward()
    q = torch.tensor(softmax_rows(logits.detach() / tau))
    assert torch.allclose(logits.grad.double(), tau * (q - targets.double()) / 3, atol=1e-6)


# ---- hint_mse ----------------------------------------------------------------------------------------------

def test_hint_mse_is_half_the_mean_squared_difference_over_every_value():
    guess, target = rand(2, 3, 2, 2, seed=7), rand(2, 3, 2, 2, seed=8)
    cells = list(itertools.product(*map(range, guess.shape)))
    expected = 0.5 * sum((guess[i].item() - target[i].item()) ** 2 for i in cells) / len(cells)
    assert losses.hint_mse(guess, target).item() == pytest.approx(expected, rel=1e-5)
    assert losses.hint_mse(guess, guess).item() == 0.0


# ---- dkd -------------------------------------------------------------------------------------------------

def mdistiller_dkd(student_logits, teacher_logits, target, alpha, beta, tau):
    """Decoupled KD as mdistiller computes it (Zhao et al., CVPR 2022), from the teacher's logits, in float64:
    TCKD the KL of the (target, rest) binary splits; NCKD the KL over the non-target classes, each a softmax
    with the target class masked out by subtracting 1000 from its logit."""
    s, t = student_logits.double() / tau, teacher_logits.double() / tau
    gt = F.one_hot(target, s.shape[1]).double()
    p_s, p_t = s.softmax(1), t.softmax(1)
    bin_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], dim=1)
    bin_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(bin_s.log(), bin_t, reduction="sum") * tau ** 2 / len(target)
    rest_t = (t - 1000.0 * gt).softmax(1)
    log_rest_s = (s - 1000.0 * gt).log_softmax(1)
    nckd = F.kl_div(log_rest_s, rest_t, reduction="sum") * tau ** 2 / len(target)
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("tau,alpha,beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_mdistiller_with_the_teacher_s_probabilities_for_its_logits(tau, alpha, beta):
    s, t = rand(6, 5, seed=9), rand(6, 5, seed=10)
    target = torch.tensor([0, 4, 2, 2, 1, 3])
    s_ours, s_ref = s.clone().requires_grad_(), s.clone().requires_grad_()
    ours = losses.dkd(s_ours, (t / tau).softmax(1), target, tau, alpha=alpha, beta=beta)
    ref = mdistiller_dkd(s_ref, t, target, alpha, beta, tau)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    ours.backward(), ref.backward()
    assert torch.allclose(s_ours.grad, s_ref.grad, atol=1e-5)


def test_dkd_defaults_are_mdistiller_s_alpha_1_beta_8():
    s, t, target = rand(4, 6, seed=11), rand(4, 6, seed=12), torch.tensor([5, 0, 1, 1])
    ref = mdistiller_dkd(s, t, target, 1.0, 8.0, 2.0)
    assert losses.dkd(s, (t / 2.0).softmax(1), target, 2.0).item() == pytest.approx(ref.item(), rel=1e-4)


def test_dkd_matches_mdistiller_where_the_teacher_gives_some_classes_zero():
    """Stored top-k labels give the classes outside the top k probability 0: a teacher logit of -inf."""
    s, t = rand(4, 6, seed=13), rand(4, 6, seed=14)
    t[0, [1, 4]] = t[1, [0, 2, 5]] = t[3, 3] = float("-inf")
    target = torch.tensor([0, 1, 2, 4])
    ref = mdistiller_dkd(s, t, target, 1.0, 8.0, 2.0)
    assert losses.dkd(s, (t / 2.0).softmax(1), target, 2.0).item() == pytest.approx(ref.item(), rel=1e-4)


ZERO_TARGETS = {
    # top-2 of 5 classes, renormalised (what label.soft_targets makes of a top-k shard); target: the top class
    "top-k": (torch.tensor([[0.0, 0.7, 0.0, 0.3, 0.0], [0.6, 0.0, 0.0, 0.0, 0.4]]), torch.tensor([1, 0])),
    # top-1: no mass at all outside the target class
    "one-hot": (torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([2, 0])),
    # a labeled sample whose true class the teacher gives 0
    "zero-at-target": (torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.2, 0.8]]), torch.tensor([0, 2])),
}


@pytest.mark.parametrize("case", sorted(ZERO_TARGETS))
@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_value_and_gradient_are_finite_where_teacher_probabilities_are_exactly_zero(case, tau):
    targets, target_class = ZERO_TARGETS[case]
    logits = rand(2, 5, seed=15).requires_grad_()
    loss = losses.dkd(logits, targets, target_class, tau)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= -1e-6
    assert torch.isfinite(logits.grad).all(), logits.grad


def binary_kl(p: float, q: float) -> float:
    return sum(a * math.log(a / b) for a, b in ((p, q), (1 - p, 1 - q)) if a > 0)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dkd_is_alpha_tckd_plus_beta_nckd_each_written_out_by_hand(tau):
    """TCKD: KL of the (target, rest) splits; NCKD: KL of the distributions over the other classes, renormalised."""
    s, t, target = rand(3, 4, seed=30), rand(3, 4, seed=31), torch.tensor([2, 0, 3])
    p = (t / tau).softmax(1)
    tckd = nckd = 0.0
    for pt, qs, c in zip(p.double().tolist(), softmax_rows(s / tau), target.tolist()):
        tckd += binary_kl(pt[c], qs[c])
        rest_p = [v / (1 - pt[c]) for k, v in enumerate(pt) if k != c]
        rest_q = [v / (1 - qs[c]) for k, v in enumerate(qs) if k != c]
        nckd += sum(a * math.log(a / b) for a, b in zip(rest_p, rest_q))
    tckd, nckd = tau * tau * tckd / 3, tau * tau * nckd / 3
    assert losses.dkd(s, p, target, tau, alpha=1.0, beta=0.0).item() == pytest.approx(tckd, rel=1e-5)
    assert losses.dkd(s, p, target, tau, alpha=0.0, beta=1.0).item() == pytest.approx(nckd, rel=1e-5)
    assert losses.dkd(s, p, target, tau, alpha=0.5, beta=3.0).item() == pytest.approx(0.5 * tckd + 3 * nckd, rel=1e-5)


@pytest.mark.parametrize("epochs_done,warmup,factor", [
    (0.0, 20, 0.0), (1.0, 20, 0.05), (5.5, 20, 0.275), (20.0, 20, 1.0), (31.0, 20, 1.0), (0.0, 0, 1.0), (3.0, 0, 1.0)])
def test_warmup_factor_ramps_linearly_to_one_over_the_warmup_epochs(epochs_done, warmup, factor):
    assert losses.warmup_factor(epochs_done, warmup) == pytest.approx(factor)


# ---- lskd, logit_mse: the teacher's logits recovered from its probabilities --------------------------------

def zscore(row: list[float]) -> list[float]:
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (1e-7 + std) for v in row]


def lskd_from_logits(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    """Sun et al.'s LSKD from both networks' logits, in plain float64: tau^2 * KL(softmax(Z(t) / tau) ||
    softmax(Z(s) / tau)), Z the z-score with Bessel's std."""
    total = 0.0
    for srow, trow in zip(s.double().tolist(), t.double().tolist()):
        p = softmax_rows(torch.tensor([zscore(trow)]) / tau)[0]
        q = softmax_rows(torch.tensor([zscore(srow)]) / tau)[0]
        total += sum(a * math.log(a / b) for a, b in zip(p, q))
    return tau * tau * total / len(s)


@pytest.mark.parametrize("tau", TAUS)
def test_lskd_from_probabilities_equals_lskd_from_the_teacher_s_logits(tau):
    s, t = rand(5, 6, seed=32), rand(5, 6, seed=33)          # well conditioned: no probability near the floor
    assert losses.lskd(s, (t / tau).softmax(1), tau).item() == pytest.approx(lskd_from_logits(s, t, tau), rel=1e-4)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_lskd_is_unchanged_by_a_constant_added_to_teacher_logits_or_by_the_labels_tau(tau):
    s, t = rand(4, 5, seed=34), rand(4, 5, seed=35)
    shifted = t + torch.tensor([[3.0], [-7.0], [0.5], [100.0]])
    reference = losses.lskd(s, (t / tau).softmax(1), tau)
    assert losses.lskd(s, (shifted / tau).softmax(1), tau).item() == pytest.approx(reference.item(), rel=1e-4)
    # probabilities stored at another temperature (re-tempered to tau) stand for the same standardized logits
    assert losses.lskd(s, (t / 2.5).softmax(1), tau).item() == pytest.approx(reference.item(), rel=1e-4)
    assert lskd_from_logits(s, shifted, tau) == pytest.approx(lskd_from_logits(s, t, tau), rel=1e-6)   # float32 inputs


def test_lskd_and_logit_mse_are_finite_where_teacher_probabilities_are_zero():
    """A 0 (float32 underflow; distill floors stored float16 zeros before) counts as float32's smallest normal."""
    p = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.5, 0.25, 0.25, 0.0]])
    floored = p.clamp_min(torch.finfo(torch.float32).tiny)
    for fn in (losses.lskd, losses.logit_mse):
        s = rand(2, 4, seed=36).requires_grad_()
        loss = fn(s, p, 1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        assert loss.item() == pytest.approx(fn(s, floored, 1.0).item(), rel=1e-6)
    assert losses.FP16_SMALLEST == float(torch.tensor(2.0 ** -24, dtype=torch.float16)) == 2.0 ** -24


@pytest.mark.parametrize("tau", TAUS)
def test_logit_mse_is_the_mean_squared_difference_of_centred_logits_whatever_the_tau(tau):
    s, t = rand(3, 5, seed=37), rand(3, 5, seed=38)
    expected = 0.0
    for srow, trow in zip(s.double().tolist(), t.double().tolist()):
        ms, mt = sum(srow) / 5, sum(trow) / 5
        expected += sum(((a - ms) - (b - mt)) ** 2 for a, b in zip(srow, trow))
    assert losses.logit_mse(s, (t / tau).softmax(1), tau).item() == pytest.approx(expected / 15, rel=1e-4)


# ---- the LOGIT_LOSSES registry -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(losses.LOGIT_LOSSES))
@pytest.mark.parametrize("tau", TAUS)
def test_every_logit_loss_is_zero_when_the_tempered_student_matches_and_positive_otherwise(name, tau):
    fn = losses.LOGIT_LOSSES[name]
    logits = rand(5, 4, seed=16)
    matching = (logits / tau).softmax(1)
    for target_class in (matching.argmax(1), torch.tensor([3, 0, 1, 2, 0])):    # pseudo-labels; true labels
        assert abs(fn(logits, matching, target_class, tau).item()) < 1e-5
        other = rand(5, 4, seed=17).softmax(1)
        assert fn(logits, other, target_class, tau).item() > 1e-3


def test_logit_loss_finds_each_entry_and_refuses_an_unknown_name():
    assert set(losses.LOGIT_LOSSES) == {"kd", "dkd", "lskd", "mse"}
    assert losses.FULL_DISTRIBUTION == {"lskd", "mse"}
    for name, fn in losses.LOGIT_LOSSES.items():
        assert losses.logit_loss(name) is fn
    with pytest.raises(DplError, match="unknown loss 'nope'.*kd"):
        losses.logit_loss("nope")


# ---- contrastive ------------------------------------------------------------------------------------------

def test_contrastive_logits_are_tempered_cosines_without_the_diagonal_and_the_other_view_is_positive():
    z, t = rand(6, 3, seed=18), 0.5
    sim, positives = losses.contrastive_logits(z, t)
    assert positives.tolist() == [3, 4, 5, 0, 1, 2]
    for i, k in itertools.product(range(6), range(6)):
        if i == k:
            assert sim[i, k] == float("-inf")
        else:
            cosine = F.cosine_similarity(z[i], z[k], dim=0).item()
            assert sim[i, k].item() == pytest.approx(cosine / t, abs=1e-5)


@pytest.mark.parametrize("n", [2, 5])
def test_contrastive_logits_need_two_views_of_at_least_two_images(n):
    with pytest.raises(DplError, match="two views"):
        losses.contrastive_logits(rand(n, 3), 0.5)


def test_nt_xent_matches_a_direct_computation():
    torch.manual_seed(0)
    z, t = torch.randn(6, 5), 0.3
    u = z / z.norm(dim=1, keepdim=True)
    expected = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        denominator = sum(torch.exp(u[i] @ u[k] / t) for k in range(6) if k != i)
        expected += -torch.log(torch.exp(u[i] @ u[positive] / t) / denominator)
    assert torch.allclose(losses.nt_xent(z, t), expected / 6, atol=1e-5)


# ---- float32 under bf16 ---------------------------------------------------------------------------------

def test_every_loss_is_computed_in_float32_from_bfloat16_inputs():
    logits, other = rand(4, 5, seed=19).bfloat16(), rand(4, 5, seed=20).softmax(1).bfloat16()
    y = torch.tensor([0, 1, 2, 3])
    values = {
        "cross_entropy": losses.cross_entropy(logits, y),
        "tempered_kl": losses.tempered_kl(logits, other, 2.0),
        "hard_pseudo_label": losses.hard_pseudo_label(logits, other),
        "hint_mse": losses.hint_mse(logits, other),
        "dkd": losses.dkd(logits, other, y, 2.0),
        "lskd": losses.lskd(logits, other, 2.0),
        "logit_mse": losses.logit_mse(logits, other, 2.0),
        "nt_xent": losses.nt_xent(logits, 0.5),
    }
    assert {k: v.dtype for k, v in values.items()} == {k: torch.float32 for k in values}
