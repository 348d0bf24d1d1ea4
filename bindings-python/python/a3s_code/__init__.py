"""a3s_code: a per-session priority lane queue that hands an AI coding agent's tool calls to
in-process or remote workers (Python bindings of the Rust crate ``a3s-code-core``).

Async methods return coroutines: the call starts the work (a submit is queued at once), and
awaiting the coroutine in any asyncio loop returns the outcome.

Deprecated names, kept for compatibility: ``RemoteSession`` (now ``WorkerClient``; using it
warns), ``ToolError`` (``ToolFailedError``) and ``ModelError`` (``ModelFailedError``), which are
the same exception classes.
"""

import warnings
from typing import TYPE_CHECKING, Any

from ._native import (
    A3sError,
    A3sIoError,
    AdminClient,
    Agent,
    AgentSession,
    AgentStream,
    BrokerUnavailableError,
    ConfigFileError,
    DeadLetter,
    EventStream,
    ExternalTask,
    ExternalTaskResult,
    InvalidConfigError,
    InvalidPayloadError,
    LaneHandlerConfig,
    LaneMetrics,
    LaneStats,
    ModelError,
    ModelFailedError,
    NatsConfig,
    PathEscapesWorkspaceError,
    PayloadTooLargeError,
    QueueFullError,
    QueueMetrics,
    QueueStats,
    RetriesExhaustedError,
    RetryPolicy,
    RetryStrategy,
    SessionLane,
    SessionOptions,
    SessionQueueConfig,
    ShutDownError,
    TaskAlreadyCompletedError,
    TaskCancelledError,
    TaskHandle,
    TaskHandlerMode,
    TaskNotFoundError,
    TaskTimedOutError,
    ToolError,
    ToolFailedError,
    FileTooLargeError,
    PermissionDeniedError,
    SessionNotFoundError,
    UnknownToolError,
    UnsupportedProtocolError,
    Worker,
    WorkerClient,
    WorkerStats,
    __version__,
    execute_builtin,
)

__all__ = [
    "A3sError",
    "A3sIoError",
    "AdminClient",
    "Agent",
    "AgentSession",
    "AgentStream",
    "BrokerUnavailableError",
    "ConfigFileError",
    "DeadLetter",
    "EventStream",
    "ExternalTask",
    "ExternalTaskResult",
    "InvalidConfigError",
    "InvalidPayloadError",
    "LaneHandlerConfig",
    "LaneMetrics",
    "LaneStats",
    "ModelError",
    "ModelFailedError",
    "NatsConfig",
    "PathEscapesWorkspaceError",
    "PayloadTooLargeError",
    "QueueFullError",
    "QueueMetrics",
    "QueueStats",
    "RetriesExhaustedError",
    "RetryPolicy",
    "RetryStrategy",
    "SessionLane",
    "SessionOptions",
    "SessionQueueConfig",
    "ShutDownError",
    "TaskAlreadyCompletedError",
    "TaskCancelledError",
    "TaskHandle",
    "TaskHandlerMode",
    "TaskNotFoundError",
    "TaskTimedOutError",
    "ToolError",
    "ToolFailedError",
    "FileTooLargeError",
    "PermissionDeniedError",
    "SessionNotFoundError",
    "UnknownToolError",
    "UnsupportedProtocolError",
    "Worker",
    "WorkerClient",
    "WorkerStats",
    "__version__",
    "execute_builtin",
]

if TYPE_CHECKING:
    from ._native import WorkerClient as RemoteSession  # deprecated name
else:
    _DEPRECATED = {"RemoteSession": ("WorkerClient", WorkerClient)}

    def __getattr__(name: str) -> Any:
        """Serves the deprecated names with a DeprecationWarning (hidden from type checkers, so
        a misspelt name stays an error for them)."""
        if name in _DEPRECATED:
            new_name, value = _DEPRECATED[name]
            warnings.warn(
                f"a3s_code.{name} is deprecated: use a3s_code.{new_name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return value
        raise AttributeError(f"module 'a3s_code' has no attribute {name!r}")
