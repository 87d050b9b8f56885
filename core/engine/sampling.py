"""The order of the samples: each epoch's shuffled batches (`shuffled_batches`), endless seeded index streams
(`index_stream`), and the two index streams of a step that mixes two parts (`paired_indices`, read by
`methods/common.Mix`). Every order depends only on (seed, epoch); under torchrun each rank takes its own slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from . import distributed


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches of one epoch, the last partial batch dropped (a whole one when n < batch_size); the order
    depends only on (seed, epoch). Under torchrun each rank takes its own slice of the epoch's order (equal
    sizes, no sample twice): --batch-size is per rank."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    rank, world = distributed.rank_world()
    order = order[: n - n % world][rank::world].to(device)
    n = len(order)
    stop = n - n % batch_size if n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start: start + batch_size]


def index_stream(n: int, count: int, seed: int, epoch: int, device) -> torch.Tensor:
    """`count` indices of 0..n-1: successive seeded permutations, so every sample recurs evenly (a part
    smaller than the epoch's draw from it). Under torchrun, each rank takes its own slice of the one stream
    all ranks share, so what a global step sees does not depend on the world size."""
    rank, world = distributed.rank_world()
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch * 7919 + 1)
    perms = [torch.randperm(n, generator=gen) for _ in range(math.ceil(count * world / n))]
    return torch.cat(perms)[: count * world][rank::world].to(device)


def paired_indices(n_first: int, first: int, n_second: int, second: int, steps: int, seed: int, epoch: int,
                   device) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """(first part's indices, second part's indices) of each of `steps` steps, `first` and `second` a step (this
    rank's), from the index streams of the two parts (seeded `seed` and `seed + 1`); None for a part a step
    takes none of. The labeled/unlabeled mix of `distill` and `semi`."""
    a = index_stream(n_first, steps * first, seed, epoch, device) if first else None
    b = index_stream(n_second, steps * second, seed + 1, epoch, device) if second else None
    return [(a[s * first:(s + 1) * first] if first else None, b[s * second:(s + 1) * second] if second else None)
            for s in range(steps)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    n //= distributed.rank_world()[1]
    return n // batch_size if n >= batch_size else math.ceil(n / batch_size)
