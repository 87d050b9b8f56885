"""An instant command line: `dpl --version`, `dpl -h`, `dpl COMMAND -h` and shell completion import no torch
(nor torchvision, matplotlib, numpy); the torch-free catalog of names they show cannot drift from the registries;
help a person can read (one-line summaries, `dpl -h` with a line per command, no option name cut at 100 columns)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpl.cli import common, main
from dpl.core import catalog

ROOT = Path(__file__).resolve().parents[1]
DPL = str(Path(sys.executable).with_name("dpl"))
HEAVY = ("torch", "torchvision", "matplotlib", "numpy")
# dpl.core's modules that import none of HEAVY, which cli/ may import by name at module level (any other is
# bound with common.lazy; see the note at the top of cli/common.py).
LIGHT_CORE = {"dpl.core", "dpl.core.catalog", "dpl.core.tasks", "dpl.core.textfiles"}
# The task handlers (paths relative to cli/) import their core at module level: they are loaded only by
# cli/tasks.dispatch, once a command runs, never for help or completion (the import-time test of `dpl -h` below
# would see them otherwise).
HANDLERS_LOADED_ON_DISPATCH = {"tasks/classifier.py", "tasks/deploy.py", "tasks/detector.py", "tasks/keypoints.py",
                              "tasks/mil.py", "tasks/video.py", "tasks/wsddn.py"}


# ---- the catalog ----------------------------------------------------------------------------------------

def test_the_catalog_lists_each_registry_in_its_order():
    from dpl.core import data, losses, models
    from dpl.core.data import bags
    from dpl.core.methods import mil, pretext, semi

    assert catalog.ARCHS == tuple(models.REGISTRY)
    assert catalog.DETECTOR_BACKBONES == tuple(models.DETECTOR_BACKBONES)
    assert catalog.DETECTOR_FAMILIES == tuple(models.DETECTOR_FAMILIES)
    assert catalog.SOURCES == tuple(data.SOURCES)
    assert catalog.FILE_SOURCES == tuple(data.FILE_SOURCES)
    assert catalog.BOX_SOURCES == tuple(data.BOX_SOURCES)
    assert catalog.BAG_FOLDER == bags.FOLDER
    assert catalog.LOGIT_LOSSES == tuple(losses.LOGIT_LOSSES)
    assert catalog.FEATURE_LOSSES == tuple(losses.FEATURE_LOSSES)
    assert catalog.PRETEXT_TASKS == tuple(pretext.TASKS)
    assert catalog.SEMI_ALGORITHMS == tuple(semi.ALGORITHMS)
    assert catalog.POOLINGS == tuple(mil.POOLINGS)
    assert catalog.MAX_PLOTTED_BAGS == mil.MAX_PLOTTED_BAGS


def test_the_catalog_imports_nothing():
    tree = ast.parse((ROOT / "core" / "catalog.py").read_text())
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imported)


# ---- the import rule ----------------------------------------------------------------------------------

def _cli_modules() -> dict[str, Path]:
    return {p.relative_to(ROOT / "cli").as_posix(): p for p in sorted((ROOT / "cli").rglob("*.py"))}


def _is_dpl_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] not in (["dpl", "cli"], ["dpl", "core"]) or len(parts) < 3:
        return False
    path = ROOT.joinpath(*parts[1:])
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _module_level_imports(path: Path, package: list[str] | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of each import that runs when the module is loaded (not inside a function); a
    `from PACKAGE import NAME` counts as PACKAGE.NAME where that is a module of dpl. `package`: the
    module's package, as parts (cli/tasks/x.py: dpl, cli, tasks)."""
    package = package or ["dpl", *path.relative_to(ROOT).parent.parts]
    found = []

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return                                   # for annotations only: never run
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module or ""]))
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.append((node.lineno, sub if _is_dpl_module(sub) else module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_no_cli_module_imports_torch_or_a_heavy_core_module_when_loaded():
    offences = []
    for rel, path in _cli_modules().items():
        if rel in HANDLERS_LOADED_ON_DISPATCH:
            continue
        for line, module in _module_level_imports(path):
            heavy = module.split(".")[0] in HEAVY
            core = module.startswith("dpl.core") and module not in LIGHT_CORE
            if heavy or core:
                offences.append(f"cli/{rel}:{line} imports {module}")
    assert not offences, "\n".join(offences)


def test_the_rule_sees_what_it_should(tmp_path):
    tree = {rel: {m for _, m in _module_level_imports(p)} for rel, p in _cli_modules().items()}
    assert "dpl.core.catalog" in tree["common.py"] and "dpl.cli.common" in tree["teach.py"]
    assert "dpl.core.tasks" in tree["tasks/__init__.py"]
    sample = tmp_path / "sample.py"
    sample.write_text("import torch\nfrom ..core import artifacts, DplError\nfrom ..core.engine import train\n"
                      "if TYPE_CHECKING:\n    import numpy\ndef f():\n    import numpy\n")
    assert {m for _, m in _module_level_imports(sample, ["dpl", "cli"])} == {
        "torch", "dpl.core.artifacts", "dpl.core", "dpl.core.engine.train"}


# ---- with torch made unimportable ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> dict[str, str]:
    """An environment where importing torch, torchvision, matplotlib or numpy fails."""
    blocked = tmp_path_factory.mktemp("blocked")
    for name in HEAVY:
        (blocked / name).mkdir()
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked by test_startup')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(blocked), "COLUMNS": "100"}


def test_the_light_modules_and_every_cli_module_load_without_torch(no_torch):
    names = sorted(LIGHT_CORE) + ["dpl.cli." + rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                                  for rel in _cli_modules() if rel not in HANDLERS_LOADED_ON_DISPATCH]
    code = (f"import importlib, sys\nfor name in {names!r}:\n    importlib.import_module(name)\n"
            f"print(sorted(set({HEAVY!r}) & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], env=no_torch, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


HELP = [["--version"], ["-h"], ["plot", "curves", "-h"]] + [[name, "-h"] for name in main.COMMANDS]


@pytest.mark.parametrize("args", HELP, ids=" ".join)
def test_help_and_version_print_without_torch(no_torch, args):
    r = subprocess.run([DPL, *args], env=no_torch, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ("Usage: dpl" in r.stdout) if "-h" in args else r.stdout.startswith("dpl ")


@pytest.mark.parametrize("words, expected", [
    ("dpl te", ["teach"]),
    ("dpl teach --arch wrn-4", ["wrn-40-1", "wrn-40-2", "wrn-40-4", "wrn-40-10"]),
    ("dpl pretrain --task ji", ["jigsaw"]),
    ("dpl mil --pooling ga", ["gated"]),
    ("dpl distill --loss d", ["dkd"]),
    ("dpl semi --algorithm fl", ["flexmatch"]),
    ("dpl distill --feature-loss cr", ["crd"]),
])
def test_shell_completion_works_without_torch(no_torch, words, expected):
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**no_torch, "_DPL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    r = subprocess.run([DPL], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == expected, r


# ---- help a person can read ---------------------------------------------------------------------------

def test_each_command_and_plot_kind_starts_its_help_with_a_one_line_summary():
    from dpl.cli.plot import plot_app

    full = {name: main.command_object(name) for name in main.COMMANDS}
    texts = {name: (obj.info.help if name == "plot" else obj.__doc__) for name, obj in full.items()}
    texts.update({f"plot {c.name}": c.callback.__doc__ for c in plot_app.registered_commands})
    for name, text in texts.items():
        first, _, rest = text.strip().partition("\n")
        assert len(first) <= 80 and first.endswith("."), (name, first)
        assert not rest.strip() or not rest.split("\n")[0].strip(), (name, "details go below a blank line")


def _help(*args: str, columns: int = 100) -> str:
    r = subprocess.run([DPL, *args], env={**os.environ, "COLUMNS": str(columns)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_dpl_h_lists_every_command_on_one_line_each():
    shown = _help("-h")
    assert len(shown.splitlines()) <= 14 + len(main.COMMANDS), shown       # the usage, 4 options, and a line each
    at = [shown.find(f"│ {name} ") for name in main.COMMANDS]
    assert -1 not in at and at == sorted(at), shown                  # every command, in the table's order
    for name in main.COMMANDS:
        assert main.summary(name) in " ".join(shown.split()), name   # on one line


@pytest.mark.parametrize("command", ["teach", "distill", "label", "eval", "mil", "wsddn", "pretrain", "semi"])
def test_no_option_name_is_cut_at_100_columns_and_options_are_grouped(command):
    import typer

    click_command = typer.main.get_command(main.app).get_command(None, command)
    shown = _help(command, "-h")
    words = set(shown.replace("│", " ").split())
    options = [p for p in click_command.params if p.param_type_name == "option"]
    names = [o for p in options for o in (*p.opts, *p.secondary_opts)]
    assert names and not [n for n in names if n not in words], [n for n in names if n not in words]
    panels = {p.rich_help_panel for p in options}
    assert None not in panels and len(panels) >= 4, panels          # every option in a panel


def test_help_renders_rich_markup_in_option_texts_literally():
    assert "dpl[tensorboard]" in _help("hint", "-h")


def test_the_block_of_training_options_is_declared_once_and_reaches_the_command():
    import inspect

    @common.training_options(epochs=7, without=("compile",))
    def command(output: common.Output, arch: common.Arch = "cnn-s", **shared):
        return common.options_of(locals())

    names = list(inspect.signature(command).parameters)
    assert names[:2] == ["output", "arch"] and "compile" not in names and "shared" not in names
    assert set(names[2:]) == set(common.TRAINING_OPTIONS) - {"compile"}
    assert inspect.signature(command).parameters["epochs"].default == 7
    got = command(output="o", arch="a", epochs=7, resume=True)
    assert got == {"output": "o", "arch": "a", "epochs": 7, "resume": True}      # flat: no "shared" key
    with pytest.raises(TypeError, match="not training options: bogus"):
        common.training_options(bogus=1)
