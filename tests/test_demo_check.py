"""The README/demo comparison of .ci/check_demo.py, run as CI runs it: a subprocess on small text files. It passes on
the README's own table, and fails, in one line, on a table without the Noisy Student effect, on a student that falls
behind the one before it, and on figures outside the tolerance."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "check_demo.py"

HEADER = ("┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┓\n"
          "┃ model                              ┃ arch  ┃    params ┃ weights          ┃   top1 ┃   top5 ┃    nll ┃    ece ┃\n"
          "┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━┩\n")
ARCHS = (("cnn-s", "77,754", "last (epoch 100)"), ("cnn-m", "308,074", "last (epoch 30) "),
         ("cnn-m", "308,074", "last (epoch 30) "), ("cnn-l", "2,776,522", "last (epoch 30) "))


def demo_output(top1s) -> str:
    """What `make demo` prints: make's own lines, then dpl eval's table as in demo/summary.txt."""
    rows = "".join(f"│ /work/main/demo/model{i}.safetensors │ {a:<5} │ {p:>9} │ {w} │ {t} │ 0.9865 │ 0.3438 │ 0.0338 │\n"
                   for i, ((a, p, w), t) in enumerate(zip(ARCHS, top1s)))
    return ("make -C recipes/noisy-student DPL=/work/main/.venv/bin/dpl OUT=/work/main/demo all report\n"
            "                                                 on digits:test\n" + HEADER + rows +
            "└────────────────────────────────────┴───────┴───────────┴──────────────────┴────────┴────────┴────────┴────────┘\n"
            "/work/main/demo/report.html\n")


# The same table as rich draws it at 80 columns: paths cut, the weights cell wrapped onto more lines.
NARROW = """\
                                 on digits:test
┏━━━━━━━━━━━┳━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┳━━━━━━━━┓
┃ model     ┃ arch  ┃    params ┃ weights  ┃   top1 ┃   top5 ┃    nll ┃    ece ┃
┡━━━━━━━━━━━╇━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━╇━━━━━━━━┩
│ /work/ma… │ cnn-s │    77,754 │ last     │ 0.9101 │ 0.9865 │ 0.3438 │ 0.0338 │
│           │       │           │ (epoch   │        │        │        │        │
│           │       │           │ 100)     │        │        │        │        │
│ /work/ma… │ cnn-m │   308,074 │ last     │ 0.9258 │ 0.9865 │ 0.3438 │ 0.0338 │
│           │       │           │ (epoch   │        │        │        │        │
│           │       │           │ 30)      │        │        │        │        │
│ /work/ma… │ cnn-m │   308,074 │ last     │ 0.9258 │ 0.9865 │ 0.3438 │ 0.0338 │
│           │       │           │ (epoch   │        │        │        │        │
│           │       │           │ 30)      │        │        │        │        │
│ /work/ma… │ cnn-l │ 2,776,522 │ last     │ 0.9348 │ 0.9865 │ 0.3438 │ 0.0338 │
│           │       │           │ (epoch   │        │        │        │        │
│           │       │           │ 30)      │        │        │        │        │
└───────────┴───────┴───────────┴──────────┴────────┴────────┴────────┴────────┘
"""


def readme_table(top1s) -> str:
    rows = "".join(f"| {name} | {a} | {t} | 0.9000 |\n"
                   for name, (a, _, _), t in zip(("teacher", "student 1", "student 2", "student 3"), ARCHS, top1s))
    return ("# dpl\n\nsome text\n\n<!-- demo-table -->\n| model | arch | top1 | top1, another CPU |\n|---|---|---|---|\n"
            + rows + "\nThe top1 column was measured on one CPU.\n")


def check(tmp_path, demo: str, readme: str | None = None, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "demo.txt").write_text(demo, encoding="utf-8")
    argv = [sys.executable, str(SCRIPT), str(tmp_path / "demo.txt")]
    if readme is not None:
        (tmp_path / "README.md").write_text(readme, encoding="utf-8")
        argv.append(str(tmp_path / "README.md"))
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def readme_figures() -> list[str]:
    """The top1 figures of the real README's demo table, read here independently of the script."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").split("<!-- demo-table -->", 1)[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = header.index("top1")
    return [[c.strip() for c in l.strip("|").split("|")][col] for l in lines[2:6]]


def test_passes_on_the_readmes_own_table(tmp_path):
    # the README states the script's tolerance, so the two change together
    tolerance = re.search(r"^TOLERANCE = (\S+)", SCRIPT.read_text(encoding="utf-8"), re.M).group(1)
    assert f"more than {tolerance} points" in " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    figures = readme_figures()
    assert len(figures) == 4 and all(f.startswith("0.") for f in figures)
    r = check(tmp_path, demo_output(figures))          # the real README.md, the script's default
    assert r.returncode == 0, r
    assert "effect holds" in r.stdout
    r = check(tmp_path, demo_output(figures), None, "--tolerance", "0")
    assert r.returncode == 0, r


def test_reads_summary_txt_and_narrow_tables(tmp_path):
    readme = readme_table(["0.9101", "0.9258", "0.9258", "0.9348"])
    assert check(tmp_path, NARROW, readme, "--tolerance", "0").returncode == 0
    summary = demo_output(["0.9101", "0.9258", "0.9258", "0.9348"]).split("\n", 1)[1].rsplit("/work", 1)[0]
    assert check(tmp_path, summary, readme, "--tolerance", "0").returncode == 0


def test_fails_when_the_effect_is_gone(tmp_path):
    readme = readme_table(["0.9169", "0.9348", "0.9371", "0.9416"])
    # every figure within 1.5 points of the README's, but student 3 only 1.12 points over the teacher
    r = check(tmp_path, demo_output(["0.9281", "0.9326", "0.9371", "0.9393"]), readme)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "effect is gone" in r.stderr and "+1.12" in r.stderr, r.stderr
    # no gain at all
    r = check(tmp_path, demo_output(["0.9169", "0.9169", "0.9169", "0.9169"]), readme)
    assert r.returncode == 1 and "effect is gone" in r.stderr


def test_fails_when_a_student_falls_behind_the_one_before(tmp_path):
    readme = readme_table(["0.9169", "0.9348", "0.9371", "0.9416"])
    r = check(tmp_path, demo_output(["0.9169", "0.9416", "0.9348", "0.9416"]), readme)     # -0.68 points
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "student 2 0.9348 is 0.68 points below student 1" in r.stderr, r.stderr
    # a dip of up to half a point is allowed
    assert check(tmp_path, demo_output(["0.9169", "0.9416", "0.9371", "0.9416"]), readme).returncode == 0


def test_fails_outside_the_tolerance(tmp_path):
    readme = readme_table(["0.9169", "0.9348", "0.9371", "0.9416"])
    # the effect is there (+2.02) and the students climb, but the whole table sits 2.5 points lower
    r = check(tmp_path, demo_output(["0.8921", "0.9101", "0.9124", "0.9169"]), readme)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "teacher 0.8921 is -2.48 points from the README's 0.9169" in r.stderr
    # the other machine's figures of issue 28 are within the default tolerance of this README's
    assert check(tmp_path, demo_output(["0.9101", "0.9258", "0.9258", "0.9348"]), readme).returncode == 0
    # and outside a tighter one, chosen on the command line
    r = check(tmp_path, demo_output(["0.9101", "0.9258", "0.9258", "0.9348"]), readme, "--tolerance", "1.0")
    assert r.returncode == 1 and "student 2 0.9258 is -1.13 points" in r.stderr, r.stderr


def test_unreadable_input_exits_2(tmp_path):
    readme = readme_table(["0.9169", "0.9348", "0.9371", "0.9416"])
    r = check(tmp_path, "make: *** [Makefile:45: demo/model0.safetensors] Error 1\n", readme)
    assert r.returncode == 2 and "no `dpl eval` table" in r.stderr
    r = check(tmp_path, demo_output(["0.9169", "0.9348", "0.9371", "0.9416"]), "# a README without the table\n")
    assert r.returncode == 2 and "<!-- demo-table -->" in r.stderr
    r = check(tmp_path, demo_output(["0.9169", "0.9348", "0.9371"]), readme)
    assert r.returncode == 1 and "expected 4 models" in r.stderr
