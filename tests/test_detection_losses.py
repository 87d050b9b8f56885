"""core/losses/detection.py (Chen et al.'s terms, WSDDN's and OICR's), and the masked and bag losses of semi and
mil, each against the formula it claims, written out here by hand in plain float64 arithmetic. Tiny tensors: fast."""

import math

import pytest
import torch

from dpl.core import losses
from dpl.core.losses import detection


def rand(*shape, seed=0, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda q: (q[2] - q[0]) * (q[3] - q[1])      # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


# ---- Chen et al. 2017 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau,w0", [(1.0, 1.5), (2.0, 1.0), (4.0, 3.0)])
def test_weighted_soft_ce_is_minus_the_class_weighted_teacher_probability_times_the_student_log_probability(tau, w0):
    s, t = rand(5, 4, seed=1), rand(5, 4, seed=2)
    expected = 0.0
    for srow, trow in zip(s.double().tolist(), t.double().tolist()):
        p_t, p_s = softmax([v / tau for v in trow]), softmax([v / tau for v in srow])
        expected -= sum((w0 if c == 0 else 1.0) * p_t[c] * math.log(p_s[c]) for c in range(4))
    assert detection.weighted_soft_ce(s, t, w0, tau).item() == pytest.approx(expected / 5, rel=1e-5)


@pytest.mark.parametrize("tau,w0", [(1.0, 1.5), (3.0, 0.5)])
def test_weighted_soft_bce_weighs_the_object_one_and_the_background_w0_over_every_logit(tau, w0):
    s, t = rand(2, 3, 4, seed=3), rand(2, 3, 4, seed=4)
    pairs = list(zip(s.double().flatten().tolist(), t.double().flatten().tolist()))
    expected = 0.0
    for sv, tv in pairs:
        p = sigmoid(tv / tau)
        expected -= p * math.log(sigmoid(sv / tau)) + w0 * (1 - p) * math.log(sigmoid(-sv / tau))
    assert detection.weighted_soft_bce(s, t, w0, tau).item() == pytest.approx(expected / len(pairs), rel=1e-5)


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0])
def test_bounded_regression_counts_a_row_only_where_the_student_is_not_margin_better_than_the_teacher(margin):
    student, teacher, target = rand(6, 4, seed=5), rand(6, 4, seed=6), rand(6, 4, seed=7)
    expected = 0.0
    for s, t, y in zip(student.double().tolist(), teacher.double().tolist(), target.double().tolist()):
        s_err = sum((a - b) ** 2 for a, b in zip(s, y))
        t_err = sum((a - b) ** 2 for a, b in zip(t, y))
        expected += s_err if s_err + margin > t_err else 0.0
    found = detection.bounded_regression(student, teacher, target, margin)
    assert found.item() == pytest.approx(expected / 6, rel=1e-5)


def test_bounded_regression_without_rows_is_zero_and_keeps_the_student_graph():
    student = torch.zeros(0, 4, requires_grad=True)
    value = detection.bounded_regression(student, torch.zeros(0, 4), torch.zeros(0, 4), 0.0)
    assert value.item() == 0.0 and value.requires_grad


# ---- WSDDN and OICR ----------------------------------------------------------------------------------------

def test_image_bce_is_the_mean_binary_cross_entropy_of_the_image_scores():
    scores, present = rand(3, 4, seed=8).sigmoid(), torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 1]])
    expected = 0.0
    for p_row, y_row in zip(scores.double().tolist(), present.tolist()):
        expected -= sum(y * math.log(p) + (1 - y) * math.log(1 - p) for p, y in zip(p_row, y_row))
    assert detection.image_bce(scores, present).item() == pytest.approx(expected / 12, rel=1e-5)


BOXES = [[0.0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11], [20, 20, 30, 30], [21, 20, 31, 30]]


def overlaps() -> torch.Tensor:
    return torch.tensor([[iou(a, b) for b in BOXES] for a in BOXES])


def test_spatial_regulariser_is_half_the_squared_top_score_times_the_neighbours_mean_distance():
    region = rand(2, 5, 3, seed=9).softmax(1)
    features = rand(2, 5, 6, seed=10)
    present = torch.tensor([[1.0, 0, 1], [0, 1, 1]])
    o = overlaps().tolist()
    total, pairs = 0.0, 0
    for b in range(2):
        for c in range(3):
            if not present[b, c]:
                continue
            scores = region[b, :, c].tolist()
            top = max(range(5), key=scores.__getitem__)
            near = [r for r in range(5) if o[top][r] >= detection.SPATIAL_IOU]
            f = features[b].double().tolist()
            mean = sum(sum((x - y) ** 2 for x, y in zip(f[top], f[r])) / 6 for r in near) / len(near)
            total += 0.5 * scores[top] ** 2 * mean
            pairs += 1
    found = detection.spatial_regulariser(features, region, present, overlaps())
    assert found.item() == pytest.approx(total / pairs, rel=1e-4)
    assert detection.spatial_regulariser(features, region, torch.zeros(2, 3), overlaps()).item() == 0.0


def test_refinement_loss_is_the_seed_weighted_cross_entropy_of_the_class_of_the_most_overlapped_seed():
    previous = rand(2, 5, 2, seed=11).softmax(1)
    logits = rand(2, 5, 3, seed=12)
    present = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    o = overlaps().tolist()
    total = 0.0
    for b in range(2):
        seeds = {}
        for c in range(2):
            if present[b, c]:
                scores = previous[b, :, c].tolist()
                seeds[c] = max(range(5), key=scores.__getitem__)
        for r in range(5):
            # the present class whose seed overlaps region r most (no ties in this draw)
            c = max(seeds, key=lambda k: o[seeds[k]][r])
            target = c + 1 if o[seeds[c]][r] >= detection.REFINE_IOU else 0
            weight = previous[b, seeds[c], c].item()
            total += weight * -math.log(softmax(logits[b, r].double().tolist())[target])
    found = detection.refinement_loss(logits, previous, present, overlaps())
    assert found.item() == pytest.approx(total / 10, rel=1e-5)
    assert detection.refinement_loss(logits, previous, torch.zeros(2, 2), overlaps()).item() == 0.0


# ---- the masked pseudo-label loss (semi) and the bag loss (mil) --------------------------------------------

def test_masked_pseudo_label_is_the_cross_entropy_of_the_kept_rows_averaged_over_every_row():
    logits, pseudo, mask = rand(5, 3, seed=13), torch.tensor([0, 2, 1, 1, 0]), torch.tensor([1.0, 0, 1, 0, 1])
    expected = sum(-math.log(softmax(row)[y]) * m
                   for row, y, m in zip(logits.double().tolist(), pseudo.tolist(), mask.tolist()))
    assert losses.masked_pseudo_label(logits, pseudo, mask).item() == pytest.approx(expected / 5, rel=1e-5)


def test_bag_bce_is_the_binary_cross_entropy_of_the_bag_logits():
    logits, labels = rand(4, seed=14), torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = -sum(y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z))
                    for z, y in zip(logits.double().tolist(), labels.tolist()))
    assert losses.bag_bce(logits, labels).item() == pytest.approx(expected / 4, rel=1e-5)


def test_every_detection_loss_is_computed_in_float32_from_bfloat16_inputs():
    s, t = rand(4, 3, seed=15).bfloat16(), rand(4, 3, seed=16).bfloat16()
    values = {
        "weighted_soft_ce": detection.weighted_soft_ce(s, t, 1.5),
        "weighted_soft_bce": detection.weighted_soft_bce(s, t, 1.5),
        "bounded_regression": detection.bounded_regression(rand(2, 4).bfloat16(), rand(2, 4, seed=1), rand(2, 4), 0.0),
        "image_bce": detection.image_bce(t.sigmoid(), torch.ones(4, 3)),
        "refinement_loss": detection.refinement_loss(rand(1, 5, 3).bfloat16(), rand(1, 5, 2).softmax(1),
                                                     torch.ones(1, 2), overlaps()),
        "masked_pseudo_label": losses.masked_pseudo_label(s, torch.tensor([0, 1, 2, 0]), torch.ones(4)),
        "bag_bce": losses.bag_bce(s[:, 0], torch.ones(4)),
    }
    assert {k: v.dtype for k, v in values.items()} == {k: torch.float32 for k in values}
