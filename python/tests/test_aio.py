"""The asyncio API has the sync API's shape and works against the real daemon."""

from __future__ import annotations

import asyncio
import inspect

from conftest import Daemon

import mvm
from mvm.aio import AsyncCommands, AsyncFiles, AsyncSandbox


def test_same_shape_as_sync() -> None:
    for sync_cls, async_cls in ((mvm.Sandbox, AsyncSandbox), (mvm.Commands, AsyncCommands), (mvm.Files, AsyncFiles)):
        public = {n for n in dir(sync_cls) if not n.startswith("_") and callable(getattr(sync_cls, n))}
        assert public <= set(dir(async_cls)), public - set(dir(async_cls))


def test_async_run_stream_files(daemon: Daemon) -> None:
    async def main() -> None:
        async with await AsyncSandbox.create(image="debian:bookworm+python3", ttl_seconds=120) as sb:
            r = await sb.commands.run(["python3", "-c", "print(2+2)"], timeout_seconds=30)
            assert r.stdout == "4\n"
            h = await sb.commands.start(["sh", "-c", "echo a; sleep 0.1; echo b"])
            assert "".join([c async for c in h.stdout]) == "a\nb\n"
            await sb.files.write("/work/x", b"1")
            assert await sb.files.read("/work/x") == b"1"
            results = await asyncio.gather(*(sb.commands.run(["echo", str(i)]) for i in range(4)))
            assert [x.stdout for x in results] == [f"{i}\n" for i in range(4)]
            assert inspect.iscoroutinefunction(AsyncSandbox.kill)

    asyncio.run(main())
