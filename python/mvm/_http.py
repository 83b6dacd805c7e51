"""HTTP/1.1 over the daemon's Unix socket: bounded answers, deadlines on every call, typed errors."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from . import _check
from ._schemas import api_error
from .errors import AbortedError, MvmError, TimeoutError, TransportError, from_wire

T = TypeVar("T")

#: Largest JSON answer buffered, in bytes (the TypeScript SDK's MAX_API_JSON_BYTES).
MAX_JSON_BYTES = 32 * 1024 * 1024
#: Longest NDJSON line accepted, in bytes.
MAX_LINE_BYTES = 1024 * 1024
#: An idle connection is not reused after this long, in seconds (the daemon's keep-alive is 5 s).
IDLE_REUSE_SECONDS = 2.0
_READ_CHUNK = 64 * 1024


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def describe_call(op: str, socket_path: str) -> str:
    return f'Call "{op}" to the daemon at "{socket_path}"'


class Deadline:
    """A point in time a call must finish by; ``None`` for no deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.at = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()


class Exchange:
    """One request's answer, read under the call's deadline. Close it (or read it fully) when done."""

    def __init__(self, transport: Transport, conn: _UnixConnection, resp: http.client.HTTPResponse, describe: str, deadline: Deadline) -> None:
        self._transport = transport
        self._conn = conn
        self.resp = resp
        self.describe = describe
        self.deadline = deadline
        #: Longest silence tolerated between reads, in seconds; ``None``: only the deadline counts
        #: (streams whose work may be silent for long, such as a process's output).
        self.idle_timeout: float | None = transport.read_timeout
        self._done = False

    @property
    def status(self) -> int:
        return self.resp.status

    def header(self, name: str) -> str | None:
        return self.resp.getheader(name)

    def _arm(self) -> None:
        left = self.deadline.remaining()
        if left is not None and left <= 0:
            self.close(reuse=False)
            raise TimeoutError(f"{self.describe} got no complete answer within {self.deadline.seconds:g} s")
        limits = [x for x in (left, self.idle_timeout) if x is not None]
        if self._conn.sock is not None:
            self._conn.sock.settimeout(max(0.001, min(limits)) if limits else None)

    def read_some(self, n: int = _READ_CHUNK) -> bytes:
        """Up to ``n`` bytes of the body; ``b""`` at its end."""
        self._arm()
        try:
            data = self.resp.read1(n)
        except MvmError:
            raise
        except (socket.timeout, TimeoutError) as e:
            self.close(reuse=False)
            raise TimeoutError(f"{self.describe} got no complete answer within {self._timeout_text()}") from e
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.close(reuse=False)
            raise TransportError(f"{self.describe} failed while reading the answer: {type(e).__name__}") from e
        if data == b"":
            self.close(reuse=True)
        return data

    def _timeout_text(self) -> str:
        left = self.deadline.remaining()
        if left is not None and left <= 0.01:
            return f"{self.deadline.seconds:g} s"
        return f"{self.idle_timeout:g} s of silence" if self.idle_timeout is not None else f"{self.deadline.seconds} s"

    def read_all(self, max_bytes: int) -> bytes:
        declared = self.header("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            self.close(reuse=False)
            raise TransportError(f"{self.describe} answered a body of {declared} bytes, over the limit of {max_bytes}")
        chunks: list[bytes] = []
        total = 0
        while True:
            data = self.read_some()
            if not data:
                return b"".join(chunks)
            total += len(data)
            if total > max_bytes:
                self.close(reuse=False)
                raise TransportError(f"{self.describe} answered a body over the limit of {max_bytes} bytes")
            chunks.append(data)

    def lines(self, max_line_bytes: int) -> Iterator[Any]:
        """The NDJSON values of the body, one per line, each line bounded."""
        buf = bytearray()
        while True:
            data = self.read_some()
            if not data:
                if buf.strip():
                    yield parse_json(bytes(buf), self.describe)
                return
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line = bytes(buf[:nl])
                del buf[: nl + 1]
                if len(line) > max_line_bytes:
                    self.close(reuse=False)
                    raise TransportError(f"{self.describe} sent a line over the limit of {max_line_bytes} bytes")
                if line.strip():
                    yield parse_json(line, self.describe)
            if len(buf) > max_line_bytes:
                self.close(reuse=False)
                raise TransportError(f"{self.describe} sent a line over the limit of {max_line_bytes} bytes")

    def close(self, *, reuse: bool = False) -> None:
        if self._done:
            return
        self._done = True
        if reuse and self.resp.isclosed() and not self.resp.will_close:
            self._transport._release(self._conn)
        else:
            self._conn.close()

    def error(self, max_bytes: int) -> MvmError:
        """The typed error this non-2xx answer carries; an unreadable one is a TransportError."""
        status = self.status
        try:
            body = parse_json(self.read_all(max_bytes), self.describe)
        except MvmError as e:
            return TransportError(f"{self.describe} answered status {status} without a readable error body: {e.message}")
        try:
            err = api_error(body, "")["error"]
        except _check.Invalid:
            return TransportError(f"{self.describe} answered status {status} with an invalid error body")
        return from_wire(err["code"], err["message"], err.get("hint"), err.get("details"))


def parse_json(data: bytes, describe: str) -> Any:
    try:
        text = data.decode("utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TransportError(f"{describe} answered a body that is not UTF-8 JSON") from e


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def validate(schema: _check.Validator[T], value: Any, describe: str) -> T:
    try:
        return schema(value, "")
    except _check.Invalid as e:
        where = f' at "{e.where}"' if e.where else ""
        raise TransportError(f"{describe} answered an invalid body{where}: {e.what}"[:1024]) from None
    except RecursionError:
        raise TransportError(f"{describe} answered a body nested too deeply") from None


def sandbox_path(sandbox_id: str) -> str:
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}"


def with_query(path: str, query: Mapping[str, str]) -> str:
    return f"{path}?{urlencode(query)}" if query else path


class Transport:
    """Sends requests to one daemon socket; keeps one idle connection for the next call."""

    def __init__(self, socket_path: str, *, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        #: Longest silence tolerated while an answer is awaited, in seconds.
        self.read_timeout = read_timeout
        self._idle: list[tuple[_UnixConnection, float]] = []
        self._lock = threading.Lock()
        self._closed = False

    def _release(self, conn: _UnixConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < 4:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _take(self) -> _UnixConnection | None:
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if time.monotonic() - since < IDLE_REUSE_SECONDS:
                    return conn
                conn.close()
        return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()

    def send(
        self,
        op: str,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None,
    ) -> Exchange:
        describe = describe_call(op, self.socket_path)
        if self._closed:
            raise TransportError(f'The client for "{self.socket_path}" is closed')
        deadline = Deadline(timeout)
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
            hdrs["Content-Type"] = "application/json"
        chunked = False
        if isinstance(body, (bytes, bytearray, memoryview)):
            hdrs["Content-Length"] = str(len(body))
        elif body is not None:
            chunked = True
            hdrs["Transfer-Encoding"] = "chunked"
        reused = self._take()
        for attempt in (0, 1):
            conn = reused if attempt == 0 and reused is not None else None
            fresh = conn is None
            if conn is None:
                left = deadline.remaining()
                conn = _UnixConnection(self.socket_path, self.connect_timeout if left is None else max(0.001, min(left, self.connect_timeout)))
            try:
                if fresh:
                    conn.connect()
                assert conn.sock is not None
                left = deadline.remaining()
                conn.sock.settimeout(self.read_timeout if left is None else max(0.001, min(left, self.read_timeout)))
                conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
                resp = conn.getresponse()
                return Exchange(self, conn, resp, describe, deadline)
            except (socket.timeout, TimeoutError) as e:
                conn.close()
                raise TimeoutError(f"{describe} got no answer within {self._wait_text(deadline)}") from e
            except FileNotFoundError as e:
                conn.close()
                raise TransportError(f'No daemon socket at "{self.socket_path}"', hint="start one with `mvmctl daemon`") from e
            except PermissionError as e:
                conn.close()
                raise TransportError(f'{describe} was refused: no permission on the socket') from e
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # A kept connection the daemon closed meanwhile: try once more on a fresh one.
                if not fresh and not chunked and isinstance(e, (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError)):
                    continue
                raise TransportError(f"{describe} failed: {type(e).__name__}: {str(e)[:200]}") from e
        raise TransportError(f"{describe} failed")

    def _wait_text(self, deadline: Deadline) -> str:
        left = deadline.remaining()
        if deadline.seconds is not None and left is not None and left <= 0.01:
            return f"{deadline.seconds:g} s"
        return f"{self.read_timeout:g} s"

    def json(self, op: str, method: str, path: str, schema: _check.Validator[T], *, timeout: float | None, max_bytes: int = MAX_JSON_BYTES, **kw: Any) -> T:
        ex = self.send(op, method, path, timeout=timeout, **kw)
        if not 200 <= ex.status < 300:
            raise ex.error(max_bytes)
        return validate(schema, parse_json(ex.read_all(max_bytes), ex.describe), ex.describe)

    def empty(self, op: str, method: str, path: str, *, timeout: float | None, **kw: Any) -> None:
        ex = self.send(op, method, path, timeout=timeout, **kw)
        if not 200 <= ex.status < 300:
            raise ex.error(MAX_JSON_BYTES)
        ex.read_all(MAX_JSON_BYTES)

    def progress(
        self,
        op: str,
        method: str,
        path: str,
        line_schema: _check.Validator[dict[str, Any]],
        key: str,
        *,
        timeout: float | None,
        max_line_bytes: int = MAX_LINE_BYTES,
        on_progress: Any = None,
        **kw: Any,
    ) -> Any:
        """An NDJSON answer of ``progress`` lines ending in one ``result`` (or ``error``) line."""
        headers = {"Accept": "application/x-ndjson"}
        ex = self.send(op, method, path, timeout=timeout, headers=headers, **kw)
        if not 200 <= ex.status < 300:
            raise ex.error(MAX_JSON_BYTES)
        result: Any = None
        have = False
        try:
            for value in ex.lines(max_line_bytes):
                line = validate(line_schema, value, ex.describe)
                if have:
                    raise TransportError(f"{ex.describe} sent a line after its result")
                if line["type"] == "progress":
                    if on_progress is not None:
                        on_progress(line["event"])
                elif line["type"] == "error":
                    err = line["error"]
                    raise from_wire(err["code"], err["message"], err.get("hint"))
                else:
                    result, have = line[key], True
        finally:
            ex.close(reuse=False)
        if not have:
            raise TransportError(f"{ex.describe} ended its stream without a result")
        return result


def aborted(describe: str) -> AbortedError:
    return AbortedError(f"{describe} was aborted")
