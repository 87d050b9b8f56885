"""What lets a run stop and go on: the resume state (`OUT.resume`: weights, optimizer, schedule, EMA, every RNG,
the batch position), seeding, and the SIGINT/SIGTERM requests that stop a run after its current step.
"""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .. import DplError, artifacts
from . import distributed
from .ema import Ema


@dataclass(frozen=True)
class ResumeSpec:
    """Where a run keeps its resume state, how often, and what must match for --resume to use it."""

    path: Path
    run: dict                 # the command and options that define the run
    every: int = 1            # epochs between saves
    resume: bool = False


class ObjectiveState(Protocol):
    """What an objective keeps between steps (FlexMatch's record of the latest predictions): `fit` saves its
    tensors in the resume state under `objective.` and loads them back. Equal on every rank under torchrun."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class StopRequests:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states(device: torch.device) -> tuple[dict[str, torch.Tensor], dict]:
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


def restore_rng_states(tensors: dict[str, torch.Tensor], meta: dict) -> None:
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
    restore_rng_states(tensors, header.meta["rng"])
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    return header.meta["position"], best
