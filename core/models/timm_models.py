"""timm's classifiers in the registry: `--arch timm:NAME`, any of `timm.list_models()` (a pretrained tag may
follow, `timm:resnet18.a1_in1k`), with numeric knobs passed on to the model (`timm:vit_tiny_patch16_224:patch_size=4`).

The spec's name is "timm:NAME"; `build_timm` makes `timm.create_model(NAME, pretrained=False, ...)` from the spec
alone, never touching the network or timm's hub. dpl's settings become timm's arguments:

    num_classes, in_channels   num_classes, in_chans
    --dropout                  drop_rate (dropout before the classifier), passed when not 0
    --stochastic-depth         drop_path_rate (timm's own rule: linear over the blocks), passed when not 0; a model
                               without either argument is refused (one line: give the option as 0)
    image_size                 img_size, only to the models whose input size is fixed (their pretrained_cfg has
                               fixed_input_size: ViTs, Swin, ...), as timm itself does; the others (CNNs, with global
                               pooling) take any size their strides can reduce
The model runs one blank image when built: a size it cannot take (digits' 8 px through a stride-32 net, a 16 px
patch) is refused then, naming the architecture and size.

`--pretrained` (`load_timm_pretrained`) reads the model.safetensors of the pretrained_cfg's hf_hub_id (e.g.
timm/resnet18.a1_in1k) from the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub), downloads it when absent unless HF_HUB_OFFLINE is set, and never unpickles anything.

timm is imported inside the functions: importing the registry does not import it, and without it a timm:
architecture is one DplError saying to install it.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .. import DplError
from .pretrained import Pretrained
from .registry import TIMM, first_line

WEIGHTS = "model.safetensors"           # the one weights file read: safetensors, never a pickle
_NAME = re.compile(r"[\w-]+(\.[\w-]+)?")   # NAME[.TAG]: no "hf-hub:", "local-dir:" or path, which timm would fetch
_FLAGS = {"drop_rate": "--dropout", "drop_path_rate": "--stochastic-depth"}


def _timm():
    try:
        import timm
    except ImportError:
        raise DplError("timm:NAME architectures need the timm package: pip install 'dpl[timm]'") from None
    return timm


def timm_model_count() -> int | None:
    """How many architectures timm has; None without timm."""
    try:
        return len(_timm().list_models())
    except DplError:
        return None


def check_name(name: str) -> None:
    """Refuse a name (without the prefix) timm does not have, suggesting the closest ones."""
    timm = _timm()
    if _NAME.fullmatch(name) and timm.is_model(name):
        try:
            timm.models.get_pretrained_cfg(name)        # a tag timm does not have raises
            return
        except RuntimeError:
            candidates = timm.list_models(name.partition(".")[0], pretrained=True)
    else:
        candidates = timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=3)
    hint = f"; did you mean {' or '.join(TIMM + c for c in close)}?" if close else " (timm.list_models() lists them)"
    raise DplError(f"unknown timm architecture {name!r}{hint}")


def build_timm(name: str, *, num_classes: int, in_channels: int, image_size: int, dropout: float = 0.0,
               stochastic_depth: float = 0.0, **knobs) -> nn.Module:
    """timm's `name` (without the prefix) for these classes, channels and square images, weights fresh."""
    timm = _timm()
    check_name(name)
    reserved = set(inspect.signature(timm.create_model).parameters) | {"num_classes", "in_chans", "img_size", *_FLAGS}
    if taken := sorted(reserved & set(knobs)):
        raise DplError(f"{TIMM}{name}: {', '.join(taken)} cannot be set as an architecture option")
    kwargs = {**knobs, "num_classes": num_classes, "in_chans": in_channels}
    if dropout:
        kwargs["drop_rate"] = dropout
    if stochastic_depth:
        kwargs["drop_path_rate"] = stochastic_depth
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    size = f"{in_channels}x{image_size}x{image_size}"
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unknown and unknown[1] in _FLAGS:
            raise DplError(f"{TIMM}{name} has no {unknown[1]}: give {_FLAGS[unknown[1]]} 0") from None
        if unknown:
            raise DplError(f"{TIMM}{name} does not take {unknown[1]}") from None
        raise DplError(f"{TIMM}{name} cannot be built for {size} images ({first_line(e)})") from None
    except (ValueError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        raise DplError(f"{TIMM}{name} cannot be built for {size} images ({first_line(e)})") from None
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:
        raise DplError(f"{TIMM}{name} cannot take {size} images ({first_line(e)})") from None
    return model.train()


# ---- --pretrained ---------------------------------------------------------------------------------------

def hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it, read from the environment now (huggingface_hub reads
    it once, when imported)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def _offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, read now."""
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def weights_file(name: str) -> tuple[str, Path]:
    """The hf_hub_id of timm's weights for `name` (its tag's, else the default's) and their model.safetensors in the
    Hugging Face cache, downloaded first when absent and the network is allowed."""
    timm = _timm()
    check_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    repo = cfg.hf_hub_id if cfg is not None else None
    if not repo:
        raise DplError(f"timm has no Hugging Face weights for {TIMM}{name}; drop --pretrained")
    if cfg.hf_hub_filename not in (None, WEIGHTS):
        raise DplError(f"{TIMM}{name}'s weights are {cfg.hf_hub_filename} of {repo}; dpl reads only {WEIGHTS}")
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cache = hub_cache()
    found = try_to_load_from_cache(repo, WEIGHTS, cache_dir=cache)
    if isinstance(found, str):
        return repo, Path(found)
    where = f"no weights for {TIMM}{name}: {WEIGHTS} of {repo} is not in the Hugging Face cache {cache}"
    if _offline():
        raise DplError(f"{where}, and HF_HUB_OFFLINE forbids downloading it")
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    try:
        # Without a network, said at once: huggingface_hub would retry five times over 20 s, logging each.
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
        hub.setLevel(logging.ERROR)
        return repo, Path(hf_hub_download(repo, WEIGHTS, cache_dir=cache))
    except Exception as e:      # huggingface_hub's errors (no network, no such file, ...) share no base class
        raise DplError(f"{where}, and downloading it failed ({first_line(e)})") from None
    finally:
        hub.setLevel(level)


def load_timm_pretrained(model: nn.Module, name: str) -> Pretrained:
    """Load timm's weights for `name` (without the prefix) into `model`, as `build_timm` made it.

    As timm does: the model module's checkpoint_filter_fn (where it has one: a ViT's position embedding resampled
    for another image or patch size), then the first conv adapted to other than 3 input channels (timm's
    adapt_input_conv). Then every tensor whose shape fits is loaded; the rest start fresh (the classifier for a
    class count other than the weights').
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from timm.models import adapt_input_conv, get_pretrained_cfg

    repo, file = weights_file(name)
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as e:
        raise DplError(f"{file}: unreadable weights ({first_line(e)}); delete it to download {repo} again") from None
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except Exception:       # weights the filter does not expect: load them as they are, where they fit
            pass
    own = model.state_dict()
    cfg = get_pretrained_cfg(name)
    convs = cfg.first_conv if isinstance(cfg.first_conv, (list, tuple)) else [cfg.first_conv or ""]
    for key in (f"{conv}.weight" for conv in convs):
        if key in state and key in own and state[key].shape != own[key].shape:
            try:
                state[key] = adapt_input_conv(own[key].shape[1], state[key], base_chans=(cfg.input_size or (3,))[0])
            except (NotImplementedError, ValueError, RuntimeError, AssertionError):
                pass            # starts fresh
    loaded = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not loaded:
        raise DplError(f"{file}: no tensor fits {TIMM}{name}; delete it to download {repo} again")
    model.load_state_dict({**own, **{k: state[k] for k in loaded}})
    return Pretrained(f"https://huggingface.co/{repo}", file, loaded, [k for k in own if k not in set(loaded)])
