"""The Python examples of README.md's "## Python" section run verbatim against the test daemon."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, Daemon

from mvm import DaemonClient


def examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_examples() -> None:
    assert len(examples()) >= 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example_runs(index: int, daemon: Daemon, tmp_path: Path) -> None:
    with DaemonClient() as client:
        client.set_secret("openai-api-key", "sk-test-not-a-real-key", hosts=["api.openai.com"])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "MVM_DAEMON_SOCKET": daemon.socket_path, "MVM_ACK_CONTAINER_TIER": "1"}
    script = tmp_path / "example.py"  # a file, as users run them (a function's source is read from it)
    script.write_text(examples()[index])
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    if index == 0:
        assert r.stdout.startswith("0 4\n aud_") and "0\n1\n2\n" in r.stdout
    if index == 1:
        assert r.stdout.split() == ["5", "[3,", "7]", "11"]
