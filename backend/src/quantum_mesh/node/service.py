"""The service node: a libp2p peer that advertises its capabilities and runs invocations.

One Trio loop does networking only (invoke streams, adverts, bootstrap dialling, reservations);
every handler runs in the warm worker pool. ``run_node`` returns after SIGINT/SIGTERM, once a
final ``DRAINING`` advert is out and the workers are stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID

from quantum_mesh import __version__
from quantum_mesh.mesh import codec, hostlocal
from quantum_mesh.mesh.adverts import Advert, Availability, encode_advert, validate_advert
from quantum_mesh.mesh.channel import serve_invoke
from quantum_mesh.mesh.errors import AdvertRejected, RemoteError
from quantum_mesh.mesh.host import (
    ConnectionLost,
    MeshHost,
    dial,
    is_connected,
    run_mesh_host,
    split_p2p_addr,
)
from quantum_mesh.mesh.identity import load_or_create_keypair, peer_id_of
from quantum_mesh.mesh.invoke import DIAL_ERRORS, TRANSPORT_ERRORS, InboundGate
from quantum_mesh.mesh.protocol import (
    ADVERT_MAX_AGE_S,
    ADVERT_MIN_SPACING_S,
    ADVERT_TOPIC,
    BOOTSTRAP_RETRY_INITIAL_S,
    BOOTSTRAP_RETRY_MAX_S,
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_SERVICES,  # re-exported: ``from quantum_mesh.node.service import DEFAULT_SERVICES``
    DIAL_TIMEOUT_S,
    ENVELOPE_JOB_ID,
    ENVELOPE_KEYS,
    ENVELOPE_RESERVATION_ID,
    ENVELOPE_RESERVE,
    ENVELOPE_UNIT_ID,
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_RESERVATION_REFUSED,
    ERR_UNKNOWN_METHOD,
    MAX_STREAMS_PER_PEER,
    METHOD_COMMIT,
    METHOD_DEGRADE,
    METHOD_NODE_STATUS,
    METHOD_PING,
    METHOD_RELEASE,
    METHOD_RESERVE,
    NODE_FEATURES,
    REASON_SATURATED,
)
from quantum_mesh.node import handlers
from quantum_mesh.node.context import NodeContext
from quantum_mesh.node.degrade import Degradation
from quantum_mesh.node.links import LinkProber
from quantum_mesh.node.pool import WorkerPool, settled
from quantum_mesh.node.reservations import SLOTS_PER_WORKER, ReservationBook, check_id
from quantum_mesh.store.peerlog import PeerLog, PeerLogWriter

logger = logging.getLogger(__name__)

#: How often uncollected shared-memory reply arrays are looked for.
SPILL_SWEEP_INTERVAL_S = 60.0
#: Methods answered on the Trio loop itself: cheap bookkeeping that must stay responsive
#: even when every worker is busy (``ping`` then measures the link, not the queue).
INLINE_METHODS = frozenset(
    {METHOD_PING, METHOD_RESERVE, METHOD_COMMIT, METHOD_RELEASE, METHOD_NODE_STATUS}
)
#: Longest a requested shutdown may take before the process exits regardless.
HARD_EXIT_AFTER_S = 15.0
_LOGGED_RESERVATION_FIELDS = ("accepted", "committed", "released", "reason")
RESERVATION_METHODS = frozenset({METHOD_RESERVE, METHOD_COMMIT, METHOD_RELEASE})
#: How often a connected node checks that its bootstrap connection is still up.
BOOTSTRAP_CHECK_S = 1.0
#: Bounded time for the final DRAINING advert on shutdown.
DRAIN_ADVERT_S = 1.0
#: Reservation lifetime when ``reserve`` gives no ``ttl_s``.
DEFAULT_RESERVATION_TTL_S = 30.0
#: How often the parent-process watchdog looks (embedded nodes only).
PARENT_CHECK_S = 1.0


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node needs; ``p2p_port=0`` picks a free port."""

    key_file: Path
    bootstrap: str | None
    listen_host: str = "127.0.0.1"
    p2p_port: int = 0
    name: str = "node"
    workers: int = 1
    noise_level: float = 0.0
    fidelity: float = 0.99
    services: tuple[str, ...] = DEFAULT_SERVICES
    advert_interval_s: float = 1.0
    blas_threads: int = 1
    ready_file: Path | None = None
    #: JSONL peer log (fsync'd); default: ``<key file stem>.peerlog.jsonl`` beside the key.
    log_file: Path | None = None
    qubit_min: int = 1
    qubit_max: int = 24
    #: Import handler modules (Qiskit...) in each worker at startup, not on first use.
    preload_handlers: bool = True
    #: Exit when this process is no longer our parent (embedded nodes of a coordinator).
    parent_pid: int | None = None
    #: Inbound pool-method calls beyond this are answered ``busy``; see ``inbound_limit``.
    max_inbound: int | None = None
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: Start off the mesh, workers warm, and dial the coordinator only on SIGUSR1 (a node
    #: joining mid-run: the benchmarks' ``node_join`` scenario).
    join_on_signal: bool = False
    #: Peers served besides the coordinator (the ``/p2p/<id>`` of ``bootstrap``), which is
    #: always served. Everyone else is refused ``not_enrolled`` before its request is read.
    allowed_peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.workers < 1 or self.blas_threads < 1:
            raise ValueError("workers and blas_threads must be at least 1")
        if not 0.0 <= self.noise_level <= 1.0 or not 0.0 <= self.fidelity <= 1.0:
            raise ValueError("noise_level and fidelity must lie in [0, 1]")
        if not 0 < self.qubit_min <= self.qubit_max:
            raise ValueError("need 0 < qubit_min <= qubit_max")
        if self.advert_interval_s <= 0:
            raise ValueError("advert_interval_s must be positive")
        for peer in self.allowed_peers:
            ID.from_base58(peer)  # ValueError for anything that is not a peer ID

    def inbound_limit(self) -> int:
        """Pool-method calls served at once; beyond this they are answered ``busy``."""
        # Every reserved slot may carry a call, plus one per worker for unreserved calls.
        return self.max_inbound or (SLOTS_PER_WORKER + 1) * self.workers

    def streams_per_peer(self) -> int:
        """Invoke streams one served peer may hold at once: its pool share plus
        ``MAX_STREAMS_PER_PEER`` for the inline methods; one more is answered ``busy``."""
        return self.inbound_limit() + MAX_STREAMS_PER_PEER

    def served_peers(self) -> frozenset[str]:
        """Who may invoke this node: its coordinator and the configured allowed peers.

        A node without ``bootstrap`` and without ``allowed_peers`` serves nobody."""
        peers = set(self.allowed_peers)
        if self.bootstrap:
            coordinator, _ = split_p2p_addr(self.bootstrap)
            peers.add(coordinator.to_base58())
        return frozenset(peers)


def run_node(config: NodeConfig) -> None:
    """Run a node until SIGINT/SIGTERM (or its parent process disappears)."""
    trio.run(_run, config)


async def _run(config: NodeConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        await NodeService(config).serve(signals)


def _write_ready_file(path: Path, *, peer_id: str, listen_addrs: list[str]) -> None:
    """Atomically, so a watcher never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"peer_id": peer_id, "listen_addrs": listen_addrs, "pid": os.getpid()}
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)


class NodeService:
    """The state of one running node (Trio only)."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._key_pair = load_or_create_keypair(config.key_file)
        self.peer_id = peer_id_of(self._key_pair)
        self.context = NodeContext(
            peer_id=self.peer_id,
            name=config.name,
            noise_level=config.noise_level,
            blas_threads=config.blas_threads,
        )
        self.book = ReservationBook(
            services=config.services, fidelity=config.fidelity, workers=config.workers
        )
        self._pool = WorkerPool(
            workers=config.workers,
            blas_threads=config.blas_threads,
            preload=config.preload_handlers,
        )
        self._inbound = trio.Semaphore(config.inbound_limit())
        # Trust before bytes: only the coordinator (and configured peers) may open invoke
        # streams, each at most ``streams_per_peer()`` at once.
        self.served_peers = config.served_peers()
        self.gate = InboundGate(
            self.served_peers.__contains__, max_streams_per_peer=config.streams_per_peer()
        )
        self._in_flight = 0
        self._seq = 0
        self._draining = False
        self._changed = trio.Event()
        self._stop = trio.Event()
        #: Set at once, or on SIGUSR1 for a node started with ``join_on_signal``.
        self._join = trio.Event()
        if not config.join_on_signal:
            self._join.set()
        self._mesh: MeshHost | None = None
        log_path = config.log_file or config.key_file.with_name(
            f"{config.key_file.stem}.peerlog.jsonl"
        )
        self.peer_log = PeerLogWriter(PeerLog(log_path, peer_id=self.peer_id))
        self.links = LinkProber(self.peer_id)
        #: Set by the coordinator's ``degrade`` (benchmarks' ``degraded_node`` scenario).
        self.degradation: Degradation | None = None
        self._coordinator = (
            split_p2p_addr(config.bootstrap)[0].to_base58() if config.bootstrap else None
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def serve(self, signals: Any) -> None:
        self._pool.start()
        try:
            async with (
                run_mesh_host(
                    key_pair=self._key_pair,
                    listen_host=self.config.listen_host,
                    listen_port=self.config.p2p_port,
                ) as mesh,
                trio.open_nursery() as nursery,
            ):
                self._mesh = mesh
                serve_invoke(
                    mesh.host,
                    dispatch=self._dispatch,
                    max_frame_bytes=self.config.max_frame_bytes,
                    gate=self.gate,
                )
                if self.config.join_on_signal:
                    await self._pool.warm()  # warm before it may be asked to join
                else:
                    nursery.start_soon(self._pool.warm)
                nursery.start_soon(self._advert_loop)
                nursery.start_soon(self._sweep_uncollected_replies)
                # Other nodes' adverts tell where they listen; their links are probed.
                adverts = await mesh.pubsub.subscribe(ADVERT_TOPIC)
                nursery.start_soon(self._hear_nodes, adverts)
                nursery.start_soon(self.links.run, mesh.host)
                if self.config.bootstrap:
                    nursery.start_soon(self._bootstrap_loop, self.config.bootstrap)
                if self.config.parent_pid is not None:
                    nursery.start_soon(self._watch_parent, self.config.parent_pid)
                nursery.start_soon(self._watch_signals, signals)
                logger.info(
                    "node %s serving on %s for %s",
                    self.peer_id,
                    mesh.listen_addrs(),
                    sorted(self.served_peers),
                )
                if not self.served_peers:
                    logger.warning("node %s has no coordinator: it serves nobody", self.peer_id)
                if self.config.ready_file is not None:
                    _write_ready_file(
                        self.config.ready_file,
                        peer_id=self.peer_id,
                        listen_addrs=mesh.listen_addrs(),
                    )
                await self._stop.wait()
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self._pool.shutdown()
            self.peer_log.close()

    async def _hear_nodes(self, subscription: Any) -> None:
        """Drain the advert subscription (its queue holds 32 messages) into ``links``."""
        async for message in subscription:
            from_peer = ID(message.from_id).to_base58()
            try:
                advert = validate_advert(
                    message.data, from_peer=from_peer, now=time.time(), max_age_s=ADVERT_MAX_AGE_S
                )
            except AdvertRejected:
                continue
            self.links.heard(advert.peer_id, advert.listen_addrs)

    async def _drain(self) -> None:
        self._draining = True
        with trio.move_on_after(DRAIN_ADVERT_S):
            await self._publish_advert()

    def _request_stop(self) -> None:
        """Stop gracefully; if shutdown wedges (a stuck stream or worker), exit anyway."""
        if not self._stop.is_set():
            timer = threading.Timer(HARD_EXIT_AFTER_S, os._exit, args=(0,))
            timer.daemon = True
            timer.start()
        self._stop.set()

    async def _watch_signals(self, signals: Any) -> None:
        async for signum in signals:
            if signum == signal.SIGUSR1:  # join the mesh now (``join_on_signal``)
                logger.info("node %s received SIGUSR1; joining", self.peer_id)
                self._join.set()
                continue
            logger.info("node %s received signal %s; draining", self.peer_id, signum)
            self._request_stop()
            return

    async def _watch_parent(self, parent_pid: int) -> None:
        while True:
            await trio.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                break
        logger.warning("parent process %s is gone; node %s exits", parent_pid, self.peer_id)
        self._request_stop()

    # --- mesh membership ---------------------------------------------------------------------

    async def _bootstrap_loop(self, bootstrap: str) -> None:
        """Keep a connection to the coordinator, re-dialling with bounded backoff."""
        mesh = self._require_mesh()
        peer, addr = split_p2p_addr(bootstrap)
        backoff = BOOTSTRAP_RETRY_INITIAL_S
        watch = ConnectionLost(peer)
        mesh.host.get_network().register_notifee(watch)
        await self._join.wait()
        while True:
            if is_connected(mesh.host, peer):
                backoff = BOOTSTRAP_RETRY_INITIAL_S
                # Woken as the connection closes; the periodic look stays as a fallback (a
                # reset connection can stay listed without a notice).
                with trio.move_on_after(BOOTSTRAP_CHECK_S):
                    await watch.lost.wait()
                watch.lost = trio.Event()
                continue
            try:
                await dial(mesh.host, peer, [addr], limit_s=DIAL_TIMEOUT_S)
            except DIAL_ERRORS as error:
                logger.info("bootstrap %s unreachable (%r); retry in %.1f s", peer, error, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BOOTSTRAP_RETRY_MAX_S)
                continue
            logger.info("connected to bootstrap %s", peer)
            self._changed.set()  # introduce ourselves at once

    def advert(self) -> Advert:
        workers = self.config.workers
        availability: Availability
        if self._draining:
            availability = "DRAINING"
        elif self._in_flight >= workers:
            availability = "BUSY"
        else:
            availability = "AVAILABLE"
        self._seq += 1
        return Advert(
            peer_id=self.peer_id,
            name=self.config.name,
            services=list(self.config.services),
            qubit_min=self.config.qubit_min,
            qubit_max=self.config.qubit_max,
            fidelity=self.config.fidelity,
            noise_level=self._work_context().noise_level,
            load=min(1.0, self._in_flight / workers),
            availability=availability,
            workers=workers,
            listen_addrs=self._require_mesh().listen_addrs(),
            version=__version__,
            sent_at=time.time(),
            seq=self._seq,
            links=self.links.links(),
            features=list(NODE_FEATURES),
        )

    async def _publish_advert(self) -> None:
        mesh = self._require_mesh()
        try:
            await mesh.pubsub.publish(ADVERT_TOPIC, encode_advert(self.advert()))
        except TRANSPORT_ERRORS as error:
            logger.warning("advert publish failed: %r", error)

    async def _sweep_uncollected_replies(self) -> None:
        """Remove reply arrays left in shared memory for callers that never read them (a
        timed-out or crashed coordinator); a cheap directory scan."""
        while True:
            swept = hostlocal.sweep()
            if swept:
                logger.info("removed %d uncollected reply arrays from shared memory", swept)
            await trio.sleep(SPILL_SWEEP_INTERVAL_S)

    async def _advert_loop(self) -> None:
        """Advertise every ``advert_interval_s`` and soon after a change, never too often."""
        last_sent = -math.inf
        while True:
            with trio.move_on_after(self.config.advert_interval_s):
                await self._changed.wait()
            self._changed = trio.Event()
            wait = last_sent + ADVERT_MIN_SPACING_S - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            self.book.expire(now=time.time())
            await self._publish_advert()
            last_sent = trio.current_time()

    # --- invocations -------------------------------------------------------------------------

    async def _dispatch(self, request: codec.Request, remote: str) -> dict[str, Any] | bytes:
        if request.method == METHOD_DEGRADE:
            return self._degrade(request.params, remote)
        if request.method in INLINE_METHODS:
            result = self._inline(request.method, request.params)
            if request.method in RESERVATION_METHODS:
                # A reservation step is answered only once its record is on disk; the fsync
                # runs on the log's writer thread, shared with every concurrent record.
                await settled(self._log_reservation(request.method, request.params, result))
            return result
        if request.method not in handlers.METHODS:
            raise RemoteError(ERR_UNKNOWN_METHOD, f"unknown method {request.method!r}")
        envelope = {k: v for k, v in request.params.items() if k in ENVELOPE_KEYS}
        params = {k: v for k, v in request.params.items() if k not in ENVELOPE_KEYS}
        reservation_id = envelope.get(ENVELOPE_RESERVATION_ID)
        reserved = (
            None
            if ENVELOPE_RESERVE not in envelope
            else await self._reserve_inline(reservation_id, envelope[ENVELOPE_RESERVE])
        )
        try:
            return await self._work(request, remote, envelope, params)
        finally:
            # The grant is on disk before the caller hears anything of the call.
            if reserved is not None:
                await settled(reserved)

    async def _work(
        self,
        request: codec.Request,
        remote: str,
        envelope: dict[str, Any],
        params: dict[str, Any],
    ) -> bytes:
        """Run a work method in the worker pool, consuming its reservation (if any) first."""
        reservation_id = envelope.get(ENVELOPE_RESERVATION_ID)
        if isinstance(reservation_id, str):
            self.book.consume(reservation_id=reservation_id)
        try:
            self._inbound.acquire_nowait()
        except trio.WouldBlock as error:
            raise RemoteError(ERR_BUSY, f"node {self.config.name} is saturated") from error
        self._set_in_flight(+1)
        started = time.perf_counter()
        context = self._work_context()
        if context.slowdown > 1.0 and self.degradation is not None:
            self.degradation.slowed += 1
        try:
            ok, payload = await self._pool.run(
                request.method,
                params,
                context,
                reply_spill_limit=self._reply_spill_limit(request),
            )
        finally:
            self._set_in_flight(-1)
            self._inbound.release()
        # An audit record, not a state change the caller relies on: the reply does not wait
        # for its fsync (the coordinator persists the result itself before acknowledging).
        self.peer_log.record(
            "invoke.finished",
            method=request.method,
            remote=remote,
            ok=ok,
            seconds=round(time.perf_counter() - started, 6),
            job_id=envelope.get(ENVELOPE_JOB_ID, params.get("job_id")),
            fragment_id=envelope.get(ENVELOPE_UNIT_ID, params.get("fragment_id")),
            reservation_id=reservation_id if isinstance(reservation_id, str) else None,
        )
        if ok:
            assert isinstance(payload, bytes)
            return payload
        code, message = payload
        raise RemoteError(str(code), str(message))

    def _log_reservation(
        self, method: str, params: dict[str, Any], result: dict[str, Any]
    ) -> Future[Any]:
        return self.peer_log.record(
            f"reservation.{method}",
            reservation_id=params.get("reservation_id"),
            service_type=params.get("service_type"),
            **{k: v for k, v in result.items() if k in _LOGGED_RESERVATION_FIELDS},
        )

    async def _reserve_inline(self, reservation_id: Any, reserve: Any) -> Future[Any]:
        """The reservation a work call carries (``ENVELOPE_RESERVE``), reserved and committed
        as a ``reserve`` with ``"commit": true`` is, before the work runs: one round trip
        instead of two. A refusal is answered (``reservation_refused``, the work not run)
        once its record is on disk, as a ``reserve`` is; a grant's record is written while
        the work runs, and the reply waits for it. Returns the grant's record."""
        if not isinstance(reserve, dict):
            raise RemoteError(ERR_BAD_REQUEST, f"{ENVELOPE_RESERVE} must be an object")
        params = {**reserve, "reservation_id": reservation_id, "commit": True}
        result = self._inline(METHOD_RESERVE, params)
        record = self._log_reservation(METHOD_RESERVE, params, result)
        if not result.get("accepted"):
            await settled(record)
            raise RemoteError(ERR_RESERVATION_REFUSED, str(result.get("reason") or "refused"))
        return record

    def _reply_spill_limit(self, request: codec.Request) -> int | None:
        """Bytes of arrays the reply may leave in shared memory: only for a caller that
        offered it and shares our host (``mesh/hostlocal.py``)."""
        ours = hostlocal.host_key()
        if ours is None or request.local != ours:
            return None
        return self.config.max_frame_bytes

    def _set_in_flight(self, delta: int) -> None:
        # Advertise at once only when the node turns busy or free again; load changes in
        # between ride on the periodic advert (the coordinator counts its own in-flight work,
        # and an advert per call floods gossipsub under load).
        was_busy = self._in_flight >= self.config.workers
        self._in_flight += delta
        if was_busy != (self._in_flight >= self.config.workers):
            self._changed.set()

    def _inline(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        try:
            if method == METHOD_PING:
                return handlers.ping(params, self.context)
            if method == METHOD_NODE_STATUS:
                return {
                    "in_flight": self._in_flight,
                    "reservations": self.book.active_count(now=now),
                    "advert": self.advert().model_dump(mode="json"),
                }
            if method == METHOD_RESERVE and self._refuse_degraded(now):
                _str_param(params, "reservation_id")
                result = {"accepted": False, "reason": REASON_SATURATED, "expires_at": now}
            elif method == METHOD_RESERVE:
                result = self.book.reserve(
                    reservation_id=_str_param(params, "reservation_id"),
                    service_type=_str_param(params, "service_type"),
                    min_fidelity=_float_param(params, "min_fidelity", default=0.0),
                    ttl_s=_float_param(params, "ttl_s", default=DEFAULT_RESERVATION_TTL_S),
                    in_flight=self._in_flight,
                    now=now,
                )
                # ``"commit": true`` reserves and commits in one round trip (an additive
                # extension: callers that omit it send ``commit`` separately).
                if result["accepted"] and params.get("commit") is True:
                    committed = self.book.commit(
                        reservation_id=_str_param(params, "reservation_id"), now=now
                    )
                    result = {**result, **committed}
            elif method == METHOD_COMMIT:
                result = self.book.commit(
                    reservation_id=_str_param(params, "reservation_id"), now=now
                )
            else:
                result = self.book.release(reservation_id=_str_param(params, "reservation_id"))
        except (TypeError, ValueError) as error:
            raise RemoteError(ERR_BAD_REQUEST, f"bad {method} params: {error}") from error
        # A reservation changes nothing an advert says (load counts work in flight), so no
        # advert here; ``_dispatch`` writes its peer-log record.
        return result

    # --- degradation (benchmarks' degraded_node scenario) ---------------------------------------

    def _degrade(self, params: dict[str, Any], remote: str) -> dict[str, Any]:
        """``degrade``: only the coordinator may slow this node down or restore it."""
        if remote != self._coordinator:
            raise RemoteError(ERR_BAD_REQUEST, "degrade is accepted from the coordinator only")
        now = time.time()
        previous = self.degradation
        if params.get("restore") is True:
            self.degradation = None
            self._changed.set()
            report = previous.report(now=now) if previous else {"degraded": False}
            logger.info("node %s restored after degradation: %s", self.peer_id, report)
            return {**report, "degraded": False}
        try:
            self.degradation = Degradation.from_params(params, now=now)
        except ValueError as error:
            raise RemoteError(ERR_BAD_REQUEST, f"bad degrade params: {error}") from error
        logger.info("node %s degraded: %s", self.peer_id, self.degradation.report(now=now))
        self._changed.set()  # the advert says the noise level now in force
        return self.degradation.report(now=now)

    def _active_degradation(self, now: float) -> Degradation | None:
        degradation = self.degradation
        return degradation if degradation is not None and degradation.active(now) else None

    def _refuse_degraded(self, now: float) -> bool:
        degradation = self._active_degradation(now)
        return degradation is not None and degradation.refuse_next()

    def _work_context(self) -> NodeContext:
        """The context a work method runs with: degraded (slower, noisier) while it lasts."""
        degradation = self._active_degradation(time.time())
        if degradation is None:
            return self.context
        noise = degradation.noise_level
        return replace(
            self.context,
            slowdown=degradation.slowdown,
            noise_level=self.context.noise_level if noise is None else noise,
        )

    def _require_mesh(self) -> MeshHost:
        if self._mesh is None:
            raise RuntimeError("node host is not running")
        return self._mesh


def _float_param(params: dict[str, Any], name: str, *, default: float) -> float:
    """An optional number; JSON null means "not given"."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number")
    return float(value)


def _str_param(params: dict[str, Any], name: str) -> str:
    """A non-empty string of bounded length (``check_id``)."""
    return check_id(params.get(name), name)
