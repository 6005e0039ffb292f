"""The coordinator's own worker pools: validation is bounded in time and survives its workers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from quantum_mesh.config import Settings
from quantum_mesh.control.compute import CHEM_LANE, ComputePools
from quantum_mesh.errors import InvalidInput


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _die() -> None:
    os._exit(3)


@pytest.fixture
def pools() -> Iterator[ComputePools]:
    p = ComputePools(Settings(validation_timeout_s=4.0, validation_processes=1))
    yield p
    p.shutdown()


async def test_a_validation_past_its_deadline_is_refused_and_its_worker_killed(
    pools: ComputePools,
) -> None:
    first = await pools.isolated(_pid_after, 0.0)
    with pytest.raises(InvalidInput) as refused:
        await pools.isolated(_pid_after, 60.0)
    assert refused.value.details["limit"] == "validation_timeout_s"
    # The stuck worker is gone and a fresh pool answers.
    again = await pools.isolated(_pid_after, 0.0)
    assert again != first
    for _ in range(50):
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the timed-out validation worker is still alive")


async def test_a_dead_validation_worker_is_a_refusal_not_a_crash(pools: ComputePools) -> None:
    with pytest.raises(InvalidInput):
        await pools.isolated(_die)
    assert isinstance(await pools.isolated(_pid_after, 0.0), int)


async def test_threads_run_plain_functions(pools: ComputePools) -> None:
    assert await pools.run(sum, [1, 2, 3]) == 6
    assert await pools.drive(max, 4, 9) == 9


async def test_a_slow_chemistry_validation_never_queues_a_circuit(pools: ComputePools) -> None:
    await pools.isolated(_pid_after, 0.0)  # the circuit lane's worker is up
    slow = asyncio.create_task(pools.isolated_in(CHEM_LANE, _pid_after, 3.0))
    await asyncio.sleep(0.5)  # the chemistry worker is busy now
    circuit_pid = await pools.isolated(_pid_after, 0.0)
    assert not slow.done(), "the circuit validation waited behind the chemistry one"
    assert await slow != circuit_pid


async def test_a_pool_starting_up_does_not_count_against_the_validation_limit() -> None:
    # Spawning a worker and importing Qiskit takes well over 0.5 s: the input is not to blame.
    pools = ComputePools(Settings(validation_timeout_s=0.5, validation_processes=1))
    try:
        assert isinstance(await pools.isolated(_pid_after, 0.0), int)
        with pytest.raises(InvalidInput):  # a slow validation still is refused
            await pools.isolated(_pid_after, 5.0)
        assert isinstance(await pools.isolated(_pid_after, 0.0), int)  # a fresh pool, again
    finally:
        pools.shutdown()
