"""torchvision's ImageNet weights (`--pretrained`), read from the torch hub cache through torch's `weights_only`
loader, downloaded when absent, loaded into a registry model (or a detector's backbone) wherever the shapes fit.
A timm:NAME model's are timm's, from the Hugging Face cache (timm_models.load_timm_pretrained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .. import DplError
from .cnn import Classifier
from .registry import TIMM, first_line
from .torchvision import TORCHVISION_MOBILE, TORCHVISION_RESNETS

PRETRAINED = TORCHVISION_RESNETS + TORCHVISION_MOBILE     # the archs torchvision has ImageNet weights for


@dataclass(frozen=True)
class Pretrained:
    url: str
    file: Path              # the torch hub cache file the weights were read from
    loaded: list[str]       # state-dict keys taken from the weights
    fresh: list[str]        # state-dict keys left as built


def pretrained_file(name: str) -> tuple[str, Path]:
    """URL of torchvision's default ImageNet weights for `name` and the torch hub cache file for it."""
    if name not in PRETRAINED:
        raise DplError(f"no pretrained weights for {name}; --pretrained takes {', '.join(PRETRAINED)}, or timm:NAME")
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_pretrained(model: nn.Module, name: str) -> Pretrained:
    """Load torchvision's ImageNet weights for `name` into `model`, as the registry built it.

    The weights are read from the torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded only when the
    file is not there. Every tensor whose shape matches is loaded; the rest start fresh: the classifier
    for a class count other than 1000, and the 3x3 stem that replaces resnets' 7x7 conv on images of 64 px
    or less. The first conv of an input with other than 3 channels gets the RGB kernel adapted (timm's
    adapt_input_conv): summed over RGB for one channel, else repeated and scaled by 3 / channels.
    A timm:NAME model gets timm's weights instead (timm_models.load_timm_pretrained).
    """
    if name.startswith(TIMM):
        from .timm_models import load_timm_pretrained

        return load_timm_pretrained(model, name[len(TIMM):])
    url, file = pretrained_file(name)
    state = _read_pretrained(url, file)
    if isinstance(getattr(model, "fc", None), Classifier):     # the resnets' fc sits inside a Classifier
        state = {(f"fc.{k}" if k.startswith("fc.") else k): v for k, v in state.items()}
    own = model.state_dict()
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    if first in state:
        state[first] = _adapt_input_conv(state[first], own[first].shape[1])
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not loaded:
        raise DplError(f"{file}: no tensor fits {name}; replace it with {url}")
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return Pretrained(url, file, loaded, [k for k in own if k not in set(loaded)])


def _read_pretrained(url: str, file: Path) -> dict[str, torch.Tensor]:
    """torchvision's state dict from the hub cache, downloaded first when absent; tensors only."""
    if not file.is_file():     # downloaded here, not by torch.hub, which announces it on stdout
        digest = torch.hub.HASH_REGEX.search(file.name)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(file), digest and digest.group(1), progress=False)
        except (OSError, RuntimeError) as e:    # no network (URLError), or the hash of what came differs
            raise DplError(f"cannot download {url} ({first_line(e)}); place that file at {file}") from None
    try:
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
    except Exception as e:     # torch.load(weights_only=True) refuses a foreign object with an UnpicklingError
        raise DplError(f"{file}: unreadable weights ({first_line(e)}); replace it with {url}") from None
    if not isinstance(state, dict):
        raise DplError(f"{file}: not a state dict; replace it with {url}")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    if weight.ndim != 4 or weight.shape[1] != 3 or in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    repeat = -(-in_channels // 3)
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (3 / in_channels)


def load_pretrained_backbone(model: nn.Module, name: str) -> Pretrained:
    """torchvision's ImageNet weights for a detector's backbone (`frcnn-resnet18` -> resnet18's), by `load_pretrained`;
    the heads stay as built. Keys are the detector's (`backbone.layer1.0.conv1.weight`)."""
    backbone = name.partition("-")[2]
    if backbone not in PRETRAINED:
        raise DplError(f"no pretrained weights for {name}'s backbone {backbone}; --pretrained takes a detector on "
                       f"{', '.join(PRETRAINED)} (e.g. frcnn-resnet18)")
    weights = load_pretrained(model.backbone, backbone)
    loaded = [f"backbone.{k}" for k in weights.loaded]
    return Pretrained(weights.url, weights.file, loaded, [k for k in model.state_dict() if k not in set(loaded)])
