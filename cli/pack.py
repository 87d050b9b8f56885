"""dpl pack: a folder of images into WebDataset tar shards, for sources too large to list file by file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError

artifacts, images = common.lazy("dpl.core.artifacts"), common.lazy("dpl.core.data.images")


@common.guarded
def pack_command(
    folder: Annotated[Path, typer.Argument(help="An image folder: class sub-folders (labeled) or image files alone (an unlabeled pool).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The folder to write the shards into: created, or with --force an earlier pack's output replaced whole (never in part: a failed or killed pack leaves it as it was).", rich_help_panel=common.Panel.OUTPUT)],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard.", rich_help_panel=common.Panel.OUTPUT)] = 10_000,
    force: common.Force = False,
):
    """Pack an image folder into WebDataset tar shards (read them with --data tar:DIR).

    Plain tar shards in the WebDataset layout (KEY.jpg/KEY.png, KEY.cls with the class index,
    classes.txt), the image bytes unchanged."""
    source = images.split_folder(folder, "train")
    listing = images.list_folder(source)
    check_pack_output(source, output, force)
    images.shard_keys(listing)
    needed, free = int(listing.size.sum()) * 11 // 10 + (1 << 20), shutil.disk_usage(output.absolute().parent).free
    if needed > free:
        raise DplError(f"{output}: the shards need about {needed / 2**30:,.2f} GiB, and {free / 2**30:,.2f} GiB "
                       f"is free there")
    written = []
    artifacts.replace_folder(output, lambda tmp: written.extend(images.pack(listing, tmp, shard_size)))
    common.stderr.print(f"{len(listing):,} images into {len(written)} shards", highlight=False)
    print(output)


def check_pack_output(source: Path, output: Path, force: bool) -> None:
    """The output is a new folder, or one that holds only an earlier pack's output (replaced with --force);
    never the source folder, a folder inside it, or a folder holding anything else (the whole folder is
    replaced)."""
    artifacts.check_writable(output)
    target = output.resolve()
    if target == source or source in target.parents:
        raise DplError(f"{output}: inside the folder it packs ({source}); write the shards elsewhere")
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a folder of shards")
    if not output.is_dir():
        return
    entries = sorted(output.iterdir())
    foreign = [p.name for p in entries if not (p.name.startswith("shard-") and p.suffix == ".tar")
               and p.name != "classes.txt"]
    if foreign:
        raise DplError(f"{output}: holds files that are not shards of dpl pack (first: {foreign[0]!r}); "
                       f"give a new or empty folder")
    if entries and not force:
        raise DplError(f"{output} holds tar shards; pass --force to replace them")
