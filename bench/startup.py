"""Start-up time of the command line: `dpl --version`, `dpl -h` and `dpl teach -h` vs
`python -c "import typer, rich, yaml"` (what any typer CLI with YAML configs pays), as subprocesses in alternating
rounds, so that the machine's load falls on all of them alike. Help is printed at 100 columns.

    python bench/startup.py [--rounds 10]

Target (issue 28): `dpl --version` and `dpl -h` within 2x of the bare import. Prints each median and its ratio to
the bare import's, then one SUMMARY line; also the bare import plus typer.rich_utils, which any typer app loads to
print rich help, for scale.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = "import typer, rich, yaml"


# What any typer app pays to print rich help (typer.rich_utils imports rich's markdown, syntax and traceback
# modules): the floor under `dpl -h`, shown for scale.
RICH_HELP = "import typer, rich, yaml, typer.rich_utils"


def commands(dpl: str) -> dict[str, list[str]]:
    return {BASE: [sys.executable, "-c", BASE], RICH_HELP: [sys.executable, "-c", RICH_HELP],
            "dpl --version": [dpl, "--version"], "dpl -h": [dpl, "-h"], "dpl teach -h": [dpl, "teach", "-h"]}


# dpl's own modules are read from bytecode, as from an installed package: where PYTHONDONTWRITEBYTECODE is set
# (as on the development machines), every run would compile them from source, while the libraries' bytecode
# came with their wheels. The bytecode goes to a folder of its own, not into the source tree.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, "COLUMNS": "100",
       "PYTHONPYCACHEPREFIX": os.path.join(tempfile.gettempdir(), "dpl-startup-bench-pycache")}


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="runs of each command, alternated")
    parser.add_argument("--dpl", default=str(Path(sys.executable).with_name("dpl")),
                        help="the dpl console script to time (default: the one beside this Python)")
    args = parser.parse_args()
    COMMANDS = commands(args.dpl)
    for argv in COMMANDS.values():         # warm the file cache (and fail early on a broken install)
        seconds(argv)
    times = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, argv in COMMANDS.items():
            times[name].append(seconds(argv))
    base = statistics.median(times[BASE])
    print(f"{'command':<44} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6}")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:<44} {median:9.3f} {min(runs):7.3f} {max(runs):7.3f} {median / base:6.2f}")
    ratios = {name: statistics.median(times[name]) / base for name in COMMANDS if name != BASE}
    ratios["rich-help-floor"] = ratios.pop(RICH_HELP)
    met = all(ratios[n] <= 2.0 for n in ("dpl --version", "dpl -h"))
    print(f"SUMMARY startup rounds={args.rounds} base={base:.3f}s "
          + " ".join(f"{n.replace(' ', '')}={r:.2f}" for n, r in ratios.items())
          + f" target<=2.00 {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
