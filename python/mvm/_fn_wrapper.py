"""The Python call wrapper (docs/FUNCTIONS.md): runs one call of a function inside a sandbox.

The host runs it as ``python3 -I -S -c <this source> wrapper``; it spawns itself again (``child``)
for the function. Standard library only (msgpack when the image has it). The host imports the
same module for the value codec, so both sides apply one set of rules.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

FUNCTION_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
MAGIC = b"mvm-fn-result v1"
MAX_HEADER = 4096
MAX_RESULT_HEADER = 64 * 1024
MAX_STACK = 16384
MAX_MESSAGE = 200
REPORT_SLACK = 64 * 1024
LIMIT_ENV = {
    "maxInputBytes": ("MVM_FN_MAX_INPUT_BYTES", 1),
    "maxOutputBytes": ("MVM_FN_MAX_OUTPUT_BYTES", 1),
    "maxDepth": ("MVM_FN_MAX_DEPTH", 1),
    "invokeTimeoutMs": ("MVM_FN_INVOKE_TIMEOUT_SEC", 1000),
    "sessionStartTimeoutMs": ("MVM_FN_SESSION_START_TIMEOUT_SEC", 1000),
    "sessionStopTimeoutMs": ("MVM_FN_SESSION_STOP_TIMEOUT_SEC", 1000),
}
CEILINGS = {
    "maxInputBytes": 256 << 20, "maxOutputBytes": 256 << 20, "maxDepth": 512,
    "invokeTimeoutMs": 86_400_000, "sessionStartTimeoutMs": 3_600_000, "sessionStopTimeoutMs": 3_600_000,
}
MINIMA = {"maxDepth": 2}
#: Largest integer magnitude a payload may hold (JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1


class CodecError(ValueError):
    """A value that breaks a payload rule; ``kind`` is the rule, named as the TypeScript codec's
    fault: too-large, depth, duplicate-key, proto-key, non-finite, type or syntax."""

    def __init__(self, message: str, kind: str = "type") -> None:
        super().__init__(message)
        self.kind = kind


# --- the value codec (both sides) ------------------------------------------------------------
def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out or k == "__proto__":
            raise CodecError(f"key {k[:64]!r} twice or reserved", "proto-key" if k == "__proto__" else "duplicate-key")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise CodecError(f"{name} is not allowed", "syntax")


def _float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise CodecError("a number overflows to infinity", "non-finite")
    return f


def check_value(v: Any, max_depth: int, depth: int = 1, msgpack: bool = False) -> None:
    """Null, booleans, finite numbers (integers within 2^53), strings, lists, string-keyed maps (and bytes in msgpack)."""
    if v is None or isinstance(v, (bool, str)):
        return
    if isinstance(v, int):
        if abs(v) > MAX_SAFE_INTEGER:
            raise CodecError("an integer beyond 2^53 - 1", "type")
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CodecError("NaN or infinity", "non-finite")
        return
    if isinstance(v, bytes) and msgpack:
        return
    if isinstance(v, (list, tuple, dict)):
        if depth > max_depth:
            raise CodecError(f"nesting deeper than {max_depth}", "depth")
        items = v.values() if isinstance(v, dict) else v
        if isinstance(v, dict):
            for k in v:
                if not isinstance(k, str) or k == "__proto__":
                    raise CodecError("a map key that is not a string, or __proto__", "proto-key" if k == "__proto__" else "type")
        for item in items:
            check_value(item, max_depth, depth + 1, msgpack)
        return
    raise CodecError(f"a value of type {type(v).__name__}")


def encode_value(v: Any, fmt: str, max_bytes: int, max_depth: int) -> bytes:
    check_value(v, max_depth, msgpack=fmt == "msgpack")
    if fmt == "json":
        data = json.dumps(v, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    else:
        import msgpack

        data = msgpack.packb(v, use_bin_type=True)
    if len(data) > max_bytes:
        raise CodecError(f"{len(data)} bytes encoded, over the limit of {max_bytes}", "too-large")
    return bytes(data)


def decode_value(data: bytes, fmt: str, max_bytes: int, max_depth: int) -> Any:
    if len(data) > max_bytes:
        raise CodecError(f"{len(data)} bytes, over the limit of {max_bytes}", "too-large")
    try:
        if fmt == "json":
            _json_depth(data, max_depth)
            v = json.loads(data.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_float)
        else:
            import msgpack

            v = msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=_pairs, ext_hook=_no_ext)
    except CodecError:
        raise
    except (ValueError, TypeError, RecursionError) as e:
        raise CodecError(f"not a valid {fmt} value: {type(e).__name__}", "syntax") from None
    check_value(v, max_depth, msgpack=fmt == "msgpack")
    return v


def _no_ext(code: int, data: bytes) -> Any:
    raise CodecError("a msgpack extension type")


def _json_depth(data: bytes, max_depth: int) -> None:
    """Refuses nesting past the limit before the parser recurses into it."""
    depth = 0
    in_str = esc = False
    for b in data:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:
                esc = True
            elif b == 0x22:
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):
            depth += 1
            if depth > max_depth:
                raise CodecError(f"nesting deeper than {max_depth}", "depth")
        elif b in (0x5D, 0x7D):
            depth -= 1


# --- sanitizing -------------------------------------------------------------------------------
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/'\"]+)+/?|~/[^\s'\"]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def sanitize(message: str) -> str:
    return _CONTROL.sub(" ", _PATH.sub("<path>", message))[:MAX_MESSAGE]


def error_id() -> str:
    return "fe_" + secrets.token_hex(12)


# --- the wrapper --------------------------------------------------------------------------------
_ENTERED = [False]


class Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _non_dumpable() -> None:
    """No process of the same uid may read this one's memory (the seal key) or ptrace it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def _read_exact(fd: int, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, min(1 << 20, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _read_line(fd: int, cap: int) -> bytes:
    out = bytearray()
    while True:
        b = os.read(fd, 1)
        if not b or b == b"\n":
            return bytes(out)
        out += b
        if len(out) > cap:
            raise Refused("bad-request", f"request header over {cap} bytes")


def _limits(given: Any) -> dict[str, int]:
    if not isinstance(given, dict) or set(given) != set(CEILINGS):
        raise Refused("bad-request", "limits must name exactly " + ", ".join(CEILINGS))
    out: dict[str, int] = {}
    for k, v in given.items():
        if isinstance(v, bool) or not isinstance(v, int) or not MINIMA.get(k, 1) <= v <= CEILINGS[k]:
            raise Refused("bad-request", f"limit {k} out of range")
        name, factor = LIMIT_ENV[k]
        env = os.environ.get(name)
        if env:
            # As the TypeScript wrapper's fnLimitsFromEnv: a positive decimal integer (ASCII digits)
            # within the limit's range, or the call is refused.
            if re.fullmatch(r"[1-9][0-9]{0,11}", env) is None or not MINIMA.get(k, 1) <= int(env) * factor <= CEILINGS[k]:
                raise Refused("bad-request", f"{name} must be a positive integer within its limit")
            v = min(v, int(env) * factor)
        out[k] = v
    return out


def parse_header(line: bytes) -> dict[str, Any]:
    try:
        h = json.loads(line.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
    except (ValueError, CodecError):
        raise Refused("bad-request", "request header is not JSON") from None
    fields = {"v", "id", "format", "mode", "key", "resultPath", "codeBytes", "codeSha256", "exportName", "limits"}
    if not isinstance(h, dict) or set(h) != fields:
        raise Refused("bad-request", "request header fields")
    ok = (
        h["v"] == 1 and isinstance(h["id"], str) and FUNCTION_ID.fullmatch(h["id"]) is not None
        and h["format"] in ("json", "msgpack") and h["mode"] in ("production", "development")
        and isinstance(h["key"], str) and re.fullmatch(r"[0-9a-f]{64}", h["key"]) is not None
        and isinstance(h["resultPath"], str) and h["resultPath"].startswith("/") and len(h["resultPath"]) < 4096 and "\0" not in h["resultPath"]
        and isinstance(h["codeBytes"], int) and not isinstance(h["codeBytes"], bool) and 1 <= h["codeBytes"] <= 64 << 20
        and isinstance(h["codeSha256"], str) and re.fullmatch(r"[0-9a-f]{64}", h["codeSha256"]) is not None
        and isinstance(h["exportName"], str) and h["exportName"].isidentifier()
    )
    if not ok:
        raise Refused("bad-request", "request header values")
    h["limits"] = _limits(h["limits"])
    return h


def write_result(h: dict[str, Any], header: dict[str, Any], result: bytes = b"") -> None:
    line = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    seal = hmac.new(bytes.fromhex(h["key"]), line + b"\n" + result, hashlib.sha256).hexdigest().encode()
    fd = os.open(h["resultPath"], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, MAGIC + b"\n" + seal + b"\n" + line + b"\n" + result)
    finally:
        os.close(fd)


def error_header(fid: str, kind: str, message: str, stack: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"v": 1, "status": "error", "id": fid, "error": {"kind": kind, "errorId": error_id(), "message": sanitize(message)}}
    if stack:
        out["stack"] = stack[:MAX_STACK]
    return out


def wrapper() -> int:
    _non_dumpable()
    if _ENTERED[0] and os.environ.get("MVM_FN_ALLOW_REENTRY") != "1":
        raise Refused("reentry", "the wrapper's entry ran twice in one process")
    _ENTERED[0] = True
    h = parse_header(_read_line(0, MAX_HEADER))
    fid, lim = h["id"], h["limits"]
    try:
        code = _read_exact(0, h["codeBytes"])
        if len(code) != h["codeBytes"] or hashlib.sha256(code).hexdigest() != h["codeSha256"]:
            raise Refused("bad-request", "the code does not match its length or sha256")
        payload = _read_exact(0, lim["maxInputBytes"] + 1)
        if len(payload) > lim["maxInputBytes"]:
            raise Refused("input-too-large", f"the payload is over {lim['maxInputBytes']} bytes")
        try:
            value = decode_value(payload, h["format"], lim["maxInputBytes"], lim["maxDepth"])
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list) and isinstance(value[1], dict)):
                raise CodecError("the payload is not [args, kwargs]")
        except CodecError as e:
            raise Refused("bad-input", str(e)) from None
        src = open("/proc/self/cmdline", "rb").read().split(b"\0")
        me = src[src.index(b"-c") + 1].decode()
        read_end, write_end = os.pipe()
        task = json.dumps({"exportName": h["exportName"], "format": h["format"], "limits": lim, "codeBytes": len(code)}).encode()
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", me, "child", str(write_end)], stdin=subprocess.PIPE, pass_fds=(write_end,), close_fds=True, cwd=os.getcwd())
        os.close(write_end)
        assert child.stdin is not None
        try:
            child.stdin.write(task + b"\n" + code + payload)
            child.stdin.close()
        except OSError:
            pass
        deadline = time.monotonic() + lim["invokeTimeoutMs"] / 1000
        cap = lim["maxOutputBytes"] + REPORT_SLACK
        report = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                write_result(h, error_header(fid, "timeout", f"the call ran past {lim['invokeTimeoutMs']} ms"))
                os.killpg(os.getpgrp(), signal.SIGKILL)
            ready, _, _ = select.select([read_end], [], [], left)
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            report += chunk
            if len(report) > cap:
                child.kill()
                raise Refused("output-too-large", f"the result is over {lim['maxOutputBytes']} bytes")
        child.wait()
        nl = report.find(b"\n")
        if nl < 0:
            raise Refused("crashed", f"the function's process ended without a result (exit {child.returncode})")
        try:
            rep = json.loads(report[:nl].decode(), object_pairs_hook=_pairs)
        except (ValueError, CodecError):
            raise Refused("crashed", "the function's process sent a malformed report") from None
        body = bytes(report[nl + 1 :])
        if rep.get("status") == "ok":
            try:
                decode_value(body, h["format"], lim["maxOutputBytes"], lim["maxDepth"])
            except CodecError as e:
                raise Refused("output-too-large" if "over the limit" in str(e) else "bad-output", str(e)) from None
            write_result(h, {"v": 1, "status": "ok", "id": fid, "format": h["format"], "resultBytes": len(body)}, body)
            return 0
        kind = rep.get("kind") if rep.get("kind") in ("raised", "bad-output", "not-found", "output-too-large", "reentry") else "crashed"
        write_result(h, error_header(fid, kind, str(rep.get("message", ""))[:4096], str(rep.get("stack", ""))))
        return 0
    except Refused as e:
        write_result(h, error_header(fid, e.kind, str(e)))
        return 0


def child() -> int:
    if _ENTERED[0] and os.environ.get("MVM_FN_ALLOW_REENTRY") != "1":
        raise SystemExit(70)
    _ENTERED[0] = True
    report = os.fdopen(int(sys.argv[2]), "wb", closefd=True)
    task = json.loads(_read_line(0, MAX_HEADER))
    lim = task["limits"]
    code = _read_exact(0, task["codeBytes"])
    payload = _read_exact(0, lim["maxInputBytes"])

    def fail(kind: str, message: str, stack: str = "") -> int:
        report.write(json.dumps({"status": "error", "kind": kind, "message": message[:4096], "stack": stack[:MAX_STACK]}).encode() + b"\n")
        report.close()
        return 0

    args, kwargs = decode_value(payload, task["format"], lim["maxInputBytes"], lim["maxDepth"])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    namespace: dict[str, Any] = {"__name__": "__mvm_function__"}
    try:
        exec(compile(code.decode("utf-8"), "/work/function.py", "exec"), namespace)
        fn = namespace.get(task["exportName"])
        if not callable(fn):
            return fail("not-found", f"no function {task['exportName']!r} in the shipped code")
        value = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the function's own failure, reported
        return fail("raised", f"{type(e).__name__}: {e}", traceback.format_exc())
    try:
        body = encode_value(value, task["format"], lim["maxOutputBytes"], lim["maxDepth"])
    except CodecError as e:
        return fail("output-too-large" if "over the limit" in str(e) else "bad-output", str(e))
    report.write(json.dumps({"status": "ok"}).encode() + b"\n" + body)
    report.close()
    return 0


if __name__ == "__main__" and sys.argv[1:2] in (["wrapper"], ["child"]):
    try:
        code = wrapper() if sys.argv[1] == "wrapper" else child()
    except Refused as e:
        sys.stderr.write(f"mvm function wrapper: {e.kind}: {sanitize(str(e))}\n")
        code = 70
    sys.stdout.flush()
    os._exit(code)
