"""The one training loop. `teach`, `distill`, `hint` and `pretrain` differ only in what a batch is and
what the loss is: each passes an objective and a batch maker to `fit`. An objective maps a batch to its
loss terms, already weighted ({"ce": ..., "kd": ...}: the loss is their sum) and statistics to average
that are not part of the loss ({"acc": ...}).

`fit` owns the optimizer, the schedule, the NaN guard, validation and the run's records; what it builds on
lives beside it in the engine: `runtime` (Runtime, Feed), `sampling` (batch orders), `ema`, `resume`
(resume state, RNG, signals). Their public names are re-exported here, so `train.X` reaches all of the engine
a training objective uses.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import DplError, Interrupted, RunError
from . import distributed
from .ema import Ema
from .resume import ObjectiveState, ResumeSpec, StopRequests, load_resume_state, rng_states, save_resume_state
from .runtime import Runtime

# The rest of the engine's public names, re-exported: the objectives and the CLI reach the engine as `train.X`.
from .ema import ema_decay  # noqa: F401
from .resume import seed_everything  # noqa: F401
from .runtime import Feed, runtime, take_rows  # noqa: F401
from .sampling import index_stream, paired_indices, shuffled_batches, steps_per_epoch  # noqa: F401

Objective = Callable[[object], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]
Progress = Callable[[dict], None]


WARMUP_SHARE = 0.2     # the largest share of a run its learning-rate warmup may take


@dataclass(frozen=True, kw_only=True)
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
    ema: float | None = None        # decay of the exponential moving average of the weights; None: no EMA

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise DplError(f"unknown optimizer {self.optimizer!r}; valid: sgd, adamw")
        if self.epochs < 0 or self.batch_size < 1:
            raise DplError("--epochs must be at least 0 and --batch-size at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise DplError(f"--lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise DplError("--weight-decay and --warmup-epochs must be >= 0")
        if self.ema is not None and not 0 < self.ema < 1:
            raise DplError(f"--ema must be in (0, 1), got {self.ema}")

    @property
    def warmup(self) -> float:
        """The warmup used, in epochs: --warmup-epochs, at most a fifth of the run, so that the schedule always
        ends with its decay (a 1-epoch run warmed up for its whole epoch would end at the peak learning rate,
        its batch-norm statistics never settled)."""
        return min(self.warmup_epochs, self.epochs * WARMUP_SHARE)


def make_optimizer(module: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and normalization parameters.
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    # foreach: torch picks the per-tensor loop on the CPU, a quarter slower per step for dpl's small models.
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0, foreach=True)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    return factor


@dataclass
class Clock:
    """Where a run is, for objectives whose loss changes over training (a loss weight's warm-up, a curriculum):
    `fit` sets it before every step, resumed runs included."""

    epoch: int = 0              # the current epoch, from 0
    step: int = 0               # optimizer steps taken before the current one
    steps_per_epoch: int = 1

    @property
    def epochs_done(self) -> float:
        """Fractional epochs completed before the current step."""
        return self.step / self.steps_per_epoch


@dataclass(frozen=True)
class Validation:
    """Evaluation on held-out data during training: `measure()` returns the task's figures of the model in eval
    mode (a classifier's top1, nll, ece; a detector's mAP; ...), every `every` epochs and after the last, logged
    as `val_<name>` for each name in `logged`; with `keep_best`, `fit` ends with the weights of the epoch of the
    best `best` figure (the earliest among equals) instead of the last."""

    measure: Callable[[], dict]
    every: int = 1
    keep_best: bool = False
    best: str = "top1"
    logged: tuple[str, ...] = ("top1", "nll", "ece")


def best_epoch(history: list[dict], metric: str = "top1") -> dict | None:
    """The epoch record of the best validation `metric` (the earliest among equals); None without validation."""
    key = f"val_{metric}"
    validated = [h for h in history if h.get(key) is not None]
    return max(validated, key=lambda h: (h[key], -h["epoch"])) if validated else None


def fit(module: nn.Module, objective: Objective, batches: Callable[[int], Iterable], n_steps: int,
        cfg: TrainConfig, rt: Runtime, on_progress: Progress | None = None,
        resume: ResumeSpec | None = None, *, batch_images: int = 0,
        validation: Validation | None = None, clock: Clock | None = None,
        state: ObjectiveState | None = None) -> list[dict]:
    """Train every parameter of `module` (the model plus any objective heads) for cfg.epochs.

    `batches(epoch)` yields `n_steps` batches of `batch_images` images each (per rank), in an order that depends
    only on the epoch; `objective(batch)` returns the loss terms and the stats (see the module docstring).
    Returns one record per epoch (`records` describes them): the averaged loss, terms and stats, the learning
    rate, timing, and the validation figures where `validation` measured them. With `validation.keep_best`
    the module ends with the weights of the best epoch. With cfg.ema, an `Ema` of the module is updated after
    every step: validation measures it, and the module ends with it (with keep_best, the best epoch's EMA) in
    place of its own weights. With `resume`, a resume state is written every
    `resume.every` epochs and when SIGINT/SIGTERM arrives, and `resume.resume` continues from it: weights,
    optimizer, schedule, RNG states, batch position, history, EMA and best weights.

    `clock`, when given, is set to the current epoch and step before each step (see `Clock`). `state`, when
    given, is what the objective keeps between steps (see `ObjectiveState`): saved in the resume state and loaded
    from it.

    `on_progress` receives the events "start" (with the step it starts from and, resumed, the history so far),
    "step" every cfg.log_every steps (the epoch's running means) and "epoch" (the epoch's record).

    A non-finite loss stops the run. On the CPU it is caught before its step is taken, and the resume state is
    written at that step. On a GPU, reading the loss every step would make the host wait for the device each
    step; the loss is read at the log interval instead (as are the stop requests under torchrun, which take an
    all-reduce), so the run stops there, up to cfg.log_every steps late, and keeps the last resume state
    written before.
    """
    if cfg.epochs == 0:
        raise DplError("--epochs 0 trains nothing")
    rank, world = distributed.rank_world()
    if world > 1:
        distributed.setup(rt.device)
        distributed.broadcast_module(module)
        torch.manual_seed(cfg.seed * 1_000 + rank)    # each rank draws its own noise
    run, start_epoch = _Run.start(module, cfg, rt, n_steps, resume, validation, state)
    history, schedule = run.history, run.schedule
    emit = on_progress if on_progress is not None and rank == 0 else None
    step = start_epoch * n_steps + run.count
    if emit:
        emit({"event": "start", "epochs": cfg.epochs, "steps": cfg.epochs * n_steps, "step": step,
              "resumed": bool(resume and resume.resume), "history": list(history)})
    with StopRequests() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            module.train()
            started, count_at_start = time.perf_counter(), run.count
            step = run.epoch(objective, batches(epoch), epoch, step, n_steps, clock, emit, stop)
            record = {"epoch": epoch + 1, "step": step, "lr": schedule.get_last_lr()[0],
                      **_means(run.sums, max(run.count, 1))}
            seconds = time.perf_counter() - started
            record.update(seconds=seconds, images_per_s=(run.count - count_at_start) * batch_images * world / seconds)
            if validation is not None and ((epoch + 1) % validation.every == 0 or epoch + 1 == cfg.epochs):
                record.update(run.validate(validation))
            history.append(record)
            if emit:
                emit({"event": "epoch", **record})
            run.sums, run.count = {}, 0
            if resume is not None and (epoch + 1) % resume.every == 0 and epoch + 1 < cfg.epochs:
                run.checkpoint(epoch + 1, 0)
    run.finish(validation)
    return history


@dataclass
class _Run:
    """The state of `fit` between steps: what a step changes, what a resume state saves."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    rt: Runtime
    resume: ResumeSpec | None
    history: list[dict]
    sums: dict[str, torch.Tensor]
    count: int = 0
    finite: torch.Tensor | None = None      # GPU: whether every loss since the start was finite
    best: dict[str, torch.Tensor] = field(default_factory=dict)   # --keep best: the best epoch's weights (CPU)
    ema: Ema | None = None
    state: ObjectiveState | None = None     # the objective's own state between steps

    @staticmethod
    def start(module: nn.Module, cfg: TrainConfig, rt: Runtime, n_steps: int, resume: ResumeSpec | None,
              validation: Validation | None, state: ObjectiveState | None = None) -> tuple[_Run, int]:
        """A fresh run, or the one a resume state continues; and the epoch it starts in."""
        optimizer = make_optimizer(module, cfg)
        total = cfg.epochs * n_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, round(cfg.warmup * n_steps)))
        # Under torchrun every rank holds the same weights (broadcast, then averaged gradients): their EMAs agree.
        ema = Ema(module, cfg.ema) if cfg.ema is not None else None
        run = _Run(module, optimizer, schedule, cfg, rt, resume, history=[], sums={}, ema=ema, state=state)
        if resume is None or not resume.resume:
            return run, 0
        position, run.best = load_resume_state(resume, module, optimizer, schedule, ema, state)
        run.history, run.count = position["history"], position["batch"]
        run.sums = {k: torch.tensor(v, device=rt.device) for k, v in position["sums"].items()}
        return run, position["epoch"]

    def step(self, objective: Objective, batch, epoch: int, index: int, check: bool, step: int) -> None:
        """One optimizer step (`step` of the run, from 0), then the EMA's update."""
        with self.rt.autocast():
            terms, stats = objective(batch)
            loss = sum(terms.values())
        self.check_finite(loss, {**terms, **stats}, epoch, index, check)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.rank_world()[1] > 1:
            distributed.average_gradients(self.module)
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(step)
        self.count += 1
        for k, v in {"loss": loss, **terms, **stats}.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()

    def epoch(self, objective: Objective, batches: Iterable, epoch: int, step: int, n_steps: int,
              clock: Clock | None, emit: Progress | None, stop: StopRequests) -> int:
        """The steps of one epoch, less the `count` a resumed run took already; returns the run's step after them.
        Emits "step" every cfg.log_every steps; a stop request ends the run here (see `interrupted`)."""
        skip, world = self.count, distributed.rank_world()[1]
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            # The host reads device values only where it must: every step on the CPU (where it costs
            # nothing), at the log interval on a GPU.
            check = not self.rt.cuda or (self.count + 1) % self.cfg.log_every == 0 or self.count + 1 == n_steps
            if clock is not None:
                clock.epoch, clock.step, clock.steps_per_epoch = epoch, step, n_steps
            self.step(objective, batch, epoch, index, check, step)
            step += 1
            if emit and self.count % self.cfg.log_every == 0 and self.count < n_steps:
                emit({"event": "step", "epoch": epoch + 1, "step": step, "lr": self.schedule.get_last_lr()[0],
                      **_means(self.sums, self.count)})
            if (check or world == 1) and not distributed.all_ranks_agree(stop.signum is None, self.rt.device):
                raise self.interrupted(stop.signum, epoch, index)
        return step

    def finish(self, validation: Validation | None) -> None:
        """The module ends with the best epoch's weights (--keep best), else the EMA's, else its own."""
        if validation is not None and validation.keep_best and self.best:
            self.module.load_state_dict(self.best)
        elif self.ema is not None:
            torch._foreach_copy_(self.ema.live, self.ema.average)

    def validate(self, validation: Validation) -> dict:
        """The validation figures of this epoch (of the EMA, with one); keeps the weights measured when they
        are the best so far."""
        started = time.perf_counter()
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            found = validation.measure()
            record = {f"val_{k}": found[k] for k in validation.logged}
            best, key = best_epoch(self.history, validation.best), f"val_{validation.best}"
            if validation.keep_best and record[key] is not None and (best is None or record[key] > best[key]):
                self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}
        return {**record, "val_seconds": time.perf_counter() - started}

    def check_finite(self, loss: torch.Tensor, named: dict, epoch: int, index: int, check: bool) -> None:
        """Exact on the CPU: stop before the step, with a resume state at it. On a GPU: accumulate on the
        device, read at `check` steps, and stop there, keeping the last resume state written before."""
        if not self.rt.cuda:
            if not distributed.all_ranks_agree(bool(torch.isfinite(loss.detach())), self.rt.device):
                self.checkpoint(epoch, index)
                raise self.non_finite(loss, named, f"epoch {epoch + 1} step {index + 1}", "; resume state at that step in ")
            return
        self.finite = torch.isfinite(loss.detach()) & (True if self.finite is None else self.finite)
        if check and not distributed.all_ranks_agree(bool(self.finite), self.rt.device):
            raise self.non_finite(loss, named, f"epoch {epoch + 1} at or before step {index + 1} (on a GPU the loss "
                                  f"is read every {self.cfg.log_every} steps)", "; the last resume state is kept in ")

    def non_finite(self, loss: torch.Tensor, named: dict, where: str, saved: str) -> RunError:
        terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in named.items() if v.numel() == 1)
        saved = saved + str(self.resume.path) if self.resume is not None else ""
        return RunError(f"loss is {float(loss.detach())} at {where}{' (' + terms + ')' if terms else ''}: try a lower "
                        f"--lr{' or --device cpu (no bf16 autocast)' if self.rt.cuda else ''}{saved}")

    def interrupted(self, signum: int | None, epoch: int, index: int) -> Interrupted:
        self.checkpoint(epoch, index + 1)
        signum = signum or signal.SIGTERM          # another rank was signalled
        return Interrupted(signum, f"{signal.Signals(signum).name} at epoch {epoch + 1} step {index + 1}; " + (
            "resume state saved: run the same command with --resume" if self.resume is not None
            else "no output was written"))

    def checkpoint(self, epoch: int, batch: int) -> None:
        """Every rank calls this at the same step; rank 0 writes."""
        if self.resume is None:
            return
        rng = rng_states(self.rt.device)
        if distributed.rank_world()[0] == 0:
            save_resume_state(self.resume, self.module, self.optimizer, self.schedule, {
                "epoch": epoch, "batch": batch, "history": self.history,
                "sums": {k: v.tolist() for k, v in self.sums.items()}}, rng, self.best, self.ema,
                None if self.state is None else self.state.state_dict())


def _means(sums: dict[str, torch.Tensor], count: int) -> dict[str, float | list[float]]:
    """Running means of the stats (scalars, or vectors such as per-class fractions), averaged over ranks."""
    if not sums:
        return {}
    flat = distributed.mean_over_ranks(torch.cat([v.reshape(-1) for v in sums.values()]) / count).tolist()
    means, at = {}, 0
    for k, v in sums.items():
        means[k] = flat[at] if v.ndim == 0 else flat[at: at + v.numel()]
        at += v.numel()
    return means
