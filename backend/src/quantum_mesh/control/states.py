"""Job and reservation state machines: the allowed transitions, in one place."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    COMPILING = "COMPILING"
    RESERVING = "RESERVING"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TERMINAL_JOB_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.COMPILING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPILING: frozenset(
        {JobStatus.RESERVING, JobStatus.EXECUTING, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.RESERVING: frozenset({JobStatus.EXECUTING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.EXECUTING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def may_move(current: JobStatus, to: JobStatus) -> bool:
    """Whether a job in ``current`` may be moved to ``to`` (staying put always may)."""
    return to == current or to in JOB_TRANSITIONS[current]


class ReservationStatus(StrEnum):
    REQUESTED = "REQUESTED"
    PREPARED = "PREPARED"
    COMMITTED = "COMMITTED"
    REJECTED = "REJECTED"
    EXECUTED = "EXECUTED"
    EXPIRED = "EXPIRED"
    CANCELED = "CANCELED"


TERMINAL_RESERVATION_STATES = frozenset(
    {
        ReservationStatus.REJECTED,
        ReservationStatus.EXECUTED,
        ReservationStatus.EXPIRED,
        ReservationStatus.CANCELED,
    }
)

RESERVATION_TRANSITIONS: dict[ReservationStatus, frozenset[ReservationStatus]] = {
    ReservationStatus.REQUESTED: frozenset(
        {ReservationStatus.PREPARED, ReservationStatus.REJECTED, ReservationStatus.CANCELED}
    ),
    ReservationStatus.PREPARED: frozenset(
        {
            ReservationStatus.COMMITTED,
            ReservationStatus.REJECTED,
            ReservationStatus.EXPIRED,
            ReservationStatus.CANCELED,
        }
    ),
    ReservationStatus.COMMITTED: frozenset(
        {ReservationStatus.EXECUTED, ReservationStatus.EXPIRED, ReservationStatus.CANCELED}
    ),
}


class EnrollmentStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"
    SUSPENDED = "SUSPENDED"
    REVOKED = "REVOKED"


ENROLLMENT_ACTIONS: dict[str, EnrollmentStatus] = {
    "approve": EnrollmentStatus.APPROVED,
    "suspend": EnrollmentStatus.SUSPENDED,
    "revoke": EnrollmentStatus.REVOKED,
}
