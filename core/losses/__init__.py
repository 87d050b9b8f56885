"""The losses, as pure functions of tensors, each named for what it returns. Every one is averaged over the
batch and computed in float32 (under bf16 autocast too).

`LOGIT_LOSSES` holds the losses that compare a student's logits with a teacher's class distribution, keyed
by the value of `dpl distill --loss`: each takes (student logits, teacher probabilities at tau, the target
class of each row, tau). Teacher probabilities are all a stored label shard has, so every entry works
offline from `dpl label` shards as well as with a live teacher. Losses that need the teacher's logits (lskd,
mse) recover them from the probabilities: tau * log softmax(z / tau) = z - logsumexp(z), the logits up to a
per-row constant that z-scoring or centring removes. That needs every class's probability
(`FULL_DISTRIBUTION`: top-k shards cannot serve them) and a floor where a stored float16 probability
underflowed to 0 (`FP16_SMALLEST`).

`FEATURE_LOSSES` holds the losses that compare a student's layer outputs with a live teacher's, keyed by the
value of `dpl distill --feature-loss` (the heads some need, and which layers, are `core/features.py`'s). Each
takes (student output, teacher output) of one layer pair; the teacher's side is a target (no gradient flows
into it, except CRD's, whose teacher head is trained). They run with autocast off: their matrix products would
otherwise run in bf16.

The losses of detection and weak supervision (Chen et al.'s distillation of a detector, WSDDN, OICR) are
`losses/detection.py`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .. import DplError


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """H(y, softmax(logits)) against class indices."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def tempered_kl(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """Hinton's KD term: tau^2 * KL(targets || softmax(logits / tau)). Its gradient is that of
    tau^2 * H(targets, softmax(logits / tau)); the targets' own entropy is left out, so it reads 0 when the
    student matches. tau^2 keeps the gradient's scale independent of tau."""
    log_q = F.log_softmax(logits.float() / tau, dim=1)
    return (torch.xlogy(targets, targets) - targets * log_q).sum(dim=1).mean() * tau * tau


def hard_pseudo_label(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """H(argmax targets, softmax(logits)): a soft target's most likely class as a hard label."""
    return cross_entropy(logits, targets.argmax(1))


def masked_pseudo_label(logits: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """FixMatch's unlabeled term: mean over every row of mask * H(pseudo, softmax(logits)), the rows whose
    pseudo-label was not confident enough (mask 0) counting as 0."""
    return (F.cross_entropy(logits.float(), pseudo, reduction="none") * mask).mean()


def bag_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiple-instance learning's loss: the binary cross-entropy of the bag logits against the bag labels
    (float 0/1)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels)


def hint_mse(guess: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FitNets' hint loss, 1/2 * mean (target - guess)^2 over every value."""
    return 0.5 * (guess.float() - target.float()).pow(2).mean()


def _binary_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL between Bernoulli(p) and Bernoulli(q), per row."""
    return torch.xlogy(p, p) - torch.xlogy(p, q) + torch.xlogy(1 - p, 1 - p) - torch.xlogy(1 - p, 1 - q)


def dkd(logits: torch.Tensor, targets: torch.Tensor, target_class: torch.Tensor, tau: float,
        alpha: float = 1.0, beta: float = 8.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): tau^2 * (alpha * TCKD + beta * NCKD).

    TCKD is the KL between the binary (target class, all others) splits of teacher and student; NCKD the KL
    between their distributions over the non-target classes, each renormalised. alpha=1, beta=8 are
    mdistiller's CIFAR-100 defaults. Written on probabilities, so a stored soft label serves as the teacher."""
    q = F.softmax(logits.float() / tau, dim=1)
    p = targets.float()
    mask = F.one_hot(target_class, q.shape[1]).bool()
    p_t = (p * mask).sum(1).clamp(0, 1)
    q_t = (q * mask).sum(1).clamp(1e-12, 1 - 1e-7)
    tckd = _binary_kl(p_t, q_t)
    # Non-target distributions: the student's by a log-softmax with the target class removed.
    log_q_rest = F.log_softmax((logits.float() / tau).masked_fill(mask, float("-inf")), dim=1)
    p_rest = p.masked_fill(mask, 0)
    p_rest = p_rest / p_rest.sum(1, keepdim=True).clamp_min(1e-12)
    nckd = (torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest.masked_fill(mask, 0)).sum(1)
    return (alpha * tckd + beta * nckd).mean() * tau * tau


# The smallest positive float16 (a subnormal): a stored probability below half of it reads 0. `distill` floors
# stored soft labels at it before the losses that take their logs (FULL_DISTRIBUTION) see them, so a
# teacher logit more than 16.6 * (the labels' tau) below the row's largest counts as that far below.
FP16_SMALLEST = 2.0 ** -24


def teacher_logits(targets: torch.Tensor, tau: float) -> torch.Tensor:
    """The teacher's logits up to a per-row constant, from its probabilities at tau: tau * log p. A probability
    of 0 (float32 underflow, a float16 floor re-tempered below float32's range) counts as the smallest normal
    float32, 1.2e-38."""
    return tau * targets.float().clamp_min(torch.finfo(torch.float32).tiny).log()


def standardize(z: torch.Tensor) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (1e-7 + std), std with Bessel's correction, as the LSKD authors' code."""
    z = z.float()
    return (z - z.mean(1, keepdim=True)) / (1e-7 + z.std(1, keepdim=True))


def lskd(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """Logit-standardized KD (Sun et al., CVPR 2024): tau^2 * KL(softmax(Z(t) / tau) || softmax(Z(s) / tau)),
    Z the row's z-score (the paper's (z - mean) / (tau * std)). Z is unchanged by adding a constant to a row
    or scaling it, so the teacher's log-probabilities at any tau give exactly its standardized logits."""
    p = F.softmax(standardize(teacher_logits(targets, tau)) / tau, dim=1)
    return tempered_kl(standardize(logits), p, tau)


def logit_mse(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """Logit matching (Ba & Caruana 2014; Kim et al., IJCAI 2021, KD's limit as tau grows): the mean over
    classes of the squared difference of the student's and the teacher's logits, both centred on their row
    mean (the softmax ignores a row's constant, and stored probabilities do not keep it). Independent of tau."""
    s, t = logits.float(), teacher_logits(targets, tau)
    return ((s - s.mean(1, keepdim=True)) - (t - t.mean(1, keepdim=True))).pow(2).mean()


def warmup_factor(epochs_done: float, warmup_epochs: float) -> float:
    """A distillation term's weight ramping linearly from 0 to 1 over `warmup_epochs` (mdistiller's DKD:
    min(epoch / 20, 1)); 1 throughout without a warm-up."""
    return 1.0 if warmup_epochs <= 0 else min(epochs_done / warmup_epochs, 1.0)


LogitLoss = Callable[..., torch.Tensor]

LOGIT_LOSSES: dict[str, LogitLoss] = {
    "kd": lambda logits, targets, target_class, tau: tempered_kl(logits, targets, tau),
    "dkd": dkd,            # keywords alpha, beta
    "lskd": lambda logits, targets, target_class, tau: lskd(logits, targets, tau),
    "mse": lambda logits, targets, target_class, tau: logit_mse(logits, targets, tau),
}

# The losses that recover the teacher's logits from all C probabilities: top-k shards cannot serve them.
FULL_DISTRIBUTION = frozenset({"lskd", "mse"})


def logit_loss(name: str) -> LogitLoss:
    if name not in LOGIT_LOSSES:
        raise DplError(f"unknown loss {name!r}; valid: {', '.join(LOGIT_LOSSES)}")
    return LOGIT_LOSSES[name]


def contrastive_logits(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities / temperature of 2N embeddings (view 1 of every image, then view 2), with
    each sample's similarity to itself masked out; and the index of each sample's positive."""
    z = F.normalize(z.float(), dim=1)
    n2 = z.shape[0]
    if n2 % 2 or n2 < 4:
        raise DplError("NT-Xent needs two views of at least two images")
    sim = (z @ z.T / temperature).masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    positives = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return sim, positives


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (SimCLR): mean over the 2N samples of -log(exp(s_ip / t) / sum_{k != i} exp(s_ik / t)): the
    cross-entropy of contrastive_logits (the SimCLR step composes the two itself, to reuse the similarities)."""
    return cross_entropy(*contrastive_logits(z, temperature))


# ---- feature losses --------------------------------------------------------------------------------

def _in_float32(fn):
    """`fn` with autocast off and its floating-point tensor arguments in float32."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args),
                      **kwargs)
    return wrapped


def _need_pairs(name: str, f: torch.Tensor) -> None:
    if f.shape[0] < 2:
        raise DplError(f"{name} compares the samples of a batch with each other: it needs at least 2, got {f.shape[0]}")


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis's activation-based spatial attention: the mean over channels of |f|^p, flattened
    and L2-normalised per sample."""
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


@_in_float32
def attention_transfer(fs: torch.Tensor, ft: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): the mean over samples and positions of
    (Q_S - Q_T)^2, Q the `attention_map` of (B, C, H, W) feature maps, as the authors' code (beta = 1000 there
    and in RepDistiller). Channel counts may differ; a larger map is first average-pooled to the smaller's
    height and width (RepDistiller's way)."""
    if fs.ndim != 4 or ft.ndim != 4:
        raise DplError(f"attention transfer compares feature maps (B, C, H, W), got {tuple(fs.shape)} and "
                       f"{tuple(ft.shape)}")
    size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
    fs, ft = (f if f.shape[2:] == size else F.adaptive_avg_pool2d(f, size) for f in (fs, ft.detach()))
    return (attention_map(fs, p) - attention_map(ft, p)).pow(2).mean()


@_in_float32
def similarity_preserving(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ||G_T - G_S||_F^2 / B^2, G the B x B Gram matrix of
    the flattened outputs with each row L2-normalised. A row of G then has entries of about 1/sqrt(B), so the
    loss falls like 1/B for the same features: RepDistiller's gamma = 3000 was set at batch 64."""
    _need_pairs("sp", fs)
    b = fs.shape[0]
    s, t = fs.flatten(1), ft.detach().flatten(1)
    gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
    return (gt - gs).pow(2).sum() / (b * b)


@_in_float32
def pkt(fs: torch.Tensor, ft: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), cosine kernel, as the authors' code:
    K_ij = (1 + cos(f_i, f_j)) / 2, p_j|i = K_ij / sum_k K_ik for student and teacher, and the loss the mean
    over the B x B pairs of p_T log((p_T + eps) / (p_S + eps)): the mean KL of the rows divided by B (so, like
    sp, it falls like 1/B; beta = 30000 in RepDistiller at batch 64)."""
    _need_pairs("pkt", fs)

    def conditional(f):
        f = F.normalize(f.flatten(1), dim=1, eps=eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdim=True)
    p_s, p_t = conditional(fs), conditional(ft.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows (0 on the diagonal), divided by their mean off the diagonal."""
    b = e.shape[0]
    sq = e.pow(2).sum(1)
    # Squared distances floored before the root: its gradient at 0 is infinite.
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp_min(1e-12).sqrt()
    d = d * (1 - torch.eye(b, device=e.device))
    return d / (d.sum() / (b * (b - 1))).clamp_min(1e-12)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at every row j between every two rows i and k: <(e_i - e_j)/|.|, (e_k - e_j)/|.|>,
    B^3 values (B^2 x dim and B^3 floats of memory)."""
    v = F.normalize(e[None, :, :] - e[:, None, :], dim=2)        # v[j, i] = unit vector from e_j to e_i
    return torch.bmm(v, v.transpose(1, 2)).flatten()


@_in_float32
def rkd(fs: torch.Tensor, ft: torch.Tensor, distance_weight: float = 25.0, angle_weight: float = 50.0) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019): distance_weight * smooth-L1 between the pairwise distances of
    student and teacher outputs (each divided by its mean), plus angle_weight * smooth-L1 between the cosines of
    the angles of every triplet; outputs flattened. 25 and 50 are the paper's and RepDistiller's weights."""
    _need_pairs("rkd", fs)
    s, t = fs.flatten(1), ft.detach().flatten(1)
    distance = F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return distance_weight * distance + angle_weight * angle


@_in_float32
def crd(s: torch.Tensor, t: torch.Tensor, tau: float, negatives: torch.Tensor | None = None,
        exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive representation distillation (Tian et al., ICLR 2020), with InfoNCE in place of the paper's NCE
    estimate over a memory bank of the whole training set. `s` and `t` are the student's and the teacher's
    embeddings of the same B samples (CRD's linear heads; L2-normalised here). Student anchors: a softmax at
    temperature tau over the batch's teacher embeddings and `negatives` (past teacher embeddings, (N, d),
    L2-normalised; `exclude` (B, N) masks those of the anchor's own sample and empty slots), the positive being
    the same sample's; teacher anchors: the same over the batch's student embeddings. The sum of the two
    cross-entropies (CRD's two symmetric parts), each batch-averaged; log(B + N) at chance."""
    _need_pairs("crd", s)
    s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
    target = torch.arange(s.shape[0], device=s.device)
    student_anchored = s @ t.T / tau
    if negatives is not None and len(negatives):
        queued = s @ negatives.T / tau
        if exclude is not None:
            queued = queued.masked_fill(exclude, float("-inf"))
        student_anchored = torch.cat([student_anchored, queued], dim=1)
    return F.cross_entropy(student_anchored, target) + F.cross_entropy(t @ s.T / tau, target)


@_in_float32
def feature_hint(guess: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FitNets' hint as a distillation term: hint_mse of the regressed student output against the teacher's."""
    return hint_mse(guess, target.detach())


# Keyed by `dpl distill --feature-loss`: (student output, teacher output) of one layer pair -> loss. hint takes
# the student's output through its regressor, crd both outputs through their embedding heads (core/features).
FEATURE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "at": attention_transfer, "rkd": rkd, "pkt": pkt, "sp": similarity_preserving, "crd": crd, "hint": feature_hint,
}


def feature_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in FEATURE_LOSSES:
        raise DplError(f"unknown feature loss {name!r}; valid: {', '.join(FEATURE_LOSSES)}")
    return FEATURE_LOSSES[name]


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose argmax is the target (a statistic, not a loss; kept on the device)."""
    return (logits.argmax(1) == target).float().mean()
