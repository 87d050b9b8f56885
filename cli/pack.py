"""dpl pack: a folder of images into WebDataset tar shards, for sources too large to list file by file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import common
from ..core import DplError

artifacts, images = common.lazy("dpl.core.artifacts"), common.lazy("dpl.core.data.images")


@common.guarded
def pack_command(
    folder: Annotated[Path, typer.Argument(help="An image folder: class sub-folders (labeled) or image files alone (an unlabeled pool).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The folder to write the shards into (created).", rich_help_panel=common.Panel.OUTPUT)],
    shard_size: Annotated[int, typer.Option(min=1, help="Images per shard.", rich_help_panel=common.Panel.OUTPUT)] = 10_000,
    force: common.Force = False,
):
    """Pack an image folder into WebDataset tar shards (read them with --data tar:DIR).

    Plain tar shards in the WebDataset layout (KEY.jpg/KEY.png, KEY.cls with the class index,
    classes.txt), the image bytes unchanged."""
    listing = images.list_folder(images.split_folder(folder, "train"))
    if output.exists() and not output.is_dir():
        raise DplError(f"{output} is a file, not a folder of shards")
    if output.is_dir() and any(output.glob("*.tar")) and not force:
        raise DplError(f"{output} holds tar shards; pass --force to replace them")
    artifacts.check_writable(output)
    output.mkdir(exist_ok=True)
    for stale in output.glob("shard-*.tar"):
        stale.unlink()
    written = images.pack(listing, output, shard_size)
    common.stderr.print(f"{len(listing):,} images into {len(written)} shards", highlight=False)
    print(output)
