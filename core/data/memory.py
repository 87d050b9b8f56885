"""What the machine can hold: counts given by the user (bags, scenes, instances) are priced in bytes and refused
before anything is allocated or generated when they cannot fit, naming the count, the estimate and the limit."""

from __future__ import annotations

import os

from .. import DplError

MEMORY_SHARE = 0.5     # generated data (and any one bag as float input) may take this share of the free memory


def free_memory() -> int:
    """Bytes this machine can still give: MemAvailable, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_fits(need: float, what: str) -> None:
    """Refuse `what` (e.g. "--scenes 1,000,000,000: 1,000,000,000 scenes of 1x64x64") when it takes `need`
    bytes, more than MEMORY_SHARE of the free memory."""
    free = free_memory()
    if need > free * MEMORY_SHARE:
        raise DplError(f"{what} take about {gib(need)}, more than memory allows ({gib(free * MEMORY_SHARE)}, "
                       f"half of the {gib(free)} free)")
