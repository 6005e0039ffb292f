"""Embedded nodes: identities known up front, crashed children restarted."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from quantum_mesh.mesh.bridge import MeshBridge
from quantum_mesh.node.supervisor import NodeSupervisor
from tests.node.conftest import Heard, wait_for


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_supervisor_restarts_a_killed_child(
    coordinator: tuple[MeshBridge, Heard], tmp_path: Path
) -> None:
    mesh, heard = coordinator
    supervisor = NodeSupervisor(
        count=1,
        data_dir=tmp_path,
        bootstrap_addr=mesh.listen_addrs[0],
        blas_threads=2,
        fidelity=0.97,
        nice=3,
        noise_levels=[0.05],
        env={"QMESH_NODE_PRELOAD": "0", "QMESH_LOG_LEVEL": "WARNING"},
    )
    (peer_id,) = supervisor.peer_ids  # known before any process runs
    assert (tmp_path / "nodes" / "node-0.key").exists()
    await supervisor.start()
    try:
        await supervisor.wait_ready(within_s=30)
        await wait_for(lambda: heard.from_peer(peer_id), what="first advert")
        first_pid = supervisor.pids()[peer_id]
        assert first_pid is not None

        os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: supervisor.restarts[peer_id] == 1, what="a restart")
        await supervisor.wait_ready(within_s=30)
        second_pid = supervisor.pids()[peer_id]
        assert second_pid not in (None, first_pid)
        # Same identity, and its fresh adverts are accepted at once (no seqno reuse).
        seen = len(heard.from_peer(peer_id))
        await wait_for(lambda: len(heard.from_peer(peer_id)) > seen, what="post-restart advert")
        assert heard.from_peer(peer_id)[-1].noise_level == 0.05
        assert heard.from_peer(peer_id)[-1].fidelity == 0.97  # the node settings reach it
        command = (await asyncio.to_thread(command_line, second_pid)).split(b"\0")
        assert command[command.index(b"--blas-threads") + 1] == b"2"
        assert os.getpriority(os.PRIO_PROCESS, second_pid) == min(19, os.nice(0) + 3)
        assert await mesh.ping(peer_id) > 0
    finally:
        await supervisor.stop()
    assert supervisor.pids() == {peer_id: None}
    assert second_pid is not None and not alive(second_pid)
    assert (tmp_path / "nodes" / "node-0.log").stat().st_size >= 0


async def test_the_spare_stays_off_the_mesh_until_told_to_join(
    coordinator: tuple[MeshBridge, Heard], tmp_path: Path
) -> None:
    mesh, heard = coordinator
    supervisor = NodeSupervisor(
        count=0,
        data_dir=tmp_path,
        bootstrap_addr=mesh.listen_addrs[0],
        env={"QMESH_NODE_PRELOAD": "0", "QMESH_LOG_LEVEL": "WARNING"},
    )
    spare = supervisor.spare_peer_id
    assert spare not in supervisor.peer_ids and (tmp_path / "nodes" / "node-join.key").exists()
    assert supervisor.join_spare() is False  # not running yet
    try:
        assert await supervisor.start_spare(within_s=30) == spare
        await asyncio.sleep(1.5)  # serving, warm, but it has dialled nobody
        assert heard.from_peer(spare) == []
        assert supervisor.join_spare() is True
        await wait_for(lambda: heard.from_peer(spare), what="the spare's first advert")
        assert heard.from_peer(spare)[-1].name == "node-join"
    finally:
        await supervisor.stop()
    assert supervisor.join_spare() is False
