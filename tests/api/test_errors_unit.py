"""The catch-all 500: the envelope, one plain traceback logged off the event loop, no secret."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest
import structlog
from fastapi import FastAPI

from quantum_mesh import logs
from quantum_mesh.api.errors import install_error_handlers

KEY = "catchall-key-5e0b7d21"


class _ThreadOfRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "quantum_mesh.api.errors":
            self.threads.append(threading.get_ident())


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, _ThreadOfRecords]]:
    logs.configure_logging("INFO", secrets=[KEY])
    buffer = io.StringIO()
    root = logging.getLogger()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    threads = _ThreadOfRecords()
    root.addHandler(threads)
    try:
        yield buffer, threads
    finally:
        structlog.reset_defaults()
        root.handlers.clear()
        logs.set_secrets([])


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> dict[str, str]:
        big_local = ["x" * 1000] * 1000  # what a traceback with locals would have dumped
        raise RuntimeError(f"unexpected ({len(big_local)} rows) for Bearer {KEY}")

    return app


def test_unexpected_error_is_a_500_envelope_logged_once_off_the_loop(
    captured: tuple[io.StringIO, _ThreadOfRecords],
) -> None:
    buffer, threads = captured

    async def go() -> tuple[httpx.Response, int]:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get(
                "/boom", headers={"Authorization": f"Bearer {KEY}", "X-API-Key": KEY}
            )
        return response, threading.get_ident()

    response, loop_thread = asyncio.run(go())
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "Internal server error", "details": {}}
    }
    text = buffer.getvalue()
    assert text.count("api.unhandled") == 1 and "Traceback (most recent call last)" in text
    assert "RuntimeError: unexpected (1000 rows)" in text and "path=/boom" in text
    assert KEY not in text and "xxxxxxxxxx" not in text
    assert len(text) < 10_000
    assert threads.threads and all(t != loop_thread for t in threads.threads)
