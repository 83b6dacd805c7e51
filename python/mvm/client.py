"""``DaemonClient``: every daemon route as one method, each answer size-bounded and schema-checked.

The Sandbox API is built on it; use it directly for what the Sandbox API does not wrap (images,
warm pools, the secret store).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from . import _schemas as s
from ._check import Validator, array
from ._http import MAX_JSON_BYTES, MAX_LINE_BYTES, Exchange, Transport, sandbox_path, validate, with_query
from .errors import InvalidArgumentError, TransportError, from_wire

__all__ = ["DaemonClient", "default_socket_path"]

#: Deadline of calls that answer promptly, in seconds.
DEFAULT_REQUEST_TIMEOUT = 60.0
#: Deadline of calls that run as long as their work does (create, snapshot, fork, image builds), in seconds.
DEFAULT_LONG_TIMEOUT = 1800.0
MAX_FORK_COUNT = 16
_STDIN_REQUEST_BYTES = 4 * 1024 * 1024


def default_socket_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """The daemon socket: ``$MVM_DAEMON_SOCKET``, else ``/run/mvm/mvmd.sock`` for root, else
    ``$XDG_RUNTIME_DIR/mvm/mvmd.sock``, else ``/tmp/mvm-<uid>/mvmd.sock`` (as the TypeScript SDK)."""
    env = os.environ if env is None else env
    explicit = env.get("MVM_DAEMON_SOCKET", "")
    if explicit:
        return explicit
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return "/run/mvm/mvmd.sock"
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return os.path.join(xdg, "mvm", "mvmd.sock")
    return f"/tmp/mvm-{uid}/mvmd.sock"


def _files(sandbox_id: str, leaf: str, query: Mapping[str, str]) -> str:
    return with_query(f"{sandbox_path(sandbox_id)}/files/{leaf}", query)


class DaemonClient:
    """The daemon's HTTP API over its Unix socket (sync). Calls from several threads at once are
    safe: each takes its own connection (idle ones are kept for the next call).

    Example::

        client = DaemonClient()
        print(client.ping()["version"])
        client.close()
    """

    def __init__(
        self,
        socket_path: str | None = None,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_json_bytes: int = MAX_JSON_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.socket_path = socket_path or default_socket_path()
        self.request_timeout = request_timeout
        self.max_json_bytes = max_json_bytes
        self.max_line_bytes = max_line_bytes
        self._t = Transport(self.socket_path, read_timeout=request_timeout)

    def close(self) -> None:
        """Closes kept connections; new calls fail with TransportError. Sandboxes keep running."""
        self._t.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, timeout: float | None, default: float) -> float:
        t = default if timeout is None else timeout
        if not (isinstance(t, (int, float)) and t > 0):
            raise InvalidArgumentError(f'Invalid timeout "{t}": a positive number of seconds')
        return float(t)

    def _json(self, op: str, method: str, path: str, schema: Validator[Any], timeout: float | None, **kw: Any) -> Any:
        return self._t.json(op, method, path, schema, timeout=self._timeout(timeout, self.request_timeout), max_bytes=self.max_json_bytes, **kw)

    def _empty(self, op: str, method: str, path: str, timeout: float | None, **kw: Any) -> None:
        self._t.empty(op, method, path, timeout=self._timeout(timeout, self.request_timeout), **kw)

    # --- daemon -----------------------------------------------------------------------------
    def ping(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``{"version"}``: that the daemon answers (it probes nothing)."""
        return dict(self._json("ping", "GET", "/v1/ping", s.ping, timeout))

    def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        """Backends, their tiers and host checks."""
        return dict(self._json("health", "GET", "/v1/health", s.health, timeout))

    # --- sandboxes --------------------------------------------------------------------------
    def create_sandbox(self, request: Mapping[str, Any], *, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Creates a sandbox from a create request (the daemon's JSON form); answers its info."""
        line = s.progress_line("sandbox", s.sandbox_info)
        return dict(
            self._t.progress(
                "createSandbox", "POST", "/v1/sandboxes", line, "sandbox",
                timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body=dict(request), on_progress=on_progress,
            )
        )

    def plan_sandbox(self, request: Mapping[str, Any], *, valid_for_seconds: int | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Signs an execution plan for a create request (see docs/FUNCTIONS.md and `mvmctl plan`)."""
        body: dict[str, Any] = {"request": dict(request)}
        if valid_for_seconds is not None:
            body["validForSeconds"] = valid_for_seconds
        return dict(self._json("planSandbox", "POST", "/v1/plans", s.signed_plan, timeout, json_body=body))

    def get_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        info = dict(self._json("getSandbox", "GET", sandbox_path(sandbox_id), s.sandbox_info, timeout))
        self._same_sandbox("getSandbox", info, sandbox_id)
        return info

    def list_sandboxes(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listSandboxes", "GET", "/v1/sandboxes", s.sandbox_list, timeout)["sandboxes"])

    def kill_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        return dict(self._json("killSandbox", "DELETE", sandbox_path(sandbox_id), s.sandbox_info, timeout))

    def pause_sandbox(self, sandbox_id: str, *, ttl: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        body = {} if ttl is None else {"ttl": ttl}
        return dict(self._json("pauseSandbox", "POST", f"{sandbox_path(sandbox_id)}/pause", s.sandbox_info, timeout, json_body=body))

    def resume_sandbox(self, sandbox_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        return dict(self._json("resumeSandbox", "POST", f"{sandbox_path(sandbox_id)}/resume", s.sandbox_info, timeout, json_body={}))

    def _same_sandbox(self, op: str, info: Mapping[str, Any], sandbox_id: str) -> None:
        if info["id"] != sandbox_id:
            raise TransportError(f'Call "{op}" to the daemon at "{self.socket_path}" answered sandbox "{info["id"]}" for "{sandbox_id}"')

    # --- snapshots --------------------------------------------------------------------------
    def snapshot_sandbox(self, sandbox_id: str, request: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        line = s.progress_line("snapshot", s.snapshot_info)
        snap = dict(
            self._t.progress(
                "snapshotSandbox", "POST", f"{sandbox_path(sandbox_id)}/snapshots", line, "snapshot",
                timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body=dict(request),
            )
        )
        if snap["source"] != sandbox_id:
            raise TransportError(f'Call "snapshotSandbox" to the daemon at "{self.socket_path}" answered a snapshot of "{snap["source"]}", not of "{sandbox_id}"')
        return snap

    def fork_sandbox(self, sandbox_id: str, *, count: int = 1, timeout: float | None = None) -> list[dict[str, Any]]:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_FORK_COUNT:
            raise InvalidArgumentError(f'Invalid fork count "{count}": 1..{MAX_FORK_COUNT}')
        line = s.progress_line("sandboxes", array(s.sandbox_info, MAX_FORK_COUNT, min_items=1))
        kids: list[dict[str, Any]] = self._t.progress(
            "forkSandbox", "POST", f"{sandbox_path(sandbox_id)}/fork", line, "sandboxes",
            timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body={"count": count},
            max_line_bytes=min(self.max_json_bytes, self.max_line_bytes * count),
        )
        ids = {k["id"] for k in kids}
        describe = f'Call "forkSandbox" to the daemon at "{self.socket_path}"'
        if len(kids) != count:
            raise TransportError(f"{describe} answered {len(kids)} sandboxes for {count} asked for")
        if len(ids) != len(kids) or sandbox_id in ids:
            raise TransportError(f"{describe} answered sandboxes that are not distinct new sandboxes")
        return kids

    def list_snapshots(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listSnapshots", "GET", "/v1/snapshots", s.snapshot_list, timeout)["snapshots"])

    def get_snapshot(self, ref: str, *, timeout: float | None = None) -> dict[str, Any]:
        snap = dict(self._json("getSnapshot", "GET", f"/v1/snapshots/{_ref(ref)}", s.snapshot_info, timeout))
        if ref not in (snap["id"], snap["digest"]):
            raise TransportError(f'Call "getSnapshot" to the daemon at "{self.socket_path}" answered snapshot "{snap["id"]}" for "{ref}"')
        return snap

    def delete_snapshot(self, ref: str, *, timeout: float | None = None) -> None:
        self._empty("deleteSnapshot", "DELETE", f"/v1/snapshots/{_ref(ref)}", timeout)

    # --- processes --------------------------------------------------------------------------
    def exec(self, sandbox_id: str, request: Mapping[str, Any], *, timeout: float) -> tuple[int, int, Exchange, Iterator[dict[str, Any]]]:
        """Starts a process; answers ``(proc, pid, exchange, events)`` once it runs. ``events``
        yields the validated stdout/stderr/exit/error lines; closing ``exchange`` kills a
        process that is not ``background``."""
        ex = self._t.send("exec", "POST", f"{sandbox_path(sandbox_id)}/exec", json_body=dict(request), timeout=timeout)
        if not 200 <= ex.status < 300:
            raise ex.error(self.max_json_bytes)
        ex.idle_timeout = None
        events = (validate(s.exec_event, v, ex.describe) for v in ex.lines(self.max_line_bytes))
        try:
            first = next(events, None)
            if first is None:
                raise TransportError(f"{ex.describe} ended its stream before the process started")
            if first["type"] == "error":
                err = first["error"]
                raise from_wire(err["code"], err["message"], err.get("hint"))
            if first["type"] != "started":
                raise TransportError(f'{ex.describe} sent "{first["type"]}" before "started"')
        except BaseException:
            ex.close(reuse=False)
            raise
        return first["proc"], first["pid"], ex, events

    def signal_process(self, sandbox_id: str, proc: int, signal: str = "SIGKILL", *, timeout: float | None = None) -> None:
        self._empty("signalProcess", "POST", f"{sandbox_path(sandbox_id)}/processes/{int(proc)}/signal", timeout, json_body={"signal": signal})

    def write_stdin(self, sandbox_id: str, proc: int, data: bytes | None, *, timeout: float | None = None) -> None:
        """Writes to a process's stdin in requests of at most 4 MiB; ``None`` closes it."""
        path = f"{sandbox_path(sandbox_id)}/processes/{int(proc)}/stdin"
        headers = {"Content-Type": "application/octet-stream"}
        if data is None:
            self._empty("writeStdin", "POST", f"{path}?close=1", timeout, headers=headers, body=b"")
            return
        at = 0
        while True:
            self._empty("writeStdin", "POST", path, timeout, headers=headers, body=bytes(data[at : at + _STDIN_REQUEST_BYTES]))
            at += _STDIN_REQUEST_BYTES
            if at >= len(data):
                return

    def list_processes(self, sandbox_id: str, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listProcesses", "GET", f"{sandbox_path(sandbox_id)}/processes", s.process_list, timeout)["processes"])

    # --- files ------------------------------------------------------------------------------
    def read_file(self, sandbox_id: str, path: str, *, timeout: float | None = None) -> tuple[int, Iterator[bytes]]:
        """Opens a file: ``(size, chunks)``. The chunks must add up to ``size`` or TransportError is raised."""
        ex = self._t.send("readFile", "GET", _files(sandbox_id, "content", {"path": path}), timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT))
        if not 200 <= ex.status < 300:
            raise ex.error(self.max_json_bytes)
        declared = ex.header("Content-Length") or ""
        if not (declared.isdigit() and len(declared) <= 16):
            ex.close(reuse=False)
            raise TransportError(f"{ex.describe} answered without a valid Content-Length")
        size = int(declared)

        def chunks() -> Iterator[bytes]:
            got = 0
            try:
                while True:
                    data = ex.read_some()
                    if not data:
                        break
                    got += len(data)
                    if got > size:
                        raise TransportError(f"{ex.describe} sent more than the {size} bytes announced")
                    yield data
                if got != size:
                    raise TransportError(f"{ex.describe} sent {got} of the {size} bytes announced")
            finally:
                ex.close(reuse=False)

        return size, chunks()

    def write_file(
        self,
        sandbox_id: str,
        path: str,
        data: bytes | Iterable[bytes],
        *,
        mode: int | None = None,
        create_parents: bool | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Writes ``data`` (bytes, or an iterable of chunks streamed as they come) to a file."""
        query = {"path": path}
        if mode is not None:
            query["mode"] = format(mode, "o")
        if create_parents is not None:
            query["createParents"] = "1" if create_parents else "0"
        headers = {"Content-Type": "application/octet-stream"}
        return dict(
            self._t.json(
                "writeFile", "PUT", _files(sandbox_id, "content", query), s.write_result,
                timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), headers=headers, body=data,
            )
        )

    def list_dir(self, sandbox_id: str, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return dict(self._json("listDir", "GET", _files(sandbox_id, "list", {"path": path}), s.dir_listing, timeout))

    def stat(self, sandbox_id: str, path: str, *, timeout: float | None = None) -> dict[str, Any]:
        return dict(self._json("stat", "GET", _files(sandbox_id, "stat", {"path": path}), s.file_info, timeout))

    def mkdir(self, sandbox_id: str, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        self._empty("mkdir", "POST", _files(sandbox_id, "mkdir", {}), timeout, json_body={"path": path, "recursive": recursive})

    def remove(self, sandbox_id: str, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        query = {"path": path, "recursive": "1" if recursive else "0"}
        self._empty("remove", "DELETE", with_query(f"{sandbox_path(sandbox_id)}/files", query), timeout)

    def rename(self, sandbox_id: str, src: str, dst: str, *, timeout: float | None = None) -> None:
        self._empty("rename", "POST", _files(sandbox_id, "rename", {}), timeout, json_body={"from": src, "to": dst})

    # --- network and secrets ----------------------------------------------------------------
    def set_network_policy(self, sandbox_id: str, policy: Mapping[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        return dict(self._json("setNetworkPolicy", "PUT", f"{sandbox_path(sandbox_id)}/network/policy", s.sandbox_info, timeout, json_body=dict(policy)))

    def network_events(self, sandbox_id: str, *, after: int | None = None, limit: int | None = None, timeout: float | None = None) -> dict[str, Any]:
        query = {k: str(v) for k, v in (("after", after), ("limit", limit)) if v is not None}
        return dict(self._json("networkEvents", "GET", with_query(f"{sandbox_path(sandbox_id)}/network/events", query), s.network_events_page, timeout))

    def list_secrets(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listSecrets", "GET", "/v1/secrets", s.secret_list, timeout)["secrets"])

    def set_secret(self, name: str, value: str, *, hosts: Iterable[str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """Stores a secret in the host's store (answers its metadata, never the value)."""
        body: dict[str, Any] = {"value": value}
        if hosts is not None:
            body["hosts"] = list(hosts)
        return dict(self._json("setSecret", "PUT", f"/v1/secrets/{_ref(name)}", s.secret_meta, timeout, json_body=body))

    def remove_secret(self, name: str, *, timeout: float | None = None) -> None:
        self._empty("removeSecret", "DELETE", f"/v1/secrets/{_ref(name)}", timeout)

    # --- images -----------------------------------------------------------------------------
    def list_images(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listImages", "GET", "/v1/images", s.image_list, timeout)["images"])

    def build_image(self, ref: str, *, force: bool | None = None, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"ref": ref} if force is None else {"ref": ref, "force": force}
        line = s.progress_line("image", s.image_info)
        return dict(self._t.progress("buildImage", "POST", "/v1/images/build", line, "image", timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body=body, on_progress=on_progress))


    def import_image(self, path: str, name: str, *, timeout: float | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Imports a host directory or tarball (read with the caller's own permissions) as image ``name``."""
        line = s.progress_line("image", s.image_info)
        return dict(self._t.progress("importImage", "POST", "/v1/images/import", line, "image", timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body={"path": path, "name": name}, on_progress=on_progress))

    def remove_image(self, ref: str, *, timeout: float | None = None) -> None:
        self._empty("removeImage", "DELETE", with_query("/v1/images", {"ref": ref}), timeout)

    # --- warm pools -------------------------------------------------------------------------
    def set_warm_pool(self, sandbox: Mapping[str, Any], size: int, *, timeout: float | None = None) -> dict[str, Any]:
        """Keeps ``size`` sandboxes of the create request ``sandbox`` started (0 removes the pool; docs/POOLS.md)."""
        line = s.progress_line("pool", s.warm_pool_info)
        return dict(self._t.progress("setWarmPool", "PUT", "/v1/pools", line, "pool", timeout=self._timeout(timeout, DEFAULT_LONG_TIMEOUT), json_body={"sandbox": dict(sandbox), "size": size}))

    def list_warm_pools(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return list(self._json("listWarmPools", "GET", "/v1/pools", s.warm_pool_list, timeout)["pools"])


def _ref(value: str) -> str:
    from urllib.parse import quote

    if not isinstance(value, str) or not value or len(value) > 256:
        raise InvalidArgumentError(f'Invalid reference "{str(value)[:64]}"')
    return quote(value, safe="")


def encode_stdin(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
