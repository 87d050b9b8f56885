"""The one reader of each kind of text file a user hands dpl: a --config YAML, a JSON document (COCO
annotations), a CSV table, the lines of a text file (classes.txt, a metrics log) and the names inside a tar
shard. Every way such a file can be wrong (missing, unreadable, not UTF-8, not the format, nested deeper than
any real file) ends in one DplError naming the file and where in it. Torch-free: the CLI reads --config here
before anything heavy is imported.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from . import DplError

MAX_TEXT_BYTES = 1 << 30      # a text file larger than this is not a config, annotations or a log


def read_text(path: Path, what: str = "file") -> str:
    """The file decoded as UTF-8; a byte that is not UTF-8 is refused with its line and byte offset."""
    path = Path(path)
    try:
        if path.is_dir():
            raise DplError(f"{path}: is a folder, not a {what}")
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise DplError(f"{path}: {size / 2**30:,.1f} GiB is too large for a {what}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DplError(f"{path}: no such file") from None
    except OSError as e:
        raise DplError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode(raw, path)


def decode(raw: bytes, where: Path | str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DplError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line})") from None


def parse_json(text: str, where: Path | str, allow_nan: bool = False):
    """A JSON document; a syntax error is said with its line and column. NaN and Infinity, which Python's json
    reads and writes but JSON does not have, are refused unless `allow_nan` (files other tools wrote, whose
    readers pass over what holds them)."""
    def constant(name: str):
        if allow_nan:
            return float(name)
        raise DplError(f"{where}: {name} is not a JSON value")

    try:
        return json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise DplError(f"{where}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except ValueError as e:             # an integer of more digits than Python converts
        raise DplError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise DplError(f"{where}: JSON nested too deeply to be read") from None


def read_json(path: Path, what: str = "JSON file", allow_nan: bool = False):
    return parse_json(read_text(path, what), path, allow_nan)


def read_yaml(path: Path, what: str = "YAML file"):
    """A YAML document (safe_load: plain data only); a syntax error is said with its line."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise DplError(f"{path}: not valid YAML{at} ({problem})") from None
    except RecursionError:
        raise DplError(f"{path}: YAML nested too deeply to be read") from None


def read_csv(path: Path, what: str = "CSV file") -> list[list[str]]:
    """The non-blank rows of a CSV file, fields stripped."""
    text = read_text(path, what)
    try:
        return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text, newline=""))
                if row and any(c.strip() for c in row)]
    except csv.Error as e:
        raise DplError(f"{path}: not valid CSV ({e})") from None


def member_name(name: str, shard: Path) -> str:
    """A tar member's name as text: tarfile reads a name that is not UTF-8 with surrogate escapes, which then
    break every encode; refuse it, naming the shard and the bytes."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        raise DplError(f"{shard}: member name {raw!r} is not UTF-8") from None
    return name
