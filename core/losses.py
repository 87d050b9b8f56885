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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import DplError


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


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose argmax is the target (a statistic, not a loss; kept on the device)."""
    return (logits.argmax(1) == target).float().mean()
