"""Reaching inside a model: layers by module path, `Taps` (forward hooks, optional early stop: the one layer-tap
utility of hint, feature losses, probes, pretext tasks and `info --layers`), the layer listing, and the
shape-matching regressor built from two tapped layers' shapes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import DplError


def feature_layer(model: nn.Module) -> str:
    """Path of the final linear classifier, whose input is the model's feature vector: a timm model's classifier
    (fc, head.fc, classifier, ...), else the last Linear."""
    named = list(model.named_modules())
    classifier = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if isinstance(classifier, nn.Linear):
        return next(name for name, m in named if m is classifier)
    return [name for name, m in named if isinstance(m, nn.Linear)][-1]


def get_layer(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise DplError(f"no layer {path!r}; valid paths include: {', '.join(names[:40])}"
                       f"{' ...' if len(names) > 40 else ''} (dpl info --layers lists them all)") from None


FEATURES = "features"            # a tap's name for the input of the final Linear: the backbone's feature vector


class _Reached(Exception):
    pass


class Taps:
    """Forward hooks that capture layer outputs by module path; FEATURES captures the input of the model's
    final Linear. The one way dpl reaches inside a model: hints, probes, pretext tasks, `info --layers`.

    `taps(x)` runs the model and returns {path: output}, in the order the layers ran (a layer that runs twice
    keeps its last output). With `stop=True` the forward pass stops as soon as every tapped layer has run, so
    nothing past them is computed. Use as a context manager, or call remove(), to take the hooks off.
    """

    def __init__(self, model: nn.Module, paths, stop: bool = False):
        self.model, self.paths, self.stop = model, list(dict.fromkeys(paths)), stop
        self.captured: dict[str, object] = {}
        self.handles = []
        for path in self.paths:
            if path == FEATURES:
                layer = get_layer(model, feature_layer(model))
                self.handles.append(layer.register_forward_pre_hook(
                    lambda m, args: self._capture(FEATURES, args[0])))
            else:
                self.handles.append(get_layer(model, path).register_forward_hook(
                    lambda m, args, out, path=path: self._capture(path, out)))

    def _capture(self, path: str, out) -> None:
        self.captured[path] = out
        if self.stop and len(self.captured) == len(self.paths):
            raise _Reached

    def __call__(self, x: torch.Tensor) -> dict[str, object]:
        self.captured = {}
        try:
            self.model(x)
        except _Reached:
            pass
        captured, self.captured = self.captured, {}
        return captured

    def tensor(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """One tapped layer's output, which must be a tensor."""
        out = self(x).get(path)
        if not isinstance(out, torch.Tensor):
            raise DplError(f"layer {path!r} does not output a tensor (it gives {type(out).__name__})")
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def output_shape(taps: Taps, path: str, input_shape) -> tuple[int, ...]:
    """The output shape (less the batch) of a tapped layer for one input of `input_shape`, in eval mode."""
    was_training = taps.model.training
    taps.model.eval()
    try:
        with torch.no_grad():
            device = next(taps.model.parameters()).device
            return tuple(taps.tensor(torch.zeros(1, *input_shape, device=device), path).shape[1:])
    finally:
        taps.model.train(was_training)


def list_layers(model: nn.Module, input_shape: tuple[int, int, int]) -> list[dict]:
    """Every named module in execution order with its output shape for one input of `input_shape`."""
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with Taps(model, [name for name in modules if name]) as taps, torch.inference_mode():
            captured = taps(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return [{"path": name, "type": type(modules[name]).__name__,
             "shape": list(out.shape[1:]) if isinstance(out, torch.Tensor) else None,
             "params": sum(p.numel() for p in modules[name].parameters(recurse=False))}
            for name, out in captured.items()]


BLOCK_TYPES = ("BasicBlock", "WideBlock", "Bottleneck", "InvertedResidual", "MBConv")


def block_layers(model: nn.Module, input_shape) -> list[dict]:
    """The `list_layers` rows of the residual blocks (in a plain net, the ReLUs; else every layer) with a
    feature-map output, in execution order."""
    rows = [r for r in list_layers(model, input_shape) if r["shape"] and len(r["shape"]) == 3]
    return [r for r in rows if r["type"].endswith(BLOCK_TYPES)] or [r for r in rows if r["type"] == "ReLU"] or rows


def middle_layer(model: nn.Module, input_shape) -> str:
    """The middle residual block (or, in a plain net, the middle ReLU) with a feature-map output."""
    blocks = block_layers(model, input_shape)
    return blocks[(len(blocks) - 1) // 2]["path"]


def make_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """Conv regressor whose kernel makes the spatial sizes match (as in the paper); linear for vectors."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        (cs, hs, ws), (ct, ht, wt) = student_shape, teacher_shape
        if hs >= ht and ws >= wt:
            return nn.Conv2d(cs, ct, kernel_size=(hs - ht + 1, ws - wt + 1))
        if hs <= ht and ws <= wt:
            return nn.ConvTranspose2d(cs, ct, kernel_size=(ht - hs + 1, wt - ws + 1))
        raise DplError(f"guided layer output {student_shape} and hint {teacher_shape} differ in aspect; "
                       "pick layers whose feature maps both shrink or both grow")
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return nn.Linear(student_shape[0], teacher_shape[0])
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)),
                         nn.Unflatten(1, teacher_shape))
