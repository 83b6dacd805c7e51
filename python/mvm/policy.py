"""Network policies and secret references: immutable values that serialise to the daemon's JSON."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .errors import InvalidArgumentError

__all__ = ["NetworkPolicy", "SecretRef"]

_SECRET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _host(host: str) -> str:
    # The daemon checks the pattern in full (one rule, in packages/protocol); this catches the type.
    if not isinstance(host, str) or not 1 <= len(host) <= 253:
        raise InvalidArgumentError(f'Invalid host pattern "{str(host)[:253]}": 1..253 characters')
    return host


def _port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f'Invalid port "{port}": 1..65535')
    return port


class NetworkPolicy:
    """An egress policy: everything is denied except what a rule allows. Every ``allow_*`` returns a new policy.

    Example::

        policy = NetworkPolicy.deny_by_default().allow_https("api.openai.com").allow_tcp("db.internal", 5432)
    """

    __slots__ = ("_rules",)

    def __init__(self, rules: tuple[Mapping[str, Any], ...] = ()) -> None:
        self._rules = tuple(dict(r) for r in rules)

    @staticmethod
    def deny_by_default() -> NetworkPolicy:
        """A policy with no rules: every connection is denied."""
        return NetworkPolicy()

    def allow_https(self, host: str) -> NetworkPolicy:
        """Allow HTTPS (TLS on port 443) to ``host`` (``*.example.com`` matches subdomains)."""
        return NetworkPolicy((*self._rules, {"kind": "https", "host": _host(host)}))

    def allow_http(self, host: str) -> NetworkPolicy:
        """Allow plain HTTP (port 80) to ``host``."""
        return NetworkPolicy((*self._rules, {"kind": "http", "host": _host(host)}))

    def allow_tcp(self, host: str, port: int) -> NetworkPolicy:
        """Allow TCP to ``host`` on ``port``."""
        return NetworkPolicy((*self._rules, {"kind": "tcp", "host": _host(host), "port": _port(port)}))

    def allow_cidr(self, cidr: str, ports: Iterable[int] | Literal["any"] = "any") -> NetworkPolicy:
        """Allow TCP to addresses in ``cidr`` on ``ports`` (or any port)."""
        if not isinstance(cidr, str) or len(cidr) > 64:
            raise InvalidArgumentError(f'Invalid CIDR "{str(cidr)[:64]}"')
        p: list[int] | str = "any" if ports == "any" else [_port(x) for x in ports]
        return NetworkPolicy((*self._rules, {"kind": "cidr", "cidr": cidr, "ports": p}))

    @property
    def rules(self) -> list[dict[str, Any]]:
        """The rules, in order (a copy)."""
        return [dict(r) for r in self._rules]

    def to_json(self) -> dict[str, Any]:
        """The wire form ``{"version": 1, "default": "deny", "rules": [...]}``."""
        return {"version": 1, "default": "deny", "rules": self.rules}

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> NetworkPolicy:
        """A policy from its wire form; the daemon checks each rule in full."""
        if not isinstance(value, Mapping) or value.get("version") != 1 or value.get("default") != "deny" or not isinstance(value.get("rules"), list):
            raise InvalidArgumentError('Invalid network policy: expected {"version": 1, "default": "deny", "rules": [...]}')
        return NetworkPolicy(tuple(value["rules"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetworkPolicy) and self._rules == other._rules

    def __hash__(self) -> int:
        return hash(repr(self._rules))

    def __repr__(self) -> str:
        return f"NetworkPolicy(rules={self.rules!r})"


class SecretRef:
    """A reference to a secret held by the host; the value never enters this process or the sandbox.

    ``posture="mediated"`` (the default) gives the sandbox a placeholder that the egress gateway
    swaps for the value on requests to ``hosts``; ``"env"`` puts the value in the environment.

    Example::

        SecretRef("openai-api-key")                       # from the store: mvmctl secret set openai-api-key
        SecretRef.from_env("GITHUB_TOKEN", hosts=["api.github.com"])
    """

    __slots__ = ("source", "name", "posture", "hosts")

    def __init__(
        self,
        name: str,
        *,
        hosts: Iterable[str] | None = None,
        posture: Literal["mediated", "env"] = "mediated",
        source: Literal["store", "env", "file"] = "store",
    ) -> None:
        if source not in ("store", "env", "file"):
            raise InvalidArgumentError(f'Invalid secret source "{source}"')
        if posture not in ("mediated", "env"):
            raise InvalidArgumentError(f'Invalid secret posture "{posture}"')
        if not isinstance(name, str) or not name or len(name) > 4096:
            raise InvalidArgumentError("Invalid secret name: expected 1..4096 characters")
        if source == "store" and _SECRET_NAME.fullmatch(name) is None:
            raise InvalidArgumentError(f'Invalid secret name "{name[:128]}": 1 to 128 of [a-z0-9._-], starting with [a-z0-9]')
        if source == "env" and _ENV_NAME.fullmatch(name) is None:
            raise InvalidArgumentError(f'Invalid environment variable name "{name[:128]}"')
        if source == "file" and (len(name) < 2 or not name.startswith("/") or "\0" in name):
            raise InvalidArgumentError(f'Invalid secret file "{name[:128]}": must be an absolute path of 2 to 4096 characters, without NUL')
        self.source = source
        self.name = name
        self.posture = posture
        self.hosts = None if hosts is None else tuple(_host(h) for h in hosts)

    @staticmethod
    def from_env(variable: str, *, hosts: Iterable[str] | None = None, posture: Literal["mediated", "env"] = "mediated") -> SecretRef:
        """A secret read from the daemon's environment variable ``variable``."""
        return SecretRef(variable, hosts=hosts, posture=posture, source="env")

    @staticmethod
    def from_file(path: str, *, hosts: Iterable[str] | None = None, posture: Literal["mediated", "env"] = "mediated") -> SecretRef:
        """A secret read from the host file at absolute ``path``."""
        return SecretRef(path, hosts=hosts, posture=posture, source="file")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "secret-ref", "source": self.source, "name": self.name, "posture": self.posture}
        if self.hosts is not None:
            out["hosts"] = list(self.hosts)
        return out

    def __repr__(self) -> str:
        return f"SecretRef({self.name!r}, source={self.source!r}, posture={self.posture!r}, hosts={self.hosts!r})"
