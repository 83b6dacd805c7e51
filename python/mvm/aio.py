"""The asyncio API: the same shape as the sync one, every method a coroutine.

Each call runs the sync client's blocking socket I/O on a worker thread
(``asyncio.to_thread``), so the event loop never blocks; the deadlines and answer bounds are the
sync client's. Streams are async iterators.

Example::

    async with await AsyncSandbox.create(image="debian:bookworm+python3", ttl_seconds=600) as sb:
        r = await sb.commands.run(["python3", "-c", "print(2+2)"])
        async for chunk in (await sb.commands.start(["python3", "train.py"])).stdout:
            print(chunk, end="")
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, TypeVar

from .commands import CommandHandle, CommandResult, Commands
from .policy import NetworkPolicy
from .sandbox import Files, Sandbox, SandboxNetwork, Snapshot

__all__ = ["AsyncCommandHandle", "AsyncCommands", "AsyncFiles", "AsyncSandbox", "AsyncSandboxNetwork", "AsyncSnapshot"]

T = TypeVar("T")


async def _call(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kw)


async def _aiter(it: Iterator[T]) -> AsyncIterator[T]:
    def step() -> tuple[bool, T | None]:
        for item in it:
            return True, item
        return False, None

    while True:
        more, item = await asyncio.to_thread(step)
        if not more:
            return
        yield item  # type: ignore[misc]


class AsyncCommandHandle:
    """A started command: ``stdout`` / ``stderr`` / ``events()`` are async iterators; ``await wait()``."""

    def __init__(self, handle: CommandHandle) -> None:
        self.sync = handle
        self.proc = handle.proc
        self.pid = handle.pid

    @property
    def stdout(self) -> AsyncIterator[str]:
        return _aiter(self.sync.stdout)

    @property
    def stderr(self) -> AsyncIterator[str]:
        return _aiter(self.sync.stderr)

    def events(self) -> AsyncIterator[tuple[str, bytes]]:
        return _aiter(self.sync.events())

    async def wait(self) -> CommandResult:
        return await _call(self.sync.wait)

    async def kill(self, signal: str = "SIGKILL", *, timeout: float | None = None) -> bool:
        return await _call(self.sync.kill, signal, timeout=timeout)

    async def send_stdin(self, data: str | bytes, *, timeout: float | None = None) -> None:
        await _call(self.sync.send_stdin, data, timeout=timeout)

    async def close_stdin(self, *, timeout: float | None = None) -> None:
        await _call(self.sync.close_stdin, timeout=timeout)

    def detach(self) -> None:
        self.sync.detach()


class AsyncCommands:
    def __init__(self, commands: Commands) -> None:
        self.sync = commands

    async def run(self, command: str | Sequence[str], **options: Any) -> CommandResult:
        """As :meth:`mvm.Commands.run`."""
        return await _call(self.sync.run, command, **options)

    async def start(self, command: str | Sequence[str], **options: Any) -> AsyncCommandHandle:
        """As :meth:`mvm.Commands.start`."""
        return AsyncCommandHandle(await _call(self.sync.start, command, **options))

    async def list(self, *, timeout: float | None = None) -> builtins.list[dict[str, Any]]:
        return await _call(self.sync.list, timeout=timeout)


class AsyncFiles:
    def __init__(self, files: Files) -> None:
        self.sync = files

    async def read(self, path: str, **options: Any) -> bytes:
        return await _call(self.sync.read, path, **options)

    async def read_text(self, path: str, **options: Any) -> str:
        return await _call(self.sync.read_text, path, **options)

    def read_stream(self, path: str, *, timeout: float | None = None) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            it = await _call(self.sync.read_stream, path, timeout=timeout)
            async for c in _aiter(it):
                yield c

        return chunks()

    async def write(self, path: str, data: str | bytes, **options: Any) -> dict[str, Any]:
        return await _call(self.sync.write, path, data, **options)

    async def list(self, path: str, *, timeout: float | None = None) -> builtins.list[dict[str, Any]]:
        return await _call(self.sync.list, path, timeout=timeout)

    async def stat(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return await _call(self.sync.stat, path, timeout=timeout)

    async def exists(self, path: str, *, timeout: float | None = None) -> bool:
        return await _call(self.sync.exists, path, timeout=timeout)

    async def mkdir(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        await _call(self.sync.mkdir, path, recursive=recursive, timeout=timeout)

    async def remove(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        await _call(self.sync.remove, path, recursive=recursive, timeout=timeout)

    async def rename(self, src: str, dst: str, *, timeout: float | None = None) -> None:
        await _call(self.sync.rename, src, dst, timeout=timeout)


class AsyncSandboxNetwork:
    def __init__(self, network: SandboxNetwork) -> None:
        self.sync = network

    @property
    def policy(self) -> NetworkPolicy | None:
        return self.sync.policy

    async def set_policy(self, policy: NetworkPolicy | Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return await _call(self.sync.set_policy, policy, timeout=timeout)

    async def events(self, **options: Any) -> dict[str, Any]:
        return await _call(self.sync.events, **options)

    async def all_events(self, *, timeout: float | None = None) -> builtins.list[dict[str, Any]]:
        return await _call(self.sync.all_events, timeout=timeout)


class AsyncSnapshot:
    def __init__(self, snapshot: Snapshot) -> None:
        self.sync = snapshot
        self.info = snapshot.info

    @property
    def id(self) -> str:
        return self.sync.id

    async def start(self, **options: Any) -> AsyncSandbox:
        return AsyncSandbox(await _call(self.sync.start, **options))

    async def delete(self, *, timeout: float | None = None) -> None:
        await _call(self.sync.delete, timeout=timeout)


class AsyncSandbox:
    """The asyncio twin of :class:`mvm.Sandbox` (``async with`` kills it on exit)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.commands = AsyncCommands(sandbox.commands)
        self.files = AsyncFiles(sandbox.files)
        self.network = AsyncSandboxNetwork(sandbox.network)

    @property
    def id(self) -> str:
        return self.sync.id

    @property
    def info(self) -> dict[str, Any]:
        return self.sync.info

    @property
    def receipt(self) -> dict[str, Any] | None:
        return self.sync.receipt

    @staticmethod
    async def create(**options: Any) -> AsyncSandbox:
        """As :meth:`mvm.Sandbox.create`."""
        return AsyncSandbox(await _call(Sandbox.create, **options))

    @staticmethod
    async def plan(**options: Any) -> dict[str, Any]:
        return await _call(Sandbox.plan, **options)

    @staticmethod
    async def connect(sandbox_id: str, **options: Any) -> AsyncSandbox:
        return AsyncSandbox(await _call(Sandbox.connect, sandbox_id, **options))

    @staticmethod
    async def list(**options: Any) -> builtins.list[dict[str, Any]]:
        return await _call(Sandbox.list, **options)

    async def refresh(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await _call(self.sync.refresh, timeout=timeout)

    async def kill(self, *, timeout: float | None = None) -> None:
        await _call(self.sync.kill, timeout=timeout)

    async def pause(self, *, ttl: Literal["running", "frozen"] | None = None, timeout: float | None = None) -> dict[str, Any]:
        return await _call(self.sync.pause, ttl=ttl, timeout=timeout)

    async def resume(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await _call(self.sync.resume, timeout=timeout)

    async def snapshot(self, **options: Any) -> AsyncSnapshot:
        return AsyncSnapshot(await _call(self.sync.snapshot, **options))

    async def fork(self, *, count: int = 1, timeout: float | None = None) -> builtins.list[AsyncSandbox]:
        return [AsyncSandbox(s) for s in await _call(self.sync.fork, count=count, timeout=timeout)]

    def close(self) -> None:
        self.sync.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.kill()
        finally:
            self.close()
