"""The HTML report of a pipeline's outputs: one self-contained page (inline CSS, figures as data URIs, no
script, nothing fetched) built from what the CLI measured. No printing; `render` returns the page."""

from __future__ import annotations

import datetime
import html
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from . import figures

# The page may load nothing but its own inline style and data: images, whatever a browser is asked to do.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1d232a; background: #fff; max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.2em; margin: 2em 0 .6em; padding-bottom: .2em; border-bottom: 1px solid #d7dde3; }
h3 { font-size: 1em; margin: 1.4em 0 .4em; }
.meta, .note, figcaption, footer { color: #5a6570; }
.meta { margin: 0; }
.note { font-size: .92em; margin: .4em 0; }
table { border-collapse: collapse; margin: .4em 0 1em; font-size: .92em; }
th, td { padding: .28em .7em; border-bottom: 1px solid #e6eaee; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.last td { font-weight: 600; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .85em; }
figure { margin: .6em 0 1.2em; }
figure img { max-width: min(100%, 780px); height: auto; border: 1px solid #eef1f4; }
.grid { display: flex; flex-wrap: wrap; gap: .8em 1.6em; align-items: flex-start; }
.grid figure { flex: 0 1 520px; }
.grid figure img { width: 100%; }
.labels { display: flex; flex-wrap: wrap; gap: 0 2em; align-items: flex-start; }
footer { font-size: .8em; margin-top: 3em; border-top: 1px solid #d7dde3; }
footer pre { white-space: pre-wrap; word-break: break-all; margin: .2em 0 .6em; }
"""

METRICS = ("top1", "top5", "nll", "ece")
MAX_RELIABILITY = 6     # more checkpoints than this: the reliability diagram of the last model alone


@dataclass
class Model:
    """A checkpoint and what `dpl eval CKPT --json` measured of it."""
    path: Path
    result: dict                      # measure_checkpoint's dict
    classes: list[str]
    command: list[str] | str | None
    history: list[dict] | None        # None: the checkpoint has no training history


@dataclass
class LabelFolder:
    path: Path
    teacher: str | None               # the (first) teacher that wrote the labels
    data: str                         # the data they label, e.g. "digits:train (unlabeled)"
    predicted: object                 # torch tensors: the label of each row, its confidence, the truth (-1: unknown)
    confidence: object
    truth: object | None              # None where no row has a known class
    classes: list[str]
    quality: dict | None              # core.evaluate.label_quality, None without ground truth


@dataclass
class Report:
    title: str
    models: list[Model]
    last: Model | None                # the model at the end of the pipeline
    lineage: list[dict]               # records.lineage_of(last)
    labels: list[LabelFolder]
    notes: list[str] = field(default_factory=list)    # said near the top (files skipped, ...)


def render(report: Report, created: datetime.datetime | None = None) -> str:
    created = created or datetime.datetime.now().astimezone()
    parts = [_head(report.title),
             f"<header><h1>{_e(report.title)}</h1>"
             f"<p class=\"meta\">{created:%Y-%m-%d %H:%M %Z} · dpl {_e(__version__)} · "
             f"{_count(len(report.models), 'checkpoint')}, {_count(len(report.labels), 'label folder')}</p>"
             + "".join(f"<p class=\"note\">{_e(n)}</p>" for n in report.notes) + "</header>"]
    if report.models:
        parts += [_models(report), _lineage(report), _curves(report.models)]
    if report.labels:
        parts.append(_label_quality(report.labels))
    if report.models:
        parts.append(_reliability(report))
    parts.append(_commands(report.models))
    return "\n".join(parts) + "\n</body>\n</html>\n"


# ---- sections -------------------------------------------------------------------------------------

def _head(title: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>")


def _models(report: Report) -> str:
    data = sorted({m.result["data"] for m in report.models})
    head = ("<tr><th>model</th><th>arch</th><th class=\"num\">params</th><th>weights</th>"
            + "".join(f"<th class=\"num\">{k}</th>" for k in METRICS) + "<th class=\"num\">n</th></tr>")
    rows = []
    for m in report.models:
        r = m.result
        cells = "".join(_number(r[k], metric=k) for k in METRICS)
        mark = ' class="last"' if m is report.last else ""
        rows.append(f"<tr{mark} data-checkpoint=\"{_e(str(m.path))}\">"
                    f"<td title=\"{_e(str(m.path))}\">{_e(m.path.name)}</td><td>{_e(r['arch'])}</td>"
                    f"<td class=\"num\" data-value=\"{r['params']}\">{r['params']:,}</td>"
                    f"<td>{_e(_weights(r.get('weights')))}</td>{cells}"
                    f"<td class=\"num\" data-value=\"{r['n']}\">{r['n']:,}</td></tr>")
    return (f"<section id=\"models\"><h2>Models</h2>"
            f"<p class=\"note\">Each checkpoint on its default test data ({_e(', '.join(data))}), "
            "as <code>dpl eval CKPT --json</code> measures it; the last model in bold. "
            "nll: negative log-likelihood; ece: expected calibration error, 15 bins.</p>"
            f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></section>")


def _lineage(report: Report) -> str:
    chain = report.lineage
    if not chain:
        return ""
    fig, _ = figures.lineage(chain)
    rows = "".join(
        f"<tr><td>{_e(Path(c['path']).name)}</td><td>{_e(c['role'])}</td><td>{_e(c['arch'])}</td>"
        f"{_number(c.get('test_top1'), metric='top1')}</tr>" for c in chain)
    return ("<section id=\"lineage\"><h2>Lineage of the last model</h2>"
            f"<p class=\"note\">{_e(report.last.path.name)} and the models it descends from (through the teacher "
            "of its labels, its live teacher or its --init), oldest first, with the test accuracy each recorded.</p>"
            + _figure(fig, f"lineage of {report.last.path.name}", fmt="svg")
            + "<table><thead><tr><th>model</th><th>role</th><th>arch</th><th class=\"num\">test top1</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>")


def _curves(models: list[Model]) -> str:
    runs = {m.path.name: m.history for m in models if m.history}
    without = [m.path.name for m in models if not m.history]
    body = _figure(figures.curves(runs)[0], "training curves of " + ", ".join(runs)) if runs else ""
    note = (f"<p class=\"note\">No training history in {_e(', '.join(without))} (made by an older dpl, "
            "or not trained).</p>" if without else "")
    return f"<section id=\"curves\"><h2>Training curves</h2>{body}{note}</section>"


def _label_quality(folders: list[LabelFolder]) -> str:
    parts = ["<section id=\"labels\"><h2>Pseudo-label quality</h2>"
             "<p class=\"note\">Per label folder (one per iteration): accuracy of the pseudo-labels against the "
             "ground truth, overall and for the labels at or above each confidence threshold, with the share "
             "of the labels kept (coverage).</p>"]
    for f in folders:
        fig, _ = figures.label_confidence(f.confidence, f.predicted, f.classes, f.truth)
        teacher = f" by {f.teacher}" if f.teacher else ""
        parts.append(f"<h3>{_e(f.path.name)}{_e(teacher)} on {_e(f.data)}</h3><div class=\"labels\">")
        if f.quality is None:
            parts.append("<p class=\"note\">No ground truth for these samples: the confidence histogram alone.</p>")
        else:
            q = f.quality
            rows = "".join(
                f"<tr>{_number(t['threshold'], digits=2)}{_number(t['coverage'])}{_number(t['accuracy'])}"
                f"<td class=\"num\" data-value=\"{t['n']}\">{t['n']:,}</td></tr>" for t in q["thresholds"])
            parts.append("<table><thead><tr><th class=\"num\">confidence ≥</th><th class=\"num\">coverage</th>"
                         "<th class=\"num\">accuracy</th><th class=\"num\">n</th></tr></thead>"
                         f"<tbody><tr><td class=\"num\">all</td>{_number(1.0)}{_number(q['accuracy'])}"
                         f"<td class=\"num\" data-value=\"{q['n']}\">{q['n']:,}</td></tr>{rows}</tbody></table>")
        parts.append(_figure(fig, f"confidence of {f.path.name}") + "</div>")
    return "".join(parts) + "</section>"


def _reliability(report: Report) -> str:
    shown = report.models if len(report.models) <= MAX_RELIABILITY else [report.last]
    note = ("every checkpoint" if shown is report.models
            else f"the last model only ({len(report.models)} checkpoints are more than {MAX_RELIABILITY})")
    figs = [_figure(figures.reliability(m.result["reliability"]["bins"], m.result["ece"], m.path.name)[0],
                    f"reliability of {m.path.name}", caption=f"{m.path.name}: ece {m.result['ece']:.4f}")
            for m in shown if m.result.get("reliability")]
    last = report.last
    confusion = ""
    if last.result.get("confusion"):
        fig, _ = figures.confusion(last.result["confusion"], last.classes, last.path.name)
        confusion = ("<h3>Confusion matrix of the last model</h3>"
                     + _figure(fig, f"confusion matrix of {last.path.name}",
                               caption=f"{last.path.name} on {last.result['data']}: rows are the true classes"))
    return ("<section id=\"reliability\"><h2>Calibration</h2>"
            f"<p class=\"note\">Reliability diagrams of {_e(note)}: accuracy against mean confidence in 15 equal "
            "confidence bins; the gap to the diagonal, weighted by the bin's share, sums to the ece.</p>"
            f"<div class=\"grid\">{''.join(figs)}</div>{confusion}</section>")


def _commands(models: list[Model]) -> str:
    lines = "".join(f"<pre>{_e(m.path.name)}: {_e(_command(m.command))}</pre>" for m in models if m.command)
    return f"<footer><h2>Commands</h2>{lines or '<p>none recorded</p>'}</footer>"


# ---- pieces ---------------------------------------------------------------------------------------

def _figure(fig, alt: str, caption: str = "", fmt: str = "png") -> str:
    # Each figure in the smaller of the two formats, as measured on the demo: the lineage's few points in SVG;
    # curves of many epochs, hatched bars, histograms and heat maps in PNG.
    uri = figures.data_uri(fig, fmt)
    cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure><img src=\"{uri}\" alt=\"{_e(alt)}\">{cap}</figure>"


def _number(value, digits: int = 4, metric: str = "") -> str:
    """A right-aligned cell: rounded for reading, the full value in data-value (exactly what JSON prints)."""
    if value is None:
        return "<td class=\"num\">–</td>"
    named = f' data-metric="{metric}"' if metric else ""
    return f"<td class=\"num\"{named} data-value=\"{value!r}\">{value:.{digits}f}</td>"


def _weights(w: dict | None) -> str:
    if not w or w.get("epoch") is None:
        return (w or {}).get("kept", "last")
    # as dpl eval writes it: "best (epoch 7 of 10)", "last (epoch 10)"
    of = f" of {w['epochs']}" if w["kept"] == "best" and w.get("epochs") else ""
    return f"{w['kept']} (epoch {w['epoch']}{of})"


def _command(command) -> str:
    return shlex.join(command) if isinstance(command, list) else str(command)


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)
