"""Safetensors files with string metadata, read and written safely: `read_header` checks the header (size, JSON,
dtypes, shapes, offsets) against the file, and the metadata values readers rely on (`metadata.META_RULES`), before
anything is allocated, so a truncated, foreign or hostile file is refused with a `DplError` naming it. Writes are
atomic (a temporary file in the same folder, then rename). No pickle anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import DplError, __version__
from .metadata import META_RULES

FORMAT = "1"
PLAIN_KEYS = {"dpl.kind", "dpl.format", "dpl.version", "created"}   # stored as-is; every other key is JSON
MAX_HEADER = 64 << 20
DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}


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


def replace_folder(path: Path, write: Callable[[Path], None]) -> None:
    """Write a folder whole through a temporary sibling, then put it in place of `path` in one step: a refusal,
    a crash or a kill (even SIGKILL) leaves the old folder as it was, or the new one complete, never a mix.
    On Linux the swap is renameat2(RENAME_EXCHANGE); elsewhere two renames, with the old folder kept under a
    temporary name in between."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        tmp.mkdir()
        write(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif not _exchange(tmp, path):
            os.rename(path, old)
            os.rename(tmp, path)
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the system cannot."""
    import ctypes

    rename_exchange, at_fdcwd = 2, -100
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


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
