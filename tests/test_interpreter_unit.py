"""The coordinator's GIL switch interval (``QMESH_GIL_SWITCH_INTERVAL_MS``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from quantum_mesh.cli import share_the_interpreter
from quantum_mesh.config import Settings


@pytest.fixture
def switch_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_setting_becomes_the_switch_interval(switch_interval: None) -> None:
    # The default, whatever a developer's .env or environment says.
    assert Settings.model_fields["gil_switch_interval_ms"].default == 0.5
    share_the_interpreter(0.5)
    assert sys.getswitchinterval() == pytest.approx(0.0005)


def test_zero_keeps_the_interpreters_own(switch_interval: None) -> None:
    sys.setswitchinterval(0.005)
    share_the_interpreter(0)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_a_negative_interval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMESH_GIL_SWITCH_INTERVAL_MS", "-1")
    with pytest.raises(ValueError, match="gil_switch_interval_ms"):
        Settings()
