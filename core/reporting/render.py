"""Writing a matplotlib Figure: `save` (STEM.png and STEM.svg, each atomically) and `data_uri` (a base64 data URI
for a self-contained HTML page). The output is deterministic (SVG hash salt fixed, text as paths, no date or
software stamp), so regenerated files do not churn.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from .. import artifacts

DPI = 120
FIXED = {"svg.hashsalt": "dpl", "svg.fonttype": "path"}
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
MIME = {"png": "image/png", "svg": "image/svg+xml"}


def save(fig: Figure, stem: Path) -> list[Path]:
    """Write STEM.png and STEM.svg (each atomically); return their paths. A .png/.svg suffix on the stem is
    dropped."""
    paths = files_of(stem)
    for path in paths:
        artifacts.atomic_write(path, lambda tmp, fmt=path.suffix[1:]: _render(fig, tmp, fmt))
    return paths


def files_of(stem: Path) -> list[Path]:
    """STEM.png and STEM.svg (a .png/.svg suffix on the stem is dropped)."""
    stem = Path(stem)
    if stem.suffix in (".png", ".svg"):
        stem = stem.with_suffix("")
    return [stem.with_name(f"{stem.name}.{fmt}") for fmt in ("png", "svg")]


def data_uri(fig: Figure, fmt: str = "png") -> str:
    """The figure as a base64 data URI (data:image/png;base64,... or data:image/svg+xml;base64,...)."""
    if fmt not in MIME:
        raise ValueError(f"fmt must be png or svg, not {fmt!r}")
    buffer = io.BytesIO()
    _render(fig, buffer, fmt)
    return f"data:{MIME[fmt]};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _render(fig: Figure, target, fmt: str) -> None:
    with matplotlib.rc_context(FIXED):
        fig.savefig(target, format=fmt, dpi=DPI, metadata=SAVE_METADATA[fmt])
