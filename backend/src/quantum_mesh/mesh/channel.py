"""Invoke protocol 2: one long-lived stream per peer carrying many calls (Trio only).

Protocol 1 negotiates a new stream for every call, which is most of a small call's cost.
Here each caller keeps one stream per peer open. Requests carry ids and replies come back in
the order they finish, so a slow call never holds up a fast one. Bodies are msgpack with
arrays as raw bytes (``mesh/packing.py``). Frames queued while a write is in progress leave
together in the next write (one Noise message), which is what makes calls in flight cheap.

The failure guarantees are protocol 1's:
- a peer that dies mid-call fails every call pending on its channel at once with
  ``PeerUnreachable`` (the stream's EOF or reset arrives within ~10 ms);
- a call past its limit fails with ``InvokeTimeout`` and its late reply is dropped, while
  the channel stays open for the others (``Channel.forget``);
- trust before bytes: a callee refuses a peer it does not serve before reading anything,
  with one error frame with the empty id, which fails every call on that stream;
- the callee's ``InboundGate`` counts each call in flight the way it counts a protocol-1
  stream, and answers ``busy`` to a call beyond the peer's quota.

Frames leave in submission order, so one very large frame delays the frames queued behind
it while it is written (the price of one stream; replies are still out of order).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import MAX_WINDOW_SIZE

from quantum_mesh.mesh import codec, hostlocal, packing
from quantum_mesh.mesh.errors import (
    FrameTooLarge,
    InvokeTimeout,
    MeshError,
    PeerNotReached,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
)
from quantum_mesh.mesh.host import PEERSTORE_ADDR_TTL_S
from quantum_mesh.mesh.hostlocal import Spill
from quantum_mesh.mesh.invoke import (
    DIAL_ERRORS,
    TRANSPORT_ERRORS,
    Dispatch,
    InboundGate,
    dial_addrs,
    open_stream,
    refuse_stream,
    serve_stream,
)
from quantum_mesh.mesh.protocol import (
    CHANNEL_PROTOCOL,
    CHANNEL_VERSION,
    ERR_FRAME_TOO_LARGE,
    ERR_HANDLER_ERROR,
    ERR_NOT_ENROLLED,
    INVOKE_PROTOCOL,
)

logger = logging.getLogger(__name__)

#: How long a callee keeps writing its last frames after the caller's side ended.
FINAL_WRITE_TIMEOUT_S = 5.0
#: A single write that takes longer than this ends the channel.
WRITE_STALL_S = 30.0
#: What ends a channel from below: the transport failing, or a write stalling.
_ENDING_ERRORS: tuple[type[Exception], ...] = (*TRANSPORT_ERRORS, trio.TooSlowError)
#: Receive window of a channel stream (yamux's own ceiling).
CHANNEL_WINDOW_BYTES = MAX_WINDOW_SIZE

#: Called once per call with its reply envelope, or with the error that ended the call.
#: Runs on the Trio thread and must not block.
ReplyCallback = Callable[[dict[str, Any] | None, MeshError | None], None]

_request_ids = itertools.count(1)


def new_request_id() -> str:
    """A request id unique in this process (ids only need to be unique per channel)."""
    return format(next(_request_ids), "x")


def encode_request(
    request_id: str,
    method: str,
    params: dict[str, Any],
    *,
    max_frame_bytes: int,
    local: str | None = None,
    spill: Spill | None = None,
) -> bytes:
    """One framed protocol-2 request. Callers encode off the Trio thread where they can.

    ``local`` offers the callee shared memory for big arrays in its reply (our host key);
    ``spill`` sends big arrays of ``params`` that way (a callee known to share our host).
    The caller discards ``spill`` once the call has ended.

    Raises:
        FrameTooLarge: the encoded request exceeds ``max_frame_bytes``.
        TypeError: something in ``params`` cannot travel.
    """
    request = codec.make_request(request_id, method, params, version=CHANNEL_VERSION, local=local)
    try:
        return codec.frame(packing.pack(request, spill=spill), max_bytes=max_frame_bytes)
    except FrameTooLarge:
        if spill is not None:
            spill.discard()
        raise


def parse_reply(obj: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The ``result`` of a reply envelope; raises ``RemoteError`` for an error reply."""
    return codec.parse_response(obj, expected_id=request_id, version=CHANNEL_VERSION)


class _Outbox:
    """Frames waiting to be written to one stream, written in order, coalesced."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream
        self._frames: list[bytes] = []
        self._wake = trio.Event()
        self._finished = False
        #: The error that ended writing, if any.
        self.failure: Exception | None = None

    def put(self, frame: bytes) -> None:
        self._frames.append(frame)
        self._wake.set()

    def finish(self) -> None:
        """Write what is queued, then stop."""
        self._finished = True
        self._wake.set()

    async def _write(self, data: bytes) -> None:
        # Never cancelled halfway: py-libp2p's Noise session advances its nonce before the
        # bytes leave, so a write abandoned mid-way desynchronises the whole connection
        # (the peer fails authentication on every later message). A write that stalls this
        # long means the connection is lost anyway.
        with trio.CancelScope(shield=True), trio.fail_after(WRITE_STALL_S):
            await self._stream.write(data)

    async def write_forever(self, on_failure: trio.CancelScope) -> None:
        """Write until finished. Never raises: a failed write is kept in ``failure`` and
        cancels ``on_failure`` (an exception would leave the nursery as an exception group
        and, uncaught, take the whole host down)."""
        try:
            while True:
                await self._wake.wait()
                # Trio is single-threaded: nothing runs between the wait and the swap.
                self._wake = trio.Event()
                frames, self._frames = self._frames, []
                if frames:
                    await self._write(frames[0] if len(frames) == 1 else b"".join(frames))
                if self._finished and not self._frames:
                    return
        except _ENDING_ERRORS as error:
            self.failure = error
            on_failure.cancel()


class Channel:
    """The caller's end of one protocol-2 stream to one peer."""

    def __init__(self, stream: INetStream, peer_id: str, *, max_frame_bytes: int) -> None:
        self.peer_id = peer_id
        self._stream = stream
        self._max_frame_bytes = max_frame_bytes
        self._outbox = _Outbox(stream)
        self._pending: dict[str, ReplyCallback] = {}
        #: Why the channel ended; a closed channel takes no more calls.
        self.closed: MeshError | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, request_id: str, frame: bytes, on_reply: ReplyCallback) -> None:
        """Queue one framed request (``encode_request``); ``on_reply`` gets its answer."""
        if self.closed is not None:
            on_reply(None, self.closed)
            return
        self._pending[request_id] = on_reply
        self._outbox.put(frame)

    def forget(self, request_id: str) -> None:
        """The caller gave up on this call: its reply, if it ever comes, is dropped."""
        self._pending.pop(request_id, None)

    async def run(self) -> None:
        """Read replies and write requests until the stream ends; never raises."""
        error: MeshError = PeerUnreachable(f"channel to {self.peer_id} closed")
        try:
            await _widen_window(self._stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._outbox.write_forever, nursery.cancel_scope)
                error = await self._read_replies()
                nursery.cancel_scope.cancel()
            if self._outbox.failure is not None:
                failure = self._outbox.failure
                error = PeerUnreachable(f"connection to {self.peer_id} failed: {failure!r}")
        except _ENDING_ERRORS as failure:
            error = PeerUnreachable(f"connection to {self.peer_id} failed: {failure!r}")
        except Exception as bug:
            # The boundary: whatever one channel hits must not take the host down.
            logger.exception("channel to %s failed unexpectedly", self.peer_id)
            error = PeerUnreachable(f"channel to {self.peer_id} failed: {bug!r}")
        finally:
            self._close(error)
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await _reset_quietly(self._stream)

    async def _read_replies(self) -> MeshError:
        """Deliver replies until the stream ends; returns why it ended."""
        reader = codec.FrameReader(self._stream, max_bytes=self._max_frame_bytes)
        while True:
            try:
                body = await reader.next_frame()
                # Spilled arrays arrive only because our requests offered shared memory;
                # they are read below, per reply, so one bad file fails one call only.
                obj = packing.unpack(body, spilled="defer" if hostlocal.host_key() else "refuse")
            except FrameTooLarge as error:
                return PeerUnreachable(f"{self.peer_id} broke the protocol: {error}")
            except ProtocolError as error:
                return PeerUnreachable(f"connection to {self.peer_id} lost: {error}")
            except TRANSPORT_ERRORS as error:
                return PeerUnreachable(f"connection to {self.peer_id} failed: {error!r}")
            if not isinstance(obj, dict):
                return PeerUnreachable(f"{self.peer_id} sent a reply that is not a map")
            request_id = obj.get("id")
            if request_id == "" and obj.get("ok") is False:
                # The callee refused the whole stream (or could not read it): every call on
                # it gets that answer.
                return _remote_error(obj)
            on_reply = self._pending.pop(request_id, None) if isinstance(request_id, str) else None
            try:
                obj = hostlocal.materialize(obj)  # even unawaited: the files must go
            except ProtocolError as error:
                if on_reply is not None:
                    on_reply(None, error)
                continue
            if on_reply is not None:
                on_reply(obj, None)

    def _close(self, error: MeshError) -> None:
        if self.closed is not None:
            return
        self.closed = error
        pending, self._pending = self._pending, {}
        for on_reply in pending.values():
            on_reply(None, error)


async def _widen_window(stream: INetStream) -> None:
    """Grant the sender ``CHANNEL_WINDOW_BYTES`` of credit on this stream at once.

    yamux starts every stream at 256 KiB, and py-libp2p's autotune answers nearly every read
    with a credit frame while it grows the window. A channel is long-lived and both ends are
    ours: one large grant up front lets a 16 MiB statevector flow without credit round trips,
    and later credit goes back in batches of half the 256 KiB target (``mesh/host.py`` turns
    autotune off). A no-op where the muxer is not py-libp2p's yamux."""
    muxed: Any = getattr(stream, "muxed_stream", None)
    if not hasattr(muxed, "recv_window") or not hasattr(muxed, "send_window_update"):
        return
    grant = CHANNEL_WINDOW_BYTES - int(muxed.recv_window)
    if grant <= 0:
        return
    muxed.recv_window += grant
    with trio.CancelScope(shield=True), trio.fail_after(WRITE_STALL_S):
        await muxed.send_window_update(grant)


def _remote_error(obj: dict[str, Any]) -> MeshError:
    try:
        codec.parse_response(obj, expected_id="", version=CHANNEL_VERSION)
    except MeshError as error:
        return error
    return PeerUnreachable("unexpected refusal")


async def _reset_quietly(stream: INetStream) -> None:
    try:
        await stream.reset()
    except TRANSPORT_ERRORS:
        logger.debug("channel reset failed", exc_info=True)


class Channels:
    """The caller's channels, one per peer, opened on first use and reopened after a loss.

    Lives on the Trio thread; ``nursery`` runs each channel's reader and writer.
    """

    def __init__(self, host: IHost, nursery: trio.Nursery, *, max_frame_bytes: int) -> None:
        self._host = host
        self._nursery = nursery
        self._max_frame_bytes = max_frame_bytes
        self._open: dict[str, Channel] = {}
        self._opening: dict[str, trio.Event] = {}

    def get(self, peer_id: str) -> Channel | None:
        """The peer's open channel, if any (no I/O: callable from a sync callback)."""
        channel = self._open.get(peer_id)
        return channel if channel is not None and channel.closed is None else None

    def open_count(self) -> int:
        return sum(1 for c in list(self._open.values()) if c.closed is None)

    def pending_calls(self) -> int:
        """Calls sent and not yet answered, over every open channel."""
        return sum(c.pending for c in list(self._open.values()) if c.closed is None)

    async def connect(self, peer_id: str, addrs: list[str], *, limit_s: float) -> Channel:
        """The peer's channel, dialling and opening it if needed; one opening per peer.

        Raises:
            PeerNotReached: the peer cannot be dialled or refuses protocol 2.
        """
        with trio.move_on_after(limit_s):
            while (channel := self.get(peer_id)) is None and peer_id in self._opening:
                await self._opening[peer_id].wait()
        if channel is not None:
            return channel
        opened = self._opening[peer_id] = trio.Event()
        try:
            stream = await self._open_stream(peer_id, addrs, limit_s=limit_s)
            channel = Channel(stream, peer_id, max_frame_bytes=self._max_frame_bytes)
            self._open[peer_id] = channel
            self._nursery.start_soon(self._run, channel)
            return channel
        finally:
            del self._opening[peer_id]
            opened.set()

    async def _open_stream(self, peer_id: str, addrs: list[str], *, limit_s: float) -> INetStream:
        try:
            peer = ID.from_base58(peer_id)
            maddrs = dial_addrs(peer, addrs)
        except ValueError as error:
            raise PeerNotReached(f"bad peer or address {peer_id}: {error}") from error
        if maddrs:
            self._host.get_peerstore().add_addrs(peer, maddrs, PEERSTORE_ADDR_TTL_S)
        try:
            with trio.fail_after(limit_s):
                return await open_stream(
                    self._host, peer, maddrs, limit_s=limit_s, protocol=CHANNEL_PROTOCOL
                )
        except DIAL_ERRORS as error:
            raise PeerNotReached(f"cannot reach peer {peer_id}: {error!r}") from error

    async def _run(self, channel: Channel) -> None:
        await channel.run()
        if self._open.get(channel.peer_id) is channel:
            del self._open[channel.peer_id]


async def call(
    channels: Channels,
    peer_id: str,
    method: str,
    params: dict[str, Any],
    *,
    limit_s: float,
    addrs: list[str] | None = None,
    max_frame_bytes: int,
) -> dict[str, Any]:
    """Call ``method`` on ``peer_id`` over its channel, from Trio; raises as
    ``MeshBridge.invoke`` does."""
    request_id = new_request_id()
    frame = encode_request(request_id, method, params, max_frame_bytes=max_frame_bytes)
    done = trio.Event()
    answer: list[Any] = []

    def on_reply(obj: dict[str, Any] | None, error: MeshError | None) -> None:
        answer.append(error if error is not None else obj)
        done.set()

    channel: Channel | None = None
    try:
        with trio.fail_after(limit_s):
            channel = await channels.connect(peer_id, addrs or [], limit_s=limit_s)
            channel.submit(request_id, frame, on_reply)
            await done.wait()
    except trio.TooSlowError as error:
        raise InvokeTimeout(f"{method} on {peer_id} timed out after {limit_s} s") from error
    finally:
        if channel is not None and not done.is_set():
            channel.forget(request_id)
    if isinstance(answer[0], MeshError):
        raise answer[0]
    return parse_reply(answer[0], request_id)


# --- the callee's side ---------------------------------------------------------------------


def serve_invoke(
    host: IHost, *, dispatch: Dispatch, max_frame_bytes: int, gate: InboundGate
) -> None:
    """Serve both invoke protocols on ``host`` with one dispatcher and one inbound gate."""

    async def one_shot(stream: INetStream) -> None:
        await serve_stream(stream, dispatch=dispatch, max_frame_bytes=max_frame_bytes, gate=gate)

    async def channel(stream: INetStream) -> None:
        await serve_channel(stream, dispatch=dispatch, max_frame_bytes=max_frame_bytes, gate=gate)

    host.set_stream_handler(TProtocol(INVOKE_PROTOCOL), one_shot)
    host.set_stream_handler(TProtocol(CHANNEL_PROTOCOL), channel)


async def serve_channel(
    stream: INetStream, *, dispatch: Dispatch, max_frame_bytes: int, gate: InboundGate
) -> None:
    """Answer the calls of one inbound protocol-2 stream until it ends; never raises.

    When the caller's side ends, calls still running for it are cancelled: nobody is left
    to read their replies."""
    remote = stream.muxed_conn.peer_id.to_base58()
    if not gate.is_trusted(remote):
        gate.refused[ERR_NOT_ENROLLED] += 1
        message = "this peer is not enrolled and approved"
        reply = _error_frame("", ERR_NOT_ENROLLED, message)
        await refuse_stream(stream, remote, reply, code=ERR_NOT_ENROLLED, gate=gate)
        return
    outbox = _Outbox(stream)
    try:
        await _widen_window(stream)
        async with trio.open_nursery() as writer:
            writer.start_soon(outbox.write_forever, writer.cancel_scope)
            async with trio.open_nursery() as calls:
                await _read_calls(stream, remote, outbox, calls, dispatch, max_frame_bytes, gate)
                calls.cancel_scope.cancel()
            # A last error frame (a broken request) still goes out, within a bound.
            outbox.finish()
            writer.cancel_scope.deadline = trio.current_time() + FINAL_WRITE_TIMEOUT_S
        if outbox.failure is not None:
            logger.debug("channel from %s failed: %r", remote, outbox.failure)
    except _ENDING_ERRORS as error:
        logger.debug("channel from %s failed: %r", remote, error)
    except Exception:
        # The boundary: a bad caller or a bug in one call must not take the host down.
        logger.exception("channel from %s failed unexpectedly", remote)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await _reset_quietly(stream)


async def _read_calls(
    stream: INetStream,
    remote: str,
    outbox: _Outbox,
    nursery: trio.Nursery,
    dispatch: Dispatch,
    max_frame_bytes: int,
    gate: InboundGate,
) -> None:
    reader = codec.FrameReader(stream, max_bytes=max_frame_bytes)
    while True:
        try:
            body = await reader.next_frame()
            # Left in shared memory for the worker process that will use them.
            obj = packing.unpack(body, spilled="defer" if hostlocal.host_key() else "refuse")
        except FrameTooLarge as error:
            # The oversized body is never read, so the stream cannot be resynchronised.
            outbox.put(_error_frame("", ERR_FRAME_TOO_LARGE, str(error)))
            return
        except ProtocolError as error:
            # A stream that ends between frames is the caller closing its channel.
            if not str(error).startswith("truncated frame: 0 of"):
                outbox.put(_error_frame("", error.code, str(error)))
            return
        except TRANSPORT_ERRORS:
            return
        request_id = codec.request_id_of(obj) if isinstance(obj, dict) else ""
        refusal = gate.admit(remote)
        if refusal is not None:
            outbox.put(_error_frame(request_id, *refusal))
            continue
        nursery.start_soon(
            _answer, obj, request_id, remote, outbox, dispatch, max_frame_bytes, gate
        )


async def _answer(
    obj: Any,
    request_id: str,
    remote: str,
    outbox: _Outbox,
    dispatch: Dispatch,
    max_frame_bytes: int,
    gate: InboundGate,
) -> None:
    try:
        outbox.put(await _reply_frame(obj, request_id, remote, dispatch, max_frame_bytes))
    finally:
        gate.release(remote)


async def _reply_frame(
    obj: Any, request_id: str, remote: str, dispatch: Dispatch, max_frame_bytes: int
) -> bytes:
    try:
        if not isinstance(obj, dict):
            raise ProtocolError("a request must be a map")
        request = codec.parse_request(obj, version=CHANNEL_VERSION)
        result = await dispatch(request, remote)
    except ProtocolError as error:
        return _error_frame(request_id, error.code, str(error))
    except RemoteError as error:
        return _error_frame(request_id, error.code, error.message)
    except Exception as error:
        logger.exception("dispatching a call from %s failed", remote)
        return _error_frame(request_id, ERR_HANDLER_ERROR, f"{type(error).__name__}: {error}")
    try:
        packed = result if isinstance(result, bytes) else packing.pack(result)
        return codec.frame(_ok_body(request_id, packed), max_bytes=max_frame_bytes)
    except FrameTooLarge as error:
        return _error_frame(request_id, ERR_FRAME_TOO_LARGE, str(error))
    except TypeError as error:
        message = f"result of {request.method} cannot travel: {error}"
        return _error_frame(request_id, ERR_HANDLER_ERROR, message)


def _ok_body(request_id: str, packed_result: bytes) -> bytes:
    """An ok reply around a result packed elsewhere (a node packs in its worker process).
    It carries our host key, so that a caller on this host may spill its next requests."""
    envelope: dict[str, Any] = {"v": CHANNEL_VERSION, "id": request_id, "ok": True}
    key = hostlocal.host_key()
    if key is not None:
        envelope["local"] = key
    head = packing.pack(envelope)
    # msgpack maps are self-delimiting: one more entry than the envelope's is "result".
    return bytes([0x80 | (len(envelope) + 1)]) + head[1:] + packing.pack("result") + packed_result


def _error_frame(request_id: str, code: str, message: str) -> bytes:
    reply = codec.error_response(request_id, code, message, version=CHANNEL_VERSION)
    return codec.frame(packing.pack(reply))


__all__ = [
    "Channel",
    "Channels",
    "ReplyCallback",
    "call",
    "encode_request",
    "new_request_id",
    "parse_reply",
    "serve_channel",
    "serve_invoke",
]
