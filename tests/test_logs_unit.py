"""Log hygiene: secrets are masked in every event, tracebacks carry no local variables."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator

import pytest
import structlog

from quantum_mesh import logs

KEY = "unit-key-3f9a1c77e2"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """configure_logging as the CLI does, with stderr swapped for a buffer."""
    logs.configure_logging("INFO", json=False, secrets=[KEY])
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logs.set_secrets([])


def _redact(**event: object) -> dict[str, object]:
    return dict(logs.redact_secrets(None, "info", dict(event)))


def test_bearer_header_is_masked() -> None:
    out = _redact(event="request", headers="Authorization: Bearer abc.def-ghi_jkl")
    assert out["headers"] == "Authorization: Bearer ***"
    out = _redact(event="as tuples", raw=[(b"authorization", b"Bearer abc.def-ghi")])
    assert "abc.def-ghi" not in json.dumps(out["raw"], default=str)


def test_x_api_key_is_masked_in_every_shape() -> None:
    for text in (
        "x-api-key: zz-top-secret-1",
        "{'x-api-key': 'zz-top-secret-1'}",
        '{"X-API-Key": "zz-top-secret-1"}',
        "[(b'x-api-key', b'zz-top-secret-1')]",
        "api_key=zz-top-secret-1&other=1",
    ):
        assert "zz-top-secret-1" not in logs.redact_text(text), text
    out = _redact(event="headers", x_api_key="zz-top-secret-1", headers={"X-API-Key": "v1v1v1"})
    assert out["x_api_key"] == logs.REDACTED and out["headers"] == {"X-API-Key": logs.REDACTED}


def test_credentials_in_urls_are_masked() -> None:
    url = "mongodb://admin:pa55word@db.example:27017/qmesh?authSource=admin"
    assert logs.redact_url(url) == "mongodb://admin:***@db.example:27017/qmesh?authSource=admin"
    dsn = "postgresql+psycopg://qmesh:hunter2@10.0.0.5:5432/qmesh"
    out = _redact(event=f"connecting to {dsn}", mongo=url)
    assert "hunter2" not in str(out["event"]) and "pa55word" not in str(out["mongo"])
    assert "postgresql+psycopg://qmesh:***@10.0.0.5" in str(out["event"])
    # A URL without credentials is left alone.
    assert logs.redact_url("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"
    assert logs.redact_url(None) is None


def test_configured_keys_are_masked_anywhere() -> None:
    logs.set_secrets([KEY, "ab"])  # too short to mask as a bare substring
    try:
        out = _redact(event=f"saw {KEY} in a message", nested={"deep": [f"x{KEY}y"]})
        assert KEY not in json.dumps(out) and "about" in logs.redact_text("about")
    finally:
        logs.set_secrets([])


def test_ordinary_events_are_untouched() -> None:
    event = {"event": "job.completed", "job_id": "j-1", "seconds": 1.5, "nodes": ["a", "b"]}
    assert _redact(**event) == event


def test_exception_is_plain_without_locals_and_masked(captured: io.StringIO) -> None:
    log = logs.get_logger("test")

    def fail(headers: list[tuple[bytes, bytes]]) -> None:
        payload = "P" * 10_000  # a local the old rich traceback would have printed
        marker = "local-value-" + "Q" * 3
        raise RuntimeError(f"boom {len(payload) + len(marker) - 15} Bearer {KEY}")

    try:
        fail([(b"authorization", f"Bearer {KEY}".encode())])
    except RuntimeError:
        log.exception("api.unhandled")
    text = captured.getvalue()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom 10000" in text
    assert KEY not in text
    assert "PPPPPPPPPP" not in text and "local-value-QQQ" not in text
    assert len(text) < 5_000


def test_foreign_stdlib_exceptions_are_plain_and_masked(captured: io.StringIO) -> None:
    try:
        raise ValueError(f"mongodb://u:{KEY}x@h/db failed")
    except ValueError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    text = captured.getvalue()
    assert "ValueError" in text and KEY not in text and "mongodb://u:***@h/db" in text


def test_huge_tracebacks_are_capped() -> None:
    event = {"event": "x", "exception": "line\n" * 100_000}
    out = logs.cap_exception(None, "error", dict(event))
    assert len(str(out["exception"])) < logs.MAX_EXCEPTION_CHARS + 100
    assert "characters cut" in str(out["exception"])


def test_background_logging_renders_masks_and_writes_everything_off_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    logs.configure_logging("INFO", json=True, secrets=[KEY], background=True)
    try:
        (handler,) = logging.getLogger().handlers
        assert isinstance(handler, logging.handlers.QueueHandler)
        for i in range(200):
            logs.get_logger("t").info("request", n=i, header=f"Bearer {KEY}")
        logging.getLogger("uvicorn.access").info('%s - "%s" %d', "127.0.0.1", "GET /x", 200)
        logs.stop_background_logging()  # what exit does: write out everything queued
        lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
        assert [line["n"] for line in lines[:200]] == list(range(200))
        assert KEY not in buffer.getvalue()
        assert lines[-1]["event"] == '127.0.0.1 - "GET /x" 200'
    finally:
        logs.stop_background_logging()
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
        logs.set_secrets([])
