"""What the readers rely on in the metadata they consume (`META_RULES`, by key), checked by `read_header` when a
key is present: a file that lies here is refused on reading instead of failing deep inside a command.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable


def _int(lo: int = 0, hi: int = 2**62) -> Callable[[object], bool]:
    return lambda v: type(v) is int and lo <= v <= hi


def _number(v) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _line(v) -> bool:
    """A string that error messages can quote on one line."""
    return isinstance(v, str) and v.isprintable()


def _optional(rule: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda v: v is None or rule(v)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _fields(v, required: tuple[str, ...] = (), **rules) -> bool:
    """A dict holding `required`, whose keys named in `rules` (where present) pass them."""
    return (isinstance(v, dict) and all(k in v for k in required)
            and all(rule(v[k]) for k, rule in rules.items() if k in v))


def _input(v) -> bool:
    if not _fields(v, ("channels", "size", "mean", "std"), channels=_int(1, 2**16), size=_int(1, 2**16)):
        return False
    stats_ok = all(isinstance(v[k], list) and len(v[k]) == v["channels"] and all(map(_number, v[k]))
                   for k in ("mean", "std"))
    return stats_ok and all(s > 0 for s in v["std"])


def _parents(v) -> bool:
    line = _optional(_line)
    return isinstance(v, list) and all(_fields(p, path=line, role=line, sha256=line) for p in v)


HEAD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")   # also a folder name (dpl label writes OUT/NAME/)


def _size(v) -> bool:
    """An image size [height, width]."""
    return isinstance(v, list) and len(v) == 2 and all(map(_int(1, 2**16), v))


def _scenes(v) -> bool:
    """The SceneSpec synthetic scenes were built by (data.scenes.SceneSpec, its fields as stored)."""
    pair = lambda p: isinstance(p, list) and len(p) == 2 and all(map(_int(1, 2**16), p))    # noqa: E731
    return _fields(v, ("source", "canvas", "objects", "scale", "max_overlap", "scenes", "test_scenes", "seed"),
                   source=_line, canvas=_int(1, 2**16), objects=pair, scale=pair, max_overlap=_number,
                   scenes=_int(1), test_scenes=_int(1), seed=_int(-2**62))


def _heads(v) -> bool:
    """A multi-head student's heads: each a named slice [offset, offset + len(classes)) of the logits; the
    slices follow one another from 0 (load_checkpoint checks that they fill num_classes)."""
    if not isinstance(v, list) or not v:
        return False
    offset = 0
    for h in v:
        if not (_fields(h, ("name", "classes", "offset"), name=_line, classes=_str_list, offset=_int(),
                        labels=_optional(lambda p: _fields(p, path=_line, sha256=_line)),
                        data=_optional(_line), test=_optional(_line), tau=_optional(_number))
                and HEAD_NAME.fullmatch(h["name"]) and h["classes"] and h["offset"] == offset):
            return False
        offset += len(h["classes"])
    return len({h["name"] for h in v}) == len(v)


META_RULES: dict[str, Callable[[object], bool]] = {
    "arch": lambda v: _fields(v, ("name",), name=_line),
    "num_classes": _int(1, 2**20),
    "classes": _str_list,
    "input": _input,
    "data": lambda v: _fields(v, spec=_line, part=_line, fingerprint=_line, n=_int(), resize=_int(1, 2**16),
                              labeled_per_class=_optional(_int(1)), labeled=_optional(_int(1)),
                              split_seed=_int(-2**62), image_size=_size, scenes=_scenes, split=_line),
    "parents": _parents,
    "teachers": _parents,
    "heads": _heads,
    "metrics": lambda v: isinstance(v, dict),
    "command": _str_list,
    "quality": lambda v: not v or _fields(v, ("accuracy", "mean_confidence"),
                                          accuracy=_number, mean_confidence=_number),
    "tau": lambda v: _number(v) and v > 0,
    "mode": _line,
    "topk": _optional(_int(1, 2**20)),
    "total": _int(),
    "world": _int(1, 2**16),
    "rank": _int(0, 2**16),
    "seq": _int(),
    "rank_shards": _int(1),
    "count": _int(),
    "task": _line,
    "image_size": _size,
}
