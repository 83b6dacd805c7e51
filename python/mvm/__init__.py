"""mvm: run untrusted code in sandboxes on your own Linux host, from Python.

Talks to the mvm daemon (``mvmctl daemon``) over its Unix socket; see docs/PYTHON.md.
"""

from .client import DaemonClient, default_socket_path
from .commands import CommandHandle, CommandResult, Commands
from .errors import (
    ERROR_CODES,
    AbortedError,
    AdmissionError,
    AlreadyExistsError,
    CleanupError,
    CommandExitError,
    FunctionError,
    InternalError,
    InvalidArgumentError,
    MvmError,
    NotFoundError,
    PermissionDeniedError,
    PolicyDeniedError,
    SandboxCrashedError,
    SandboxPausedError,
    SnapshotMismatchError,
    TimeoutError,
    TransportError,
    UnsupportedCapabilityError,
    from_wire,
)
from .functions import Function, FunctionDefinitionError, FunctionSession, function
from .policy import NetworkPolicy, SecretRef
from .sandbox import Files, Sandbox, SandboxNetwork, Snapshot

__version__ = "0.1.0"

__all__ = [
    "ERROR_CODES",
    "AbortedError",
    "AdmissionError",
    "AlreadyExistsError",
    "CleanupError",
    "CommandExitError",
    "CommandHandle",
    "CommandResult",
    "Commands",
    "DaemonClient",
    "Files",
    "Function",
    "FunctionDefinitionError",
    "FunctionSession",
    "FunctionError",
    "InternalError",
    "InvalidArgumentError",
    "MvmError",
    "NetworkPolicy",
    "NotFoundError",
    "PermissionDeniedError",
    "PolicyDeniedError",
    "SandboxCrashedError",
    "SandboxNetwork",
    "SandboxPausedError",
    "SecretRef",
    "Snapshot",
    "SnapshotMismatchError",
    "TimeoutError",
    "TransportError",
    "UnsupportedCapabilityError",
    "default_socket_path",
    "from_wire",
    "function",
]
