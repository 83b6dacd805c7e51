"""Static mode: ``python3 -m mvm plan app.py`` plans a script's sandboxes without running it.

The script is parsed with :mod:`ast` and never imported: ``Sandbox.create(...)`` calls (also as
``with ... as sb``, whose ``sb.commands.run|start`` calls are listed for review) and
``@mvm.function(...)`` decorators with literal options become create requests, which the daemon
signs. The output is the same plan bundle as ``mvmctl plan`` writes (``mvmctl run --plan FILE``
reads it).
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .client import DaemonClient
from .errors import InvalidArgumentError
from .functions import _DEFAULT_LIMITS
from .policy import NetworkPolicy, SecretRef
from .sandbox import create_request

__all__ = ["analyze", "analyze_main", "plan_file"]

MAX_SOURCE_BYTES = 8 * 1024 * 1024
_CREATE_OPTIONS = {
    "image", "backend", "ttl_seconds", "memory_mib", "pids", "cpus", "work_mib", "env", "labels", "network", "secrets",
    "ports", "intent", "command", "on_ttl", "minimum_tier",
}


class NotLiteral(Exception):
    pass


@dataclass
class Workload:
    line: int
    column: int
    options: dict[str, Any]
    commands: list[list[str]] = field(default_factory=list)
    complete: bool = True
    function: dict[str, Any] | None = None


def _literal(node: ast.expr) -> Any:
    """A literal value, or a NetworkPolicy / SecretRef built from literals."""
    if isinstance(node, ast.Call):
        chain: list[ast.Call] = []
        cur: ast.expr = node
        while isinstance(cur, ast.Call) and isinstance(cur.func, ast.Attribute):
            chain.append(cur)
            cur = cur.func.value
        name = _dotted(cur) if not isinstance(cur, ast.Call) else _dotted(cur.func)
        if isinstance(cur, ast.Call) and name.split(".")[-1] == "SecretRef":
            args = [_literal(a) for a in cur.args]
            kwargs = {k.arg: _literal(k.value) for k in cur.keywords if k.arg}
            return SecretRef(*args, **kwargs)
        if chain and name.split(".")[-1] == "NetworkPolicy":
            policy: Any = NetworkPolicy
            for call in reversed(chain):
                assert isinstance(call.func, ast.Attribute)
                if call.func.attr not in ("deny_by_default", "allow_https", "allow_http", "allow_tcp", "allow_cidr"):
                    raise NotLiteral(call.func.attr)
                policy = getattr(policy, call.func.attr)(*[_literal(a) for a in call.args], **{k.arg: _literal(k.value) for k in call.keywords if k.arg})
            return policy
        if chain and name.split(".")[-1] == "SecretRef" and len(chain) == 1:
            call = chain[0]
            assert isinstance(call.func, ast.Attribute)
            if call.func.attr in ("from_env", "from_file"):
                return getattr(SecretRef, call.func.attr)(*[_literal(a) for a in call.args], **{k.arg: _literal(k.value) for k in call.keywords if k.arg})
        raise NotLiteral(name)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise NotLiteral("**")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise NotLiteral(ast.dump(node)[:64]) from None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_create(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and _dotted(node.func).split(".")[-2:] in (["Sandbox", "create"], ["AsyncSandbox", "create"])


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.workloads: list[Workload] = []
        self.diagnostics: list[dict[str, Any]] = []
        self._by_name: dict[str, Workload] = {}

    def _workload(self, call: ast.Call) -> Workload:
        w = Workload(call.lineno, call.col_offset + 1, {})
        for kw in call.keywords:
            if kw.arg is None or kw.arg not in _CREATE_OPTIONS:
                if kw.arg not in ("socket_path", "timeout", "on_progress"):
                    self.diagnostics.append({"line": kw.value.lineno, "column": kw.value.col_offset + 1, "message": f'Sandbox.create option "{kw.arg or "**"}" cannot be planned'})
                    w.complete = False
                continue
            try:
                w.options[kw.arg] = _literal(kw.value)
            except NotLiteral:
                self.diagnostics.append({"line": kw.value.lineno, "column": kw.value.col_offset + 1, "message": f'Sandbox.create option "{kw.arg}" is not a literal value'})
                w.complete = False
        if call.args:
            w.complete = False
            self.diagnostics.append({"line": call.lineno, "column": call.col_offset + 1, "message": "Sandbox.create takes keyword options only"})
        self.workloads.append(w)
        return w

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            expr = item.context_expr
            if isinstance(expr, ast.Await):
                expr = expr.value
            if _is_create(expr):
                assert isinstance(expr, ast.Call)
                w = self._workload(expr)
                if isinstance(item.optional_vars, ast.Name):
                    self._by_name[item.optional_vars.id] = w
            else:
                self.visit(item.context_expr)
        for stmt in node.body:
            self.visit(stmt)

    visit_AsyncWith = visit_With  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        value = node.value.value if isinstance(node.value, ast.Await) else node.value
        if _is_create(value) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assert isinstance(value, ast.Call)
            self._by_name[node.targets[0].id] = self._workload(value)
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        parts = name.split(".")
        if _is_create(node):
            self._workload(node)
            return
        if len(parts) == 3 and parts[1] == "commands" and parts[2] in ("run", "start") and parts[0] in self._by_name and node.args:
            try:
                value = _literal(node.args[0])
                cmd = ["/bin/sh", "-c", value] if isinstance(value, str) else [str(v) for v in value]
                self._by_name[parts[0]].commands.append(cmd)
            except NotLiteral:
                self.diagnostics.append({"line": node.lineno, "column": node.col_offset + 1, "message": "a command that is not a literal is not listed"})
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and _dotted(dec.func).split(".")[-1] == "function" and _dotted(dec.func) in ("mvm.function", "function"):
                opts: dict[str, Any] = {}
                w = Workload(dec.lineno, dec.col_offset + 1, {})
                for kw in dec.keywords:
                    try:
                        opts[kw.arg or "**"] = _literal(kw.value)
                    except NotLiteral:
                        w.complete = False
                        self.diagnostics.append({"line": kw.value.lineno, "column": kw.value.col_offset + 1, "message": f'function option "{kw.arg}" is not a literal value'})
                fid = str(opts.get("id") or node.name.replace("_", "-").lower())
                limits = dict(_DEFAULT_LIMITS, invokeTimeoutMs=max(1, round(float(opts.get("timeout_seconds", 60)) * 1000)))
                w.function = {"id": fid, "format": opts.get("format", "json"), "limits": {k: limits[k] for k in ("maxInputBytes", "maxOutputBytes", "maxDepth", "invokeTimeoutMs")}}
                w.options = {"image": opts.get("image", "debian:bookworm+python3"), "ttl_seconds": max(60, int(limits["invokeTimeoutMs"] / 1000) + 60),
                             "labels": {"fn.id": fid}}
                for key in ("network", "secrets", "memory_mib"):
                    if key in opts:
                        w.options[key] = opts[key]
                self.workloads.append(w)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]


def analyze(path: str) -> tuple[list[Workload], list[dict[str, Any]]]:
    """The workloads declared in a Python file, read with ast (the file is never imported)."""
    with open(path, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise InvalidArgumentError(f'"{path}" is larger than {MAX_SOURCE_BYTES} bytes')
    try:
        tree = ast.parse(data, filename=path)
    except (SyntaxError, ValueError) as e:
        raise InvalidArgumentError(f'Cannot parse "{path}": {e}') from None
    finder = _Finder()
    finder.visit(tree)
    return finder.workloads, finder.diagnostics


def canonical_json(value: Any) -> str:
    """Keys sorted, no whitespace (packages/protocol canonicalJson)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def plan_file(path: str, *, socket_path: str | None = None, valid_for_seconds: int | None = None) -> tuple[dict[str, Any], int]:
    """(bundle, skipped): the plan bundle of a script and how many declarations could not be planned."""
    workloads, diagnostics = analyze(path)
    ready = [w for w in workloads if w.complete]
    if not ready:
        raise InvalidArgumentError(f'No sandbox to plan in "{path}"', hint="It must call Sandbox.create(...) or use @mvm.function(...) with literal options")
    bundle: dict[str, Any] = {"version": 1, "source": os.path.abspath(path), "mode": "static", "workloads": [], "diagnostics": diagnostics}
    with DaemonClient(socket_path) as client:
        for w in ready:
            request = create_request(**w.options, acknowledge_container_tier=True, _function=w.function)
            plan = client.plan_sandbox(request, valid_for_seconds=valid_for_seconds)
            bundle["workloads"].append({"location": {"line": w.line, "column": w.column}, "commands": w.commands, "plan": plan})
    return bundle, len(workloads) - len(ready)


def main(argv: Sequence[str]) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python3 -m mvm plan", description="Plan a Python script's sandboxes without running it.")
    parser.add_argument("file")
    parser.add_argument("-o", "--out", help="write the plan bundle (canonical JSON, mode 0600) to OUT")
    parser.add_argument("--valid-for", type=int, dest="valid_for", help="seconds the plans may be admitted (default 3600)")
    parser.add_argument("--socket", help="the daemon's socket")
    args = parser.parse_args(argv)
    try:
        bundle, skipped = plan_file(args.file, socket_path=args.socket, valid_for_seconds=args.valid_for)
    except Exception as e:  # noqa: BLE001 - printed as the CLI prints errors
        from .errors import MvmError

        if not isinstance(e, (MvmError, OSError)):
            raise
        sys.stderr.write(f"error: {e}\n")
        hint = getattr(e, "hint", None)
        if hint:
            sys.stderr.write(f"hint: {hint}\n")
        return 2
    for d in bundle["diagnostics"]:
        sys.stderr.write(f"{args.file}:{d['line']}:{d['column']}: {d['message']}\n")
    text = canonical_json(bundle) + "\n"
    if args.out:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        sys.stderr.write(f"wrote {len(bundle['workloads'])} plan(s) to {args.out}\n")
    sys.stdout.write(text)
    return 1 if skipped else 0


def analyze_main(argv: Sequence[str]) -> int:
    """``python3 -m mvm analyze FILE``: the declarations of a script as JSON on stdout, for
    ``mvmctl plan FILE.py``, which plans them with its own engine. One object:
    ``{"workloads": [{"location", "complete", "commands", "request"?}], "diagnostics": [...]}``
    (``request``, the create request, only when ``complete``), or ``{"error": {"code", "message"}}``
    with exit code 2. Contacts no daemon; the script is never imported."""
    import sys

    if len(argv) != 1:
        sys.stderr.write("usage: python3 -m mvm analyze FILE\n")
        return 2
    path = argv[0]
    try:
        workloads, diagnostics = analyze(path)
        out: list[dict[str, Any]] = []
        for w in workloads:
            entry: dict[str, Any] = {"location": {"line": w.line, "column": w.column}, "complete": w.complete, "commands": w.commands}
            if w.complete:
                entry["request"] = create_request(**w.options, _function=w.function)
            out.append(entry)
    except (InvalidArgumentError, OSError, TypeError, ValueError) as e:
        code = "NOT_FOUND" if isinstance(e, FileNotFoundError) else "INVALID_ARGUMENT"
        message = f'Cannot read "{path}": {e.strerror}' if isinstance(e, OSError) and e.strerror else str(e)
        sys.stdout.write(json.dumps({"error": {"code": code, "message": message}}) + "\n")
        return 2
    sys.stdout.write(canonical_json({"workloads": out, "diagnostics": diagnostics}) + "\n")
    return 0
