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


class Unavailable(QMeshError):
    """A dependency (e.g. the document store) is down; the request may succeed later."""

    code = "unavailable"
