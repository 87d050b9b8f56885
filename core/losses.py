"""The losses, as pure functions of tensors, each named for what it returns. Every one is averaged over the
batch and computed in float32 (under bf16 autocast too).

`LOGIT_LOSSES` holds the losses that compare a student's logits with a teacher's class distribution, keyed
by the value of `dpl distill --loss`: each takes (student logits, teacher probabilities at tau, the target
class of each row, tau). Teacher probabilities are all a stored label shard has, so every entry works
offline from `dpl label` shards as well as with a live teacher.
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


LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

LOGIT_LOSSES: dict[str, LogitLoss] = {
    "kd": lambda logits, targets, target_class, tau: tempered_kl(logits, targets, tau),
    "dkd": lambda logits, targets, target_class, tau: dkd(logits, targets, target_class, tau),
}


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
