"""Hand-written validators for the daemon's answers.

Each validator takes a decoded JSON value and the path it sits at, and returns the value or raises
:class:`Invalid`. Objects drop fields they do not know (a newer daemon may add some, see
docs/PROTOCOL.md "API versioning") and check every field they do know: presence, type, bounds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
Validator = Callable[[Any, str], T]


class Invalid(Exception):
    """A value that breaks its schema: ``where`` is its path, ``what`` what was expected."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f'at "{where[:128]}": {what}')
        self.where = where
        self.what = what


def string(max_len: int, *, pattern: str | None = None, min_len: int = 0) -> Validator[str]:
    rx = re.compile(pattern) if pattern is not None else None

    def check(v: Any, where: str) -> str:
        if not isinstance(v, str):
            raise Invalid(where, "expected a string")
        if len(v) > max_len or len(v) < min_len:
            raise Invalid(where, f"expected {min_len}..{max_len} characters")
        if rx is not None and rx.fullmatch(v) is None:
            raise Invalid(where, "does not match its pattern")
        return v

    return check


def integer(minimum: int | None = None, maximum: int | None = None) -> Validator[int]:
    def check(v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
                v = int(v)
            else:
                raise Invalid(where, "expected an integer")
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise Invalid(where, f"expected an integer in {minimum}..{maximum}")
        return int(v)

    return check


def number(minimum: float | None = None, maximum: float | None = None) -> Validator[float]:
    def check(v: Any, where: str) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Invalid(where, "expected a number")
        if v != v or (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise Invalid(where, f"expected a number in {minimum}..{maximum}")
        return float(v)

    return check


def boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise Invalid(where, "expected a boolean")
    return v


def one_of(*values: str) -> Validator[str]:
    def check(v: Any, where: str) -> str:
        if not isinstance(v, str) or v not in values:
            raise Invalid(where, f"expected one of {', '.join(values)}")
        return v

    return check


def nullable(inner: Validator[T]) -> Validator[T | None]:
    def check(v: Any, where: str) -> T | None:
        return None if v is None else inner(v, where)

    return check


def array(inner: Validator[T], max_items: int, *, min_items: int = 0) -> Validator[list[T]]:
    def check(v: Any, where: str) -> list[T]:
        if not isinstance(v, list):
            raise Invalid(where, "expected an array")
        if len(v) > max_items or len(v) < min_items:
            raise Invalid(where, f"expected {min_items}..{max_items} items")
        return [inner(item, f"{where}.{i}") for i, item in enumerate(v)]

    return check


def record(key: Validator[str], value: Validator[T], max_items: int = 100_000) -> Validator[dict[str, T]]:
    def check(v: Any, where: str) -> dict[str, T]:
        if not isinstance(v, dict):
            raise Invalid(where, "expected an object")
        if len(v) > max_items:
            raise Invalid(where, f"expected at most {max_items} entries")
        return {key(k, f"{where}.{k[:64]}"): value(item, f"{where}.{k[:64]}") for k, item in v.items()}

    return check


def obj(required: Mapping[str, Validator[Any]], optional: Mapping[str, Validator[Any]] | None = None) -> Validator[dict[str, Any]]:
    """An object: every required field present and valid, optional ones valid when present, others dropped."""
    opt = optional or {}

    def check(v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise Invalid(where, "expected an object")
        out: dict[str, Any] = {}
        for name, inner in required.items():
            if name not in v:
                raise Invalid(f"{where}.{name}".lstrip("."), "required")
            out[name] = inner(v[name], f"{where}.{name}".lstrip("."))
        for name, inner in opt.items():
            if name in v:
                out[name] = inner(v[name], f"{where}.{name}".lstrip("."))
        return out

    return check


def tagged(tag: str, variants: Mapping[str, Validator[dict[str, Any]]]) -> Validator[dict[str, Any]]:
    """A union told apart by the string field ``tag``."""

    def check(v: Any, where: str) -> dict[str, Any]:
        if not isinstance(v, dict) or not isinstance(v.get(tag), str) or v[tag] not in variants:
            raise Invalid(f"{where}.{tag}".lstrip("."), f"expected one of {', '.join(variants)}")
        out = variants[v[tag]](v, where)
        out[tag] = v[tag]
        return out

    return check


def any_of(*options: Validator[Any]) -> Validator[Any]:
    def check(v: Any, where: str) -> Any:
        last: Invalid | None = None
        for option in options:
            try:
                return option(v, where)
            except Invalid as e:
                last = e
        raise last or Invalid(where, "no option matched")

    return check
