"""The house: the package's rooms, their layer rules (import-linter), module sizes, one CLI."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spacy_medllm"
ROOMS = (
    "baselines",
    "cli",
    "clinical",
    "core",
    "corpora",
    "data",
    "distillation",
    "evaluation",
    "generators",
    "pipeline",
    "scale",
    "serving",
    "training",
    "util",
)
MAX_LINES = 600

pytest.importorskip("importlinter")


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the pyproject.toml in `cwd`, the package found first on `pythonpath`."""
    code = "import sys; from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-c", code, "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_rooms_are_the_subpackages() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    # resources/: shipped data (the packaged adapter), no code.
    assert folders == {*ROOMS, "resources"}
    code = [p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "resources").rglob("*.py")]
    assert code == ["resources/__init__.py"]
    for room in ROOMS:
        init = PACKAGE / room / "__init__.py"
        assert init.is_file(), room
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "about.py"]


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT, ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "Contracts: 4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        # core may import nothing above it, not even inside a function.
        (
            "core/labels.py",
            "def _late():\n    from spacy_medllm.training import trainer  # noqa\n",
            "spacy_medllm.core is not allowed to import spacy_medllm.training",
        ),
        # evaluation never imports training.
        (
            "evaluation/metrics.py",
            "from spacy_medllm.training import config as _config  # noqa\n",
            "spacy_medllm.evaluation is not allowed to import spacy_medllm.training",
        ),
        # building medllm_ner imports no torch.
        (
            "pipeline/component.py",
            "import torch as _torch  # noqa\n",
            "spacy_medllm.pipeline.component is not allowed to import torch",
        ),
    ],
)
def test_the_checker_catches_a_forbidden_import(tmp_path: Path, module, line, broken) -> None:
    copy = tmp_path / "spacy_medllm"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = copy / module
    target.write_text(target.read_text(encoding="utf8") + "\n\n" + line, encoding="utf8")
    result = lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert broken in " ".join(result.stdout.split()), result.stdout[-3000:]


def test_modules_stay_small_or_say_why() -> None:
    """No module over 600 lines unless its docstring says why ("Over 600 lines: ...")."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf8").count("\n")
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf8"))) or ""
        if "Over 600 lines:" not in doc:
            too_long.append(f"{path.relative_to(ROOT)} ({lines})")
    assert not too_long, too_long


def test_every_module_says_what_it_is_for() -> None:
    missing = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "about.py"
        and not (ast.get_docstring(ast.parse(path.read_text(encoding="utf8"))) or "").strip()
    ]
    assert not missing, missing


def test_one_cli_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spacy_medllm", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    for command in (
        "scrape",
        "synth",
        "label",
        "annotator-report",
        "corpus",
        "finetune",
        "assemble",
        "extract",
        "info",
        "evaluate",
        "combine",
        "report",
        "baseline",
        "distil",
        "profile",
    ):
        assert f" {command} " in result.stdout, command
    # No module of the package parses its own command line any more.
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf8")
        assert "import argparse" not in text, path
        if path.name != "__main__.py":
            assert 'if __name__ == "__main__"' not in text, path
