"""The one training loop. `teach`, `distill`, `hint` and `pretrain` differ only in what a batch is and
what the loss is: each passes an objective (batch -> loss, stats) and a batch maker to `fit`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dpl.core import DplError

Objective = Callable[[object], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Progress = Callable[[dict], None]


class TrainingError(RuntimeError):
    """A run that failed while training (exit code 1), e.g. a non-finite loss."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    log_every: int = 10

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise DplError(f"unknown optimizer {self.optimizer!r}; valid: sgd, adamw")
        if self.epochs < 1 or self.batch_size < 1:
            raise DplError("--epochs and --batch-size must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DplError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise DplError("--weight-decay and --warmup-epochs must be >= 0")


@dataclass(frozen=True)
class Runtime:
    """Where the work runs and how: CUDA gets bf16 autocast and channels_last."""

    device: torch.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cuda else model


def runtime(device: str = "auto") -> Runtime:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DplError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DplError("--device cuda, but no CUDA device is available")
    return Runtime(torch.device(device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device,
                     drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Index batches of one epoch; the order depends only on (seed, epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start: start + batch_size]


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if drop_last and n >= batch_size else math.ceil(n / batch_size)


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalization parameters.
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return factor


def fit(module: nn.Module, objective: Objective, batches: Callable[[int], Iterable], n_steps: int,
        cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None) -> list[dict]:
    """Train every parameter of `module` (the model plus any objective heads) for cfg.epochs.

    `batches(epoch)` yields `n_steps` batches; `objective(batch)` returns the loss and a dict of
    scalar stats to average. Returns one dict of averaged stats per epoch.
    """
    optimizer = make_optimizer(module, cfg)
    total = cfg.epochs * n_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, round(cfg.warmup_epochs * n_steps)))
    history = []
    emit = on_progress or (lambda event: None)
    emit({"event": "start", "epochs": cfg.epochs, "steps": total})
    step = 0
    for epoch in range(cfg.epochs):
        module.train()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in batches(epoch):
            with rt.autocast():
                loss, stats = objective(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            count += 1
            for k, v in {"loss": loss, **stats}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if count % cfg.log_every == 0 or count == n_steps:
                means = {k: (v / count).item() for k, v in sums.items()}
                if not math.isfinite(means["loss"]):
                    raise TrainingError(f"loss is {means['loss']} at epoch {epoch + 1} step {count}; "
                                        f"try a lower --lr")
                emit({"event": "step", "epoch": epoch, "step": step, "lr": schedule.get_last_lr()[0], **means})
        summary = {"epoch": epoch + 1, **{k: (v / max(count, 1)).item() for k, v in sums.items()}}
        history.append(summary)
        emit({"event": "epoch", **summary})
    return history
