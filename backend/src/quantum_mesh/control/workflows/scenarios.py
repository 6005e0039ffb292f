"""Benchmark scenarios: what is done to the mesh around one distributed run, and its record.

- ``baseline``: nothing.
- ``node_loss``: the last node of the run's subset is SIGKILLed mid-run, once it holds work
  (embedded nodes only; the supervisor restarts it). Row: ``nodes_lost``.
- ``degraded_node``: before the run, the last node of the subset is told to degrade itself
  (``degrade``, ``node/degrade.py``): it refuses a share of its reservations as saturated,
  its workers are held ``slowdown`` times as long, and, when asked, its noise level is
  raised; after the run it is restored, and what it refused and slowed is the row's
  ``degraded``.
- ``node_join``: the run starts on N - 1 nodes of its subset; a spare embedded node, started
  warm but off the mesh before the run, is told to join a little way into it (a quarter of
  the same mode's fastest baseline run); once its advert is fresh the scheduler places
  units on it. After the run it is stopped again. Row: ``joined``.
- ``latency``, ``bandwidth``, ``loss``: the last of the run's N nodes is the spare, on the
  mesh before the run, in a network namespace of its own where the machine allows (root,
  ``ip``/``tc``: ``control/netns.py``), through a relay on its link (``control/linkrelay.py``;
  no netem here): each chunk held ``delay_ms ± jitter_ms`` each way; at most ``rate_kbit``
  (the kernel's tbf on the veth; the relay's own pacing only where no namespace could be
  made); a share ``loss`` of chunks held one retransmission timeout longer, and a share
  ``reset_share`` (default 0) on which the connection is reset. Row: ``link``.

Every row of a scenario records it (``scenario``, plus the scenario's own field, ``None`` on
centralized rows, which use no node).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from quantum_mesh.control.jobs import JobHandle
from quantum_mesh.control.workflows.scenario_params import LINK_SCENARIOS, ROW_FIELDS
from quantum_mesh.errors import QMeshError
from quantum_mesh.logs import get_logger
from quantum_mesh.mesh.errors import MeshError
from quantum_mesh.mesh.protocol import METHOD_DEGRADE

log = get_logger(__name__)

#: node_loss: the earliest moment to stop a node, as a share of the same mode's fastest
#: baseline run; then the node goes as soon as it holds work.
NODE_LOSS_AT = 0.1
#: node_loss without a baseline run to time it by: seconds into the run.
NODE_LOSS_DEFAULT_S = 0.2
NODE_LOSS_POLL_S = 0.01
NODE_LOSS_WAIT_S = 30.0

#: node_join: when the spare joins, as a share of the same mode's fastest baseline run, or
#: seconds into the run without one.
NODE_JOIN_AT = 0.25
NODE_JOIN_DEFAULT_S = 0.5
#: How often a joining node is looked at (usable yet? given work yet? still running?).
NODE_JOIN_POLL_S = 0.01
#: Restarts of a joined node that exits mid-run, at most, per run.
NODE_JOIN_RESTARTS = 3

#: How long a node stays degraded if the restore never reaches it (a coordinator crash).
DEGRADED_TTL_S = 900.0


@dataclass
class RunSetup:
    """What a scenario did around one run: the run's nodes and the row's record."""

    nodes: list[str]
    record: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def scenario_run(
    handle: JobHandle,
    scenario: str,
    chosen: list[str] | None,
    *,
    kill_after: float | None = None,
    join_after: float | None = None,
    profile: dict[str, Any] | None = None,
) -> AsyncIterator[RunSetup]:
    """Set the scenario up around one run on ``chosen`` (None: centralized)."""
    setup = RunSetup(nodes=list(chosen or []))
    field_name = ROW_FIELDS.get(scenario)
    if field_name is not None:  # every row of the scenario has its field (None: no node)
        setup.record[field_name] = None
    if chosen is None:  # centralized: no node to disturb
        yield setup
        return
    if scenario == "node_loss":
        lost: list[str] = []
        setup.record["nodes_lost"] = lost
        killer = None
        if kill_after is not None and chosen:
            # The last node of the subset is stopped mid-run as a crash would stop it.
            killer = asyncio.create_task(_stop_later(handle, chosen[-1], kill_after, lost))
        try:
            yield setup
        finally:
            if killer is not None:
                killer.cancel()
        return
    if scenario == "degraded_node" and chosen:
        target = chosen[-1]
        applied = await _degrade(handle, target, {**(profile or {}), "ttl_s": DEGRADED_TTL_S})
        try:
            yield setup
        finally:
            report = await _degrade(handle, target, {"restore": True}) if applied else {}
            setup.record["degraded"] = {"node_id": target, **(profile or {}), **report}
            if not applied:
                setup.record["degraded"]["applied"] = False
        return
    if scenario == "node_join" and chosen:
        async with _joining(handle, chosen, join_after, setup):
            yield setup
        return
    if scenario in LINK_SCENARIOS and chosen:
        async with _impaired_link(handle, chosen, scenario, profile or {}, setup):
            yield setup
        return
    yield setup


def _impairments(scenario: str, profile: dict[str, Any], *, shaped: bool) -> dict[str, float]:
    """``LinkRelay`` settings of a link scenario, from its (checked) settings. A ``shaped``
    link (tbf on its veth) needs no cap in the relay: there it only forwards."""
    if scenario == "latency":
        return {"delay_s": profile["delay_ms"] / 1000, "jitter_s": profile["jitter_ms"] / 1000}
    if scenario == "bandwidth":
        return {} if shaped else {"rate_bps": profile["rate_kbit"] * 1000 / 8}
    return {
        "loss": profile["loss"],
        "rto_s": profile["rto_ms"] / 1000,
        "reset_share": profile.get("reset_share", 0.0),
    }


#: How each link was emulated, for the row's ``emulator``.
RELAY = "qmesh relay (asyncio TCP relay in the coordinator)"
RELAY_ON_VETH = "qmesh relay (asyncio TCP relay in the coordinator, on the veth's root side)"
TBF = "tbf (kernel qdisc on both ends of the veth; the relay only forwards)"
NO_ISOLATION = "none: the node and the relay on 127.0.0.1"


@contextlib.asynccontextmanager
async def _impaired_link(
    handle: JobHandle,
    chosen: list[str],
    scenario: str,
    profile: dict[str, Any],
    setup: RunSetup,
) -> AsyncIterator[None]:
    """latency, bandwidth, loss around one run: the last of the N nodes is the spare, in a
    network namespace of its own where the machine allows (``control/netns.py``), on the
    mesh through a relay on its link (``control/linkrelay.py``) that delays or "loses";
    ``bandwidth`` is shaped by tbf on the veth. Stopped, and the namespace removed, after."""
    joiner = handle.joiner
    if joiner is None:  # no embedded nodes: nothing to put behind a relay
        setup.record["link"] = {"node_id": None, "reason": "no embedded nodes to start"}
        yield
        return
    rate_bps = profile["rate_kbit"] * 1000 / 8 if scenario == "bandwidth" else None
    link, why_not = await joiner.open_namespace(rate_bps=rate_bps)
    linked = await joiner.prepare_linked(
        link, **_impairments(scenario, profile, shaped=link is not None)
    )
    peer, relay = linked.peer_id, linked.relay
    setup.nodes = [*[p for p in chosen if p != peer][: len(chosen) - 1], peer]
    usable = joiner.usable()
    try:
        yield
    finally:
        await joiner.release(linked)
        shaped = link is not None and link.tbf is not None
        setup.record["link"] = {
            "node_id": peer,
            **profile,
            "emulator": TBF if shaped else RELAY_ON_VETH if link is not None else RELAY,
            "shaper": "tbf" if shaped else "qmesh relay",
            "isolation": link.label if link is not None else NO_ISOLATION,
            **({"tbf": link.tbf} if shaped and link is not None else {}),
            **({} if link is not None else {"netns_unavailable": why_not}),
            "usable_before_run": usable,
            "bytes_relayed": relay.stats.bytes,
            "chunks_relayed": relay.stats.chunks,
            **(
                {"chunks_held_for_loss": relay.stats.lost, "connections_reset": relay.stats.resets}
                if scenario == "loss"
                else {}
            ),
        }


@contextlib.asynccontextmanager
async def _joining(
    handle: JobHandle, chosen: list[str], join_after: float | None, setup: RunSetup
) -> AsyncIterator[None]:
    """node_join around one run: N - 1 nodes of ``chosen`` plus the spare, which joins
    ``join_after`` seconds in; stopped again after the run."""
    joiner = handle.joiner
    if joiner is None:  # no embedded nodes: nothing to start; the run goes on N nodes
        setup.record["joined"] = {"node_id": None, "reason": "no embedded nodes to start"}
        yield
        return
    peer = await joiner.prepare()  # before the run: starting a process is not the run
    present = [p for p in chosen if p != peer][: len(chosen) - 1]
    setup.nodes = [*present, peer]
    record: dict[str, Any] = {
        "node_id": peer,
        "nodes_at_start": len(present),
        "nodes_at_end": len(present) + 1,
        "join_after_s": None,
        "usable_after_s": None,
        "received_work": False,
        "restarts": 0,
    }
    watcher = asyncio.create_task(
        _join_later(handle, peer, join_after or NODE_JOIN_DEFAULT_S, record)
    )
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await joiner.retire()
        setup.record["joined"] = record


async def _join_later(handle: JobHandle, peer: str, delay: float, record: dict[str, Any]) -> None:
    """Let the spare join after ``delay``; note when it became usable and got work."""
    joiner = handle.joiner
    assert joiner is not None
    started = time.monotonic()
    await asyncio.sleep(delay)
    if not joiner.join():
        return
    record["join_after_s"] = round(time.monotonic() - started, 4)
    while True:
        if not joiner.running():
            # It crashed after joining: restarted, as the supervisor restarts the others,
            # so the run never waits on a node that is gone (with N = 1 it has no other).
            if record["restarts"] >= NODE_JOIN_RESTARTS:
                return
            record["restarts"] += 1
            await joiner.restart()
            continue
        if record["usable_after_s"] is None and joiner.usable():
            record["usable_after_s"] = round(time.monotonic() - started, 4)
        if handle.units_in_flight(peer):
            record["received_work"] = True
        await asyncio.sleep(NODE_JOIN_POLL_S)


async def _degrade(handle: JobHandle, peer_id: str, params: dict[str, Any]) -> dict[str, Any]:
    """Degrade or restore a node; ``{}`` when it cannot be reached or refuses (an older build
    without ``degrade``): the run goes on, and its row says so."""
    try:
        reply = await handle.call_node(peer_id, METHOD_DEGRADE, params)
    except (MeshError, QMeshError) as error:
        log.warning("benchmark.degrade_failed", node_id=peer_id, error=str(error))
        return {}
    return {k: v for k, v in reply.items() if k not in ("degraded", "expires_in_s")}


async def _stop_later(handle: JobHandle, peer_id: str, delay: float, lost: list[str]) -> None:
    """Stop ``peer_id`` once ``delay`` has passed and it is working on units (so that work
    in flight is lost with it and must run again elsewhere)."""
    await asyncio.sleep(delay)
    held_before = False
    for _ in range(int(NODE_LOSS_WAIT_S / NODE_LOSS_POLL_S)):
        holds = handle.units_in_flight(peer_id) > 0
        # Killed in the same tick as the look that found it still working, a poll after it
        # first held work (past its reservation, into execution): a unit that finished in
        # between (short units, a loaded machine) would leave nothing in flight to lose.
        if holds and held_before:
            break
        held_before = holds
        await asyncio.sleep(NODE_LOSS_POLL_S)
    if handle.kill_node(peer_id):
        lost.append(peer_id)


def disturbance_delay(
    scenario: str, rows: list[dict[str, Any]], mode: str, count: int | None
) -> float | None:
    """How long a node_loss or node_join run goes before its node is stopped or joins: a
    little way into the same mode's fastest baseline run (None for centralized, which uses
    no node, and for other scenarios)."""
    if count is None or scenario not in ("node_loss", "node_join"):
        return None
    walls = [
        r["wall_s"]
        for r in rows
        if r["scenario"] == "baseline" and r["mode"] == mode and r["nodes"] == count
    ]
    share, default = (
        (NODE_LOSS_AT, NODE_LOSS_DEFAULT_S)
        if scenario == "node_loss"
        else (NODE_JOIN_AT, NODE_JOIN_DEFAULT_S)
    )
    return share * min(walls) if walls else default
