"""Checkpoints: one safetensors file of a model's state dict (its arch in the metadata, enough to rebuild it), plus
the tensors of the objective that trained it under OBJECTIVE_PREFIX, kept for inspection and never loaded into a
model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import DplError, models
from .files import load_tensors, read_header, require, save, sha256_file

# Tensors of a checkpoint under this prefix belong to the objective that trained the model (a hint regressor,
# a pretext head), not to the model: kept for inspection, never loaded into a model.
OBJECTIVE_PREFIX = "objective."


def checkpoint_task(path: Path) -> str | None:
    """The `task` a checkpoint file records (None: a classifier, or not a readable checkpoint: its reader will say
    why), for commands that route a model to the code of its task."""
    if not Path(path).is_file():
        return None
    try:
        return read_header(Path(path), kind="checkpoint").meta.get("task")
    except DplError:
        return None


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @property
    def arch(self) -> dict:
        return self.meta["arch"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def input(self) -> dict:
        return self.meta["input"]

    @property
    def heads(self) -> list[dict]:
        """A multi-head student's heads (name, classes, offset, ...); [] for a model with one output."""
        return self.meta.get("heads") or []

    def head(self, name: str) -> dict:
        """The head called `name`, refused with the names there are."""
        for h in self.heads:
            if h["name"] == name:
                return h
        if not self.heads:
            raise DplError(f"{self.path}: a model with one output has no heads (--head picks one of a "
                           "multi-head student's)")
        raise DplError(f"{self.path}: no head {name!r}; its heads: {', '.join(h['name'] for h in self.heads)}")

    def sha256(self) -> str:
        return sha256_file(self.path)

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if not k.startswith(OBJECTIVE_PREFIX)}

    def objective_state(self) -> dict[str, torch.Tensor]:
        return {k[len(OBJECTIVE_PREFIX):]: v for k, v in self.tensors.items() if k.startswith(OBJECTIVE_PREFIX)}

    def build_model(self, **overrides) -> nn.Module:
        """Rebuild the model from metadata alone; `overrides` change arch knobs (dropout, ...).

        A skeleton on the meta device comes first: an arch that lies about its size allocates nothing
        before its shapes are checked against the tensors actually in the file."""
        spec = {**self.arch, **overrides}
        state = self.model_state()
        with torch.device("meta"):
            check_state(self._build(spec), state, self.path)
        model = self._build(spec)
        model.load_state_dict(state)
        return model

    def _build(self, spec: dict) -> nn.Module:
        try:
            return models.build(spec)
        except DplError as e:
            raise DplError(f"{self.path}: {e}") from None


def load_checkpoint(path: Path, task: str = "classifier") -> Checkpoint:
    """A checkpoint of a model that does `task`: another kind (a MIL model given to a command that expects a
    classifier, or the reverse) is refused."""
    header = read_header(path, kind="checkpoint")
    made = header.meta.get("task", "classifier")
    if made != task:
        from ..tasks import TASKS

        title = lambda name: TASKS[name].title if name in TASKS else f"a {name} model"     # noqa: E731
        raise DplError(f"{path}: {title(made)}, not {title(task)}")
    require(header, "arch", "num_classes", "input")
    meta = header.meta
    for knob, key, value in (("num_classes", "num_classes", meta["num_classes"]),
                             ("in_channels", "input channels", meta["input"]["channels"]),
                             ("image_size", "input size", meta["input"]["size"])):
        if meta["arch"].get(knob, value) != value:
            raise DplError(f"{path}: inconsistent metadata: arch {knob} {meta['arch'][knob]!r}, {key} {value}")
    if "heads" in meta and sum(len(h["classes"]) for h in meta["heads"]) != meta["num_classes"]:
        raise DplError(f"{path}: inconsistent metadata: its heads' classes do not add up to num_classes "
                       f"{meta['num_classes']}")
    return Checkpoint(Path(path), meta, load_tensors(header))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with one readable line for every kind of mismatch."""
    check_state(model, state, source)
    model.load_state_dict(state)


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise DplError(f"{source}: weights do not fit the architecture "
                       f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise DplError(f"{source}: weights do not fit the architecture ({k}: {tuple(v.shape)} in the file, "
                           f"{tuple(own[k].shape)} in the model)")
        if own[k].dtype != v.dtype:
            raise DplError(f"{source}: weights do not fit the architecture ({k}: {v.dtype} in the file, "
                           f"{own[k].dtype} in the model)")


def save_checkpoint(path: Path, model: nn.Module, meta: dict, objective: dict[str, torch.Tensor] | None = None) -> None:
    """The model's tensors, and the objective's (`objective`) under OBJECTIVE_PREFIX."""
    tensors = dict(model.state_dict())
    tensors.update({OBJECTIVE_PREFIX + k: v for k, v in (objective or {}).items()})
    save(path, tensors, "checkpoint", meta)


def input_meta(channels: int, size: int, mean, std) -> dict:
    return {"channels": channels, "size": size, "mean": list(mean), "std": list(std)}
