"""The client against a hostile daemon: oversized, endless, malformed, schema-breaking and slow
answers all end in typed errors, quickly, with bounded memory."""

from __future__ import annotations

import json
import socket
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hostile import HostileDaemon, Scenario, answer, forever

from mvm import DaemonClient, NotFoundError, Sandbox, TimeoutError, TransportError
from mvm._http import MAX_LINE_BYTES

HEALTH = {"version": "1", "defaultBackend": None, "backends": []}
ID = "sbx_abcdefghijklmnopqrst"


@pytest.fixture
def evil() -> Iterator[list[HostileDaemon]]:
    made: list[HostileDaemon] = []
    yield made
    for d in made:
        d.close()


def client(evil: list[HostileDaemon], scenario: Scenario, **options: float) -> DaemonClient:
    d = HostileDaemon(scenario)
    evil.append(d)
    return DaemonClient(d.path, **options)  # type: ignore[arg-type]


def bounded(fn: object, limit_bytes: int = 8 * 1024 * 1024) -> None:
    """Runs ``fn`` (which must raise TransportError) and checks the peak Python allocation."""
    tracemalloc.start()
    try:
        with pytest.raises(TransportError):
            fn()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak {peak} bytes"


def test_declared_oversized_body_is_refused_before_reading(evil: list[HostileDaemon]) -> None:
    def scenario(c: socket.socket, _: str) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{")

    with pytest.raises(TransportError, match="body of 1073741824 bytes, over the limit"):
        client(evil, scenario).health()


def test_endless_chunked_body_is_cut_at_the_cap(evil: list[HostileDaemon]) -> None:
    cap = 1024 * 1024
    data = b"a" * 65536
    chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def scenario(c: socket.socket, _: str) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        forever(c, chunk)

    cl = client(evil, scenario, max_json_bytes=cap)
    bounded(lambda: cl.health(), 4 * cap)


def test_endless_ndjson_line_is_cut(evil: list[HostileDaemon]) -> None:
    data = b"a" * 65536
    chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def scenario(c: socket.socket, _: str) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        forever(c, chunk)

    cl = client(evil, scenario)
    bounded(lambda: cl.create_sandbox({}), 4 * MAX_LINE_BYTES)


def test_endless_headers_are_refused(evil: list[HostileDaemon]) -> None:
    def scenario(c: socket.socket, _: str) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\n")
        forever(c, b"X-A: b\r\n" * 1000)

    with pytest.raises(TransportError):
        client(evil, scenario).health()


@pytest.mark.parametrize(
    "status,body,pattern",
    [
        (200, '{"version":', "not UTF-8 JSON"),
        (200, b'{"\xff":1}', "not UTF-8 JSON"),
        (200, '{"version": NaN}', "not UTF-8 JSON"),
        (200, json.dumps({**HEALTH, "version": 1}), 'invalid body at "version"'),
        (200, json.dumps({"version": "1", "backends": []}), 'invalid body at "defaultBackend"'),
        (200, "[" * 100_000 + "]" * 100_000, "not UTF-8 JSON|nested"),
        (404, json.dumps({"error": {"code": 7, "message": "x"}}), "status 404 with an invalid error body"),
        (500, "<html>oops</html>", "status 500 without a readable error body"),
    ],
    ids=["truncated", "not-utf8", "nan", "mistyped", "missing", "deep", "bad-error-code", "html-error"],
)
def test_malformed_and_schema_breaking_answers(evil: list[HostileDaemon], status: int, body: str | bytes, pattern: str) -> None:
    with pytest.raises(TransportError, match=pattern):
        client(evil, lambda c, _: answer(c, status, body)).health()


def test_a_newer_daemons_extra_fields_are_accepted(evil: list[HostileDaemon]) -> None:
    assert client(evil, lambda c, _: answer(c, 200, json.dumps({**HEALTH, "addedLater": {"x": 1}}))).health() == HEALTH
    body = json.dumps({"error": {"code": "NOT_FOUND", "message": "gone", "addedLater": 1}})
    with pytest.raises(NotFoundError, match="gone"):
        client(evil, lambda c, _: answer(c, 404, body)).health()


def test_silence_and_stalls_time_out(evil: list[HostileDaemon]) -> None:
    silent = client(evil, lambda c, _: time.sleep(5), request_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        silent.health()
    stalled = client(evil, lambda c, _: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"), time.sleep(5)), request_timeout=0.3)  # type: ignore[func-returns-value]
    with pytest.raises(TimeoutError):
        stalled.health()
    assert time.monotonic() - t0 < 3


def test_early_close_and_garbage(evil: list[HostileDaemon]) -> None:
    with pytest.raises(TransportError):
        client(evil, lambda c, _: c.close()).health()
    with pytest.raises(TransportError):
        client(evil, lambda c, _: (c.sendall(b"SSH-2.0-OpenSSH\r\n\r\n"), c.close())).health()  # type: ignore[func-returns-value]


def test_no_daemon_is_a_transport_error_with_a_hint(tmp_path: object) -> None:
    with pytest.raises(TransportError) as e:
        DaemonClient(f"{tmp_path}/none.sock").ping()
    assert e.value.hint is not None and "mvmctl daemon" in e.value.hint


def ndjson(lines: list[object]) -> Scenario:
    body = "".join(json.dumps(x) + "\n" for x in lines)

    def scenario(c: socket.socket, _: str) -> None:
        answer(c, 200, body, {"Content-Type": "application/x-ndjson"})

    return scenario


def test_exec_streams_that_break_the_protocol(evil: list[HostileDaemon]) -> None:
    cases = {
        "no start": ([], "before the process started"),
        "mistyped": ([{"type": "started", "proc": "1", "pid": 2}], "invalid body"),
        "out of order": ([{"type": "stdout", "data": ""}], 'sent "stdout" before "started"'),
        "no exit": ([{"type": "started", "proc": 1, "pid": 2}], "before the process exited"),
        "bad base64": ([{"type": "started", "proc": 1, "pid": 2}, {"type": "stdout", "data": "!!"}], "not base64"),
    }
    for name, (lines, pattern) in cases.items():
        cl = client(evil, ndjson(lines))
        sb = Sandbox(cl, {"id": ID})
        with pytest.raises(TransportError, match=pattern):
            sb.commands.run(["true"])
        cl.close()


def test_endless_output_is_kept_to_the_cap(evil: list[HostileDaemon], monkeypatch: pytest.MonkeyPatch) -> None:
    import mvm.commands

    monkeypatch.setattr(mvm.commands, "_BACKSTOP_SLACK_SECONDS", 0.0)
    line = (json.dumps({"type": "stdout", "data": "YWFh" * 16384}) + "\n").encode()
    chunk = f"{len(line):x}\r\n".encode() + line + b"\r\n"

    def scenario(c: socket.socket, _: str) -> None:
        started = (json.dumps({"type": "started", "proc": 1, "pid": 2}) + "\n").encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        c.sendall(f"{len(started):x}\r\n".encode() + started + b"\r\n")
        forever(c, chunk)

    cl = client(evil, scenario)
    h = Sandbox(cl, {"id": ID}).commands.start(["yes"], max_output_bytes=1024 * 1024, timeout_seconds=1, kill_grace_ms=0)
    tracemalloc.start()
    try:
        with pytest.raises(TimeoutError):
            h.wait()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    assert len(h._out["stdout"].kept) == 1024 * 1024
