"""The architecture registry.

Every model is built from a plain dict of JSON values (`arch` in a checkpoint's metadata):
name, num_classes, in_channels, image_size, dropout, stochastic_depth, and the family's own knobs
(`fitnet-thin:depth=17,width=8`). The detector families add their entries (models/detectors.py). Any of timm's
models is `timm:NAME[:knobs]` (models/timm_models.py), outside REGISTRY: timm is imported only to build one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from .. import DplError
from .cnn import PlainNet, ResNet, WideResNet
from .torchvision import TORCHVISION_MOBILE, TORCHVISION_RESNETS, torchvision_mobile, torchvision_resnet


def entry(builder: Callable, *args, **fixed) -> Callable[..., nn.Module]:
    return lambda **kw: builder(*args, **fixed, **kw)


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cnn-s": entry(ResNet, 16, (16, 32, 64), 1, stem_pool=True),
    "cnn-m": entry(ResNet, 32, (32, 64, 128), 1, stem_pool=True),
    "cnn-l": entry(ResNet, 64, (64, 128, 256), 2, stem_pool=True),
    **{f"resnet{d}": entry(ResNet, 16, (16, 32, 64), (d - 2) // 6) for d in (8, 14, 20, 32, 44, 56, 110)},
    **{f"resnet{d}x4": entry(ResNet, 32, (64, 128, 256), (d - 2) // 6) for d in (8, 32)},
    "fitnet-thin": PlainNet,
    **{f"wrn-{d}-{k}": entry(WideResNet, d, k) for d in (16, 28, 40) for k in (1, 2, 4, 10) if not (d == 28 and k < 10)},
    **{n: entry(torchvision_resnet, n) for n in TORCHVISION_RESNETS},
    **{n: entry(torchvision_mobile, n) for n in TORCHVISION_MOBILE},
}


TIMM = "timm:"       # catalog.TIMM: the prefix of timm's models, kept in the name ("timm:resnet18")


def parse_arch(text: str) -> tuple[str, dict]:
    """`NAME[:key=value,...]`, e.g. `fitnet-thin:depth=17,width=8` or `timm:vit_tiny_patch16_224:patch_size=4`,
    -> (name, {key: number})."""
    if text.startswith(TIMM):
        from .timm_models import check_name

        name, _, rest = text[len(TIMM):].partition(":")
        check_name(name)
        name = TIMM + name
    else:
        name, _, rest = text.partition(":")
        if name not in REGISTRY:
            raise DplError(f"unknown architecture {name!r}; valid: {', '.join(REGISTRY)}, or timm:NAME")
    extra = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        try:
            extra[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise DplError(f"architecture option {item!r} is not key=number") from None
        if not eq or not key.strip():
            raise DplError(f"architecture option {item!r} is not key=number")
    return name, extra


def arch_spec(arch: str, *, num_classes: int, in_channels: int, image_size: int,
              dropout: float = 0.0, stochastic_depth: float = 0.0) -> dict:
    """The JSON description from which `build` makes the model, as stored in checkpoints."""
    name, extra = parse_arch(arch)
    for opt, value in (("--dropout", dropout), ("--stochastic-depth", stochastic_depth)):
        if not 0.0 <= value < 1.0:
            raise DplError(f"{opt} must be in [0, 1), got {value}")
    return {"name": name, **extra, "num_classes": num_classes, "in_channels": in_channels,
            "image_size": image_size, "dropout": dropout, "stochastic_depth": stochastic_depth}


def build(spec: dict) -> nn.Module:
    spec = dict(spec)
    name = spec.pop("name", None)
    timm = isinstance(name, str) and name.startswith(TIMM)
    if not isinstance(name, str) or not (timm or name in REGISTRY):
        raise DplError(f"unknown architecture {name!r}; valid: {', '.join(REGISTRY)}, or timm:NAME")
    for key, value in spec.items():     # a checkpoint's arch is untrusted input: numbers, within reason
        if not key.isidentifier() or type(value) not in (int, float) or not abs(value) <= 2**24:
            raise DplError(f"architecture {name}: option {key!r}={value!r} is not a number in range")
    if timm:
        from .timm_models import build_timm

        builder = functools.partial(build_timm, name[len(TIMM):])
    else:
        builder = REGISTRY[name]
    try:
        return builder(**spec)
    except DplError:
        raise
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DplError(f"architecture {name} does not take {str(e).split('argument')[-1].strip()}") from None
        raise DplError(f"architecture {name} cannot be built from {spec} ({first_line(e)})") from None
    except (ValueError, RuntimeError, OverflowError) as e:
        raise DplError(f"architecture {name} cannot be built from {spec} ({first_line(e)})") from None


def first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
