"""Ruff over the whole tree, with the rules and the reasons in pyproject.toml ([tool.ruff]): unused and
undefined names, late-binding closures, mutable defaults, import order. Part of the README's test command."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is missing: pip install -e '.[dev]' installs it"
    run = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"ruff check found problems (fix them, or `ruff check --fix`):\n{run.stdout[-4000:]}"
