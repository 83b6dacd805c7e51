"""The error classes of mvm, one per stable code, with the same names as the TypeScript SDK's.

A daemon error answer ``{"error": {"code", "message", "hint"?, "details"?}}`` becomes the class
of its code (:func:`from_wire`); an unknown code becomes :class:`InternalError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ERROR_CODES",
    "AbortedError",
    "AdmissionError",
    "AlreadyExistsError",
    "CleanupError",
    "CommandExitError",
    "FunctionError",
    "InternalError",
    "InvalidArgumentError",
    "MvmError",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyDeniedError",
    "SandboxCrashedError",
    "SandboxPausedError",
    "SnapshotMismatchError",
    "TimeoutError",
    "TransportError",
    "UnsupportedCapabilityError",
    "from_wire",
]


class MvmError(Exception):
    """Base class of every error mvm raises on purpose. ``code`` is stable: switch on it."""

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_wire(self) -> dict[str, Any]:
        """The wire form ``{"code", "message", "hint"?}``."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint is not None:
            out["hint"] = self.hint
        return out


class PolicyDeniedError(MvmError):
    code = "POLICY_DENIED"


class AdmissionError(MvmError):
    code = "ADMISSION_FAILED"


class TimeoutError(MvmError):  # noqa: A001 - the same name as the TypeScript SDK's class
    code = "TIMEOUT"


class TransportError(MvmError):
    code = "TRANSPORT"


class CleanupError(MvmError):
    code = "CLEANUP_FAILED"


class SnapshotMismatchError(MvmError):
    code = "SNAPSHOT_MISMATCH"


class SandboxCrashedError(MvmError):
    code = "SANDBOX_CRASHED"


class SandboxPausedError(MvmError):
    code = "SANDBOX_PAUSED"


class UnsupportedCapabilityError(MvmError):
    code = "UNSUPPORTED_CAPABILITY"


class NotFoundError(MvmError):
    code = "NOT_FOUND"


class InvalidArgumentError(MvmError):
    code = "INVALID_ARGUMENT"


class PermissionDeniedError(MvmError):
    code = "PERMISSION_DENIED"


class AlreadyExistsError(MvmError):
    code = "ALREADY_EXISTS"


class AbortedError(MvmError):
    code = "ABORTED"


class InternalError(MvmError):
    code = "INTERNAL"


class CommandExitError(MvmError):
    """A command exited non-zero, by a signal or by its timeout where success was asked for.

    ``result`` is the :class:`mvm.CommandResult` when the SDK raised it, or the wire ``details``.
    """

    code = "COMMAND_EXIT"

    def __init__(self, message: str, result: Any = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result

    def to_wire(self) -> dict[str, Any]:
        out = super().to_wire()
        if self.result is not None and not hasattr(self.result, "exit_code"):
            out["details"] = self.result
        return out


class FunctionError(MvmError):
    """A function call did not return a value; ``kind`` says why (docs/FUNCTIONS.md)."""

    code = "FUNCTION_FAILED"

    def __init__(self, message: str, *, kind: str = "failed", error_id: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.kind = kind
        self.error_id = error_id
        #: The function's stack, only in development mode.
        self.function_stack: str | None = None


_ALL: tuple[type[MvmError], ...] = (
    PolicyDeniedError,
    AdmissionError,
    TimeoutError,
    TransportError,
    CleanupError,
    SnapshotMismatchError,
    SandboxCrashedError,
    SandboxPausedError,
    UnsupportedCapabilityError,
    NotFoundError,
    InvalidArgumentError,
    PermissionDeniedError,
    AlreadyExistsError,
    AbortedError,
    InternalError,
    CommandExitError,
    FunctionError,
)
_CLASSES: dict[str, type[MvmError]] = {cls.code: cls for cls in _ALL}

#: Every stable error code, as the daemon sends it.
ERROR_CODES: tuple[str, ...] = tuple(_CLASSES)


def from_wire(code: str, message: str, hint: str | None = None, details: Any = None) -> MvmError:
    """Rebuilds the typed error of a wire error; an unknown code is :class:`InternalError`."""
    if code == CommandExitError.code:
        return CommandExitError(message, details, hint=hint)
    cls = _CLASSES.get(code, InternalError)
    return cls(message, hint=hint)
