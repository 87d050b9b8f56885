"""The exponential moving average of a model's weights (`--ema DECAY`), updated after every optimizer step."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from .. import DplError


def ema_decay(decay: float, step: int) -> float:
    """The decay of the EMA update that follows optimizer step `step` (counted from 0): `decay`, ramped up
    from 0.1 as TensorFlow's ExponentialMovingAverage(num_updates=step) does. Without the ramp the random
    initial weights keep a share decay**steps of the average (39% after 930 steps at 0.999); with it the
    average forgets them and weighs roughly the last tenth of a short run."""
    return min(decay, (1 + step) / (10 + step))


class Ema:
    """The exponential moving average of a module's floating-point parameters and buffers (batch-norm running
    statistics are averaged like the weights they describe, as timm's ModelEmaV2/V3 do by default; integer
    buffers such as num_batches_tracked stay the module's). Updated in place after every optimizer step."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        named = [*module.named_parameters(), *module.named_buffers()]     # each shared tensor once
        named = [(k, t.detach()) for k, t in named if t.is_floating_point()]
        self.names = [k for k, _ in named]
        self.live = [t for _, t in named]                     # the module's own storage
        self.average = [t.clone() for t in self.live]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """average = d * average + (1 - d) * weights, d = ema_decay(decay, step)."""
        torch._foreach_lerp_(self.average, self.live, 1.0 - ema_decay(self.decay, step))

    @contextlib.contextmanager
    def swapped_in(self):
        """The module holds the averaged weights inside the block, its own again after it."""
        raw = [t.clone() for t in self.live]
        torch._foreach_copy_(self.live, self.average)
        try:
            yield
        finally:
            torch._foreach_copy_(self.live, raw)

    def state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.average))

    def load(self, state: dict[str, torch.Tensor], path: Path) -> None:
        if sorted(state) != sorted(self.names):
            raise DplError(f"{path}: the resume state's EMA does not match the model")
        torch._foreach_copy_(self.average, [state[k].to(t.device) for k, t in zip(self.names, self.average)])
