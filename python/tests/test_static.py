"""Static mode plans a script without importing it; mvmctl reads the bundle it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, Daemon

from mvm.static import analyze

APP = '''
import pathlib
pathlib.Path({marker!r}).write_text("imported!")   # would run on import

import mvm
from mvm import NetworkPolicy, Sandbox, SecretRef

with Sandbox.create(image="debian:bookworm+python3", ttl_seconds=300,
                    network=NetworkPolicy.deny_by_default().allow_https("api.example.com"),
                    secrets={{"API_KEY": SecretRef("py-static-key")}}) as sb:
    sb.commands.run(["python3", "-c", "print(1)"])
    sb.commands.run("echo hi")

@mvm.function(image="debian:bookworm+python3", timeout_seconds=30)
def add(a, b):
    return a + b

ttl = 10 * 60
Sandbox.create(image="debian:bookworm", ttl_seconds=ttl)   # not literal: diagnosed, not planned
'''


def test_analyze_reads_declarations_without_importing(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = tmp_path / "app.py"
    app.write_text(APP.format(marker=str(marker)))
    workloads, diagnostics = analyze(str(app))
    assert not marker.exists()
    assert [w.complete for w in workloads] == [True, True, False]
    first = workloads[0]
    assert first.commands == [["python3", "-c", "print(1)"], ["/bin/sh", "-c", "echo hi"]]
    assert first.options["network"].rules == [{"kind": "https", "host": "api.example.com"}]
    assert workloads[1].function is not None and workloads[1].function["id"] == "add"
    assert any("ttl_seconds" in d["message"] for d in diagnostics)


def test_plan_cli_writes_a_bundle_mvmctl_reads(tmp_path: Path, daemon: Daemon) -> None:
    marker = tmp_path / "marker"
    app = tmp_path / "app.py"
    app.write_text(APP.format(marker=str(marker)))
    out = tmp_path / "plans.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    r = subprocess.run([sys.executable, "-m", "mvm", "plan", str(app), "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr  # one declaration could not be planned
    assert not marker.exists()
    assert out.stat().st_mode & 0o777 == 0o600
    bundle = json.loads(out.read_text())
    assert bundle["mode"] == "static" and len(bundle["workloads"]) == 2
    assert bundle["workloads"][1]["plan"]["plan"]["ir"]["function"]["id"] == "add"
    reader = ROOT / "packages" / "cli" / "dist" / "plan-file.js"
    check = "import(process.argv[1]).then(async (m) => { for (const i of [0, 1]) { const p = await m.readPlanFile(process.argv[2], i); console.log(p.plan.planId); } })"
    ids = subprocess.run(["node", "-e", check, str(reader), str(out)], capture_output=True, text=True, timeout=60)
    assert ids.returncode == 0, ids.stderr
    assert ids.stdout.split() == [w["plan"]["plan"]["planId"] for w in bundle["workloads"]]


def test_analyze_cli_prints_the_declarations_for_mvmctl(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    app = tmp_path / "app.py"
    app.write_text(APP.format(marker=str(marker)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    r = subprocess.run([sys.executable, "-m", "mvm", "analyze", str(app)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
    answer = json.loads(r.stdout)
    assert set(answer) == {"workloads", "diagnostics"}
    assert [w["complete"] for w in answer["workloads"]] == [True, True, False]
    first, fn, rest = answer["workloads"]
    assert first["request"]["ttlSeconds"] == 300 and first["request"]["secrets"]["API_KEY"]["name"] == "py-static-key"
    assert fn["request"]["function"]["id"] == "add" and fn["request"]["labels"] == {"fn.id": "add"}
    assert "request" not in rest
    missing = subprocess.run([sys.executable, "-m", "mvm", "analyze", str(tmp_path / "absent.py")], capture_output=True, text=True, env=env, timeout=60)
    assert missing.returncode == 2 and json.loads(missing.stdout)["error"]["code"] == "NOT_FOUND"
