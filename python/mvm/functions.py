"""Functions: ``@mvm.function(image=..., timeout_seconds=...)`` runs a Python function in a sandbox.

``add.remote(2, 3)`` starts a sandbox, runs one call there through the call wrapper
(docs/FUNCTIONS.md, the same contract as the TypeScript functions) and returns the result;
``add.map(...)`` runs many calls; ``with add.session() as s: s.call(...)`` runs several calls in
one sandbox. The function's source and the pure-Python modules named in ``dependencies`` are
shipped with every call; anything that cannot be shipped is refused when the function is defined.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import hmac
import importlib.util
import inspect
import json
import os
import re
import secrets
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar

from . import _fn_wrapper as codec
from .client import DaemonClient, default_socket_path
from .errors import FunctionError, InvalidArgumentError, NotFoundError, PolicyDeniedError, TransportError
from .policy import NetworkPolicy, SecretRef
from .sandbox import Sandbox, create_request

__all__ = ["Function", "FunctionDefinitionError", "FunctionSession", "function", "looks_secret_name"]

P = ParamSpec("P")
R = TypeVar("R")

_WRAPPER_SOURCE = Path(codec.__file__).read_text(encoding="utf-8")
_COMMAND_GRACE_SECONDS = 5
#: Most sandboxes one warm pool keeps (packages/protocol's MAX_WARM_POOL_SIZE).
MAX_WARM = 16
_DEFAULT_LIMITS = {
    "maxInputBytes": 16 << 20, "maxOutputBytes": 16 << 20, "maxDepth": 64,
    "invokeTimeoutMs": 60_000, "sessionStartTimeoutMs": 60_000, "sessionStopTimeoutMs": 30_000,
}
_SECRET_WORDS = {"token", "tokens", "password", "passwords", "passwd", "secret", "secrets", "apikey", "credential", "credentials", "bearer"}
_SECRET_PAIRS = {"api key", "private key", "auth token"}
_REFERENCE_WORDS = {
    "file", "files", "path", "dir", "stdin", "fd", "env", "var", "prompt", "helper", "cmd", "command", "id", "name", "type",
    "url", "uri", "endpoint", "ttl", "expiry", "expires", "length", "store", "manager", "max", "min", "limit", "count", "num", "size",
}


class FunctionDefinitionError(InvalidArgumentError):
    """A function that cannot be shipped: its source is unavailable, it closes over host state,
    or it imports something that is neither the standard library nor a listed pure-Python dependency."""


def looks_secret_name(name: str) -> bool:
    """The same rule as packages/protocol's ``looksSecretName``: a word such as token, password,
    secret, api_key, credential, bearer, private_key, auth_token, unless a word says it is a reference."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", spaced)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    if (words and words[0] == "no") or any(w in _REFERENCE_WORDS for w in words):
        return False
    return any(w in _SECRET_WORDS or f"{w} {words[i + 1] if i + 1 < len(words) else ''}" in _SECRET_PAIRS for i, w in enumerate(words))


def _strict_secrets(explicit: bool) -> bool:
    return explicit or os.environ.get("MVM_STRICT_SECRETS") in ("1", "true")


def _secret_names(names: Iterable[str], what: str, strict: bool) -> None:
    flagged = [n for n in names if looks_secret_name(n)]
    if not flagged:
        return
    text = f'{what} {", ".join(repr(n) for n in flagged)} look like secrets: pass secrets as SecretRefs in the sandbox\'s secrets, not as arguments'
    if strict:
        raise PolicyDeniedError(text, hint="MVM_STRICT_SECRETS is on")
    warnings.warn(text, stacklevel=4)


# --- shipping the code ----------------------------------------------------------------------------
def _module_files(name: str) -> dict[str, str]:
    """The sources of a pure-Python module or package, by path relative to its import root."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.origin in ("built-in", "frozen"):
        raise FunctionDefinitionError(f'Cannot ship dependency "{name}": it is not a module found on disk')
    origin = Path(spec.origin)
    if origin.suffix != ".py":
        raise FunctionDefinitionError(f'Cannot ship dependency "{name}": "{origin.name}" is not pure Python')
    if spec.submodule_search_locations:
        root = origin.parent
        out: dict[str, str] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                if path.suffix in (".so", ".pyd", ".dylib"):
                    raise FunctionDefinitionError(f'Cannot ship dependency "{name}": "{path.name}" is a native extension')
                if path.suffix == ".py":
                    out[str(Path(*name.split(".")) / path.relative_to(root))] = path.read_text(encoding="utf-8")
        return out
    return {str(Path(*name.split(".")).with_suffix(".py")): origin.read_text(encoding="utf-8")}


class _Names(ast.NodeVisitor):
    """Names a function loads, binds and imports."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.bound: set[str] = set()
        self.imports: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        (self.loaded if isinstance(node.ctx, ast.Load) else self.bound).add(node.id)

    def visit_arg(self, node: ast.arg) -> None:
        self.bound.add(node.arg)

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.imports.add(a.name)
            self.bound.add((a.asname or a.name).split(".")[0])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            raise FunctionDefinitionError("Cannot ship a relative import: list the module in dependencies and import it by name")
        self.imports.add(node.module)
        for a in node.names:
            self.bound.add(a.asname or a.name)

    def _def(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.bound.add(node.name)
        self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _def

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.bound.add(node.name)
        self.generic_visit(node)


def _bundle(fn: Callable[..., Any], dependencies: Sequence[str]) -> tuple[str, bytes]:
    """(export name, code): the function's source, its decorators removed, after a loader of the dependencies."""
    if inspect.iscoroutinefunction(fn) or not inspect.isfunction(fn):
        raise FunctionDefinitionError(f"Cannot ship {fn!r}: only plain (non-async) Python functions are supported")
    if fn.__closure__:
        free = ", ".join(fn.__code__.co_freevars)
        raise FunctionDefinitionError(f'Cannot ship function "{fn.__name__}": it closes over {free}')
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise FunctionDefinitionError(f'Cannot ship function "{fn.__name__}": its source cannot be read') from e
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef) or node.name != fn.__name__:
        raise FunctionDefinitionError(f'Cannot ship function "{fn.__name__}": define it with def at the top of its block')
    node.decorator_list = []
    names = _Names()
    for child in ast.iter_child_nodes(node):
        names.visit(child)
    names.bound.add(node.name)
    deps = set(dependencies)
    for mod in names.imports:
        top = mod.split(".")[0]
        if top not in sys.stdlib_module_names and top not in deps and mod not in deps:
            raise FunctionDefinitionError(f'Cannot ship function "{fn.__name__}": it imports "{mod}", which is neither the standard library nor in dependencies')
    outside = sorted(n for n in names.loaded - names.bound if not hasattr(builtins, n))
    if outside:
        raise FunctionDefinitionError(
            f'Cannot ship function "{fn.__name__}": it uses {", ".join(outside)} from outside itself',
            hint="import modules inside the function, pass values as arguments",
        )
    files: dict[str, str] = {}
    for dep in dependencies:
        files.update(_module_files(dep))
    loader = ""
    if files:
        loader = (
            "def __mvm_ship(files):\n"
            "    import os, sys, tempfile\n"
            "    root = tempfile.mkdtemp(prefix='mvm-fn-deps-')\n"
            "    for rel, text in files.items():\n"
            "        path = os.path.join(root, rel)\n"
            "        os.makedirs(os.path.dirname(path), exist_ok=True)\n"
            "        with open(path, 'w', encoding='utf-8') as f:\n"
            "            f.write(text)\n"
            "    sys.path.insert(0, root)\n"
            f"__mvm_ship({json.dumps(files)})\n"
            "del __mvm_ship\n"
        )
    code = (loader + ast.unparse(node) + "\n").encode("utf-8")
    return node.name, code


# --- calls ----------------------------------------------------------------------------------------
def _read_result(fid: str, key: str, data: bytes) -> tuple[dict[str, Any], bytes]:
    def bad(why: str) -> TransportError:
        return TransportError(f"Bad function result file: {why}")

    nl1 = data.find(b"\n")
    if nl1 < 0 or data[:nl1] != codec.MAGIC:
        raise bad("no magic line")
    nl2 = data.find(b"\n", nl1 + 1)
    if nl2 != nl1 + 65:
        raise bad("no seal line")
    seal = data[nl1 + 1 : nl2]
    nl3 = data.find(b"\n", nl2 + 1)
    if nl3 < 0 or nl3 - nl2 - 1 > codec.MAX_RESULT_HEADER:
        raise bad("no header line")
    line, body = data[nl2 + 1 : nl3], data[nl3 + 1 :]
    expected = hmac.new(bytes.fromhex(key), line + b"\n" + body, hashlib.sha256).hexdigest().encode()
    if re.fullmatch(rb"[0-9a-f]{64}", seal) is None or not hmac.compare_digest(expected, seal):
        raise bad("the seal does not match")
    try:
        h = json.loads(line.decode("utf-8"), object_pairs_hook=codec._pairs, parse_constant=codec._no_constant)
    except (ValueError, codec.CodecError):
        raise bad("the header is not JSON") from None
    if not isinstance(h, dict) or h.get("v") != 1 or h.get("id") != fid:
        raise bad("the header names another function or version")
    if h.get("status") == "ok":
        if set(h) != {"v", "status", "id", "format", "resultBytes"} or not isinstance(h["resultBytes"], int) or h["resultBytes"] != len(body):
            raise bad("ok header")
    elif h.get("status") == "error":
        err = h.get("error")
        if not set(h) <= {"v", "status", "id", "error", "stack"} or not isinstance(err, dict) or set(err) != {"kind", "errorId", "message"} or body:
            raise bad("error header")
        if not (isinstance(err["kind"], str) and re.fullmatch(r"fe_[0-9a-f]{24}", str(err["errorId"])) and isinstance(err["message"], str) and len(err["message"]) <= 200):
            raise bad("error body")
        if "stack" in h and not (isinstance(h["stack"], str) and len(h["stack"]) <= codec.MAX_STACK):
            raise bad("stack")
    else:
        raise bad("status")
    return h, body


def _log_failure(fid: str, sandbox_id: str, h: dict[str, Any]) -> None:
    """Appends the failure, stack included, to the operator log ($MVM_FN_LOG_DIR/<id>.jsonl, 0600)."""
    base = os.environ.get("MVM_FN_LOG_DIR") or os.path.join(os.path.expanduser("~"), ".local", "state", "mvm", "fn-logs")
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        entry = {"functionId": fid, "sandboxId": sandbox_id, **h["error"], **({"stack": h["stack"]} if "stack" in h else {})}
        fd = os.open(os.path.join(base, f"{fid}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError:
        pass


class Function(Generic[P, R]):
    """A function that runs in sandboxes. Calling it directly runs it here, unchanged."""

    def __init__(self, fn: Callable[P, R], *, id: str | None, image: str, timeout_seconds: float, format: str, mode: str,
                 network: NetworkPolicy | None, secrets: Mapping[str, SecretRef] | None, dependencies: Sequence[str],
                 strict_secrets: bool, memory_mib: int | None, socket_path: str | None, warm: int = 0) -> None:
        self.fn = fn
        self.id = id or fn.__name__.replace("_", "-").lower()
        if codec.FUNCTION_ID.fullmatch(self.id) is None:
            raise FunctionDefinitionError(f'Invalid function id "{self.id[:64]}": ^[a-z][a-z0-9-]{{0,62}}$')
        if format not in ("json", "msgpack"):
            raise FunctionDefinitionError(f'Invalid format "{format}": json or msgpack')
        if format == "msgpack" and importlib.util.find_spec("msgpack") is None:
            raise FunctionDefinitionError('Format "msgpack" needs the msgpack package (Debian: python3-msgpack)')
        mode = os.environ.get("MVM_FN_MODE", mode)
        if mode not in ("production", "development"):
            raise FunctionDefinitionError(f'Invalid mode "{mode}"')
        self.format, self.mode = format, mode
        if isinstance(warm, bool) or not isinstance(warm, int) or not 0 <= warm <= MAX_WARM:
            raise FunctionDefinitionError(f'Invalid warm {warm!r} of function "{self.id}": expected an integer from 0 to {MAX_WARM}')
        if warm and secrets:
            raise FunctionDefinitionError(f'Function "{self.id}" cannot be warm: a sandbox with secrets cannot be pooled (docs/POOLS.md)',
                                          hint="drop warm=, or the secrets")
        self.warm = warm
        self._pools: dict[str, dict[str, Any]] = {}
        self._pool_lock = threading.Lock()
        self.strict = _strict_secrets(strict_secrets)
        _secret_names(inspect.signature(fn).parameters, f'Function "{self.id}" has parameters', self.strict)
        self.export, self.code = _bundle(fn, dependencies)
        self.sha256 = hashlib.sha256(self.code).hexdigest()
        self.limits = dict(_DEFAULT_LIMITS, invokeTimeoutMs=max(1, round(timeout_seconds * 1000)))
        self.image, self.network, self.secrets, self.memory_mib, self.socket_path = image, network, secrets, memory_mib, socket_path
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def create_request(self) -> dict[str, Any]:
        """The daemon's create request for this function's sandboxes (its warm pool keeps the same)."""
        spec = {"id": self.id, "format": self.format, "limits": {k: self.limits[k] for k in ("maxInputBytes", "maxOutputBytes", "maxDepth", "invokeTimeoutMs")}}
        options: dict[str, Any] = {"image": self.image, "ttl_seconds": max(60, int(self.limits["invokeTimeoutMs"] / 1000) + 60), "labels": {"fn.id": self.id}}
        if self.network is not None:
            options["network"] = self.network
        if self.secrets is not None:
            options["secrets"] = self.secrets
        if self.memory_mib is not None:
            options["memory_mib"] = self.memory_mib
        return create_request(**options, _function=spec)

    def _create(self) -> Sandbox:
        """A sandbox for one call or session: with ``warm``, the pool is set first and the create
        claims a ready sandbox of it (the daemon matches the workload), or starts one when none is ready."""
        if self.warm:
            self._set_pool()
        request = self.create_request()
        client = DaemonClient(self.socket_path)
        try:
            return Sandbox(client, client.create_sandbox(request, timeout=self.limits["sessionStartTimeoutMs"] / 1000))
        except BaseException:
            client.close()
            raise

    def _set_pool(self) -> dict[str, Any]:
        """Sets this function's pool on its daemon to ``warm`` sandboxes, once per daemon socket."""
        socket = self.socket_path or default_socket_path()
        with self._pool_lock:
            info = self._pools.get(socket)
            if info is None:
                with DaemonClient(self.socket_path) as client:
                    info = client.set_warm_pool(self.create_request(), self.warm)
                self._pools[socket] = info
            return info

    def warm_up(self, *, timeout_seconds: float | None = None) -> dict[str, Any]:
        """Sets this function's warm pool on its daemon (once per daemon) and returns the pool's
        state once ``warm`` sandboxes are ready, when the pool reports a failed start
        (``lastError``), or when ``timeout_seconds`` (default: the session start timeout, 60 s) passes.

        Example::

            add.warm_up()   # the next add.remote() claims a started sandbox
        """
        if not self.warm:
            raise InvalidArgumentError(f'Function "{self.id}" has no warm pool: define it with warm=N')
        pool_id = self._set_pool()["id"]
        deadline = time.monotonic() + (self.limits["sessionStartTimeoutMs"] / 1000 if timeout_seconds is None else timeout_seconds)
        with DaemonClient(self.socket_path) as client:
            while True:
                info = next((p for p in client.list_warm_pools() if p["id"] == pool_id), None)
                if info is None:
                    raise InvalidArgumentError(f'The warm pool of function "{self.id}" was removed')
                if info["ready"] >= info["size"] or "lastError" in info or time.monotonic() >= deadline:
                    return info
                time.sleep(0.05)

    def cool_down(self) -> None:
        """Removes this function's warm pool from its daemon (its ready sandboxes are stopped)."""
        socket = self.socket_path or default_socket_path()
        with self._pool_lock:
            self._pools.pop(socket, None)
            with DaemonClient(self.socket_path) as client:
                client.set_warm_pool(self.create_request(), 0)

    def call_in(self, sb: Sandbox, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """One call in a running sandbox (the host's half of the wrapper contract)."""
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, dict):
                _secret_names([k for k in v if isinstance(k, str)], f'An argument of "{self.id}" has keys', self.strict)
        _secret_names(kwargs, f'A call of "{self.id}" has keyword arguments', self.strict)
        try:
            payload = codec.encode_value([list(args), dict(kwargs)], self.format, self.limits["maxInputBytes"], self.limits["maxDepth"])
        except codec.CodecError as e:
            raise InvalidArgumentError(f'Cannot send the arguments of "{self.id}": {e}') from None
        key = secrets.token_hex(32)
        result_path = f"/tmp/.mvm-fn-{secrets.token_hex(12)}.result"
        header = {"v": 1, "id": self.id, "format": self.format, "mode": self.mode, "key": key, "resultPath": result_path,
                  "codeBytes": len(self.code), "codeSha256": self.sha256, "exportName": self.export, "limits": self.limits}
        env = {name: str(-(-self.limits[k] // f)) for k, (name, f) in codec.LIMIT_ENV.items()}
        run = sb.commands.run(["python3", "-I", "-S", "-c", _WRAPPER_SOURCE, "wrapper"], stdin=json.dumps(header).encode() + b"\n" + self.code + payload,
                              cwd="/work", env=env, timeout_seconds=self.limits["invokeTimeoutMs"] / 1000 + _COMMAND_GRACE_SECONDS, check=False,
                              max_output_bytes=self.limits["maxOutputBytes"])
        self.last_output = (run.stdout, run.stderr)
        try:
            data = sb.files.read(result_path, max_bytes=self.limits["maxOutputBytes"] + codec.MAX_RESULT_HEADER + 256)
        except NotFoundError:
            how = "it timed out" if run.timed_out else f"signal {run.signal}" if run.signal else f"exit code {run.exit_code}"
            raise FunctionError(f'Function "{self.id}" left no result ({how})', kind="timeout" if run.timed_out else "crashed") from None
        sb.files.remove(result_path)
        h, body = _read_result(self.id, key, data)
        if h["status"] == "ok":
            if h["format"] != self.format:
                raise TransportError(f'Function "{self.id}" answered in {h["format"]}, not {self.format}')
            try:
                return codec.decode_value(body, self.format, self.limits["maxOutputBytes"], self.limits["maxDepth"])
            except codec.CodecError as e:
                raise TransportError(f'The result of function "{self.id}" was refused: {e}') from None
        err = h["error"]
        _log_failure(self.id, sb.id, h)
        dev = self.mode == "development" and "stack" in h
        failure = FunctionError(f'Function "{self.id}" failed ({err["kind"]}): {err["message"]}', kind=err["kind"], error_id=err["errorId"],
                                hint=None if dev else f"the operator log ($MVM_FN_LOG_DIR/{self.id}.jsonl) has the stack of {err['errorId']}")
        failure.function_stack = h.get("stack") if dev else None
        raise failure

    def remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Runs one call in a sandbox of its own, destroyed afterwards."""
        with self._create() as sb:
            result: R = self.call_in(sb, args, kwargs)
            return result

    def map(self, inputs: Iterable[Sequence[Any]], *, concurrency: int = 4) -> Iterator[R]:
        """One call per argument tuple, each in its own sandbox, ``concurrency`` at a time; results in input order."""
        if not 1 <= concurrency <= 64:
            raise InvalidArgumentError(f'Invalid concurrency "{concurrency}": 1..64')
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(self._remote_tuple, tuple(a)) for a in inputs]
            for f in futures:
                yield f.result()

    def _remote_tuple(self, args: tuple[Any, ...]) -> R:
        return self.remote(*args)

    def session(self) -> FunctionSession[P, R]:
        """One sandbox for several calls: ``with add.session() as s: s.call(1, 2)``."""
        return FunctionSession(self)


class FunctionSession(Generic[P, R]):
    def __init__(self, function: Function[P, R]) -> None:
        self.function = function
        self.sandbox: Sandbox | None = None

    def __enter__(self) -> FunctionSession[P, R]:
        self.sandbox = self.function._create()
        return self

    def call(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.sandbox is None:
            raise InvalidArgumentError("The session is not open: use it in a with block")
        result: R = self.function.call_in(self.sandbox, args, kwargs)
        return result

    def __exit__(self, *exc: object) -> None:
        if self.sandbox is not None:
            self.sandbox.__exit__(None, None, None)
            self.sandbox = None


def function(
    *,
    image: str = "debian:bookworm+python3",
    timeout_seconds: float = 60,
    id: str | None = None,
    format: str = "json",
    mode: str = "production",
    network: NetworkPolicy | None = None,
    secrets: Mapping[str, SecretRef] | None = None,
    dependencies: Sequence[str] = (),
    strict_secrets: bool = False,
    memory_mib: int | None = None,
    socket_path: str | None = None,
    warm: int = 0,
) -> Callable[[Callable[P, R]], Function[P, R]]:
    """Marks a function to run in sandboxes.

    Example::

        @mvm.function(image="debian:bookworm+python3", timeout_seconds=30)
        def add(a: int, b: int) -> int:
            return a + b

        add.remote(2, 3)   # 5, computed in a sandbox

    ``warm=N`` (0 to 16) keeps N sandboxes of the function's workload started in the daemon's
    warm pools (docs/POOLS.md): the first call (or ``add.warm_up()``) sets the pool, and each
    call's create claims a ready sandbox, which serves that call or session only and is destroyed
    after it. ``add.cool_down()`` removes the pool. A warm function cannot have ``secrets``.
    """

    def wrap(fn: Callable[P, R]) -> Function[P, R]:
        return Function(fn, id=id, image=image, timeout_seconds=timeout_seconds, format=format, mode=mode, network=network,
                        secrets=secrets, dependencies=dependencies, strict_secrets=strict_secrets, memory_mib=memory_mib, socket_path=socket_path, warm=warm)

    return wrap
