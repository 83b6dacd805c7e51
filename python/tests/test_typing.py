"""The package passes ``mypy --strict`` (Debian's mypy; skipped where it is not installed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT


def test_mypy_strict() -> None:
    mypy = shutil.which("mypy", path="/usr/bin") or shutil.which("mypy")
    if mypy is None:
        pytest.skip("mypy is not installed (scripts/setup.sh installs Debian's mypy)")
    r = subprocess.run([mypy, "--strict", "--no-incremental", "--cache-dir=/dev/null", "mvm"], cwd=ROOT / "python", capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
