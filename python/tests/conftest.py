"""Fixtures: a real daemon (`mvmctl daemon`, namespace backend) in a private state directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
MVMCTL = ROOT / "packages" / "cli" / "bin" / "mvmctl.cjs"
IMAGES_DIR = os.environ.get("MVM_TEST_IMAGES_DIR", "/var/lib/mvm/images")

sys.path.insert(0, str(ROOT / "python"))


def daemon_env(state: Path) -> dict[str, str]:
    config = state / "config.json"
    config.write_text("{}")
    return {
        **os.environ,
        "MVM_CONFIG": str(config),
        "MVM_ACK_CONTAINER_TIER": "1",
        "MVM_DEFAULT_BACKEND": "namespace",
        "MVM_STATE_DIR": str(state / "state"),
        "MVM_IMAGES_DIR": IMAGES_DIR,
        "MVM_VM_CACHE_DIR": os.environ.get("MVM_TEST_VM_CACHE_DIR", "/var/lib/mvm/vm"),
    }


class Daemon:
    def __init__(self, socket_path: str, proc: subprocess.Popen[bytes], env: dict[str, str]) -> None:
        self.socket_path = socket_path
        self.proc = proc
        self.env = env


def _start(base: Path, node: str) -> subprocess.Popen[bytes]:
    """Starts `mvmctl daemon` under ``base``; returns once it listens."""
    run_dir = base / "run"
    run_dir.mkdir(mode=0o700)
    socket_path = str(run_dir / "d.sock")
    env = daemon_env(base)
    proc = subprocess.Popen([node, str(MVMCTL), "daemon", "--socket", socket_path], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = b""
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    while f"listening on {socket_path}".encode() not in seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"daemon did not start: {seen.decode(errors='replace')}")
        chunk = proc.stderr.read(65536)
        if chunk:
            seen += chunk
        else:
            time.sleep(0.05)
    os.set_blocking(proc.stderr.fileno(), True)
    # Keep reading its log so a chatty daemon never blocks on a full pipe.
    threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
    return proc


def _drain(stream: IO[bytes]) -> None:
    while stream.read(65536):
        pass


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    if not MVMCTL.exists():
        pytest.skip(f"no {MVMCTL}: run npm run build first")
    if not os.path.isdir(IMAGES_DIR):
        pytest.skip(f"no image store at {IMAGES_DIR}: run scripts/setup.sh first")
    node = shutil.which("node")
    assert node is not None, "node is needed to run the daemon"
    base = Path(tempfile.mkdtemp(prefix="mvm-py-"))
    base.chmod(0o755)  # the sandbox uid must reach the state directory below it
    try:
        proc = _start(base, node)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    socket_path = str(base / "run" / "d.sock")
    os.environ["MVM_DAEMON_SOCKET"] = socket_path
    os.environ["MVM_ACK_CONTAINER_TIER"] = "1"
    try:
        yield Daemon(socket_path, proc, daemon_env(base))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
