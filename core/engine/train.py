"""The one training loop. `teach`, `distill`, `hint` and `pretrain` differ only in what a batch is and
what the loss is: each passes an objective and a batch maker to `fit`. An objective maps a batch to its
loss terms, already weighted ({"ce": ..., "kd": ...}: the loss is their sum) and statistics to average
that are not part of the loss ({"acc": ...}).
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import DplError, Interrupted, RunError, artifacts
from . import distributed
from ..data import images

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


@dataclass(frozen=True)
class Runtime:
    """Where the work runs and how: CUDA gets bf16 autocast and channels_last.

    Training images live on the device and batches are gathered there by indexing, unless `workers` > 0:
    then they stay in host memory and DataLoader workers gather each batch, into pinned memory on CUDA,
    a few batches ahead of the step. `workers=None` chooses: 0, unless the images would take more than
    half of the GPU's free memory.
    """

    device: torch.device
    compile: bool = False     # torch.compile the trained model's forward
    workers: int | None = None
    prefetch: int = 4         # batches each worker prepares ahead

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cuda else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """The forward to train through; the caller keeps `model` itself for its state_dict."""
        return torch.compile(model) if self.compile else model

    def loader_workers(self, nbytes: int, streamed: bool = False) -> int:
        if self.workers is not None:
            return self.workers
        if streamed:                 # image files: workers decode them
            return images.default_workers(model_on_cpu=not self.cuda)
        if self.cuda and nbytes > torch.cuda.mem_get_info(self.device)[0] // 2:
            return min(4, images.usable_cores())
        return 0

    def place(self, *tensors: torch.Tensor) -> Feed:
        """A feed of batches from these tensors (the training images and the index maps into them)."""
        streamed = any(isinstance(t, images.ImageStore) for t in tensors)
        workers = self.loader_workers(sum(t.nbytes for t in tensors), streamed)
        return Feed(self, workers, tuple(t if workers or not torch.is_tensor(t) else t.to(self.device)
                                         for t in tensors))


@dataclass(frozen=True)
class Feed:
    """Tensors on the device (workers == 0) or in host memory for DataLoader workers to gather from.
    An `images.ImageStore` among them is decoded where the gathering happens."""

    rt: Runtime
    workers: int
    tensors: tuple[torch.Tensor, ...]

    def __call__(self, batches: Iterable, gather: Callable) -> Iterator[tuple[object, torch.Tensor]]:
        """(batch, gather(batch, *tensors) on the device) for each batch of indices, in order."""
        if not self.workers:
            for batch in batches:
                yield batch, gather(batch, *self.tensors).to(self.rt.device)
            return
        batches = [_to(b, torch.device("cpu")) for b in batches]
        # Its own generator: the loader's seed draw must not move the global RNG that the noise comes from.
        loader = DataLoader(_Gathered(batches, gather, self.tensors), batch_size=None, num_workers=self.workers,
                            pin_memory=self.rt.cuda, prefetch_factor=self.rt.prefetch, generator=torch.Generator())
        with images.frozen_heap():
            gathered = iter(loader)
        try:
            for batch, x in zip(batches, gathered):
                yield _to(batch, self.rt.device), x.to(self.rt.device, non_blocking=True)
        except DplError as e:        # raised in a worker: its message is the last line of the report
            raise DplError(str(e).strip().splitlines()[-1].removeprefix("dpl.core.DplError: ")) from None

    def shuffled(self, batch_size: int, seed: int) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """`batches(epoch)` for fit: (indices, images) from the first tensor, in shuffled_batches' order."""
        n = len(self.tensors[0])
        return lambda epoch: self(shuffled_batches(n, batch_size, seed, epoch, self.rt.device), take_rows)


def take_rows(idx: torch.Tensor, images: torch.Tensor, *_) -> torch.Tensor:
    return images[idx]


class _Gathered(torch.utils.data.Dataset):
    def __init__(self, batches: list, gather: Callable, tensors: tuple[torch.Tensor, ...]):
        self.batches, self.gather, self.tensors = batches, gather, tensors

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.gather(self.batches[i], *self.tensors)


def _to(batch, device: torch.device):
    """An index batch (a tensor, None, or a tuple of them) moved to `device`."""
    if batch is None:
        return None
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def runtime(device: str = "auto", compile: bool = False, workers: int | None = None) -> Runtime:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and distributed.rank_world()[1] > 1:
        device = f"cuda:{distributed.local_rank()}"     # one GPU per rank
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DplError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DplError("--device cuda, but no CUDA device is available")
    if workers is not None and workers < 0:
        raise DplError(f"--workers must be >= 0, got {workers}")
    return Runtime(torch.device(device), compile, workers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches of one epoch, the last partial batch dropped (a whole one when n < batch_size); the order
    depends only on (seed, epoch). Under torchrun each rank takes its own slice of the epoch's order (equal
    sizes, no sample twice): --batch-size is per rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    rank, world = distributed.rank_world()
    order = order[: n - n % world][rank::world].to(device)
    n = len(order)
    stop = n - n % batch_size if n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start: start + batch_size]


def index_stream(n: int, count: int, seed: int, epoch: int, device) -> torch.Tensor:
    """`count` indices of 0..n-1: successive seeded permutations, so every sample recurs evenly (a part
    smaller than the epoch's draw from it). Under torchrun, each rank takes its own slice of the one stream
    all ranks share, so what a global step sees does not depend on the world size."""
    rank, world = distributed.rank_world()
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch * 7919 + 1)
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(count * world / n))]
    return torch.cat(perms)[: count * world][rank::world].to(device)


def paired_indices(n_first: int, first: int, n_second: int, second: int, steps: int, seed: int, epoch: int,
                   device) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """(first part's indices, second part's indices) of each of `steps` steps, `first` and `second` a step (this
    rank's), from the index streams of the two parts (seeded `seed` and `seed + 1`); None for a part a step
    takes none of. The labeled/unlabeled mix of `distill` and `semi`."""
    a = index_stream(n_first, steps * first, seed, epoch, device) if first else None
    b = index_stream(n_second, steps * second, seed + 1, epoch, device) if second else None
    return [(a[s * first:(s + 1) * first] if first else None, b[s * second:(s + 1) * second] if second else None)
            for s in range(steps)]


@dataclass(frozen=True)
class Mix:
    """How each step's batch is made (distill, experts, a detector's balanced offline steps): `labeled` samples of the labeled part, then `pseudo` of the
    pseudo-labeled part, for `steps` steps an epoch (per rank: --batch-size is per rank)."""

    labeled: int
    pseudo: int
    steps: int

    @staticmethod
    def plan(n_labeled: int, n_pseudo: int, batch_size: int, ratio: float) -> Mix:
        if n_labeled and n_pseudo:
            b_l = min(batch_size, n_labeled)
            b_u = max(1, round(ratio * b_l))
            steps = n_pseudo // b_u
        elif n_labeled:
            b_l, b_u = min(batch_size, n_labeled), 0
            steps = n_labeled // b_l
        else:
            b_l, b_u = 0, min(batch_size, n_pseudo)
            steps = n_pseudo // b_u
        return Mix(b_l, b_u, max(1, steps // distributed.rank_world()[1]))


def steps_per_epoch(n: int, batch_size: int) -> int:
    n //= distributed.rank_world()[1]
    return n // batch_size if n >= batch_size else math.ceil(n / batch_size)


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


class ObjectiveState(Protocol):
    """What an objective keeps between steps (FlexMatch's record of the latest predictions): `fit` saves its
    tensors in the resume state under `objective.` and loads them back. Equal on every rank under torchrun."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


@dataclass(frozen=True)
class Validation:
    """Evaluation on held-out data during training: `measure()` returns {"top1", "nll", "ece"} of the model in
    eval mode, every `every` epochs and after the last; with `keep_best`, `fit` ends with the weights of the
    epoch of the best top-1 (the earliest among equals) instead of the last."""

    measure: Callable[[], dict]
    every: int = 1
    keep_best: bool = False


def best_epoch(history: list[dict]) -> dict | None:
    """The epoch record of the best validation top-1 (the earliest among equals); None without validation."""
    validated = [h for h in history if "val_top1" in h]
    return max(validated, key=lambda h: (h["val_top1"], -h["epoch"])) if validated else None


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


@dataclass(frozen=True)
class ResumeSpec:
    """Where a run keeps its resume state, how often, and what must match for --resume to use it."""

    path: Path
    run: dict                 # the command and options that define the run
    every: int = 1            # epochs between saves
    resume: bool = False


class _StopRequests:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second signal stops at once."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _rng_state(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
    """Call on every rank at once. Ranks draw their noise from their own torch generators (seeded apart):
    each rank's torch state (and its CUDA device's) is kept under its rank; numpy's and Python's are rank 0's."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_keys.astype(np.int64)),
               "rng.python": torch.tensor(py_state, dtype=torch.int64)}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if distributed.rank_world()[1] > 1:
        for r, s in enumerate(distributed.gather(torch.get_rng_state(), device)):
            tensors[f"rng.torch.rank{r}"] = s
        if device.type == "cuda":
            for r, s in enumerate(distributed.gather(torch.cuda.get_rng_state(device), device)):
                tensors[f"rng.cuda.rank{r}"] = s
    meta = {"numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)], "python": [py_version, py_gauss]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    devices = sorted(int(k.rsplit(".", 1)[1]) for k in tensors if k.startswith("rng.cuda.") and "rank" not in k)
    cuda = [tensors[f"rng.cuda.{i}"] for i in devices]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    rank = distributed.rank_world()[0]
    if f"rng.torch.rank{rank}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch.rank{rank}"])
    if f"rng.cuda.rank{rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{rank}"], distributed.local_rank())
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_gauss = meta["python"]
    random.setstate((version, tuple(tensors["rng.python"].tolist()), py_gauss))


def save_resume_state(spec: ResumeSpec, module: nn.Module, optimizer, schedule, position: dict,
                      rng: tuple[dict[str, torch.Tensor], dict], best: dict[str, torch.Tensor] | None = None,
                      ema: Ema | None = None, objective: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"module.{k}": v for k, v in module.state_dict().items()}
    tensors.update({f"objective.{k}": v for k, v in (objective or {}).items()})
    tensors.update({f"best.{k}": v for k, v in (best or {}).items()})
    tensors.update({f"ema.{k}": v for k, v in (ema.state() if ema is not None else {}).items()})
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for name, value in values.items():
            tensors[f"optimizer.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    rng, rng_meta = rng
    tensors.update(rng)
    meta = {"run": spec.run, "position": position, "param_groups": opt["param_groups"],
            "schedule": schedule.state_dict(), "rng": rng_meta}
    artifacts.save(spec.path, tensors, "resume", meta)


def load_resume_state(spec: ResumeSpec, module: nn.Module, optimizer, schedule,
                      ema: Ema | None = None, objective: ObjectiveState | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Loads the state into the module, optimizer, schedule, EMA and RNGs; returns the position and the weights
    of the best epoch so far (empty unless --keep best)."""
    header = artifacts.read_header(spec.path, kind="resume")
    artifacts.require(header, "run", "position", "param_groups", "schedule", "rng")
    saved = header.meta["run"]
    changed = [k for k in sorted(set(saved) | set(spec.run)) if saved.get(k) != spec.run.get(k)]
    if changed:
        k = changed[0]
        raise DplError(f"{spec.path}: the resume state is from a different run: {k} was {saved.get(k)!r}, "
                       f"now {spec.run.get(k)!r}" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""))
    tensors = artifacts.load_tensors(header)
    artifacts.load_state(module, {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")},
                         spec.path)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": header.meta["param_groups"]})
    schedule.load_state_dict(header.meta["schedule"])
    if ema is not None:
        ema.load({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}, spec.path)
    if objective is not None:
        objective.load_state_dict({k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")})
    _set_rng_state(tensors, header.meta["rng"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return header.meta["position"], best


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
    history, skip, schedule = run.history, run.count, run.schedule
    emit = on_progress if on_progress is not None and rank == 0 else None
    step = start_epoch * n_steps + skip
    if emit:
        emit({"event": "start", "epochs": cfg.epochs, "steps": cfg.epochs * n_steps, "step": step,
              "resumed": bool(resume and resume.resume), "history": list(history)})
    with _StopRequests() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            module.train()
            started, count_at_start = time.perf_counter(), run.count
            for index, batch in enumerate(batches(epoch)):
                if index < skip:
                    continue
                # The host reads device values only where it must: every step on the CPU (where it costs
                # nothing), at the log interval on a GPU.
                check = not rt.cuda or (run.count + 1) % cfg.log_every == 0 or run.count + 1 == n_steps
                if clock is not None:
                    clock.epoch, clock.step, clock.steps_per_epoch = epoch, step, n_steps
                run.step(objective, batch, epoch, index, check, step)
                step += 1
                if emit and run.count % cfg.log_every == 0 and run.count < n_steps:
                    emit({"event": "step", "epoch": epoch + 1, "step": step, "lr": schedule.get_last_lr()[0],
                          **_means(run.sums, run.count)})
                if (check or world == 1) and not distributed.all_ranks_agree(stop.signum is None, rt.device):
                    raise run.interrupted(stop.signum, epoch, index)
            record = {"epoch": epoch + 1, "step": step, "lr": schedule.get_last_lr()[0],
                      **_means(run.sums, max(run.count, 1))}
            seconds = time.perf_counter() - started
            record.update(seconds=seconds, images_per_s=(run.count - count_at_start) * batch_images * world / seconds)
            if validation is not None and ((epoch + 1) % validation.every == 0 or epoch + 1 == cfg.epochs):
                record.update(run.validate(validation))
            history.append(record)
            if emit:
                emit({"event": "epoch", **record})
            skip, run.sums, run.count = 0, {}, 0
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
            record = {f"val_{k}": found[k] for k in ("top1", "nll", "ece")}
            best = best_epoch(self.history)
            if validation.keep_best and (best is None or record["val_top1"] > best["val_top1"]):
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
        rng = _rng_state(self.rt.device)
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
