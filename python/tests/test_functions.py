"""Functions: definition-time refusals, the wrapper's rules, and real calls in sandboxes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Daemon

import mvm
from mvm import FunctionDefinitionError, FunctionError, PolicyDeniedError
from mvm import _fn_wrapper as codec
from mvm.functions import looks_secret_name

HOST_STATE = 41


def test_closures_globals_and_unlisted_imports_are_refused_at_definition() -> None:
    x = 1

    with pytest.raises(FunctionDefinitionError, match="closes over x"):

        @mvm.function()
        def closure() -> int:
            return x

    with pytest.raises(FunctionDefinitionError, match="HOST_STATE from outside"):

        @mvm.function()
        def global_use() -> int:
            return HOST_STATE

    with pytest.raises(FunctionDefinitionError, match='imports "requests"'):

        @mvm.function()
        def imports() -> None:
            import requests  # type: ignore[import-untyped]  # noqa: F401

    with pytest.raises(FunctionDefinitionError, match="not pure Python|native"):

        @mvm.function(dependencies=["_json"])
        def native() -> None:
            import _json  # noqa: F401

    with pytest.raises(FunctionDefinitionError, match="source cannot be read|only plain"):
        mvm.function()(len)  # type: ignore[arg-type]


def test_stdlib_imports_and_pure_python_dependencies_are_shipped() -> None:
    @mvm.function(dependencies=["conftest"])
    def uses(a: int) -> str:
        import json

        import conftest

        return json.dumps([a, conftest.IMAGES_DIR])

    assert b"def uses(a: int) -> str:" in uses.code and b"IMAGES_DIR" in uses.code
    assert b"@mvm.function" not in uses.code


def test_secret_named_parameters_warn_and_strict_mode_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert looks_secret_name("api_key") and looks_secret_name("authToken") and not looks_secret_name("token_file")
    with pytest.warns(UserWarning, match="'password'"):

        @mvm.function()
        def login(user: str, password: str) -> str:
            return user

    monkeypatch.setenv("MVM_STRICT_SECRETS", "1")
    with pytest.raises(PolicyDeniedError):

        @mvm.function()
        def login2(user: str, api_key: str) -> str:
            return user


def test_codec_rules() -> None:
    for bad in [b'{"a":1,"a":2}', b'{"__proto__":1}', b"NaN", b"1e400", b"[" * 70 + b"]" * 70]:
        with pytest.raises(codec.CodecError):
            codec.decode_value(bad, "json", 1 << 20, 64)
    with pytest.raises(codec.CodecError):
        codec.encode_value({"a": object()}, "json", 1 << 20, 64)
    with pytest.raises(codec.CodecError):
        codec.encode_value([2**60], "json", 1 << 20, 64)
    with pytest.raises(codec.CodecError):
        codec.encode_value("x" * 100, "json", 10, 64)
    assert codec.decode_value(codec.encode_value([[1, "a"], {"k": None}], "msgpack", 1 << 20, 64), "msgpack", 1 << 20, 64) == [[1, "a"], {"k": None}]


def run_wrapper(tmp_path: Path, code: str, payload: object, *, mutate: dict[str, object] | None = None, env: dict[str, str] | None = None) -> tuple[dict[str, object], bytes, subprocess.CompletedProcess[bytes]]:
    """Runs the wrapper here, as the sandbox would, and reads its sealed result."""
    key = os.urandom(32).hex()
    result = tmp_path / f"r{os.urandom(4).hex()}"
    body = code.encode()
    import hashlib

    header: dict[str, object] = {"v": 1, "id": "t", "format": "json", "mode": "production", "key": key, "resultPath": str(result),
                                 "codeBytes": len(body), "codeSha256": hashlib.sha256(body).hexdigest(), "exportName": "f",
                                 "limits": {"maxInputBytes": 1 << 20, "maxOutputBytes": 1 << 20, "maxDepth": 16, "invokeTimeoutMs": 3000,
                                            "sessionStartTimeoutMs": 1000, "sessionStopTimeoutMs": 1000}}
    header.update(mutate or {})
    stdin = json.dumps(header).encode() + b"\n" + body + json.dumps(payload).encode()
    src = Path(codec.__file__).read_text()
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", src, "wrapper"], input=stdin, capture_output=True, cwd=tmp_path, env={**os.environ, **(env or {})},
                          timeout=30, start_new_session=True)
    from mvm.functions import _read_result

    h, b = _read_result("t", key, result.read_bytes())
    return h, b, proc


def test_wrapper_ok_raised_and_sanitized(tmp_path: Path) -> None:
    h, b, _ = run_wrapper(tmp_path, "def f(a, b, c=0):\n    print('out')\n    return a + b + c\n", [[1, 2], {"c": 3}])
    assert h["status"] == "ok" and json.loads(b) == 6
    h, _, _ = run_wrapper(tmp_path, "def f():\n    raise ValueError('bad /etc/secret/file\\x07 here')\n", [[], {}])
    err = h["error"]
    assert isinstance(err, dict) and err["kind"] == "raised" and "<path>" in err["message"] and "/etc" not in err["message"] and "\x07" not in err["message"]
    assert str(err["errorId"]).startswith("fe_") and "ValueError" in str(h["stack"])


def test_wrapper_limits_and_forgery(tmp_path: Path) -> None:
    h, _, _ = run_wrapper(tmp_path, "def f():\n    import time\n    time.sleep(30)\n", [[], {}], mutate={"limits": {"maxInputBytes": 1 << 20, "maxOutputBytes": 1 << 20, "maxDepth": 16, "invokeTimeoutMs": 500, "sessionStartTimeoutMs": 1000, "sessionStopTimeoutMs": 1000}})
    assert h["error"]["kind"] == "timeout"  # type: ignore[index]
    h, _, _ = run_wrapper(tmp_path, "def f():\n    return 'x' * 5000\n", [[], {}], env={"MVM_FN_MAX_OUTPUT_BYTES": "1000"})
    assert h["error"]["kind"] == "output-too-large"  # type: ignore[index]
    h, _, _ = run_wrapper(tmp_path, "def f():\n    return object()\n", [[], {}])
    assert h["error"]["kind"] == "bad-output"  # type: ignore[index]
    h, _, _ = run_wrapper(tmp_path, "def g():\n    pass\n", [[], {}])
    assert h["error"]["kind"] == "not-found"  # type: ignore[index]
    h, _, _ = run_wrapper(tmp_path, "def f():\n    return 1\n", "not-args")
    assert h["error"]["kind"] == "bad-input"  # type: ignore[index]
    h, _, _ = run_wrapper(tmp_path, "def f():\n    return 1\n", [["x" * 3000], {}], env={"MVM_FN_MAX_INPUT_BYTES": "1000"})
    assert h["error"]["kind"] == "input-too-large"  # type: ignore[index]
    # A function that forges a result file (it knows the path from nowhere, but tries the result of another call) fails the seal.
    forged = tmp_path / "forged"
    forged.write_bytes(codec.MAGIC + b"\n" + b"0" * 64 + b'\n{"v":1,"status":"ok","id":"t","format":"json","resultBytes":1}\n1')
    from mvm.functions import _read_result

    with pytest.raises(mvm.TransportError, match="seal"):
        _read_result("t", os.urandom(32).hex(), forged.read_bytes())


def test_remote_map_session_in_real_sandboxes(daemon: Daemon) -> None:
    @mvm.function(image="debian:bookworm+python3", timeout_seconds=30)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add.remote(2, 3) == 5
    assert list(add.map([(1, 2), (3, 4), (5, 6)], concurrency=2)) == [3, 7, 11]
    with add.session() as s:
        assert [s.call(i, i) for i in range(3)] == [0, 2, 4]

    @mvm.function(timeout_seconds=30)
    def boom(path: str) -> None:
        raise RuntimeError(f"cannot open {path}")

    with pytest.raises(FunctionError) as e:
        boom.remote("/home/user/data.csv")
    assert e.value.kind == "raised" and "<path>" in e.value.message and e.value.error_id is not None


def test_the_function_cannot_read_its_wrappers_memory(daemon: Daemon) -> None:
    @mvm.function(timeout_seconds=30)
    def peek() -> list[str]:
        import os

        out = []
        for leaf in ("mem", "environ", "fd/0"):
            try:
                with open(f"/proc/{os.getppid()}/{leaf}", "rb") as f:
                    f.read(1)
                out.append("read")
            except OSError as e:
                out.append(type(e).__name__)
        return out

    assert peek.remote() == ["PermissionError", "PermissionError", "PermissionError"]


def test_warm_is_checked_at_definition() -> None:
    for bad in (-1, 17, True, 1.5):
        with pytest.raises(FunctionDefinitionError, match="Invalid warm"):

            @mvm.function(warm=bad)  # type: ignore[arg-type]
            def f() -> int:
                return 1

    with pytest.raises(FunctionDefinitionError, match="cannot be warm"):

        @mvm.function(warm=1, secrets={"KEY": mvm.SecretRef("k")})
        def g() -> int:
            return 1

    @mvm.function()
    def cold() -> int:
        return 1

    with pytest.raises(mvm.InvalidArgumentError, match="no warm pool"):
        cold.warm_up()


def test_warm_calls_claim_ready_sandboxes_of_the_functions_pool(daemon: Daemon) -> None:
    @mvm.function(timeout_seconds=30, id="py-warm-add", warm=2)
    def add(a: int, b: int) -> int:
        return a + b

    client = mvm.DaemonClient(daemon.socket_path)
    try:
        warmed = add.warm_up()
        assert warmed["ready"] == 2 and warmed["size"] == 2 and "lastError" not in warmed
        assert add.remote(1, 2) == 3
        with add.session() as s:
            assert s.call(3, 4) == 7
        # Both were served by claims; the pool started replacements (a claimed sandbox never returns).
        pool = add.warm_up()
        assert pool["id"] == warmed["id"] and pool["claimed"] - warmed["claimed"] == 2 and pool["ready"] == 2
        # Each claimed sandbox was destroyed after its call or session.
        running = [x for x in client.list_sandboxes() if x["labels"].get("fn.id") == "py-warm-add" and x["state"] != "stopped"]
        assert running == []
    finally:
        add.cool_down()
        assert all(p["id"] != warmed["id"] for p in client.list_warm_pools())
        client.close()
