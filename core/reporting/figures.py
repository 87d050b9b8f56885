"""Figures of runs, checkpoints and label folders: plain numbers in, a matplotlib Figure and the numbers it
plots out.

Every drawing function returns `(figure, data)`: `data` is a JSON-safe dict of exactly the plotted numbers
(NaN and infinities as None). Figures use matplotlib's object API (`matplotlib.figure.Figure`), never
pyplot: no global state, no display. `save` writes a PNG and an SVG atomically; `data_uri` embeds a figure in
a self-contained HTML page (both in render.py, re-exported here). SVGs are deterministic (fixed hash salt, no
date) so regenerated files do not churn.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .render import data_uri, files_of, save  # noqa: F401  (re-exported: figures.save writes what figures draws)

WIDTH, HEIGHT = 8.0, 5.0           # inches: the largest figure drawn (`bag_weights`: a 1.9-inch band per bag;
                                   # `keypoint_grid`: KEYPOINT_PANEL inches a panel)
LOSS_TERMS = ("ce", "kd", "pseudo", "hint", "nt_xent")
CURVE_FIELDS = ("loss", *LOSS_TERMS, "lr", "pseudo_conf", "acc", "val_top1")     # what `curves` plots, in order


def _figure(width: float = WIDTH, height: float = HEIGHT) -> Figure:
    return Figure(figsize=(min(width, WIDTH), min(height, HEIGHT)), layout="constrained")


def _number(v):
    """A JSON-safe number: None for missing, NaN or infinite values."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _grid(ax) -> None:
    ax.grid(True, alpha=0.3)


# ---- training curves -----------------------------------------------------------------------------

def curve_keys(runs: dict[str, list[dict]]) -> list[str]:
    """The history fields `curves` plots, in panel order: loss, its terms, lr, the pseudo-labels' mean
    confidence, acc, val_top1."""
    present = {k for history in runs.values() for record in history for k in record}
    return [k for k in CURVE_FIELDS if k in present]


def curves(runs: dict[str, list[dict]]) -> tuple[Figure, dict]:
    """Training curves of several runs overlaid, one panel per field: the loss, each loss term, the learning
    rate, and accuracy (train `acc` solid, validation `val_top1` dashed, on one panel). `runs` maps a run's
    name to its per-epoch history. Data: {run: {"epoch": [...], FIELD: [...]}}, each series aligned with
    "epoch" (None where an epoch has no value, e.g. val_top1 on epochs not validated)."""
    keys = curve_keys(runs)
    data = {name: {"epoch": [int(r["epoch"]) for r in history],
                   **{k: [_number(r.get(k)) for r in history] for k in keys if any(k in r for r in history)}}
            for name, history in runs.items()}
    panels = [k for k in keys if k not in ("acc", "val_top1")]
    if "acc" in keys or "val_top1" in keys:
        panels.append("accuracy")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(WIDTH, 2.5 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        _curve_panel(ax, panel, data, keys)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize="small")
    fig.suptitle("training curves")
    return fig, data


CURVE_TITLES = {"loss": "loss (sum of terms)", "lr": "learning rate", "accuracy": "accuracy",
                "pseudo_conf": "pseudo-label mean confidence"}


def _curve_panel(ax, panel: str, data: dict[str, dict], keys: list[str]) -> None:
    """One panel of `curves`: a field of every run (the accuracy panel: train solid, validation dashed)."""
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fields = [("acc", "-"), ("val_top1", "--")] if panel == "accuracy" else [(panel, "-")]
    for i, (name, series) in enumerate(data.items()):
        for field, style in fields:
            points = [(e, v) for e, v in zip(series["epoch"], series.get(field, [])) if v is not None]
            if points:
                label = name if len(fields) == 1 else f"{name} ({'train' if field == 'acc' else 'val'})"
                ax.plot(*zip(*points), style, marker="o", markersize=3, color=colors[i % len(colors)], label=label)
    ax.set_title(CURVE_TITLES.get(panel, f"loss term {panel}"), fontsize="medium")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if panel == "accuracy":
        ax.set_ylabel("top-1 (train solid, val dashed)" if {"acc", "val_top1"} <= set(keys)
                      else "train top-1" if "acc" in keys else "validation top-1")
    _grid(ax)


# ---- calibration ---------------------------------------------------------------------------------

def reliability(bins: list[dict], ece: float, title: str) -> tuple[Figure, dict]:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap to the bin's mean
    confidence shaded, the count per bin below. `bins`: dpl eval's [{"lo", "hi", "count", "confidence",
    "accuracy"}, ...]. Data: {"bins": bins, "ece": ece}."""
    bins = [{"lo": float(b["lo"]), "hi": float(b["hi"]), "count": int(b["count"]),
             "confidence": _number(b.get("confidence")), "accuracy": _number(b.get("accuracy"))} for b in bins]
    fig = _figure(6.0, HEIGHT)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = [b for b in bins if b["count"] and b["accuracy"] is not None]
    lo = [b["lo"] for b in full]
    width = [b["hi"] - b["lo"] for b in full]
    accuracy = [b["accuracy"] for b in full]
    gap = [b["confidence"] - b["accuracy"] for b in full]
    top.bar(lo, accuracy, width=width, align="edge", color="tab:blue", edgecolor="black", linewidth=0.5,
            label="accuracy")
    top.bar(lo, gap, width=width, bottom=accuracy, align="edge", color="tab:red", alpha=0.3, edgecolor="tab:red",
            hatch="//", linewidth=0.5, label="gap to confidence")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize="small")
    top.set_title(f"{title}\nECE {ece:.4f}", fontsize="medium")
    _grid(top)
    bottom.bar([b["lo"] for b in bins], [b["count"] for b in bins], width=[b["hi"] - b["lo"] for b in bins],
               align="edge", color="gray", edgecolor="black", linewidth=0.5)
    bottom.set_xlabel("confidence (max softmax probability)")
    bottom.set_ylabel("samples")
    _grid(bottom)
    return fig, {"bins": bins, "ece": _number(ece)}


def confusion(matrix: list[list[int]], classes: list[str], title: str) -> tuple[Figure, dict]:
    """Confusion matrix normalized per row (true class), numbers in the cells up to 20 classes. `matrix`:
    counts, row = true class, column = predicted. Data: {"classes", "counts", "normalized"} (a row without
    samples normalizes to None)."""
    counts = [[int(c) for c in row] for row in matrix]
    normalized = [[c / sum(row) for c in row] if sum(row) else [None] * len(row) for row in counts]
    n = len(counts)
    classes = list(classes) if classes and len(classes) == n else [str(i) for i in range(n)]
    size = min(WIDTH, HEIGHT + 1.0)
    fig = _figure(size, HEIGHT)
    ax = fig.subplots()
    shown = [[math.nan if v is None else v for v in row] for row in normalized]
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.85)
    if n <= 40:
        font = "small" if n <= 20 else "xx-small"
        ax.set_xticks(range(n), classes, rotation=90 if max(map(len, classes)) > 3 else 0, fontsize=font)
        ax.set_yticks(range(n), classes, fontsize=font)
    if n <= 20:
        _cell_numbers(ax, counts, normalized)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize="medium")
    return fig, {"classes": classes, "counts": counts, "normalized": normalized}


def _cell_numbers(ax, counts: list[list[int]], normalized: list[list[float | None]]) -> None:
    """The normalized value written in every cell that holds samples."""
    n = len(counts)
    for i, row in enumerate(normalized):
        for j, v in enumerate(row):
            if v is not None and counts[i][j]:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7 if n > 10 else 8,
                        color="white" if v > 0.5 else "black")


# ---- pseudo-labels -------------------------------------------------------------------------------

HISTOGRAM_BINS = 20
THRESHOLDS = 101
MAX_CLASS_LINES = 20      # more classes than this: one histogram of all labels


def label_confidence(confidence, predicted, classes: list[str], truth=None) -> tuple[Figure, dict]:
    """A label folder's confidence histogram per predicted class (overlaid steps; all classes together
    beyond 20), and where ground truth is given (`truth`: the true class per row, -1 where unknown) the
    accuracy and coverage of the labels kept at each confidence threshold (0..1, 101 steps; coverage =
    fraction of the rows with a known class whose confidence is >= t, accuracy = top-1 of those). Without
    truth (None, or -1 everywhere) the curve is skipped and data["skipped"] names it. The arrays may be lists,
    numpy arrays or CPU tensors."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    num_classes = max(len(classes), int(predicted.max(initial=-1)) + 1)
    classes = list(classes) if len(classes) == num_classes else [str(i) for i in range(num_classes)]
    edges = [i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    if num_classes <= MAX_CLASS_LINES:
        groups = {name: _histogram(confidence[predicted == k]) for k, name in enumerate(classes)}
    else:
        groups = {"all classes": _histogram(confidence)}
    data = {"n": len(confidence), "histogram": {"edges": edges, "counts": groups}}
    truth = None if truth is None else np.asarray(truth, dtype=np.int64).ravel()
    curve = truth is not None and bool((truth >= 0).any())
    fig = _figure(WIDTH, 4.0)
    axes = fig.subplots(1, 2 if curve else 1, squeeze=False).ravel()
    _confidence_histograms(axes[0], groups, edges)
    if not curve:
        data["skipped"] = ["accuracy/coverage curve"]
        return fig, data
    data["curve"] = _kept_curve(confidence, predicted, truth)
    _kept_panel(axes[1], data["curve"])
    return fig, data


def _histogram(values: np.ndarray) -> list[int]:
    """Counts of `values` in HISTOGRAM_BINS equal bins of 0..1, each [lo, hi), 1.0 in the last."""
    bins = np.clip((values * HISTOGRAM_BINS).astype(np.int64), 0, HISTOGRAM_BINS - 1)
    return np.bincount(bins, minlength=HISTOGRAM_BINS).tolist()


def _confidence_histograms(hist, groups: dict[str, list[int]], edges: list[float]) -> None:
    colors = matplotlib.colormaps["tab20" if len(groups) > 10 else "tab10"].colors
    for i, (name, counts) in enumerate(groups.items()):
        hist.stairs(counts, edges, color=colors[i % len(colors)], label=name, linewidth=1.2)
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel("labels")
    hist.set_title("confidence by predicted class" if len(groups) > 1 else "confidence", fontsize="medium")
    hist.legend(fontsize="x-small", ncol=2 if len(groups) > 10 else 1, loc="best", title="predicted",
                title_fontsize="x-small")
    _grid(hist)


def _kept_curve(confidence: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> dict:
    """The coverage and accuracy of the labels of rows with a known class kept at each of THRESHOLDS thresholds."""
    known = truth >= 0
    order = np.argsort(-confidence[known], kind="stable")
    descending = confidence[known][order]
    right = np.cumsum(predicted[known][order] == truth[known][order])
    thresholds = [i / (THRESHOLDS - 1) for i in range(THRESHOLDS)]
    kept = np.searchsorted(-descending, -np.asarray(thresholds), side="right")   # rows with confidence >= t
    coverage = [int(k) / len(descending) for k in kept]
    accuracy = [int(right[k - 1]) / int(k) if k else None for k in kept]
    return {"thresholds": thresholds, "coverage": coverage, "accuracy": accuracy, "n": len(descending)}


def _kept_panel(ax, curve: dict) -> None:
    for series, label, color in ((curve["accuracy"], "accuracy of the kept labels", "tab:green"),
                                 (curve["coverage"], "coverage (fraction kept)", "black")):
        points = [(t, v) for t, v in zip(curve["thresholds"], series) if v is not None]
        if points:
            ax.plot(*zip(*points), color=color, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("fraction")
    ax.set_title(f"labels kept at confidence >= threshold\n({curve['n']:,} with ground truth)", fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    _grid(ax)


# ---- lineage and probes --------------------------------------------------------------------------

def lineage(chain: list[dict]) -> tuple[Figure, dict]:
    """The Noisy Student iteration curve: test top-1 of each model of a chain (oldest first, as
    records.lineage_of gives it) by generation, each point annotated with its arch and file name. Data:
    {"chain": [{..., "generation": g}, ...]}."""
    chain = [{**model, "generation": g, "test_top1": _number(model.get("test_top1"))} for g, model in enumerate(chain)]
    fig = _figure(WIDTH, 4.5)
    ax = fig.subplots()
    points = [(m["generation"], m["test_top1"]) for m in chain if m["test_top1"] is not None]
    if points:
        ax.plot(*zip(*points), "-o", color="tab:blue")
    for m in chain:
        if m["test_top1"] is not None:
            ax.annotate(f"{m['arch']}\n{Path(m['path']).name}", (m["generation"], m["test_top1"]),
                        textcoords="offset points", xytext=(0, 8), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(range(len(chain)))
    ax.set_xlim(-0.5, len(chain) - 0.5)
    values = [v for _, v in points]
    if values:
        spread = max(values) - min(values)
        ax.set_ylim(min(values) - max(0.02, 0.2 * spread), min(1.0, max(values) + max(0.02, 0.35 * spread)) + 0.01)
    ax.set_xlabel("generation (0 = first teacher)")
    ax.set_ylabel("test top-1")
    ax.set_title("Noisy Student iterations", fontsize="medium")
    _grid(ax)
    return fig, {"chain": chain}


def probe(linear: dict[str, float], dims: dict[str, int], title: str) -> tuple[Figure, dict]:
    """Linear-probe top-1 per probed layer, in the order given (dpl eval puts the final feature vector,
    "features", first; it is drawn last, as the deepest). Data: {"layers": {path: {"top1", "features"}}}."""
    order = [p for p in linear if p != "features"] + [p for p in linear if p == "features"]
    data = {"layers": {p: {"top1": _number(linear[p]), "features": int(dims[p]) if p in dims else None} for p in order}}
    fig = _figure(WIDTH, 4.5)
    ax = fig.subplots()
    top1 = [data["layers"][p]["top1"] or 0.0 for p in order]
    names = [f"{p}\n{data['layers'][p]['features']:,} features" if data["layers"][p]["features"] else p for p in order]
    bars = ax.bar(range(len(order)), top1, color="tab:blue", edgecolor="black", linewidth=0.5)
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in top1], fontsize="small", padding=2)
    ax.set_xticks(range(len(order)), names, fontsize="small")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("linear-probe top-1")
    ax.set_xlabel("layer (frozen features)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)
    return fig, data


# ---- multiple-instance learning ------------------------------------------------------------------

MAX_BAG_INSTANCES = 32     # instances drawn per bag: beyond, those of the highest weights, in bag order
TARGET_COLOR, OTHER_COLOR = "tab:red", "tab:gray"


def bag_weights(bags: list[dict], pooling: str, title: str, target: str | None = None) -> tuple[Figure, dict]:
    """Bags of a MIL model, a band each: the instances' images in a row, under each a bar of its weight (the
    attention weight for attention pooling, the instance probability for max and mean), the instances of the
    target class (hidden instance labels, where known) framed and barred in red; each band's title gives the bag
    label and the predicted bag probability. `bags`: `dpl eval --json` per-bag entries (`bag`, `label`, `prob`,
    `attention` or `scores`, optionally `instance_labels`) with `index` and `images` (uint8 (n, C, H, W)).
    Data: {"pooling", "weight", "target", "bags": the entries less their images, with "shown": the positions
    drawn}."""
    attention = pooling in ("attention", "gated")
    key, weight = ("attention", "attention weight") if attention else ("scores", "instance probability")
    entries = [_bag_entry(b, key) for b in bags]
    columns = max(len(e["shown"]) for e in entries)
    # Probabilities on 0..1; attention weights (which shrink as bags grow) up to the largest drawn, one scale for all.
    top = 1.15 * (max((e[key][i] or 0.0 for e in entries for i in e["shown"]), default=0.0) if attention else 1.0)
    fig = Figure(figsize=(WIDTH, 1.9 * len(bags) + 0.6), layout="constrained")     # taller than HEIGHT past 2 bags
    bands = fig.subfigures(len(bags), 1, squeeze=False).ravel()
    for band, b, e in zip(bands, bags, entries):
        _bag_band(band, b, e, key, weight, columns, top)
    marked = f"red: instances of {target!r}" if target else "red: positive instances"
    known = any(e.get("instance_labels") is not None for e in entries)
    fig.suptitle(f"{title}\n{pooling} pooling: {weight} per instance" + (f"; {marked}" if known else ""),
                 fontsize="medium")
    return fig, {"pooling": pooling, "weight": weight, "target": target, "bags": entries}


def _bag_entry(b: dict, key: str) -> dict:
    """A bag's data entry: its fields less the images, its weights JSON-safe, and "shown": the positions drawn (the
    MAX_BAG_INSTANCES highest weights, in bag order)."""
    values = [float(v) for v in b[key]]
    shown = sorted(np.argsort(-np.asarray(values), kind="stable")[:MAX_BAG_INSTANCES].tolist())
    return {**{k: v for k, v in b.items() if k != "images"}, key: [_number(v) for v in values], "shown": shown}


def _bag_band(band, b: dict, e: dict, key: str, weight: str, columns: int, top: float) -> None:
    """One bag's band of `bag_weights`: its instances' images in a row, a bar of each one's weight below."""
    axes = band.subplots(2, columns, gridspec_kw={"height_ratios": [1, 1]}, squeeze=False)
    bar = band.add_subplot(axes[1, 0].get_gridspec()[1, :])
    for ax in axes[1]:
        ax.remove()
    truth = b.get("instance_labels")
    colors = [TARGET_COLOR if truth is not None and truth[i] else OTHER_COLOR for i in e["shown"]]
    for ax, i, color in zip(axes[0], e["shown"], colors):
        _instance_image(ax, np.asarray(b["images"][i]), color)
    for ax in axes[0][len(e["shown"]):]:
        ax.set_visible(False)
    heights = [e[key][i] or 0.0 for i in e["shown"]]
    bars = bar.bar(range(len(heights)), heights, color=colors, edgecolor="black", linewidth=0.5)
    if columns <= 16:
        bar.bar_label(bars, labels=[f"{v:.2f}" for v in heights], fontsize="x-small", padding=1)
    bar.set_xlim(-0.5, columns - 0.5)
    bar.set_ylim(0, max(top, 0.05))
    bar.set_xticks(range(len(heights)), [str(i) for i in e["shown"]], fontsize="x-small")
    bar.set_xlabel("instance (position in the bag)", fontsize="x-small")
    bar.set_ylabel(weight.replace(" ", "\n"), fontsize="x-small")
    bar.tick_params(axis="y", labelsize="x-small")
    bar.grid(True, axis="y", alpha=0.3)
    more = (f", {len(e['shown'])} of {len(e[key])} instances (highest weights)"
            if len(e["shown"]) < len(e[key]) else "")
    kind = "positive" if e["label"] else "negative"
    band.suptitle(f"bag {e['index']} ({e['bag']}): label {e['label']} ({kind}), "
                  f"predicted P(positive) {e['prob']:.3f}{more}", fontsize="small")


def _instance_image(ax, image: np.ndarray, color: str) -> None:
    """An instance's uint8 (C, H, W) image, framed in `color` (thick for the target class)."""
    grey = image.shape[0] == 1
    ax.imshow(image[0] if grey else image.transpose(1, 2, 0), cmap="gray" if grey else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(color)
        spine.set_linewidth(2.5 if color == TARGET_COLOR else 0.5)


# ---- keypoints -----------------------------------------------------------------------------------

KEYPOINT_PANEL = 2.4         # inches a panel: a 64-pixel image at about 4.5 figure pixels a pixel (render.DPI 120)
KEYPOINT_COLUMNS = 4
PART_COLORS = {"body": "#29b6f6", "hands": "#ffa726", "face": "#f06292"}     # other parts: the tab10 cycle
UNPARTED_COLOR = "#e0e0e0"


def keypoint_grid(images, truth, coords, confidence, pck, skeleton, parts: dict[str, list[int]],
                  names: list[str] | None = None, indices: list[int] | None = None, title: str = "",
                  threshold: float = 0.1) -> tuple[Figure, dict]:
    """A grid of images with their true and predicted keypoints: the truth as hollow circles (keypoints of
    visibility 0 left out), the prediction as filled dots joined by the skeleton, each coloured by its part (an
    edge by the part its two keypoints share, else by the smaller of theirs: wrist-palm is a hand's); each panel
    titled with its image's position in the data and its PCK. `images`: uint8 (n, C, H, W), drawn at dpl's
    pixel convention (pixel i spans [i, i + 1), so a keypoint at x = i + 0.5 sits on the centre of pixel i);
    `truth` (n, K, 3): x, y, visibility; `coords` (n, K, 2) and `confidence` (n, K): the model's; `pck`: each
    image's PCK@`threshold` (None or NaN where it has no labeled keypoint); `skeleton`: keypoint index pairs;
    `parts`: part name -> keypoint indices; `names`: the keypoints' names (default their indices as text);
    `indices`: each image's position in its data (default 0..n-1). Arrays may be lists, numpy arrays or CPU
    tensors. Data: {"threshold", "names", "parts", "skeleton", "images":
    [{"index", "pck", "coords" (K x [x, y]), "confidence" (K), "truth" (K x [x, y, visibility])}]}."""
    images = np.asarray(images, dtype=np.uint8)
    truth = np.asarray(truth, dtype=np.float64).reshape(len(images), -1, 3)
    coords = np.asarray(coords, dtype=np.float64).reshape(len(images), -1, 2)
    confidence = np.asarray(confidence, dtype=np.float64).reshape(len(images), -1)
    n, k = coords.shape[:2]
    if not (len(truth) == len(confidence) == len(pck) == n and truth.shape[1] == confidence.shape[1] == k):
        raise ValueError(f"keypoint_grid: {n} images of {k} predicted keypoints, truth {truth.shape}, confidence "
                         f"{confidence.shape}, {len(pck)} PCKs")
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    parts = {name: [int(i) for i in idx] for name, idx in parts.items()}
    skeleton = [(int(a), int(b)) for a, b in skeleton]
    point_colors, edge_colors, named = _part_colors(parts, skeleton, k)
    entries = [{"index": indices[i], "pck": _number(pck[i]),
                "coords": [[_number(v) for v in xy] for xy in coords[i]],
                "confidence": [_number(v) for v in confidence[i]],
                "truth": [[_number(x), _number(y), int(v)] for x, y, v in truth[i]]} for i in range(n)]
    cols = max(1, min(KEYPOINT_COLUMNS, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(KEYPOINT_PANEL * cols, KEYPOINT_PANEL * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, i in zip(axes, range(n)):
        _keypoint_panel(ax, images[i], truth[i], coords[i], point_colors, skeleton, edge_colors)
        shown = "n/a" if entries[i]["pck"] is None else f"{entries[i]['pck']:.2f}"
        ax.set_title(f"#{indices[i]}  PCK@{threshold:g} {shown}", fontsize="small")
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.legend(handles=_keypoint_legend(named), loc="outside lower center", ncol=len(named) + 2, fontsize="small",
               frameon=False)
    if title:
        fig.suptitle(title, fontsize="medium")
    names = [str(v) for v in names] if names is not None and len(names) == k else [str(i) for i in range(k)]
    return fig, {"threshold": threshold, "names": names, "parts": parts, "skeleton": [list(e) for e in skeleton], "images": entries}


def _part_colors(parts: dict[str, list[int]], skeleton: list[tuple[int, int]], k: int):
    """(each keypoint's colour, each skeleton edge's colour, {part: colour} of the parts present)."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    named = {name: PART_COLORS.get(name, cycle[i % len(cycle)]) for i, name in enumerate(parts)}
    part_of = [None] * k
    for name in sorted(parts, key=lambda p: -len(parts[p])):            # a keypoint in two parts: the smaller's
        for i in parts[name]:
            if 0 <= i < k:
                part_of[i] = name
    size = {name: len(idx) for name, idx in parts.items()}
    points = [named[p] if p else UNPARTED_COLOR for p in part_of]
    edges = []
    for a, b in skeleton:
        ends = [p for p in (part_of[a], part_of[b]) if p]
        edges.append(named[min(ends, key=lambda p: size[p])] if ends else UNPARTED_COLOR)
    return points, edges, named


def _keypoint_panel(ax, image: np.ndarray, truth: np.ndarray, coords: np.ndarray, colors: list[str],
                    skeleton: list[tuple[int, int]], edge_colors: list[str]) -> None:
    """One image of `keypoint_grid`: the image at the pixel convention, the skeleton between predicted keypoints,
    predicted keypoints filled, labeled true keypoints hollow."""
    h, w = image.shape[1:]
    grey = image.shape[0] == 1
    ax.imshow(image[0] if grey else image.transpose(1, 2, 0), cmap="gray" if grey else None, vmin=0, vmax=255,
              interpolation="nearest", extent=(0, w, h, 0))
    if skeleton:
        segments = coords[np.asarray(skeleton, dtype=np.int64)]                 # (E, 2, 2)
        ax.add_collection(LineCollection(segments, colors=edge_colors, linewidths=1.2, alpha=0.9, zorder=2))
    colors = np.asarray(colors, dtype=object)
    ax.scatter(coords[:, 0], coords[:, 1], s=12, c=list(colors), edgecolors="black", linewidths=0.4, zorder=3)
    labeled = truth[:, 2] > 0
    if labeled.any():
        ax.scatter(truth[labeled, 0], truth[labeled, 1], s=32, facecolors="none", edgecolors=list(colors[labeled]),
                   linewidths=1.1, zorder=4)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _keypoint_legend(named: dict[str, str]) -> list:
    handles = [Line2D([], [], color=color, marker="o", markersize=5, markeredgecolor="black", markeredgewidth=0.4,
                      linewidth=1.2, label=name) for name, color in named.items()]
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=5, color="gray", markeredgecolor="black",
                          markeredgewidth=0.4, label="predicted (filled, skeleton)"))
    handles.append(Line2D([], [], linestyle="none", marker="o", markersize=7, markerfacecolor="none",
                          markeredgecolor="gray", markeredgewidth=1.1, label="true (hollow)"))
    return handles
