"""dpl info: an artifact's metadata and lineage, or an architecture's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import common
from ..core import DplError, catalog, tasks

artifacts = common.lazy("dpl.core.artifacts")
boxes = common.lazy("dpl.core.data.boxes")
data = common.lazy("dpl.core.data")
models = common.lazy("dpl.core.models")


@common.guarded
def info_command(
    target: Annotated[str | None, typer.Argument(help="An artifact (checkpoint), or with --layers an architecture name.")] = None,
    layers: Annotated[bool, typer.Option("--layers", help="List the model's layers by module path, with output shapes.")] = False,
    archs: Annotated[bool, typer.Option("--archs", help="List the registered architectures.")] = False,
    data_spec: Annotated[str, typer.Option("--data", help="With --layers ARCH: the data whose input shape and classes to assume.", rich_help_panel=common.Panel.DATA)] = "digits",
    as_json: common.Json = False,
):
    """Show what an artifact is and where it came from, or the layers of a model."""
    if archs:
        listed = {"archs": list(catalog.ARCHS)}
        if (count := models.timm_model_count()) is not None:
            listed.update(archs=[*listed["archs"], f"{catalog.TIMM}NAME"], timm_models=count)
        return _show(listed, as_json, lambda r: "\n".join(
            f"{a}  (any of timm's {r['timm_models']} models: timm.list_models())" if a.startswith(catalog.TIMM) else a
            for a in r["archs"]))
    if target is None:
        raise DplError("give an artifact path, or --layers ARCH, or --archs")
    if layers:
        if Path(target).is_file():
            made = artifacts.read_header(Path(target), kind="checkpoint").meta.get("task")
            ckpt = artifacts.load_checkpoint(Path(target), task="detector" if made == "detector" else "classifier")
            model, shape = ckpt.build_model(), (ckpt.input["channels"], ckpt.input["size"], ckpt.input["size"])
        else:
            ds = data.load(data_spec)
            c, h, _ = ds.shape
            model = models.build(models.arch_spec(target, num_classes=ds.num_classes, in_channels=c, image_size=h))
            shape = ds.shape
        rows = models.list_layers(model, shape)
        if as_json:
            return common.print_json({"layers": rows, "input": list(shape), "params": models.count_params(model)})
        table = Table(title=f"{target}: {models.count_params(model):,} parameters, input {'x'.join(map(str, shape))}")
        for col in ("path", "type", "output", "params"):
            table.add_column(col, justify="right" if col == "params" else "left")
        for r in rows:
            table.add_row(r["path"], r["type"], "x".join(map(str, r["shape"])) if r["shape"] else "-", f"{r['params']:,}")
        common.stderr.print(table)
        return
    path = Path(target)
    if path.is_dir():
        folder_meta, samples = _read_folder(path)
        meta = {k: v for k, v in folder_meta.items() if k not in ("rank", "seq", "rank_shards", "count")}
        meta["sha256"] = artifacts.folder_sha256(path)
        meta["shards"] = len(list(path.glob("shard-*.safetensors")))
        meta["bytes_per_sample"] = sum(f.stat().st_size for f in path.glob("shard-*.safetensors")) / max(1, samples)
        meta["lineage"] = lineage(meta.get("teachers", []))
    else:
        header = artifacts.read_header(path)
        if header.meta["dpl.kind"] in ("labels", boxes.KIND):
            raise DplError(f"{path}: one shard of a label folder; give the folder ({path.parent})")
        meta = dict(header.meta)
        meta["sha256"] = artifacts.sha256_file(header.path)
        meta["tensors"] = len(header.tensors)
        meta["parameters"] = sum(_numel(t["shape"]) for t in header.tensors.values())
        meta["lineage"] = lineage(meta.get("parents", []))
    _show(meta, as_json, _render)


def _read_folder(path: Path) -> tuple[dict, int]:
    """A label folder's or a box label folder's (pseudo-boxes) common metadata and its number of samples."""
    labels = (boxes.read_box_labels if tasks.of_folder(path).name == tasks.BOX_LABELS else artifacts.read_labels)(path)
    return labels.meta, len(labels)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def lineage(parents: list[dict], depth: int = 0) -> list[dict]:
    """Follow parents by path while the file there still has the recorded sha256."""
    chain = []
    for p in parents:
        entry = {"role": p.get("role"), "path": p.get("path"), "sha256": p.get("sha256"), "depth": depth,
                 **({"head": p["head"]} if isinstance(p.get("head"), str) else {})}
        path = Path(p.get("path") or "")
        if _exists(path):
            try:
                folder = path.is_dir()
                sha = artifacts.folder_sha256(path) if folder else artifacts.sha256_file(path)
                entry["status"] = "present" if sha == p.get("sha256") else "changed on disk"
                if entry["status"] == "present" and depth < 16:
                    chain.append(entry)
                    meta = _read_folder(path)[0] if folder else artifacts.read_header(path).meta
                    chain += lineage(meta.get("teachers" if folder else "parents", []), depth + 1)
                    continue
            except DplError:
                entry["status"] = "unreadable"
        else:
            entry["status"] = "missing"
        chain.append(entry)
    return chain


def _exists(path: Path) -> bool:
    """A file or folder to follow: paths come from the artifact's metadata, so no devices, FIFOs or errors."""
    try:
        return path.is_file() or path.is_dir()
    except (OSError, ValueError):
        return False


def _show(obj: dict, as_json: bool, render) -> None:
    if as_json:
        common.print_json(obj)
    else:
        # Metadata text is printed as it is: a "[...]" in it is no rich markup.
        common.stderr.print(render(obj), highlight=False, markup=False)


def _render(meta: dict) -> str:
    lines = [f"{meta['dpl.kind']}  sha256 {meta['sha256'][:16]}…  format {meta['dpl.format']}, "
             f"dpl {meta.get('dpl.version')}, created {meta.get('created')}"]
    if meta["dpl.kind"] == "labels":
        lines.append(f"labels    {meta['mode']}" + (f" top-{meta['topk']}" if meta.get("topk") else "")
                     + f", tau {meta['tau']}, {meta['total']} samples, {meta['num_classes']} classes, "
                     f"{meta['shards']} shards, {meta['bytes_per_sample']:.1f} bytes/sample")
        if meta.get("quality"):
            lines.append(f"quality   pseudo-label accuracy {meta['quality']['accuracy']:.4f} "
                         f"(mean confidence {meta['quality']['mean_confidence']:.4f})")
    if "arch" in meta:
        arch = meta["arch"]
        knobs = ", ".join(f"{k}={v}" for k, v in arch.items() if k != "name")
        lines.append(f"arch      {arch['name']} ({knobs}); {meta['parameters']:,} values in {meta['tensors']} tensors")
    if isinstance(meta.get("mil"), dict):
        m, built = meta["mil"], meta["mil"].get("bags")
        bags = (f"; bags with class {built.get('target')} ({built.get('target_name')}) positive, "
                f"{built.get('size')} ± {built.get('size_std')} instances, bag seed {built.get('seed')}"
                if isinstance(built, dict) and built else "; bags from a bag folder")
        lines.append(f"mil       {m.get('pooling')} pooling{bags}, {m.get('bag_batch')} bags per step")
    if isinstance(meta.get("wsddn"), dict):
        w = meta["wsddn"]
        lines.append(f"wsddn     {w.get('proposals')} grid proposals (sides {w.get('proposal_sizes')} x ratios "
                     f"{w.get('proposal_ratios')}, stride {w.get('proposal_stride')} of the side), RoIAlign "
                     f"{w.get('roi')}x{w.get('roi')} on {w.get('feature_layer')}, hidden {w.get('hidden')}, refine "
                     f"{w.get('refine', 0)}, context {w.get('context', 0.0)}, spatial {w.get('spatial', 0.0)}, "
                     f"vote {w.get('vote', 1.0)}")
    if "input" in meta:
        i = meta["input"]
        lines.append(f"input     {i['channels']}x{i['size']}x{i['size']}, mean {i['mean']}, std {i['std']}")
    if "data" in meta:
        d = meta["data"]
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("spec", "fingerprint"))
        lines.append(f"data      {d.get('spec')} ({extra}), fingerprint {str(d.get('fingerprint'))[:16]}…")
    for i, h in enumerate(meta.get("heads") or []):
        names = ", ".join(h["classes"][:4]) + (", …" if len(h["classes"]) > 4 else "")
        source = h.get("labels") or {}
        lines.append(f"{'heads' if i == 0 else '':<9} {h['name']}: {len(h['classes'])} classes ({names}), logits "
                     f"{h['offset']}..{h['offset'] + len(h['classes']) - 1}; labels {source.get('path')}; expert "
                     f"data {h.get('data') or 'unknown'}, test {h.get('test') or 'unknown'}")
    if "metrics" in meta:
        lines.append("metrics   " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in meta["metrics"].items()))
    if "weights" in meta:
        w = meta["weights"]
        key = f"val_{w.get('metric', 'top1')}"                   # the task's figure --keep best maximizes
        best = (key, w["best"][key]) if (w.get("best") or {}).get(key) is not None else None
        lines.append(f"weights   {w['kept']} (epoch {w['epoch']} of {w['epochs']})"
                     + (f", exponential moving average (decay {w['ema']})" if w.get("ema") else "") + (
            f"; best validation {best[0].removeprefix('val_').replace('top1', 'top-1')} {best[1]:.4f} at epoch "
            f"{w['best_epoch']}" if best else ""))
    if meta.get("val"):
        v = meta["val"]
        lines.append(f"val       {v.get('n')} samples held out of {v.get('spec')} ({v.get('part')}), every {v.get('every')} epochs")
    if meta.get("history"):
        lines.append(f"history   {len(meta['history'])} epoch records (dpl plot curves draws them)")
    for key in ("seed", "command"):
        if key in meta:
            value = " ".join(meta[key]) if isinstance(meta[key], list) else meta[key]
            lines.append(f"{key:<9} {value}")
    lines.append("lineage   " + ("(none)" if not meta["lineage"] else ""))
    for p in meta["lineage"]:
        head = f", head {p['head']}" if "head" in p else ""
        lines.append(f"{'  ' * (p['depth'] + 1)}← {p['role']}: {p['path']} ({str(p['sha256'])[:16]}…{head}, {p['status']})")
    return "\n".join(lines)
