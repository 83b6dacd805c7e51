"""Every error class round-trips: the same class names and codes as packages/protocol's registry,
and each code the daemon sends becomes its class through a real HTTP answer."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from conftest import ROOT, Daemon
from hostile import HostileDaemon, answer

import mvm
from mvm import DaemonClient, Sandbox

TS_ERRORS = (ROOT / "packages" / "protocol" / "src" / "errors.ts").read_text()


def ts_registry() -> dict[str, str]:
    """code → class name, read from the TypeScript registry."""
    codes = dict(re.findall(r'^\s+(\w+): "([A-Z_]+)",', TS_ERRORS.split("export const ERROR_CODES")[0], re.M))
    out = {}
    for name, member in re.findall(r"export class (\w+Error)(?:<[^>]*>)? extends MvmError \{[^}]*?readonly code = ErrorCode\.(\w+);", TS_ERRORS, re.S):
        out[codes[member]] = name
    return out


def test_same_codes_and_class_names_as_typescript() -> None:
    registry = ts_registry()
    assert len(registry) == len(mvm.ERROR_CODES) == 17
    for code, name in registry.items():
        cls = getattr(mvm, name)
        assert issubclass(cls, mvm.MvmError) and cls.code == code


@pytest.mark.parametrize("code", mvm.ERROR_CODES)
def test_each_code_round_trips_through_an_http_answer(code: str) -> None:
    wire = {"code": code, "message": f"m {code}", "hint": "h"}
    if code == "COMMAND_EXIT":
        wire["details"] = {"exitCode": 1}
    d = HostileDaemon(lambda c, _: answer(c, 422, json.dumps({"error": wire})))
    try:
        with pytest.raises(mvm.MvmError) as e:
            DaemonClient(d.path).health()
    finally:
        d.close()
    err = e.value
    assert type(err).__name__ == ts_registry()[code] and err.code == code
    assert (err.message, err.hint) == (f"m {code}", "h")
    assert err.to_wire() == wire
    again = mvm.from_wire(**err.to_wire())
    assert type(again) is type(err) and again.to_wire() == wire


def test_unknown_code_is_internal() -> None:
    assert type(mvm.from_wire("NEW_CODE", "x")) is mvm.InternalError


def test_real_daemon_errors_are_typed(daemon: Daemon) -> None:
    with pytest.raises(mvm.NotFoundError):
        Sandbox.connect("sbx_aaaaaaaaaaaaaaaaaaaa")
    with pytest.raises(mvm.InvalidArgumentError):
        Sandbox.connect("not-an-id")
    with pytest.raises(mvm.InvalidArgumentError):
        DaemonClient().create_sandbox({"image": "debian:bookworm", "unknownField": 1})
