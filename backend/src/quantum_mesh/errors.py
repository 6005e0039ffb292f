"""Domain exceptions. No HTTP knowledge here: the API layer maps them to status codes."""

from __future__ import annotations

from typing import Any


class QMeshError(Exception):
    """Base for every error the service raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep ``details`` when the error crosses a process boundary (validation workers).
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[QMeshError], message: str, details: dict[str, Any]) -> QMeshError:
    return cls(message, details=details)


class InvalidInput(QMeshError):
    code = "invalid_input"


class InvalidCircuit(InvalidInput):
    code = "invalid_circuit"


class NotFound(QMeshError):
    code = "not_found"


class Conflict(QMeshError):
    code = "conflict"


class NoCapacity(QMeshError):
    """No fresh, enrolled node offers a service the work needs."""

    code = "no_capacity"


class ExecutionFailed(QMeshError):
    code = "execution_failed"


class DeadlineExceeded(ExecutionFailed):
    """Work waited longer than its deadline for a node with a free slot."""

    code = "deadline_exceeded"


class Overloaded(QMeshError):
    """The work queue is full: the client should retry after ``retry_after_s``."""

    code = "overloaded"

    def __init__(
        self, message: str, *, retry_after_s: int = 1, details: dict[str, Any] | None = None
    ) -> None:
        retry_after_s = int((details or {}).get("retry_after_s", retry_after_s))
        super().__init__(message, details={**(details or {}), "retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class QuotaExceeded(Overloaded):
    """One principal has as much unfinished work (or as many reservations) as its quota
    allows: 429 with Retry-After, like ``Overloaded``, but about that principal only."""

    code = "quota_exceeded"


class Forbidden(QMeshError):
    """The caller is authenticated but may not do this (another principal's job, a role)."""

    code = "forbidden"


class Unavailable(QMeshError):
    """A dependency (e.g. the document store) is down; the request may succeed later."""

    code = "unavailable"
