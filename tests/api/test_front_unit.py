"""Which requests the API front answers itself, and what it imports."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from quantum_mesh.api.front.app import SUBMIT_PATH, FrontDispatch
from quantum_mesh.api.security import Directory
from quantum_mesh.config import Settings

ADMIN, USER = "admin-key-0123456789abcdef", "user-key-0123456789abcdef"


def dispatch(**settings: Any) -> FrontDispatch:
    config = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    return FrontDispatch(front=None, submits=None, directory=Directory.from_settings(config))  # type: ignore[arg-type]


def scope(method: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": method, "path": path, "headers": raw}


def test_without_keys_circuit_submits_and_health_are_answered_by_the_front() -> None:
    front = dispatch()
    assert front._served_here(scope("POST", SUBMIT_PATH))
    assert front._served_here(scope("GET", "/health"))
    assert front._served_here(scope("GET", "/api/v1/health"))
    assert not front._served_here(scope("POST", SUBMIT_PATH, {"Idempotency-Key": "k"}))
    assert not front._served_here(scope("GET", SUBMIT_PATH))
    assert not front._served_here(scope("POST", "/api/v1/workflows/runs"))
    assert not front._served_here(scope("GET", "/api/v1/jobs"))


def test_principals_with_a_job_quota_and_unknown_keys_go_to_the_runtime() -> None:
    front = dispatch(principals=f"ops:admin:{ADMIN},alice:user:{USER}", quota_active_jobs=5)
    assert front._served_here(scope("POST", SUBMIT_PATH, {"Authorization": f"Bearer {ADMIN}"}))
    assert front._served_here(scope("POST", SUBMIT_PATH, {"X-API-Key": ADMIN}))
    assert not front._served_here(scope("POST", SUBMIT_PATH, {"X-API-Key": USER}))
    assert not front._served_here(scope("POST", SUBMIT_PATH, {"X-API-Key": "wrong"}))
    assert not front._served_here(scope("POST", SUBMIT_PATH))


@pytest.mark.parametrize("module", ["quantum_mesh.control.coordinator", "libp2p", "trio"])
def test_the_front_does_not_import_the_runtime(module: str) -> None:
    """The front stays small: the job runtime, libp2p and Trio live in the other process."""
    probe = f"import sys, quantum_mesh.api.front.app; sys.exit({module!r} in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0
