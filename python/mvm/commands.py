"""Commands in a sandbox: run to completion, or start and stream, with stdin and timeouts."""

from __future__ import annotations

import base64
import codecs
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._http import Exchange
from .client import DaemonClient
from .errors import CommandExitError, InvalidArgumentError, MvmError, TransportError, from_wire

__all__ = ["CommandHandle", "CommandResult", "Commands"]

#: Per-stream output kept for the result, in bytes.
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
#: A command's own timeout when none is given, in seconds.
DEFAULT_COMMAND_TIMEOUT_SECONDS = 60.0
_INLINE_STDIN_BYTES = 8 * 1024 * 1024
_ASSUMED_KILL_GRACE_SECONDS = 60.0
_BACKSTOP_SLACK_SECONDS = 30.0


@dataclass(frozen=True)
class CommandResult:
    """How a command ended, and its output (decoded as UTF-8, undecodable bytes replaced)."""

    exit_code: int | None
    """Exit status, or None when a signal ended the process."""
    signal: str | None
    stdout: str
    stderr: str
    timed_out: bool
    oom_killed: bool
    duration_ms: float
    stdout_truncated: bool
    stderr_truncated: bool
    receipt: dict[str, Any]
    """What ran where: sandbox, process handle, image digest, backend, times, plan and audit entry."""
    stdout_bytes: bytes = field(repr=False, default=b"")
    stderr_bytes: bytes = field(repr=False, default=b"")
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _describe(argv: Sequence[str]) -> str:
    text = " ".join(argv)
    return text if len(text) <= 80 else text[:77] + "..."


class _Output:
    """One stream's bytes kept up to a cap, plus chunks not yet taken by an iterator."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.watched = False

    def push(self, data: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        if self.watched and self.pending_bytes + len(data) <= self.cap:
            self.pending.append(data)
            self.pending_bytes += len(data)


class CommandHandle:
    """A started command. Iterate ``stdout`` / ``stderr`` (text chunks) or ``events()``; ``wait()`` for the result.

    The other stream's output meanwhile is kept (up to ``max_output_bytes``) for the result.
    """

    def __init__(self, client: DaemonClient, sandbox_id: str, argv: list[str], proc: int, pid: int, ex: Exchange, events: Iterator[dict[str, Any]], check: bool, max_output_bytes: int) -> None:
        self._client = client
        self._sandbox_id = sandbox_id
        self.argv = argv
        self.proc = proc
        """The engine's handle for the process."""
        self.pid = pid
        self._ex = ex
        self._events = events
        self._check = check
        self._out = {"stdout": _Output(max_output_bytes), "stderr": _Output(max_output_bytes)}
        self._result: CommandResult | None = None
        self._failure: MvmError | None = None

    @property
    def exited(self) -> bool:
        return self._result is not None or self._failure is not None

    def _pump(self) -> bool:
        """Reads one event; False once the stream has ended."""
        if self.exited:
            return False
        try:
            event = next(self._events, None)
        except MvmError as e:
            self._failure = e
            self._ex.close(reuse=False)
            raise
        if event is None:
            self._failure = TransportError(f"{self._ex.describe} ended its stream before the process exited")
            raise self._failure
        kind = event["type"]
        if kind in ("stdout", "stderr"):
            try:
                data = base64.b64decode(event["data"], validate=True)
            except ValueError:
                self._failure = TransportError(f"{self._ex.describe} sent output that is not base64")
                self._ex.close(reuse=False)
                raise self._failure from None
            self._out[kind].push(data)
            return True
        if kind == "error":
            err = event["error"]
            self._failure = from_wire(err["code"], err["message"], err.get("hint"))
        elif kind == "exit":
            self._result = self._make_result(event["exit"])
        else:
            self._failure = TransportError(f'{self._ex.describe} sent "{kind}" after "started"')
        # Reading to the stream's end lets its connection serve the next call.
        try:
            extra = next(self._events, None)
        except MvmError:
            extra = None
        if extra is not None and self._failure is None:
            self._failure = TransportError(f"{self._ex.describe} sent a line after the exit")
        self._ex.close(reuse=extra is None)
        if self._failure is not None:
            raise self._failure
        return False

    def _make_result(self, exit: Mapping[str, Any]) -> CommandResult:
        out, err = bytes(self._out["stdout"].kept), bytes(self._out["stderr"].kept)
        return CommandResult(
            exit_code=exit["exitCode"],
            signal=exit["signal"],
            stdout=out.decode("utf-8", "replace"),
            stderr=err.decode("utf-8", "replace"),
            timed_out=exit["timedOut"],
            oom_killed=exit["oomKilled"],
            duration_ms=exit["durationMs"],
            stdout_truncated=exit["stdoutTruncated"] or exit["stdoutBytes"] > len(out),
            stderr_truncated=exit["stderrTruncated"] or exit["stderrBytes"] > len(err),
            receipt=dict(exit["receipt"]),
            stdout_bytes=out,
            stderr_bytes=err,
            warnings=list(exit.get("warnings", [])),
        )

    def _chunks(self, name: str) -> Iterator[bytes]:
        out = self._out[name]
        out.watched = True
        while True:
            while out.pending:
                data = out.pending.popleft()
                out.pending_bytes -= len(data)
                yield data
            if not self._pump():
                while out.pending:
                    yield out.pending.popleft()
                return

    def _text(self, name: str) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for data in self._chunks(name):
            text = decoder.decode(data)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    @property
    def stdout(self) -> Iterator[str]:
        """The process's stdout as text chunks, as they arrive."""
        return self._text("stdout")

    @property
    def stderr(self) -> Iterator[str]:
        """The process's stderr as text chunks, as they arrive."""
        return self._text("stderr")

    def events(self) -> Iterator[tuple[str, bytes]]:
        """``("stdout" | "stderr", bytes)`` in the order the process wrote them."""
        for name in ("stdout", "stderr"):
            self._out[name].watched = True
        while True:
            for name in ("stdout", "stderr"):
                out = self._out[name]
                while out.pending:
                    data = out.pending.popleft()
                    out.pending_bytes -= len(data)
                    yield name, data
            if not self._pump():
                return

    def wait(self) -> CommandResult:
        """Waits for the exit. Raises CommandExitError on a non-zero exit, a signal or a timeout,
        unless the command was started with ``check=False``."""
        while self._pump():
            pass
        if self._failure is not None:
            raise self._failure
        assert self._result is not None
        r = self._result
        if self._check and (r.exit_code != 0 or r.timed_out):
            why = "timed out" if r.timed_out else f"was ended by {r.signal}" if r.exit_code is None else f"exited with code {r.exit_code}"
            last = r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else []
            detail = f": {last[0][:200]}" if last else ""
            raise CommandExitError(f'Command "{_describe(self.argv)}" {why}{detail}', r)
        return r

    def kill(self, signal: str = "SIGKILL", *, timeout: float | None = None) -> bool:
        """Sends ``signal`` to the process group; False when it had already exited."""
        if self.exited:
            return False
        self._client.signal_process(self._sandbox_id, self.proc, signal, timeout=timeout)
        return True

    def send_stdin(self, data: str | bytes, *, timeout: float | None = None) -> None:
        """Writes to stdin (the command must be started with ``open_stdin=True``)."""
        self._client.write_stdin(self._sandbox_id, self.proc, data.encode() if isinstance(data, str) else bytes(data), timeout=timeout)

    def close_stdin(self, *, timeout: float | None = None) -> None:
        self._client.write_stdin(self._sandbox_id, self.proc, None, timeout=timeout)

    def detach(self) -> None:
        """Stops reading output; a process that is not ``background`` is killed by the daemon."""
        self._ex.close(reuse=False)
        if not self.exited:
            self._failure = TransportError(f"{self._ex.describe} was detached")

    def __enter__(self) -> CommandHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


class Commands:
    """Processes of one sandbox (``sandbox.commands``)."""

    def __init__(self, client: DaemonClient, sandbox_id: str) -> None:
        self._client = client
        self._sandbox_id = sandbox_id

    def run(self, command: str | Sequence[str], **options: Any) -> CommandResult:
        """Runs a command to its end. ``command`` is argv, or a string run by ``/bin/sh -c``.

        Options as :meth:`start`. Raises CommandExitError on a non-zero exit (``check=False`` returns it).

        Example::

            r = sb.commands.run(["python3", "-c", "print(2+2)"], timeout_seconds=30)
            assert r.stdout == "4\\n"
        """
        return self.start(command, **options).wait()

    def start(
        self,
        command: str | Sequence[str],
        *,
        timeout_seconds: float = DEFAULT_COMMAND_TIMEOUT_SECONDS,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: str | bytes | None = None,
        open_stdin: bool = False,
        background: bool = False,
        check: bool = True,
        kill_grace_ms: int | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        strict_secrets: bool = False,
    ) -> CommandHandle:
        """Starts a command and returns once it runs.

        :param timeout_seconds: the process group is killed after this long (0: no limit).
        :param stdin: bytes for stdin (then closed, unless ``open_stdin``).
        :param open_stdin: keep stdin open for :meth:`CommandHandle.send_stdin`.
        :param background: the process outlives this client's connection.
        """
        if isinstance(command, str):
            argv = ["/bin/sh", "-c", command]
        else:
            argv = list(command)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidArgumentError("Invalid command: a non-empty list of strings, or a string")
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, (int, float)) or not timeout_seconds >= 0:
            raise InvalidArgumentError(f'Invalid timeout_seconds "{timeout_seconds}"')
        data = stdin.encode() if isinstance(stdin, str) else stdin
        stream_stdin = data is not None and len(data) > _INLINE_STDIN_BYTES
        request: dict[str, Any] = {"argv": argv, "timeoutMs": round(timeout_seconds * 1000), "maxOutputBytes": max_output_bytes}
        if env is not None:
            request["env"] = dict(env)
        if cwd is not None:
            request["cwd"] = cwd
        if kill_grace_ms is not None:
            request["killGraceMs"] = kill_grace_ms
        if background:
            request["background"] = True
        if open_stdin or stream_stdin:
            request["openStdin"] = True
        if data is not None and not stream_stdin:
            request["stdinBase64"] = base64.b64encode(data).decode("ascii")
        if strict_secrets or os.environ.get("MVM_STRICT_SECRETS") in ("1", "true"):
            request["strictSecrets"] = True
        grace = _ASSUMED_KILL_GRACE_SECONDS if kill_grace_ms is None else kill_grace_ms / 1000
        backstop = (timeout_seconds or 7 * 24 * 3600) + grace + _BACKSTOP_SLACK_SECONDS
        proc, pid, ex, events = self._client.exec(self._sandbox_id, request, timeout=backstop)
        handle = CommandHandle(self._client, self._sandbox_id, argv, proc, pid, ex, events, check, max_output_bytes)
        if stream_stdin and data is not None:
            handle.send_stdin(data)
            if not open_stdin:
                handle.close_stdin()
        return handle

    def list(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The sandbox's running processes: ``proc``, ``pid``, ``argv``, ``startedAtMs``."""
        return self._client.list_processes(self._sandbox_id, timeout=timeout)
