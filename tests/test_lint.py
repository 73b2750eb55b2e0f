"""ruff and mypy are clean on the kernel and the schemas (STYLE.md: house habits)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff() -> None:
    out = subprocess.run(
        ["ruff", "check", "kernel", "schemas", "plugins", "tools", "tests"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy(tmp_path: Path) -> None:
    """mypy sees the folders as the installed ``tickbus.*`` packages (pyproject's
    package-dir mapping, which mypy cannot read) through a tree of symlinks."""
    top = tmp_path / "tickbus"
    top.mkdir()
    for pkg in ("kernel", "schemas", "plugins", "tools"):
        (top / pkg).symlink_to(ROOT / pkg)
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / ".mypy_cache"), "-p", "tickbus.kernel", "-p",
         "tickbus.schemas"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "MYPYPATH": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues found in" in out.stdout, out.stdout  # it really checked files
