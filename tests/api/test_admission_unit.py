"""Early admission: while the queue is full a new submit is refused before its body is read."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from quantum_mesh.api.admission import AdmissionMiddleware, Admit, job_creating_paths
from quantum_mesh.api.app import create_app
from quantum_mesh.api.errors import install_error_handlers
from quantum_mesh.errors import Overloaded

SUBMIT = "/api/v1/circuits/submit"
SUBMIT_PATHS = job_creating_paths(create_app().openapi())


class _Body(BaseModel):
    circuit: str


class _Queue:
    def __init__(self) -> None:
        self.full = False
        self.asked = 0

    def admit(self) -> None:
        self.asked += 1
        if self.full:
            raise Overloaded(
                "The coordinator has 3 unfinished jobs (limit 3); retry later",
                retry_after_s=4,
                details={"active_jobs": 3, "limit": 3},
            )


def _app(queue: _Queue | None) -> tuple[FastAPI, list[dict[str, Any]]]:
    app = FastAPI()
    install_error_handlers(app)
    reached: list[dict[str, Any]] = []

    @app.post(SUBMIT, status_code=202)
    async def submit(body: _Body) -> dict[str, str]:
        reached.append(body.model_dump())
        return {"job_id": "j1"}

    @app.post("/api/v1/jobs/j1/cancel")
    async def cancel() -> dict[str, str]:
        reached.append({"cancel": "j1"})
        return {"status": "CANCELLED"}

    def admission() -> Admit | None:
        return None if queue is None else queue.admit

    app.add_middleware(
        AdmissionMiddleware,  # type: ignore[arg-type]
        submit_paths=SUBMIT_PATHS,
        admit=admission,
    )
    return app, reached


async def _post(app: FastAPI, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, **kwargs)


def test_every_job_creating_route_is_guarded() -> None:
    # Accepted for later (202) is what creating a job answers: every such route is marked.
    accepting = {
        path
        for path, operations in create_app().openapi()["paths"].items()
        if "202" in operations.get("post", {}).get("responses", {})
    }
    assert set(SUBMIT_PATHS) == accepting
    # ... and the service's own middleware guards those paths.
    app = create_app()
    guarded = next(m.kwargs for m in app.user_middleware if m.cls is AdmissionMiddleware)
    assert set(guarded["submit_paths"]) == accepting
    assert SUBMIT in SUBMIT_PATHS
    assert {p.rsplit("/api/v1", 1)[1] for p in SUBMIT_PATHS} == {
        "/circuits/submit",
        "/workflows/runs",
        "/workflows/benchmarks",
        "/finance/submit",
    }


@pytest.mark.asyncio
async def test_a_full_queue_refuses_before_the_body_is_read() -> None:
    queue = _Queue()
    queue.full = True
    app, reached = _app(queue)

    # Not even valid JSON: the refusal comes first, and the route never runs.
    r = await _post(app, SUBMIT, content=b"{not json", headers={"content-type": "application/json"})

    assert r.status_code == 429
    assert r.headers["retry-after"] == "4"
    error = r.json()["error"]
    assert error["code"] == "overloaded"
    assert error["details"] == {"active_jobs": 3, "limit": 3, "retry_after_s": 4}
    assert "unfinished jobs" in error["message"]
    assert reached == []


@pytest.mark.asyncio
async def test_room_in_the_queue_lets_the_route_validate_and_answer() -> None:
    queue = _Queue()
    app, reached = _app(queue)

    ok = await _post(app, SUBMIT, json={"circuit": "OPENQASM 2.0;"})
    bad = await _post(app, SUBMIT, json={"shots": 3})

    assert ok.status_code == 202 and reached == [{"circuit": "OPENQASM 2.0;"}]
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert queue.asked == 2


@pytest.mark.asyncio
async def test_replays_other_routes_and_a_starting_coordinator_pass_through() -> None:
    queue = _Queue()
    queue.full = True
    app, reached = _app(queue)

    # A replay with an Idempotency-Key is answered by the route even when full.
    replay = await _post(app, SUBMIT, json={"circuit": "x"}, headers={"Idempotency-Key": "k1"})
    cancel = await _post(app, "/api/v1/jobs/j1/cancel")
    assert replay.status_code == 202 and cancel.status_code == 200
    assert reached == [{"circuit": "x"}, {"cancel": "j1"}]
    assert queue.asked == 0

    starting, reached_while_starting = _app(None)
    r = await _post(starting, SUBMIT, json={"circuit": "y"})
    assert r.status_code == 202 and reached_while_starting == [{"circuit": "y"}]
