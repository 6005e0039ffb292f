"""Circuit intake: limits from the settings reach the parser, the fragment count is bounded
at submit, and a job's circuit is parsed once (at submit) unless the coordinator restarted."""

from __future__ import annotations

from typing import Any

import pytest

from quantum_mesh.config import Settings
from quantum_mesh.control import circuit_check
from quantum_mesh.control.workflows import circuit as circuit_module
from quantum_mesh.control.workflows.circuit import CircuitWorkload, check_circuit
from quantum_mesh.errors import InvalidCircuit
from quantum_mesh.quantum.circuits.model import NormalizedCircuit
from quantum_mesh.quantum.circuits.parse import parse_circuit

BELL = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0];\ncx q[0], q[1];\n'


def alternating(gates: int) -> str:
    body = "h q[0];\ncx q[0], q[1];\n" * (gates // 2)
    return 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\n' + body


class InlineCompute:
    """Runs the workload's pool calls inline and records them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def isolated(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(f"isolated:{fn.__name__}")
        return fn(*args, **kwargs)

    async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(f"run:{fn.__name__}")
        return fn(*args, **kwargs)


class AcceptingJobs:
    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    def admit(self, idempotency_key: str | None = None) -> None:
        pass

    async def submit(
        self,
        *,
        kind: str,
        request: dict[str, Any],
        idempotency_key: str | None,
        owner: str | None = None,
        max_active: int | None = None,
    ) -> Any:
        self.submitted.append(request)
        return object(), True


def _workload(compute: InlineCompute, **settings: Any) -> CircuitWorkload:
    return CircuitWorkload(
        db=None,  # type: ignore[arg-type]
        registry=None,  # type: ignore[arg-type]
        runtime=None,  # type: ignore[arg-type]
        compute=compute,  # type: ignore[arg-type]
        settings=Settings(_env_file=None, **settings),  # type: ignore[call-arg]
    )


def test_check_circuit_returns_the_parsed_circuit() -> None:
    assert check_circuit(BELL) == parse_circuit(BELL)


def test_ten_thousand_sequential_fragments_are_refused_at_submit() -> None:
    text = alternating(10_000)
    with pytest.raises(InvalidCircuit) as info:
        check_circuit(text)
    err = info.value
    assert err.details == {"limit": "max_circuit_fragments", "max": 2_000, "found": 10_000}
    assert "max_circuit_fragments" in err.message and "2000" in err.message
    assert len(check_circuit(text, max_fragments=10_000).operations) == 10_000


async def test_settings_reach_the_validation_process() -> None:
    compute, jobs = InlineCompute(), AcceptingJobs()
    workload = _workload(
        compute,
        max_circuit_qubits=1,
        max_circuit_operations=1,
        max_gate_definition_depth=1,
        max_circuit_fragments=1,
    )
    with pytest.raises(InvalidCircuit) as info:
        await workload.submit(jobs, request={"circuit": BELL}, idempotency_key=None)
    assert info.value.details["limit"] == "max_circuit_qubits"
    assert compute.calls == ["isolated:check_circuit"]
    assert jobs.submitted == []


async def test_a_job_is_parsed_once_unless_the_coordinator_restarted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compute, jobs = InlineCompute(), AcceptingJobs()
    workload = _workload(compute)
    await workload.submit(jobs, request={"circuit": BELL}, idempotency_key=None)
    assert compute.calls == ["isolated:check_circuit"]

    def must_not_parse(*_args: Any, **_kwargs: Any) -> NormalizedCircuit:
        raise AssertionError("parsed a second time")

    monkeypatch.setattr(circuit_module, "parse_circuit", must_not_parse)
    cached = await workload.parsed(BELL)
    assert cached == parse_circuit(BELL)
    assert compute.calls == ["isolated:check_circuit"]

    # After a restart the cache is empty: the job's circuit is parsed again, with the limits.
    monkeypatch.undo()
    seen: list[dict[str, Any]] = []

    def spy(text: str, **limits: Any) -> NormalizedCircuit:
        seen.append(limits)
        return parse_circuit(text, **limits)

    monkeypatch.setattr(circuit_module, "parse_circuit", spy)
    restarted = _workload(InlineCompute(), max_circuit_operations=7)
    assert await restarted.parsed(BELL) == cached
    assert seen and seen[0]["max_operations"] == 7


async def test_the_parsed_cache_is_bounded() -> None:
    compute, jobs = InlineCompute(), AcceptingJobs()
    workload = _workload(compute)
    texts = [BELL + f"// {i}\n" for i in range(circuit_check.PARSED_CACHE_ENTRIES + 5)]
    for text in texts:
        await workload.submit(jobs, request={"circuit": text}, idempotency_key=None)
    assert len(workload.parsed_cache) == circuit_check.PARSED_CACHE_ENTRIES
    assert workload.parsed_cache.get(texts[0]) is None
    assert workload.parsed_cache.get(texts[-1]) is not None


async def test_a_circuit_validated_before_is_not_validated_again() -> None:
    """The same text again (another seed) skips the validation process; a new text, or one
    that was refused, goes there every time."""
    compute, jobs = InlineCompute(), AcceptingJobs()
    workload = _workload(compute, max_circuit_qubits=2)
    for seed in (1, 2, 3):
        await workload.submit(jobs, request={"circuit": BELL, "seed": seed}, idempotency_key=None)
    assert compute.calls == ["isolated:check_circuit"]
    assert len(jobs.submitted) == 3

    wide = BELL.replace("qreg q[2];", "qreg q[3];")
    for _ in range(2):
        with pytest.raises(InvalidCircuit):
            await workload.submit(jobs, request={"circuit": wide}, idempotency_key=None)
    assert compute.calls == ["isolated:check_circuit"] * 3
    assert len(jobs.submitted) == 3
