"""Feature distillation terms of `dpl distill` with a live teacher (`--feature-loss`): which layers of student
and teacher are compared, the heads that match their shapes, CRD's queue of teacher embeddings, and the term
itself, added to distill's terms as `weight * sum over layer pairs of losses.FEATURE_LOSSES[loss]`.

Default layers (RepDistiller's choices): at, the outputs of the residual stages (the last block before each
change of shape), the same number spread over each net; sp, the last of them (the last feature map); rkd, pkt
and crd, the embedding (models.FEATURES, the input of the final Linear); hint, the middle of each net
(models.middle_layer). Heads: hint's regressor (models.make_regressor) per pair; crd's two linear embeddings (student
and teacher side, both trained). They train with the student (one module for `fit`) and are saved beside it
under `objective.`.

CRD's negatives are the other samples of the batch and, with --crd-queue N, the teacher embeddings of the last
N samples (MoCo's queue; the embedding of the anchor's own sample excluded): not CRD's memory bank of every
training sample, which grows with the data. The queue is part of the resume state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .. import DplError, losses, models
from ..engine import distributed
from ..models import make_regressor, middle_layer
from ..engine.train import Runtime

# RepDistiller's CIFAR-100 weights of each term (its -b), CE and the term alone (KD off). hint: RepDistiller's
# 100 weighs the plain mean squared error; losses.hint_mse is half of it (FitNets' form), hence 200.
DEFAULT_WEIGHTS = {"at": 1000.0, "rkd": 1.0, "pkt": 30000.0, "sp": 3000.0, "crd": 0.8, "hint": 200.0}
RELATIONAL = frozenset({"rkd", "pkt", "sp", "crd"})     # they compare the samples of a batch with each other
CRD_DEFAULTS = {"crd_queue": 4096, "crd_dim": 128, "crd_tau": 0.07}
CRD_FLAGS = {"crd_queue": "--crd-queue", "crd_dim": "--crd-dim", "crd_tau": "--crd-tau"}


@dataclass(frozen=True, kw_only=True)
class FeatureOptions:
    loss: str | None = None                 # a losses.FEATURE_LOSSES entry; None: no feature term
    weight: float | None = None             # [DEFAULT_WEIGHTS]
    student_layers: tuple[str, ...] = ()    # module paths, or models.FEATURES; () : the loss's defaults
    teacher_layers: tuple[str, ...] = ()
    crd_queue: int | None = None            # past teacher embeddings as negatives; 0: in-batch only [4096]
    crd_dim: int | None = None              # CRD's embedding width [128]
    crd_tau: float | None = None            # CRD's temperature [0.07]

    def __post_init__(self):
        crd_given = [flag for key, flag in CRD_FLAGS.items() if getattr(self, key) is not None]
        if self.loss is None:
            given = [flag for flag, v in (("--feature-weight", self.weight), ("--student-layer", self.student_layers),
                                          ("--teacher-layer", self.teacher_layers)) if v] + crd_given
            if given:
                raise DplError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} a feature loss: give "
                               f"--feature-loss ({', '.join(losses.FEATURE_LOSSES)})")
            return
        losses.feature_loss(self.loss)
        if crd_given and self.loss != "crd":
            raise DplError(f"{', '.join(crd_given)} set{'s' if len(crd_given) == 1 else ''} --feature-loss crd's "
                           f"embedding and negatives, not --feature-loss {self.loss}'s")
        if self.weight is not None and not 0 <= self.weight < math.inf:
            raise DplError(f"--feature-weight must be a finite number >= 0, got {self.weight}")
        if self.crd_queue is not None and self.crd_queue < 0:
            raise DplError(f"--crd-queue must be >= 0 (0: in-batch negatives only), got {self.crd_queue}")
        if self.crd_dim is not None and self.crd_dim < 1:
            raise DplError(f"--crd-dim must be at least 1, got {self.crd_dim}")
        if self.crd_tau is not None and not 0 < self.crd_tau < math.inf:
            raise DplError(f"--crd-tau must be a finite number > 0, got {self.crd_tau}")

    @property
    def active(self) -> bool:
        return self.loss is not None

    def resolved(self, labels: bool, n_teachers: int) -> FeatureOptions:
        """The options with their defaults filled in; refused unless the run has exactly one live teacher (`labels`:
        whether it has stored labels)."""
        if not self.active:
            return self
        if n_teachers == 0 and labels:
            raise DplError("feature losses need the teacher's features: give --teacher (stored labels keep only "
                           "its class probabilities)")
        if n_teachers != 1:
            raise DplError(f"--feature-loss {self.loss} compares the student with one teacher's layers: give one "
                           f"--teacher, not {n_teachers}")
        crd = {k: default if getattr(self, k) is None else getattr(self, k)
               for k, default in CRD_DEFAULTS.items()} if self.loss == "crd" else {}
        return replace(self, weight=DEFAULT_WEIGHTS[self.loss] if self.weight is None else self.weight, **crd)


def stage_outputs(model: nn.Module, input_shape) -> list[str]:
    """The residual blocks (in a plain net, the ReLUs) that end a stage: the last before the output shape
    changes, and the last of all."""
    blocks = models.block_layers(model, input_shape)
    return [r["path"] for r, after in zip(blocks, blocks[1:] + [None]) if after is None or after["shape"] != r["shape"]]


def spread(paths: list[str], k: int, side: str) -> list[str]:
    """k of `paths` spread evenly, ending with the last."""
    n = len(paths)
    if k > n:
        raise DplError(f"the {side} has {n} stage outputs and {k} are asked for: name its layers with "
                       f"--{side}-layer")
    return [paths[((i + 1) * 2 * n + k) // (2 * k) - 1] for i in range(k)]


def default_layers(loss: str, student: nn.Module, teacher: nn.Module, input_shape,
                   given_student: tuple[str, ...], given_teacher: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The layer pairs of `loss`: those given, the other side (or both) by the loss's default, which is one
    layer but for at: as many stage outputs as the other side names, else as many as the shallower net has."""
    s, t = list(given_student), list(given_teacher)
    nets = {"student": student, "teacher": teacher}
    if loss == "at" and not (s and t):
        ends = {side: stage_outputs(net, input_shape) for side, net in nets.items()}
        k = len(s or t) or min(map(len, ends.values()))
        s, t = s or spread(ends["student"], k, "student"), t or spread(ends["teacher"], k, "teacher")
    for side, paths in (("student", s), ("teacher", t)):
        if not paths:
            paths.append(stage_outputs(nets[side], input_shape)[-1] if loss == "sp" else
                         middle_layer(nets[side], input_shape) if loss == "hint" else models.FEATURES)
    if len(s) != len(t):
        raise DplError(f"{len(s)} --student-layer and {len(t)} --teacher-layer: --feature-loss {loss} pairs them "
                       "one to one")
    if loss == "crd" and len(s) > 1:
        raise DplError("--feature-loss crd embeds one layer of each net: give one --student-layer and one "
                       "--teacher-layer")
    return s, t


def layer_shapes(model: nn.Module, paths: list[str], input_shape) -> list[tuple[int, ...]]:
    """Each layer's output shape (less the batch); an unknown path or a layer without a tensor output is refused."""
    with models.Taps(model, paths) as taps:
        return [models.output_shape(taps, p, input_shape) for p in paths]


def make_heads(loss: str, s_shapes, t_shapes, dim: int | None) -> nn.ModuleDict:
    """hint: a regressor per pair, from the student's shape to the teacher's; crd: a linear embedding of each side."""
    if loss == "hint":
        return nn.ModuleDict({"regressor": nn.ModuleList(make_regressor(s, t) for s, t in zip(s_shapes, t_shapes))})
    if loss == "crd":
        return nn.ModuleDict({f"embed_{side}": nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), dim))
                              for side, shape in (("student", s_shapes[0]), ("teacher", t_shapes[0]))})
    return nn.ModuleDict()


def check_shapes(loss: str, student_layers, teacher_layers, s_shapes, t_shapes) -> None:
    if loss != "at":
        return
    for side, paths, shapes in (("student", student_layers, s_shapes), ("teacher", teacher_layers, t_shapes)):
        for path, shape in zip(paths, shapes):
            if len(shape) != 3:
                raise DplError(f"--feature-loss at compares feature maps (C, H, W): the {side}'s layer {path!r} "
                               f"gives {tuple(shape)}")


class Queue:
    """The last `size` teacher embeddings (L2-normalised, float32) and the sample each came from (-1: an empty
    slot), the oldest overwritten first. Under torchrun every rank pushes every rank's batch, so all ranks hold
    the same queue (as MoCo's)."""

    def __init__(self, size: int, dim: int, device: torch.device):
        self.embeddings = torch.zeros(size, dim, device=device)
        self.ids = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.position = 0

    def negatives(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The queued embeddings and, per anchor, which of them are not negatives (its own sample, empty slots)."""
        return self.embeddings, (self.ids[None, :] == ids[:, None]) | (self.ids[None, :] < 0)

    def push(self, embeddings: torch.Tensor, ids: torch.Tensor) -> None:
        if distributed.rank_world()[1] > 1:
            embeddings, ids = (torch.cat(distributed.gather(t, t.device)) for t in (embeddings, ids))
        size = len(self.ids)
        embeddings, ids = embeddings[-size:], ids[-size:]
        slots = (self.position + torch.arange(len(ids), device=ids.device)) % size
        # Out of place: this step's graph holds the queue it read.
        self.embeddings = self.embeddings.index_copy(0, slots, embeddings)
        self.ids = self.ids.index_copy(0, slots, ids)
        self.position = (self.position + len(ids)) % size

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"crd_queue": self.embeddings, "crd_queue_ids": self.ids,
                "crd_queue_position": torch.tensor(self.position)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if any(k not in state or state[k].shape != v.shape for k, v in self.state_dict().items()):
            raise DplError(f"the resume state holds no CRD queue of {len(self.ids)} embeddings of "
                           f"{self.embeddings.shape[1]}")
        self.embeddings = state["crd_queue"].to(self.embeddings.device, torch.float32)
        self.ids = state["crd_queue_ids"].to(self.ids.device, torch.int64)
        self.position = int(state["crd_queue_position"])


class FeatureTerm:
    """The feature term of one run: the layer pairs, the student's taps (one forward gives its logits and its
    tapped layers), the heads and CRD's queue. `student(x)` -> (logits, outputs); `term(student outputs,
    teacher outputs, ids)` -> the weighted term, `ids` naming each row's sample (for the queue). An
    `ObjectiveState` for `fit` (the queue). Use as a context manager: the taps come off at the end."""

    def __init__(self, opts: FeatureOptions, student: nn.Module, teacher: nn.Module, input_shape, batch_images: int,
                 rt: Runtime):
        if opts.loss in RELATIONAL and batch_images < 2:
            raise DplError(f"--feature-loss {opts.loss} compares the samples of a batch with each other, and this "
                           f"run's batches hold {batch_images}: give a --batch-size of at least 2")
        self.opts = opts
        self.student_layers, self.teacher_layers = default_layers(
            opts.loss, student, teacher, input_shape, opts.student_layers, opts.teacher_layers)
        self.student_shapes = layer_shapes(student, self.student_layers, input_shape)
        self.teacher_shapes = layer_shapes(teacher, self.teacher_layers, input_shape)
        check_shapes(opts.loss, self.student_layers, self.teacher_layers, self.student_shapes, self.teacher_shapes)
        self.heads = rt.prepare(make_heads(opts.loss, self.student_shapes, self.teacher_shapes, opts.crd_dim))
        self.queue = Queue(opts.crd_queue, opts.crd_dim, rt.device) if opts.loss == "crd" and opts.crd_queue else None
        self.logits = models.feature_layer(student)
        self.taps = models.Taps(student, [*self.student_layers, self.logits])
        self.loss = losses.feature_loss(opts.loss)

    @property
    def name(self) -> str:
        return self.opts.loss

    def student(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.taps(x)
        return out[self.logits], [out[p] for p in self.student_layers]

    def term(self, s_out: list[torch.Tensor], t_out: list[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        if self.opts.loss == "hint":
            value = sum(self.loss(r(s), t) for r, s, t in zip(self.heads["regressor"], s_out, t_out))
        elif self.opts.loss == "crd":
            s, t = self.heads["embed_student"](s_out[0]), self.heads["embed_teacher"](t_out[0])
            negatives, exclude = self.queue.negatives(ids) if self.queue is not None else (None, None)
            value = self.loss(s, t, self.opts.crd_tau, negatives, exclude)
            if self.queue is not None:
                self.queue.push(F.normalize(t.detach().float(), dim=1), ids)
        else:
            value = sum(self.loss(s, t) for s, t in zip(s_out, t_out))
        return self.opts.weight * value

    def record(self) -> dict:
        """The `features` entry of the checkpoint's `distill` section."""
        crd = {k: getattr(self.opts, k) for k in CRD_DEFAULTS} if self.opts.loss == "crd" else {}
        return {"loss": self.opts.loss, "weight": self.opts.weight, "student_layers": self.student_layers,
                "teacher_layers": self.teacher_layers, "student_shapes": [list(s) for s in self.student_shapes],
                "teacher_shapes": [list(s) for s in self.teacher_shapes], **crd,
                "heads": {name: type(m).__name__ for name, m in self.heads.items()}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.queue.state_dict() if self.queue is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.queue is not None:
            self.queue.load_state_dict(state)

    def __enter__(self) -> FeatureTerm:
        return self

    def __exit__(self, *exc) -> None:
        self.taps.remove()
