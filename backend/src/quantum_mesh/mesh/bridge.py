"""The asyncio <-> Trio bridge: the ONLY module that knows two event loops exist.

FastAPI runs on asyncio; py-libp2p runs on Trio. The coordinator's libp2p host lives in a
daemon thread running ``trio.run``. asyncio -> Trio: an asyncio future is created, the work is
scheduled into the Trio nursery with ``TrioToken.run_sync_soon``, and the Trio task resolves
the future with ``loop.call_soon_threadsafe``. Trio -> asyncio (adverts, disconnects): the same
``call_soon_threadsafe``, so every user callback runs on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio
from libp2p.abc import INetConn, INetwork
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2

from quantum_mesh.mesh import codec, hostlocal, packing
from quantum_mesh.mesh.adverts import REJECTION_REASONS, Advert, validate_advert
from quantum_mesh.mesh.channel import (
    Channels,
    ReplyCallback,
    encode_request,
    new_request_id,
    parse_reply,
    serve_invoke,
)
from quantum_mesh.mesh.errors import (
    AdvertRejected,
    InvokeTimeout,
    MeshError,
    ProtocolError,
    RemoteError,
)
from quantum_mesh.mesh.host import ConnectionNotifee, MeshHost, is_connected, run_mesh_host
from quantum_mesh.mesh.identity import load_or_create_keypair, peer_id_of
from quantum_mesh.mesh.invoke import InboundGate
from quantum_mesh.mesh.protocol import (
    ADVERT_TOPIC,
    BRIDGE_GRACE_S,
    BRIDGE_STOP_TIMEOUT_S,
    CHANNEL_PROTOCOL,
    DEFAULT_MAX_FRAME_BYTES,
    ERR_UNKNOWN_METHOD,
    INVOKE_PROTOCOL,
    MAX_STREAMS_PER_PEER,
    METHOD_PING,
    PING_TIMEOUT_S,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long ``start`` waits for the host to listen.
START_TIMEOUT_S = 30.0
#: Requests carrying at least this many bytes of arrays are encoded in a thread.
OFF_LOOP_ENCODE_BYTES = 1 << 20


def _resolve(
    fut: asyncio.Future[Any], value: Any = None, error: BaseException | None = None
) -> None:
    """Runs on the asyncio loop; a caller that already gave up has a done future."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


@dataclass(frozen=True, slots=True)
class _OutgoingCall:
    """One encoded request on its way from the asyncio side to a peer's channel."""

    peer_id: str
    addrs: list[str]
    request_id: str
    frame: bytes
    on_reply: ReplyCallback
    limit_s: float


class _ConnectionWatcher(ConnectionNotifee):
    """Forwards connection changes of the Trio host to the bridge (called in the Trio thread)."""

    def __init__(self, bridge: MeshBridge) -> None:
        self._bridge = bridge

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._bridge._peer_connected(conn.muxed_conn.peer_id.to_base58())

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        others = [c for c in network.get_connections(peer) if c is not conn and not c.is_closed]
        if not others:
            self._bridge._peer_disconnected(peer.to_base58())


class MeshBridge:
    """The coordinator's libp2p host, used from asyncio.

    ``on_advert`` and ``on_peer_disconnected`` are called on the asyncio loop. Rejected
    adverts are counted in ``advert_stats`` and never stop the ingest loop.
    """

    def __init__(
        self,
        *,
        key_file: Path,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        advert_max_age_s: float = 5.0,
        shared_memory: bool = True,
        shared_memory_min_bytes: int = hostlocal.DEFAULT_MIN_SPILL_BYTES,
    ) -> None:
        self._key_pair = load_or_create_keypair(key_file)
        # Our host key, offered on every request; None: big arrays always use the stream.
        self._host_key = hostlocal.host_key() if shared_memory else None
        self._spill_min_bytes = shared_memory_min_bytes
        #: Peers whose replies showed they share our spill directory (``mesh/hostlocal.py``).
        self._same_host: set[str] = set()
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._max_frame_bytes = max_frame_bytes
        self._advert_max_age_s = advert_max_age_s
        self.peer_id: str = peer_id_of(self._key_pair)
        self.listen_addrs: list[str] = []
        self.protocols: list[str] = [CHANNEL_PROTOCOL, INVOKE_PROTOCOL]
        self.advert_topic: str = ADVERT_TOPIC
        self.on_advert: Callable[[Advert], None] | None = None
        self.on_peer_disconnected: Callable[[str], None] | None = None
        # Called from the Trio thread with the remote peer ID of every inbound invoke stream,
        # before any of it is read: a plain, non-blocking lookup. None trusts every peer.
        self.stream_filter: Callable[[str], bool] | None = None
        self.inbound = InboundGate(self._stream_allowed, max_streams_per_peer=MAX_STREAMS_PER_PEER)
        self.advert_stats: dict[str, int] = {"accepted": 0, **dict.fromkeys(REJECTION_REASONS, 0)}
        self._connected: set[str] = set()
        self._pending: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._mesh: MeshHost | None = None
        self._channels: Channels | None = None
        self._cancel = trio.CancelScope()

    # --- lifecycle (asyncio side) ------------------------------------------------------------

    async def start(self) -> None:
        """Start the Trio thread; returns once the host listens. Raises if startup fails."""
        if self._thread is not None:
            raise MeshError("mesh bridge already started")
        self._loop = asyncio.get_running_loop()
        started: asyncio.Future[list[str]] = self._loop.create_future()
        self._cancel = trio.CancelScope()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="qmesh-trio", daemon=True
        )
        self._thread.start()
        try:
            self.listen_addrs = await asyncio.wait_for(started, START_TIMEOUT_S)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Cancel the Trio side, join its thread and fail any call still waiting. Idempotent."""
        thread, token = self._thread, self._token
        if thread is None:
            return
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._cancel.cancel)
        await asyncio.to_thread(thread.join, BRIDGE_STOP_TIMEOUT_S)
        if thread.is_alive():
            logger.warning("mesh Trio thread did not stop within %s s", BRIDGE_STOP_TIMEOUT_S)
        for fut in list(self._pending):
            _resolve(fut, error=MeshError("mesh bridge stopped"))
        self._pending.clear()
        self._thread = self._token = self._nursery = self._mesh = self._channels = None
        self._connected.clear()

    # --- public calls (asyncio side) -------------------------------------------------------

    async def invoke(
        self,
        peer_id: str,
        method: str,
        params: dict[str, Any],
        *,
        timeout: float,
        addrs: list[str] | None = None,
    ) -> dict[str, Any]:
        """Call ``method`` on a peer over its protocol-2 channel (``mesh/channel.py``).

        The request is encoded here, on the caller's thread; the Trio thread only queues its
        bytes, and the reply wakes this loop once. No Trio task is spawned per call unless
        the channel must first be opened.

        Raises:
            PeerUnreachable: the peer cannot be dialled or the connection died mid-call.
            InvokeTimeout: no reply within ``timeout``.
            RemoteError: the peer answered ``ok: false``.
            FrameTooLarge: the request is over the frame limit.
            ProtocolError: ``params`` cannot travel, or the reply broke the protocol.
        """
        if self._mesh is None or self._token is None:
            raise MeshError("mesh bridge is not running")
        request_id = new_request_id()
        spill = (
            hostlocal.spill_for(
                self._host_key, limit=self._max_frame_bytes, min_bytes=self._spill_min_bytes
            )
            if peer_id in self._same_host
            else None
        )
        encode = partial(
            encode_request,
            request_id,
            method,
            params,
            max_frame_bytes=self._max_frame_bytes,
            local=self._host_key,
            spill=spill,
        )
        try:
            # Copying a statevector into a frame is milliseconds: not on the caller's loop.
            big = packing.array_bytes(params) >= OFF_LOOP_ENCODE_BYTES
            frame = await asyncio.to_thread(encode) if big else encode()
        except TypeError as error:
            raise ProtocolError(f"params of {method} cannot travel: {error}") from error
        try:
            reply = await self._call(peer_id, method, request_id, frame, timeout, addrs)
        finally:
            if spill is not None:  # whatever the callee did not take, the call is over
                spill.discard()
        if self._host_key is not None and reply.get("local") == self._host_key:
            self._same_host.add(peer_id)
        return parse_reply(reply, request_id)

    async def _call(
        self,
        peer_id: str,
        method: str,
        request_id: str,
        frame: bytes,
        timeout: float,
        addrs: list[str] | None,
    ) -> dict[str, Any]:
        """Send one encoded request and wait for its reply envelope."""
        token = self._token
        if token is None:
            raise MeshError("mesh bridge is not running")
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_reply(obj: dict[str, Any] | None, error: MeshError | None) -> None:
            self._post(_resolve, fut, obj, error)

        call = _OutgoingCall(peer_id, addrs or [], request_id, frame, on_reply, timeout)
        try:
            token.run_sync_soon(self._submit, call)
        except trio.RunFinishedError as error:
            raise MeshError("mesh bridge is not running") from error
        self._pending.add(fut)
        try:
            reply = await asyncio.wait_for(fut, timeout)
        except TimeoutError as error:
            self._forget_call(peer_id, request_id)
            raise InvokeTimeout(f"{method} on {peer_id} timed out after {timeout} s") from error
        except asyncio.CancelledError:
            self._forget_call(peer_id, request_id)
            raise
        finally:
            self._pending.discard(fut)
        return reply

    async def ping(
        self,
        peer_id: str,
        *,
        timeout: float = PING_TIMEOUT_S,
    ) -> float:
        """Round-trip seconds of a ``ping`` invocation (dial included if not connected)."""
        started = time.perf_counter()
        await self.invoke(peer_id, METHOD_PING, {}, timeout=timeout)
        return time.perf_counter() - started

    async def hop(self) -> None:
        """An empty asyncio -> Trio -> asyncio round trip, as ``invoke`` makes it: the
        bridge's own overhead."""
        token = self._token
        if self._mesh is None or token is None:
            raise MeshError("mesh bridge is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        token.run_sync_soon(self._post, _resolve, fut)
        await asyncio.wait_for(fut, BRIDGE_GRACE_S)

    def connected_peers(self) -> set[str]:
        return set(self._connected)

    def runtime_state(self) -> dict[str, Any]:
        """A snapshot of the host for operators: connections, channels, inbound calls and
        the advert topic's pubsub mesh. Read from the asyncio side: every collection is
        copied in one step under the GIL, so the figures are consistent enough to read,
        not a transaction."""
        mesh, channels = self._mesh, self._channels
        if mesh is None:
            return {"running": False}
        topic_peers = list(mesh.pubsub.peer_topics.get(ADVERT_TOPIC, ()))
        gossip_mesh = list(mesh.gossipsub.mesh.get(ADVERT_TOPIC, ()))
        return {
            "running": True,
            "peer_id": self.peer_id,
            "listen_addrs": list(self.listen_addrs),
            "connected_peers": sorted(self._connected),
            "channels": {
                "protocol": CHANNEL_PROTOCOL,
                "open": 0 if channels is None else channels.open_count(),
                "pending_calls": 0 if channels is None else channels.pending_calls(),
            },
            "inbound": {
                "calls_in_flight": dict(self.inbound._open),
                "refused": dict(self.inbound.refused),
                "max_per_peer": self.inbound.max_streams_per_peer,
            },
            "pubsub": {
                "topic": ADVERT_TOPIC,
                "subscribed_peers": sorted(str(p) for p in topic_peers),
                "gossip_mesh_peers": sorted(str(p) for p in gossip_mesh),
            },
            "advert_stats": dict(self.advert_stats),
        }

    # --- asyncio -> Trio --------------------------------------------------------------------

    def _require_mesh(self) -> MeshHost:
        if self._mesh is None or self._token is None:
            raise MeshError("mesh bridge is not running")
        return self._mesh

    def _forget_call(self, peer_id: str, request_id: str) -> None:
        token = self._token
        if token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._forget, peer_id, request_id)

    # --- Trio side --------------------------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Schedule ``fn(*args)`` on the asyncio loop (from the Trio thread)."""
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            logger.debug("asyncio loop closed; dropping a mesh event")

    def _submit(self, call: _OutgoingCall) -> None:
        channels, nursery = self._channels, self._nursery
        if channels is None or nursery is None:
            call.on_reply(None, MeshError("mesh bridge is stopping"))
            return
        channel = channels.get(call.peer_id)
        if channel is not None:
            channel.submit(call.request_id, call.frame, call.on_reply)
            return
        try:
            nursery.start_soon(self._connect_then_submit, channels, call)
        except RuntimeError:
            call.on_reply(None, MeshError("mesh bridge is stopping"))

    async def _connect_then_submit(self, channels: Channels, call: _OutgoingCall) -> None:
        try:
            with trio.fail_after(call.limit_s):
                channel = await channels.connect(call.peer_id, call.addrs, limit_s=call.limit_s)
        except trio.TooSlowError:
            message = f"opening a channel to {call.peer_id} took over {call.limit_s} s"
            call.on_reply(None, InvokeTimeout(message))
            return
        except MeshError as error:
            call.on_reply(None, error)
            return
        except Exception as error:
            # The boundary: a bug while opening one channel must not take the host down.
            logger.exception("opening a channel to %s failed unexpectedly", call.peer_id)
            call.on_reply(None, MeshError(f"internal mesh error: {error!r}"))
            return
        channel.submit(call.request_id, call.frame, call.on_reply)

    def _forget(self, peer_id: str, request_id: str) -> None:
        channel = None if self._channels is None else self._channels.get(peer_id)
        if channel is not None:
            channel.forget(request_id)

    def _thread_main(self, started: asyncio.Future[list[str]]) -> None:
        try:
            trio.run(self._trio_main, started)
        except BaseException as error:
            logger.exception("mesh Trio thread crashed")
            self._post(_resolve, started, None, MeshError(f"mesh host failed: {error!r}"))
        finally:
            self._token = None
            self._nursery = None
            self._channels = None

    async def _trio_main(self, started: asyncio.Future[list[str]]) -> None:
        with self._cancel:
            async with (
                run_mesh_host(
                    key_pair=self._key_pair,
                    listen_host=self._listen_host,
                    listen_port=self._listen_port,
                ) as mesh,
                trio.open_nursery() as nursery,
            ):
                # Streams from peers the coordinator does not trust are refused by the gate,
                # before their request is read (``not_enrolled``).
                serve_invoke(
                    mesh.host,
                    dispatch=self._dispatch,
                    max_frame_bytes=self._max_frame_bytes,
                    gate=self.inbound,
                )
                mesh.host.get_network().register_notifee(_ConnectionWatcher(self))
                subscription = await mesh.pubsub.subscribe(ADVERT_TOPIC)
                nursery.start_soon(self._ingest, subscription)
                self._channels = Channels(mesh.host, nursery, max_frame_bytes=self._max_frame_bytes)
                self._mesh, self._nursery = mesh, nursery
                self._token = trio.lowlevel.current_trio_token()
                self._post(_resolve, started, mesh.listen_addrs())
                await trio.sleep_forever()

    def _stream_allowed(self, remote: str) -> bool:
        check = self.stream_filter
        return check is None or check(remote)

    async def _dispatch(self, request: codec.Request, remote: str) -> dict[str, Any]:
        """The coordinator answers only ``ping``, so nodes can measure their link to it."""
        if request.method == METHOD_PING:
            return {"pong": True, "peer_id": self.peer_id, "t": time.time()}
        raise RemoteError(ERR_UNKNOWN_METHOD, f"the coordinator does not serve {request.method}")

    async def _ingest(self, subscription: Any) -> None:
        """Drain the advert subscription continuously: its queue holds only 32 messages."""
        async for message in subscription:
            self._accept_advert(message)

    def _accept_advert(self, message: rpc_pb2.Message) -> None:
        from_peer = ID(message.from_id).to_base58()
        if from_peer == self.peer_id:
            return
        try:
            advert = validate_advert(
                message.data, from_peer=from_peer, now=time.time(), max_age_s=self._advert_max_age_s
            )
        except AdvertRejected as error:
            self.advert_stats[error.reason] = self.advert_stats.get(error.reason, 0) + 1
            logger.debug("rejected advert from %s: %s", from_peer, error)
            return
        self.advert_stats["accepted"] += 1
        self._post(self._deliver_advert, advert)

    def _peer_connected(self, peer_id: str) -> None:
        self._post(self._connected.add, peer_id)

    def _peer_disconnected(self, peer_id: str) -> None:
        self._post(self._deliver_disconnect, peer_id)

    # --- delivered on the asyncio loop -----------------------------------------------------

    def _deliver_advert(self, advert: Advert) -> None:
        callback = self.on_advert
        if callback is None:
            return
        try:
            callback(advert)
        except Exception:
            logger.exception("on_advert callback failed")

    def _deliver_disconnect(self, peer_id: str) -> None:
        self._connected.discard(peer_id)
        callback = self.on_peer_disconnected
        if callback is None:
            return
        try:
            callback(peer_id)
        except Exception:
            logger.exception("on_peer_disconnected callback failed")


__all__ = ["MeshBridge", "is_connected"]
