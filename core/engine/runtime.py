"""Where training runs and how its batches get there: `Runtime` (the device, bf16 autocast and channels_last on
CUDA, compile, DataLoader workers) and `Feed` (batches gathered on the device by indexing, or by DataLoader workers
from host memory, pinned on CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import DplError
from ..data import images
from . import distributed
from .sampling import shuffled_batches


@dataclass(frozen=True)
class Runtime:
    """Where the work runs and how: CUDA gets bf16 autocast and channels_last.

    Training images live on the device and batches are gathered there by indexing, unless `workers` > 0:
    then they stay in host memory and DataLoader workers gather each batch, into pinned memory on CUDA,
    a few batches ahead of the step. `workers=None` chooses: 0, unless the images would take more than
    half of the GPU's free memory.
    """

    device: torch.device
    compile: bool = False     # torch.compile the trained model's forward
    workers: int | None = None
    prefetch: int = 4         # batches each worker prepares ahead

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.cuda else model

    def compiled(self, model: nn.Module) -> nn.Module:
        """The forward to train through; the caller keeps `model` itself for its state_dict."""
        return torch.compile(model) if self.compile else model

    def loader_workers(self, nbytes: int, streamed: bool = False) -> int:
        if self.workers is not None:
            return self.workers
        if streamed:                 # image files: workers decode them
            return images.default_workers(model_on_cpu=not self.cuda)
        if self.cuda and nbytes > torch.cuda.mem_get_info(self.device)[0] // 2:
            return min(4, images.usable_cores())
        return 0

    def place(self, *tensors: torch.Tensor) -> Feed:
        """A feed of batches from these tensors (the training images and the index maps into them)."""
        streamed = any(isinstance(t, images.ImageStore) for t in tensors)
        workers = self.loader_workers(sum(t.nbytes for t in tensors), streamed)
        return Feed(self, workers, tuple(t if workers or not torch.is_tensor(t) else t.to(self.device)
                                         for t in tensors))


@dataclass(frozen=True)
class Feed:
    """Tensors on the device (workers == 0) or in host memory for DataLoader workers to gather from.
    An `images.ImageStore` among them is decoded where the gathering happens."""

    rt: Runtime
    workers: int
    tensors: tuple[torch.Tensor, ...]

    def __call__(self, batches: Iterable, gather: Callable) -> Iterator[tuple[object, torch.Tensor]]:
        """(batch, gather(batch, *tensors) on the device) for each batch of indices, in order."""
        if not self.workers:
            for batch in batches:
                yield batch, gather(batch, *self.tensors).to(self.rt.device)
            return
        batches = [_to(b, torch.device("cpu")) for b in batches]
        # Its own generator: the loader's seed draw must not move the global RNG that the noise comes from.
        loader = DataLoader(_Gathered(batches, gather, self.tensors), batch_size=None, num_workers=self.workers,
                            pin_memory=self.rt.cuda, prefetch_factor=self.rt.prefetch, generator=torch.Generator())
        with images.frozen_heap():
            gathered = iter(loader)
        try:
            for batch, x in zip(batches, gathered):
                yield _to(batch, self.rt.device), x.to(self.rt.device, non_blocking=True)
        except DplError as e:        # raised in a worker: its message is the last line of the report
            raise DplError(str(e).strip().splitlines()[-1].removeprefix("dpl.core.DplError: ")) from None

    def shuffled(self, batch_size: int, seed: int) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """`batches(epoch)` for fit: (indices, images) from the first tensor, in shuffled_batches' order."""
        n = len(self.tensors[0])
        return lambda epoch: self(shuffled_batches(n, batch_size, seed, epoch, self.rt.device), take_rows)


def take_rows(idx: torch.Tensor, images: torch.Tensor, *_) -> torch.Tensor:
    return images[idx]


class _Gathered(torch.utils.data.Dataset):
    def __init__(self, batches: list, gather: Callable, tensors: tuple[torch.Tensor, ...]):
        self.batches, self.gather, self.tensors = batches, gather, tensors

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.gather(self.batches[i], *self.tensors)


def _to(batch, device: torch.device):
    """An index batch (a tensor, None, or a tuple of them) moved to `device`."""
    if batch is None:
        return None
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    return type(batch)(_to(b, device) for b in batch)


def runtime(device: str = "auto", compile: bool = False, workers: int | None = None) -> Runtime:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and distributed.rank_world()[1] > 1:
        device = f"cuda:{distributed.local_rank()}"     # one GPU per rank
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DplError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DplError("--device cuda, but no CUDA device is available")
    if workers is not None and workers < 0:
        raise DplError(f"--workers must be >= 0, got {workers}")
    return Runtime(torch.device(device), compile, workers)
