"""Reading and writing dpl artifacts: safetensors files with string metadata. No pickle anywhere.

Every read goes through `read_header`, which checks the safetensors header (size, JSON, dtypes, shapes,
offsets) against the file before anything is allocated, so a truncated, foreign or hostile file is
refused with a `DplError` naming it.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import DplError, __version__, models

FORMAT = "1"
PLAIN_KEYS = {"dpl.kind", "dpl.format", "dpl.version", "created"}   # stored as-is; every other key is JSON
MAX_HEADER = 64 << 20
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
# Tensors of a checkpoint under this prefix belong to the objective that trained the model (a hint regressor,
# a pretext head), not to the model: kept for inspection, never loaded into a model.
OBJECTIVE_PREFIX = "objective."


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(path: Path) -> None:
    """Fail before any work when the output cannot be written."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise DplError(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise DplError(f"{path}: folder {folder} is not writable")


def encode_metadata(meta: dict) -> dict[str, str]:
    return {k: v if k in PLAIN_KEYS else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def save(path: Path, tensors: dict[str, torch.Tensor], kind: str, meta: dict) -> None:
    header = {"dpl.kind": kind, "dpl.format": FORMAT, "dpl.version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **meta}
    # clone() breaks storage sharing, which safetensors refuses.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=encode_metadata(header)))


@dataclass
class Header:
    path: Path
    meta: dict                  # decoded: JSON values for structured keys
    tensors: dict[str, dict]    # name -> {"dtype", "shape", "data_offsets"}


def read_header(path: Path, kind: str | None = None) -> Header:
    path = Path(path)
    header, data_len = _safetensors_header(path)
    stored = header.pop("__metadata__", None) or {}
    if not isinstance(stored, dict) or not all(isinstance(v, str) for v in stored.values()):
        raise DplError(f"{path}: corrupt safetensors metadata")
    for name, info in header.items():
        _check_entry(path, name, info, data_len)
    if "dpl.kind" not in stored:
        raise DplError(f"{path}: a safetensors file, but not a dpl artifact (no dpl.kind in its metadata)")
    if kind is not None and stored["dpl.kind"] != kind:
        raise DplError(f"{path}: a dpl {stored['dpl.kind']!r} artifact, expected a {kind}")
    if stored.get("dpl.format") != FORMAT:
        raise DplError(f"{path}: dpl format {stored.get('dpl.format')!r} is not supported (this dpl reads {FORMAT})")
    return Header(path, _decode_metadata(path, stored), header)


def checkpoint_task(path: Path) -> str | None:
    """The `task` a checkpoint file records (None: a classifier, or not a readable checkpoint: its reader will say
    why), for commands that route a model to the code of its task."""
    if not Path(path).is_file():
        return None
    try:
        return read_header(Path(path), kind="checkpoint").meta.get("task")
    except DplError:
        return None


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file (checked to be an object that fits the file), and the size of
    the data after it."""
    if not path.exists():
        raise DplError(f"{path}: no such file")
    if path.is_dir():
        raise DplError(f"{path}: is a folder, expected a .safetensors file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DplError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or n + 8 > size:
                raise DplError(f"{path}: not a safetensors file (header size {n} does not fit a {size}-byte file)")
            raw = f.read(n)
    except OSError as e:
        raise DplError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):      # UnicodeDecodeError, JSONDecodeError, a 5000-digit number
        raise DplError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise DplError(f"{path}: not a safetensors file (header is not an object)")
    return header, size - 8 - n


def _decode_metadata(path: Path, stored: dict[str, str]) -> dict:
    """JSON values for structured keys, each checked against META_RULES where it has one."""
    meta = {}
    for k, v in stored.items():
        try:
            meta[k] = v if k in PLAIN_KEYS else json.loads(v)
        except (ValueError, RecursionError):
            raise DplError(f"{path}: corrupt metadata value for {k!r}") from None
        if k in META_RULES and not META_RULES[k](meta[k]):
            raise DplError(f"{path}: corrupt metadata value for {k!r}")
    return meta


# What the readers rely on in the metadata they consume, checked when a key is present: a file that lies
# here is refused by read_header instead of failing deep inside a command.
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
                              split_seed=_int(-2**62)),
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
}


def _check_entry(path: Path, name: str, info, data_len: int) -> None:
    bad = f"{path}: corrupt tensor entry {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise DplError(bad)
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise DplError(f"{bad} (dtype {dtype!r})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d < 2**40 for d in shape):
        raise DplError(f"{bad} (shape)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len):
        raise DplError(f"{bad} (offsets outside the file: truncated?)")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise DplError(f"{bad} (size does not match shape and dtype)")


def load_tensors(header: Header) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(header.path))
    except (SafetensorError, OSError, RuntimeError, ValueError, TypeError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise DplError(f"{header.path}: unreadable tensors ({why})") from None


def require(header: Header, *keys: str) -> None:
    missing = [k for k in keys if k not in header.meta]
    if missing:
        raise DplError(f"{header.path}: dpl {header.meta['dpl.kind']} lacks metadata {', '.join(missing)}")


# ---- checkpoints ----------------------------------------------------------------------------------

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


# What a checkpoint's model does (meta["task"]; a classifier when absent), as error messages name it.
TASKS = {"classifier": "a classifier", "mil": "a multiple-instance (MIL) model from dpl mil"}


def load_checkpoint(path: Path, task: str = "classifier") -> Checkpoint:
    """A checkpoint of a model that does `task`: another kind (a MIL model given to a command that expects a
    classifier, or the reverse) is refused."""
    header = read_header(path, kind="checkpoint")
    made = header.meta.get("task", "classifier")
    if made != task:
        raise DplError(f"{path}: {TASKS.get(made, f'a {made} model')}, not {TASKS.get(task, f'a {task} model')}")
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


# ---- label shards ---------------------------------------------------------------------------------
# A label folder holds shard-RRRRR-NNNNN.safetensors files (rank, sequence). Every shard carries the
# folder's common metadata plus its own rank/seq and how many shards its rank wrote, so a reader can
# tell a complete folder from an interrupted or mixed one.

LABEL_KEYS = ("teachers", "data", "tau", "mode", "num_classes", "classes", "total", "world")
SHARD_TENSORS = {"hard": ("index", "label", "confidence"),
                 "soft": ("index", "label", "confidence", "probs"),
                 "topk": ("index", "label", "confidence", "topk_index", "topk_prob")}
SHARD_NDIM = {"index": 1, "label": 1, "confidence": 1, "probs": 2, "topk_index": 2, "topk_prob": 2}
SHARD_DTYPES = {"index": torch.int64, "label": torch.int64, "confidence": torch.float32,
                "probs": torch.float16, "topk_index": torch.int32, "topk_prob": torch.float16}


# Shards of image files also carry each sample's key (its path or shard key, UTF-8, concatenated, with
# offsets) and the positions of the files that could not be decoded.
KEY_TENSORS = {"key_bytes": torch.uint8, "key_offsets": torch.int64, "skipped": torch.int64}


def encode_keys(keys: list[str]) -> dict[str, torch.Tensor]:
    encoded = [os.fsencode(k) for k in keys]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(k) for k in encoded])
    return {"key_bytes": torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()),
            "key_offsets": torch.from_numpy(offsets)}


def decode_keys(tensors: dict[str, torch.Tensor], path: Path) -> np.ndarray:
    raw, offsets = tensors["key_bytes"].numpy().tobytes(), tensors["key_offsets"].numpy()
    if (len(offsets) != len(tensors["index"]) + 1 or offsets[0] != 0 or offsets[-1] != len(raw)
            or (np.diff(offsets) < 0).any()):
        raise DplError(f"{path}: its sample keys do not match its rows")
    return np.array([raw[a:b] for a, b in zip(offsets[:-1], offsets[1:])], dtype=bytes)


def shard_name(rank: int, seq: int) -> str:
    return f"shard-{rank:05d}-{seq:05d}.safetensors"


@dataclass
class Labels:
    """A whole label folder, read and checked; rows sorted by index."""

    path: Path
    meta: dict
    index: torch.Tensor
    label: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor | None = None          # (n, C) float16, mode soft
    topk_index: torch.Tensor | None = None     # (n, k) int32, mode topk
    topk_prob: torch.Tensor | None = None      # (n, k) float16, mode topk
    keys: np.ndarray | None = None             # image files: each row's sample key (bytes)
    skipped: int = 0                           # image files the teacher could not read

    @property
    def mode(self) -> str:
        return self.meta["mode"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    def __len__(self) -> int:
        return len(self.index)

    def sha256(self) -> str:
        return folder_sha256(self.path)

    def to(self, device) -> "Labels":
        moved = {k: getattr(self, k) for k in ("index", "label", "confidence", "probs", "topk_index", "topk_prob")}
        return Labels(self.path, self.meta, **{k: None if v is None else v.to(device) for k, v in moved.items()},
                      keys=self.keys, skipped=self.skipped)


def folder_sha256(folder: Path) -> str:
    """The identity of a label folder: sha256 over its shards' names and sha256s."""
    h = hashlib.sha256()
    for shard in sorted(Path(folder).glob("shard-*.safetensors")):
        h.update(f"{shard.name} {sha256_file(shard)}\n".encode())
    return h.hexdigest()


def shard_meta(meta: dict, rank: int, seq: int, rank_shards: int, count: int) -> dict:
    """A shard's metadata: the folder's common keys plus where the shard sits in its rank's series."""
    return {**meta, "rank": rank, "seq": seq, "rank_shards": rank_shards, "count": count}


def same_shard(path: Path, kind: str, expected: dict) -> bool:
    """Whether `path` is a readable `kind` shard whose metadata is `expected` (a shard_meta, its count aside):
    what `dpl label --resume` keeps."""
    if not path.exists():
        return False
    try:
        found = read_header(path, kind=kind).meta
    except DplError:
        return False
    plain = lambda v: json.loads(json.dumps(v, default=str))       # noqa: E731  (tuples were stored as lists)
    return all(found.get(k) == plain(v) for k, v in expected.items() if k != "count")


def read_labels(folder: Path, allow_partial: bool = False) -> Labels:
    """Read and check a whole label folder. `allow_partial` accepts a folder that misses shards (an
    interrupted or still running `dpl label`): its rows are then the samples its shards hold."""
    folder = Path(folder)
    headers = shard_headers(folder)
    first = headers[0]
    common = {k: first.meta[k] for k in LABEL_KEYS}
    check_complete(folder, headers, common["world"], allow_partial)
    mode, c = common["mode"], common["num_classes"]
    if mode not in SHARD_TENSORS:
        raise DplError(f"{folder}: unknown label mode {mode!r}")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SHARD_TENSORS[mode]}
    keys: list[np.ndarray] = []
    skipped: list[torch.Tensor] = []
    for h in headers:
        _check_shard_shapes(folder, h, first, mode, c)
        tensors = _load_shard(folder, h, parts, headers[0])
        if "key_bytes" in tensors:
            keys.append(decode_keys(tensors, h.path))
        skipped.append(tensors.get("skipped", torch.zeros(0, dtype=torch.int64)))
    cat = {name: torch.cat(ts) for name, ts in parts.items()}
    order = torch.argsort(cat["index"])
    cat = {name: t[order] for name, t in cat.items()}
    gaps = torch.cat(skipped)
    _check_rows(folder, cat, gaps, common["total"], c, mode, allow_partial)
    sample_keys = np.concatenate(keys)[order.numpy()] if keys else None
    if sample_keys is not None and len(np.unique(sample_keys)) != len(sample_keys):
        raise DplError(f"{folder}: a sample key appears twice")
    return Labels(folder, first.meta, **cat, keys=sample_keys, skipped=len(gaps))


def shard_headers(folder: Path, kind: str = "labels", keys: tuple[str, ...] = LABEL_KEYS) -> list[Header]:
    """The headers of a folder's shards (label or box shards), which must agree on the folder's common
    metadata `keys`."""
    if not folder.exists():
        raise DplError(f"{folder}: no such label folder")
    if not folder.is_dir():
        raise DplError(f"{folder}: not a folder (label shards live in a folder written by dpl label)")
    files = sorted(folder.glob("shard-*.safetensors"))
    if not files:
        raise DplError(f"{folder}: no label shards (shard-*.safetensors) in it")
    headers = [read_header(f, kind=kind) for f in files]
    first = headers[0]
    for h in headers:
        require(h, *keys, "rank", "seq", "rank_shards", "count")
        for k in keys:
            if h.meta[k] != first.meta[k]:
                raise DplError(f"{folder}: mixed label folder: {h.path.name} differs from {first.path.name} in {k!r}")
    return headers


def check_complete(folder: Path, headers: list[Header], world: int, allow_partial: bool) -> None:
    """Every shard is where its metadata says; without allow_partial, every rank's series is complete."""
    present = {(h.meta["rank"], h.meta["seq"]) for h in headers}
    for h in headers:
        if h.path.name != shard_name(h.meta["rank"], h.meta["seq"]):
            raise DplError(f"{h.path}: its metadata says rank {h.meta['rank']} shard {h.meta['seq']}")
        if h.meta["rank"] >= world:
            raise DplError(f"{h.path}: rank {h.meta['rank']}, but the folder was written by {world} ranks")
    # Fewer files than ranks leave some rank among the first len(files) + 1 without shards: the loops stay
    # bounded by the files on disk, whatever the metadata announces.
    for rank in range(0 if allow_partial else min(world, len(headers) + 1)):
        announced = {h.meta["rank_shards"] for h in headers if h.meta["rank"] == rank} or {None}
        if len(announced) != 1 or None in announced:
            raise DplError(f"{folder}: incomplete label folder: no shards from rank {rank} of {world}")
        first_missing = next(s for s in itertools.count() if (rank, s) not in present)
        if first_missing < announced.pop():
            raise DplError(f"{folder}: incomplete label folder: {shard_name(rank, first_missing)} is missing")


def _check_shard_shapes(folder: Path, h: Header, first: Header, mode: str, c: int) -> None:
    """A shard's tensors, as its header declares them, have the rows and columns its metadata implies."""
    for name in SHARD_TENSORS[mode]:
        info = h.tensors.get(name)
        if info is None:
            raise DplError(f"{h.path}: {mode} label shard lacks tensor {name!r}")
        if info["shape"][:1] != [h.meta["count"]]:
            raise DplError(f"{h.path}: tensor {name!r} has {info['shape'][:1]} rows, metadata says {h.meta['count']}")
        if len(info["shape"]) != SHARD_NDIM[name]:
            raise DplError(f"{h.path}: tensor {name!r} has shape {info['shape']}, "
                           f"expected {SHARD_NDIM[name]} dimensions")
    if mode == "soft" and h.tensors["probs"]["shape"][1] != c:
        raise DplError(f"{folder}: probs have {h.tensors['probs']['shape'][1]} columns, expected {c}")
    if mode == "topk":
        k, k_prob, k_first = (x.tensors[n]["shape"][1] for x, n in
                              ((h, "topk_index"), (h, "topk_prob"), (first, "topk_index")))
        if not k == k_prob == k_first or not 1 <= k <= c:
            raise DplError(f"{h.path}: top-k tensors have {k} and {k_prob} columns, expected the same k "
                           f"(1..{c}) in every shard")


def _load_shard(folder: Path, h: Header, parts: dict[str, list[torch.Tensor]], first: Header) -> dict[str, torch.Tensor]:
    """A shard's tensors, their dtypes checked; its label tensors are appended to `parts`."""
    tensors = load_tensors(h)
    for name in parts:
        t = tensors[name]
        if t.dtype != SHARD_DTYPES[name]:
            raise DplError(f"{h.path}: tensor {name!r} is {t.dtype}, expected {SHARD_DTYPES[name]}")
        parts[name].append(t)
    for name, dtype in KEY_TENSORS.items():
        if name in tensors and (tensors[name].dtype != dtype or tensors[name].ndim != 1):
            raise DplError(f"{h.path}: tensor {name!r} is not a vector of {dtype}")
    if ("key_bytes" in tensors) != ("key_bytes" in first.tensors):
        raise DplError(f"{folder}: mixed label folder: some shards carry sample keys, others do not")
    return tensors


def _check_rows(folder: Path, cat: dict[str, torch.Tensor], gaps: torch.Tensor, total: int, c: int, mode: str,
                allow_partial: bool) -> None:
    """The rows (and the skipped samples) cover 0..total-1 once each (a part of it, once, when partial);
    class indices are within 0..c-1."""
    covered = torch.cat([cat["index"], gaps]).sort().values
    if allow_partial:
        if len(covered) and ((covered[1:] == covered[:-1]).any() or covered[0] < 0 or covered[-1] >= total):
            raise DplError(f"{folder}: the shards hold samples outside 0..{total - 1} or twice")
    elif len(covered) != total or not torch.equal(covered, torch.arange(total)):
        raise DplError(f"{folder}: the shards do not cover samples 0..{total - 1} exactly once")
    if ((cat["label"] < 0) | (cat["label"] >= c)).any():
        raise DplError(f"{folder}: labels outside 0..{c - 1}")
    if mode == "topk" and ((cat["topk_index"] < 0) | (cat["topk_index"] >= c)).any():
        raise DplError(f"{folder}: top-k class indices outside 0..{c - 1}")
