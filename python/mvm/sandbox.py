"""``Sandbox``: create, connect to, list and kill sandboxes; files, network, snapshots, pause and fork."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from .client import DaemonClient
from .commands import Commands
from .errors import InvalidArgumentError, NotFoundError
from .policy import NetworkPolicy, SecretRef

__all__ = ["Files", "Sandbox", "SandboxNetwork", "Snapshot"]

#: Largest file ``Files.read`` buffers, in bytes (use ``read_stream`` for more).
DEFAULT_MAX_READ_BYTES = 64 * 1024 * 1024
_TIERS = ("container", "vm-emulated", "vm-hardware")


def _flag(name: str) -> bool:
    return os.environ.get(name) in ("1", "true")


def request_from_plan(signed: Mapping[str, Any], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The create request a signed plan was made for (as the TypeScript ``requestFromPlan``):
    what is sent with the plan to have it admitted. Environment values are not in a plan; pass them."""
    try:
        ir = signed["plan"]["ir"]
        resources = dict(ir["resources"])
        work_mib = resources.pop("workMiB", None)
        request: dict[str, Any] = {
            "image": ir["imageDigest"],
            "backend": "namespace" if ir["requiredTier"] == "container" else "vm",
            "ttlSeconds": ir["ttlSeconds"],
            "resources": resources,
            "network": ir["network"],
            "ports": ir["ports"],
            "intent": ir["intent"],
            "plan": dict(signed),
        }
        if work_mib is not None:
            request["workMiB"] = work_mib
        for key in ("onTtl", "fromSnapshot", "function"):
            if key in ir:
                request[key] = ir[key]
        if env is not None:
            request["env"] = dict(env)
        if ir["secrets"]:
            request["secrets"] = {b["name"]: b["ref"] for b in ir["secrets"]}
        if ir["command"]["kind"] == "argv":
            request["command"] = ir["command"]["argv"]
        return request
    except (KeyError, TypeError) as e:
        raise InvalidArgumentError(f"Invalid signed plan: no {e}") from None


def create_request(
    *,
    image: str | None = None,
    backend: str | None = None,
    ttl_seconds: int | None = None,
    memory_mib: int | None = None,
    pids: int | None = None,
    cpus: float | None = None,
    work_mib: int | None = None,
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    network: NetworkPolicy | Mapping[str, Any] | None = None,
    secrets: Mapping[str, SecretRef] | None = None,
    ports: Sequence[int | Mapping[str, int]] | None = None,
    intent: str | None = None,
    command: Sequence[str] | None = None,
    on_ttl: Literal["kill", "pause"] | None = None,
    plan: Mapping[str, Any] | None = None,
    minimum_tier: str | None = None,
    acknowledge_container_tier: bool | None = None,
    strict_secrets: bool | None = None,
    from_snapshot: str | Snapshot | None = None,
    _function: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The daemon's create request for these options (the same defaults from the environment as
    the TypeScript SDK: MVM_MINIMUM_TIER, MVM_ACK_CONTAINER_TIER, MVM_STRICT_SECRETS)."""
    request: dict[str, Any] = {} if plan is None else request_from_plan(plan, env)
    simple = {
        "image": image, "backend": backend, "ttlSeconds": ttl_seconds, "workMiB": work_mib, "intent": intent,
        "onTtl": on_ttl, "command": None if command is None else list(command),
        "env": None if env is None else dict(env), "labels": None if labels is None else dict(labels),
    }
    request.update({k: v for k, v in simple.items() if v is not None})
    res = {k: v for k, v in (("memoryMiB", memory_mib), ("pids", pids), ("cpus", cpus)) if v is not None}
    if res:
        request["resources"] = res
    if network is not None:
        request["network"] = network.to_json() if isinstance(network, NetworkPolicy) else dict(network)
    if secrets is not None:
        for env_name, ref in secrets.items():
            if not isinstance(ref, SecretRef):
                raise InvalidArgumentError(f'Invalid secret for "{env_name}": expected a SecretRef')
        request["secrets"] = {k: ref.to_json() for k, ref in secrets.items()}
    if ports is not None:
        request["ports"] = [{"guest": p} if isinstance(p, int) else dict(p) for p in ports]
    env_tier = os.environ.get("MVM_MINIMUM_TIER", "")
    if env_tier and env_tier not in _TIERS:
        raise InvalidArgumentError(f'Invalid MVM_MINIMUM_TIER "{env_tier[:64]}": expected one of {", ".join(_TIERS)}')
    tiers = [t for t in (minimum_tier, env_tier or None) if t is not None]
    if tiers:
        request["minimumTier"] = max(tiers, key=lambda t: _TIERS.index(t) if t in _TIERS else 99)
    ack = acknowledge_container_tier if acknowledge_container_tier is not None else (True if _flag("MVM_ACK_CONTAINER_TIER") else None)
    if ack is not None:
        request["acknowledgeContainerTier"] = ack
    if strict_secrets or _flag("MVM_STRICT_SECRETS"):
        request["strictSecrets"] = True
    if _function is not None:
        request["function"] = dict(_function)
    if from_snapshot is not None:
        request["fromSnapshot"] = from_snapshot.id if isinstance(from_snapshot, Snapshot) else from_snapshot
    return request


class Files:
    """Files of one sandbox (``sandbox.files``). Paths are absolute inside the sandbox."""

    def __init__(self, client: DaemonClient, sandbox_id: str) -> None:
        self._client = client
        self._id = sandbox_id

    def read(self, path: str, *, max_bytes: int = DEFAULT_MAX_READ_BYTES, timeout: float | None = None) -> bytes:
        """A file's bytes. A file over ``max_bytes`` raises InvalidArgumentError before it is read."""
        size, chunks = self._client.read_file(self._id, path, timeout=timeout)
        if size > max_bytes:
            chunks.close()  # type: ignore[attr-defined]
            raise InvalidArgumentError(f'File "{path[:256]}" is {size} bytes, over max_bytes ({max_bytes})', hint="use files.read_stream")
        return b"".join(chunks)

    def read_text(self, path: str, *, encoding: str = "utf-8", max_bytes: int = DEFAULT_MAX_READ_BYTES, timeout: float | None = None) -> str:
        return self.read(path, max_bytes=max_bytes, timeout=timeout).decode(encoding)

    def read_stream(self, path: str, *, timeout: float | None = None) -> Iterator[bytes]:
        """A file's bytes as chunks, read as fast as they are consumed."""
        return self._client.read_file(self._id, path, timeout=timeout)[1]

    def write(self, path: str, data: str | bytes | Iterable[bytes], *, mode: int | None = None, create_parents: bool = True, timeout: float | None = None) -> dict[str, Any]:
        """Writes a file (``str`` as UTF-8; an iterable of chunks is streamed). Answers ``{"bytes", "receipt"?}``."""
        body = data.encode() if isinstance(data, str) else data
        return self._client.write_file(self._id, path, body, mode=mode, create_parents=create_parents, timeout=timeout)

    def list(self, path: str, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """The entries of a directory: ``name``, ``type``, ``size``, ``mode``, ``mtimeMs``."""
        return list(self._client.list_dir(self._id, path, timeout=timeout)["entries"])

    def stat(self, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return self._client.stat(self._id, path, timeout=timeout)

    def exists(self, path: str, *, timeout: float | None = None) -> bool:
        try:
            self._client.stat(self._id, path, timeout=timeout)
            return True
        except NotFoundError:
            return False

    def mkdir(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        self._client.mkdir(self._id, path, recursive=recursive, timeout=timeout)

    def remove(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        self._client.remove(self._id, path, recursive=recursive, timeout=timeout)

    def rename(self, src: str, dst: str, *, timeout: float | None = None) -> None:
        self._client.rename(self._id, src, dst, timeout=timeout)


class SandboxNetwork:
    """The egress policy and decisions of one sandbox (``sandbox.network``)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    @property
    def policy(self) -> NetworkPolicy | None:
        net = self._sb.info.get("network")
        return None if net is None else NetworkPolicy.from_json(net["policy"])

    def set_policy(self, policy: NetworkPolicy | Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Replaces the policy; open connections it no longer allows are closed. Answers the sandbox info."""
        body = policy.to_json() if isinstance(policy, NetworkPolicy) else dict(policy)
        self._sb._info = self._sb._client.set_network_policy(self._sb.id, body, timeout=timeout)
        return self._sb._info

    def events(self, *, after: int | None = None, limit: int | None = None, timeout: float | None = None) -> dict[str, Any]:
        """One page ``{"events": [{"seq", "event"}], "next", "dropped"}``; pass ``next`` as ``after``."""
        return self._sb._client.network_events(self._sb.id, after=after, limit=limit, timeout=timeout)

    def all_events(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every event still buffered, oldest first."""
        out: list[dict[str, Any]] = []
        after = 0
        for _ in range(10_000):
            page = self.events(after=after, timeout=timeout)
            out.extend(e["event"] for e in page["events"])
            if not page["events"] or page["next"] <= after:
                return out
            after = page["next"]
        return out


class Snapshot:
    """A stored snapshot: start sandboxes from it, or delete it."""

    def __init__(self, client: DaemonClient, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def digest(self) -> str:
        return str(self.info["digest"])

    @staticmethod
    def get(ref: str, *, socket_path: str | None = None, timeout: float | None = None) -> Snapshot:
        client = DaemonClient(socket_path)
        return Snapshot(client, client.get_snapshot(ref, timeout=timeout))

    @staticmethod
    def list(*, socket_path: str | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        with DaemonClient(socket_path) as client:
            return client.list_snapshots(timeout=timeout)

    def start(self, **options: Any) -> Sandbox:
        """A new sandbox from this snapshot (options as :meth:`Sandbox.create`, minus image and backend)."""
        return Sandbox.create(from_snapshot=self.id, socket_path=self._client.socket_path, **options)

    def delete(self, *, timeout: float | None = None) -> None:
        self._client.delete_snapshot(self.id, timeout=timeout)


class Sandbox:
    """A sandbox on the daemon. Use as a context manager to kill it on exit.

    Example::

        with Sandbox.create(image="debian:bookworm+python3", ttl_seconds=600) as sb:
            print(sb.commands.run(["python3", "-c", "print(2+2)"]).stdout)
    """

    def __init__(self, client: DaemonClient, info: dict[str, Any]) -> None:
        self._client = client
        self._info = info
        self.commands = Commands(client, self.id)
        self.files = Files(client, self.id)
        self.network = SandboxNetwork(self)

    @property
    def id(self) -> str:
        return str(self._info["id"])

    @property
    def info(self) -> dict[str, Any]:
        """The sandbox's info as last seen (``refresh()`` asks again)."""
        return self._info

    @property
    def receipt(self) -> dict[str, Any] | None:
        """The plan that admitted the sandbox and its latest lifecycle audit entry."""
        r = self._info.get("receipt")
        return None if r is None else dict(r)

    @property
    def client(self) -> DaemonClient:
        return self._client

    @staticmethod
    def create(
        *,
        socket_path: str | None = None,
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        **options: Any,
    ) -> Sandbox:
        """Creates a sandbox and returns once it runs.

        Options: ``image``, ``backend``, ``ttl_seconds``, ``memory_mib``, ``pids``, ``cpus``,
        ``work_mib``, ``env``, ``labels``, ``network`` (NetworkPolicy), ``secrets`` (env name →
        SecretRef), ``ports``, ``intent``, ``command``, ``on_ttl``, ``plan`` (a signed plan),
        ``minimum_tier``, ``acknowledge_container_tier``, ``strict_secrets``, ``from_snapshot``.
        :param timeout: deadline of the create, in seconds (default 1800: an image may be built).
        """
        request = create_request(**options)
        client = DaemonClient(socket_path)
        try:
            return Sandbox(client, client.create_sandbox(request, timeout=timeout, on_progress=on_progress))
        except BaseException:
            client.close()
            raise

    @staticmethod
    def plan(*, socket_path: str | None = None, valid_for_seconds: int | None = None, timeout: float | None = None, **options: Any) -> dict[str, Any]:
        """A signed execution plan for these create options (admit it with ``create(plan=...)``)."""
        with DaemonClient(socket_path) as client:
            return client.plan_sandbox(create_request(**options), valid_for_seconds=valid_for_seconds, timeout=timeout)

    @staticmethod
    def connect(sandbox_id: str, *, socket_path: str | None = None, timeout: float | None = None) -> Sandbox:
        """A running sandbox by id. Raises NotFoundError when there is none."""
        client = DaemonClient(socket_path)
        try:
            return Sandbox(client, client.get_sandbox(sandbox_id, timeout=timeout))
        except BaseException:
            client.close()
            raise

    @staticmethod
    def list(*, socket_path: str | None = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every sandbox the daemon knows."""
        with DaemonClient(socket_path) as client:
            return client.list_sandboxes(timeout=timeout)

    def refresh(self, *, timeout: float | None = None) -> dict[str, Any]:
        self._info = self._client.get_sandbox(self.id, timeout=timeout)
        return self._info

    def kill(self, *, timeout: float | None = None) -> None:
        """Kills the sandbox (a sandbox already gone is not an error)."""
        try:
            self._info = self._client.kill_sandbox(self.id, timeout=timeout)
        except NotFoundError:
            pass

    def pause(self, *, ttl: Literal["running", "frozen"] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Freezes every process (state kept, no CPU). ``ttl="frozen"`` stops the TTL until resume."""
        self._info = self._client.pause_sandbox(self.id, ttl=ttl, timeout=timeout)
        return self._info

    def resume(self, *, timeout: float | None = None) -> dict[str, Any]:
        self._info = self._client.resume_sandbox(self.id, timeout=timeout)
        return self._info

    def snapshot(
        self,
        *,
        ttl_seconds: int | None = None,
        manual: bool = False,
        memory: bool | None = None,
        include_env_secrets: bool | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Snapshot:
        """Takes a snapshot, kept ``ttl_seconds`` or until deleted (``manual=True``): exactly one."""
        if (ttl_seconds is None) == (not manual):
            raise InvalidArgumentError("Give a snapshot exactly one retention: ttl_seconds=... or manual=True")
        request: dict[str, Any] = {"retention": {"manual": True} if manual else {"ttlSeconds": ttl_seconds}}
        if memory is not None:
            request["memory"] = memory
        if include_env_secrets is not None:
            request["includeEnvSecrets"] = include_env_secrets
        if labels is not None:
            request["labels"] = dict(labels)
        return Snapshot(self._client, self._client.snapshot_sandbox(self.id, request, timeout=timeout))

    def fork(self, *, count: int = 1, timeout: float | None = None) -> builtins.list[Sandbox]:
        """Starts ``count`` sandboxes from this one's current state (each has its own client)."""
        kids = self._client.fork_sandbox(self.id, count=count, timeout=timeout)
        return [Sandbox(DaemonClient(self._client.socket_path), info) for info in kids]

    def close(self) -> None:
        """Closes this handle's connections; the sandbox keeps running."""
        self._client.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.kill()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Sandbox({self.id!r}, state={self._info.get('state')!r})"
