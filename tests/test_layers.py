"""The arrows of DESIGN.md, checked with import-linter: the contracts in pyproject.toml hold for the package,
they cover every module (a new one must be placed), and each contract does catch an import that breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

import sparc_eval

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(sparc_eval.__file__).resolve().parent
CONTRACTS = {c["id"]: c for c in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]}
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the `sparc_eval` package found in `root`, with the contracts of `root`/pyproject.toml.

    import-linter puts the working folder first on sys.path, so `root` decides which copy is analysed.
    No cache: a stale one once hid every import of a folder that had just become a package."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache", "--no-logo"],  # reads ./pyproject.toml
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )


def _top_level_modules() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    names |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return names


def test_the_package_keeps_every_contract():
    if PACKAGE != REPO / "sparc_eval":
        pytest.skip("runs on the checkout (an installed wheel has no pyproject.toml beside it)")
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


def test_every_top_level_module_sits_in_exactly_one_layer():
    placed = [m.strip() for layer in CONTRACTS["layers"]["layers"] for m in layer.split("|")]
    assert sorted(placed) == sorted(set(placed)), "a module is listed in two layers"
    assert set(placed) == _top_level_modules(), "place every top-level module of sparc_eval in a layer of pyproject.toml"


def test_metrics_contract_forbids_every_other_module():
    forbidden = {m.removeprefix("sparc_eval.") for m in CONTRACTS["metrics-pure"]["forbidden_modules"]}
    assert forbidden == _top_level_modules() - {"metrics"}


def test_task_kind_contract_lists_every_builtin_runner_module():
    from sparc_eval.tasks.runner import RUNNERS

    builtin = {e.target.partition(":")[0] for e in RUNNERS.entries().values() if e.source == "sparc-eval"}
    assert set(CONTRACTS["task-kinds"]["modules"]) == builtin


# One import that breaks one contract each, appended to a module of a copy of the package.
VIOLATIONS = [
    ("metrics/retrieval.py", "from sparc_eval.errors import SparcEvalError", "metrics imports nothing of ours"),
    ("models/sparc.py", "import sparc_eval.train.loop", "Imports point down"),  # up from models to train
    ("data/voc.py", "from sparc_eval.models import contract", "Imports point down"),  # sideways within a layer
    ("train/loop.py", "import sparc_eval.tasks.runner", "train does not import tasks"),
    ("tasks/grounding.py", "from sparc_eval.tasks import segmentation", "No task kind imports another kind's runner module"),
]


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PACKAGE, root / "sparc_eval", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize("module, line, contract", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_each_contract_catches_a_violation(package_copy, module, line, contract):
    path = package_copy / "sparc_eval" / module
    original = path.read_text()
    path.write_text(original + f"\n\ndef _injected():\n    {line}\n")  # an import inside a function counts too
    try:
        result = lint_imports(package_copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken and "1 broken" in result.stdout, result.stdout[-3000:]
