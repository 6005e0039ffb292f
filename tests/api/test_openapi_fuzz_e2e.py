"""Property-based checks of the whole HTTP API against its own OpenAPI document.

schemathesis (its command line, as a subprocess) generates bounded numbers of valid and
invalid requests for every operation and sends them to a live coordinator (real subprocess,
real PostgreSQL). Every answer must be documented: its status code (so no 500 ever: it is
never documented; a 503 only where documented, e.g. ``no_capacity``), content type and body
schema (the error envelope for every 4xx). No embedded nodes: accepted jobs wait for capacity
instead of running generated workloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from tests.support.live import LiveCoordinator

EMBEDDED_NODES = 0
#: Keys and rate limits stay out of the way: the subject is the documented contract.
COORD_ENV = {"QMESH_RATE_LIMIT_PER_MINUTE": "10000000"}
#: Generated requests per operation and phase: bounded, so the run stays well under a minute.
EXAMPLES = 8
CHECKS = "status_code_conformance,content_type_conformance,response_schema_conformance"


def test_every_operation_answers_as_documented(coord: LiveCoordinator, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{coord.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--generation-deterministic",
        "--no-shrink",
        "--continue-on-failure",
        "--request-timeout",
        "30",
        "--max-time",
        "90",
        "--no-color",
        "--warnings",
        "off",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False
    )
    report = done.stdout[-20_000:] + done.stderr[-5_000:]
    assert done.returncode == 0, report
    assert "No issues found" in done.stdout, report
    assert "Tested: 4" in done.stdout, report  # every operation (40-odd) was exercised


def test_swagger_ui_is_served_from_the_installed_package(coord: LiveCoordinator) -> None:
    page = httpx.get(f"{coord.base_url}/docs", timeout=10)
    assert page.status_code == 200
    assert "/static-offline-docs/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    script = httpx.get(f"{coord.base_url}/static-offline-docs/swagger-ui-bundle.js", timeout=10)
    assert script.status_code == 200 and len(script.content) > 100_000
    redoc = httpx.get(f"{coord.base_url}/redoc", timeout=10)
    assert redoc.status_code == 200 and "/static-offline-docs/redoc.standalone.js" in redoc.text
