"""The front's ASGI app: circuit submits and ``/health`` answered here, everything else
forwarded.

A request takes the front's own path only when all of this holds: it is ``POST
/api/v1/circuits/submit``, it carries no Idempotency-Key (a replay is answered from the
runtime's database) and its principal has no active-jobs quota (the quota is counted in the
write that creates the job, in the runtime). That path authenticates, rate-limits and checks
admission as the runtime would, validates the circuit in the front's own validation process,
journals the job and answers 202. Everything else, WebSockets included, is forwarded.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from quantum_mesh.api.admission import AdmissionMiddleware
from quantum_mesh.api.errors import install_error_handlers
from quantum_mesh.api.front.forwarding import API_PREFIX
from quantum_mesh.api.front.handover import Handover
from quantum_mesh.api.front.journal import IntakeJournal
from quantum_mesh.api.front.proxy import RuntimeProxy
from quantum_mesh.api.front.runtime_process import RuntimeProcess, runtime_socket
from quantum_mesh.api.security import (
    PRINCIPAL_SCOPE_KEY,
    Directory,
    Principal,
    SecurityMiddleware,
    WsTokens,
    presented_key,
)
from quantum_mesh.config import Settings
from quantum_mesh.control.circuit_check import CircuitValidator
from quantum_mesh.control.compute import ComputePools
from quantum_mesh.control.intake import AcceptedJob
from quantum_mesh.control.jobs import CIRCUIT_KIND, admission_refusal
from quantum_mesh.control.states import JobStatus
from quantum_mesh.errors import Unavailable
from quantum_mesh.logs import get_logger
from quantum_mesh.schemas.jobs import CircuitSubmit, JobAccepted
from quantum_mesh.store.tables import utcnow

log = get_logger(__name__)

SUBMIT_PATH = f"{API_PREFIX}/circuits/submit"
HEALTH_PATHS = frozenset({"/health", f"{API_PREFIX}/health"})
#: ``/health`` fails once the runtime has not answered a hand-over for this long (it is
#: asked at least every ``handover.REFRESH_S``).
RUNTIME_SILENT_S = 10.0
JOURNAL_DIR = "intake"
#: Marks a submit the front accepted itself (journalled, handed over after the answer).
ACCEPTED_BY_HEADER = "X-QMesh-Accepted-By"
#: Seconds the front waits, when it stops, for accepted jobs to reach the runtime.
DRAIN_S = 10.0


class Front:
    """The front's state: the runtime it started, the journal and the hand-over."""

    def __init__(self, settings: Settings, runtime: RuntimeProcess | None = None) -> None:
        self.settings = settings
        self.journal = IntakeJournal(settings.data_dir / JOURNAL_DIR)
        self._seq = self.journal.last_seq
        #: The seq of the last job answered 202.
        self.accepted_seq = self._seq
        self._admitting = 0
        self.runtime = runtime or RuntimeProcess(settings, runtime_socket(settings))
        socket_path = self.runtime.socket_path
        self._intake_client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://runtime",
            timeout=httpx.Timeout(60.0, connect=10.0),
        )
        self.handover = Handover(self._intake_client, self.journal)
        self.proxy = RuntimeProxy(str(socket_path), self.handover, lambda: self.accepted_seq)
        self.compute = ComputePools(settings)
        self.validator = CircuitValidator(self.compute, settings)
        #: The runtime's exit code where it ended on its own (the front then stops too).
        self.runtime_exit: int | None = None
        #: Ends the server this app runs in (the CLI sets uvicorn's; otherwise SIGTERM).
        self.stop_serving: Callable[[], None] = lambda: os.kill(os.getpid(), signal.SIGTERM)

    async def start(self) -> None:
        self.compute.start()
        await self.runtime.start(on_exit=self._runtime_ended)
        leftovers, self.journal.leftovers = self.journal.leftovers, []
        for entry in leftovers:
            self.handover.hand_over(entry)
        self.handover.start()
        if leftovers:
            handed = await self.handover.drain(self.settings.api_front_start_timeout_s)
            log.info("front.journal_replayed", jobs=len(leftovers), handed_over=handed)

    async def stop(self) -> None:
        if self.runtime_exit is None and not await self.handover.drain(DRAIN_S):
            log.warning("front.stopped_with_jobs_in_journal", jobs=self.handover.waiting)
        await self.handover.stop()
        await self.runtime.stop()
        await self.proxy.aclose()
        await self._intake_client.aclose()
        self.journal.close()
        self.compute.shutdown()

    def _runtime_ended(self, code: int) -> None:
        # The front cannot serve without its runtime: stop, so that a supervisor restarts
        # both (the journal keeps what was accepted).
        self.runtime_exit = code
        self.stop_serving()

    def admit(self) -> None:
        refusal = admission_refusal(
            active=self.handover.runtime_active + self.handover.waiting + self._admitting,
            write_backlog=self.handover.write_backlog,
            completion_rate=self.handover.completed_per_s,
            settings=self.settings,
        )
        if refusal is not None:
            self.handover.refused += 1
            raise refusal

    async def submit(self, body: CircuitSubmit, principal: Principal) -> str:
        """Validate, journal and hand over a circuit job; returns its id once it is durable."""
        self.admit()
        request = body.model_dump()
        self._admitting += 1
        try:
            await self.validator.check(request["circuit"])
            self._seq += 1
            entry = AcceptedJob(
                seq=self._seq,
                job_id=str(uuid.uuid4()),
                kind=CIRCUIT_KIND,
                request=request,
                owner=principal.name,
                accepted_at=utcnow(),
            )
            await self.journal.append(entry)
        finally:
            self._admitting -= 1
        self.handover.hand_over(entry)
        self.accepted_seq = max(self.accepted_seq, entry.seq)
        return entry.job_id


class FrontDispatch:
    """Pure ASGI: the submit path to the front's own app, the rest to the runtime."""

    def __init__(self, front: Front, submits: ASGIApp, directory: Directory) -> None:
        self.front = front
        self.submits = submits
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.submits(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.front.proxy.websocket(scope, receive, send)
        elif self._served_here(scope):
            await self.submits(scope, receive, send)
        else:
            await self.front.proxy.http(scope, receive, send)

    def _served_here(self, scope: Scope) -> bool:
        if scope.get("method") == "GET" and scope.get("path") in HEALTH_PATHS:
            return True
        if scope.get("method") != "POST" or scope.get("path") != SUBMIT_PATH:
            return False
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        if "idempotency-key" in headers:
            return False
        if not self.directory.enabled:
            return True
        key = presented_key(headers)
        principal = self.directory.by_key(key) if key is not None else None
        # An unknown key goes to the runtime too, which refuses it and counts the failure.
        return principal is not None and not principal.max_active_jobs


def create_front_app(settings: Settings, runtime: RuntimeProcess | None = None) -> FrontDispatch:
    """The front's app; ``runtime``: the runtime process, where it was launched already."""
    front = Front(settings, runtime)
    directory = Directory.from_settings(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await front.start()
        try:
            yield
        finally:
            await front.stop()

    submits = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    submits.state.front = front
    install_error_handlers(submits)

    async def health() -> dict[str, str]:
        """Liveness of both processes: the front answers, and the runtime answered it
        lately (a runtime that has exited stops the front)."""
        silent_s = time.monotonic() - front.handover.answered_at
        if silent_s > RUNTIME_SILENT_S:
            raise Unavailable(
                "The coordinator's job runtime has not answered lately",
                details={"reason": "runtime_silent", "silent_s": round(silent_s, 1)},
            )
        return {"status": "ok"}

    for path in sorted(HEALTH_PATHS):
        submits.add_api_route(path, health, methods=["GET"])

    @submits.post(SUBMIT_PATH, status_code=202, response_model=JobAccepted)
    async def submit_circuit(body: CircuitSubmit, request: Request) -> JSONResponse:
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        assert isinstance(principal, Principal)  # the security middleware set it here
        job_id = await front.submit(body, principal)
        return JSONResponse(
            status_code=202,
            content={"job_id": job_id, "status": JobStatus.QUEUED.value},
            headers={ACCEPTED_BY_HEADER: "front"},
        )

    guarded = AdmissionMiddleware(submits, submit_paths=[SUBMIT_PATH], admit=lambda: front.admit)
    secured = SecurityMiddleware(
        guarded,  # type: ignore[arg-type]
        directory=directory,
        tokens=WsTokens(ttl_s=settings.ws_token_ttl_s),
        open_paths=settings.open_path_set,
        max_body_bytes=settings.max_request_bytes,
        rate_per_minute=settings.rate_limit_per_minute,
        auth_failures_per_minute=settings.auth_failures_per_minute,
        loopback_only=not settings.auth_enabled and not settings.allow_unauthenticated_bind,
    )
    return FrontDispatch(front, secured, directory)  # type: ignore[arg-type]
