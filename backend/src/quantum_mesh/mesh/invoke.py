"""Invoke protocol 1 (the callee's side: one request, one reply, one stream per call) and
what both protocols share: the inbound gate, dialling and opening streams (Trio only).

The coordinator calls over protocol 2 (``mesh/channel.py``); protocol 1 stays served for
simple peers (a js-libp2p ``ping``, a shell tool), which open a stream per call.

Trust before bytes: the callee learns the caller's peer ID from the authenticated (Noise)
connection the stream runs on, and its ``InboundGate`` decides before a single byte of the
request is read. An untrusted caller, or a trusted one already holding its quota of
concurrent streams, gets an error frame with the empty id at once and the stream is reset;
its request (whatever length it announces) is never read.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from quantum_mesh.mesh import codec, packing
from quantum_mesh.mesh.errors import (
    FrameTooLarge,
    ProtocolError,
    RemoteError,
)
from quantum_mesh.mesh.host import dial, split_p2p_addr
from quantum_mesh.mesh.protocol import (
    DIAL_TIMEOUT_S,
    ERR_BUSY,
    ERR_FRAME_TOO_LARGE,
    ERR_HANDLER_ERROR,
    ERR_NOT_ENROLLED,
    INBOUND_READ_TIMEOUT_S,
    INVOKE_PROTOCOL,
    MAX_STREAMS_PER_PEER,
)

logger = logging.getLogger(__name__)

#: What a server-side dispatcher returns: a result object, or that object already packed
#: (``packing.pack``, as a node's worker process does it, off the network loop).
DispatchResult = dict[str, Any] | bytes
Dispatch = Callable[[codec.Request, str], Awaitable[DispatchResult]]

#: Transport failures: libp2p's own error root plus socket errors underneath it.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (BaseLibp2pError, OSError)
DIAL_ERRORS: tuple[type[Exception], ...] = (trio.TooSlowError, BaseLibp2pError, OSError)
#: Bound on writing a refusal (a few dozen bytes, well inside a new stream's send window).
REFUSAL_WRITE_TIMEOUT_S = 5.0
#: How long a refused stream stays open (unread) after its refusal, so a caller still
#: writing its request reads the refusal rather than a reset; it ends early when the caller
#: closes its side. Nothing the caller sends meanwhile is kept.
REFUSAL_LINGER_S = 1.0
REFUSAL_POLL_S = 0.05
#: Refused streams lingering at once on one host; beyond this they are reset at once.
MAX_LINGERING_REFUSALS = 64


class InboundGate:
    """Who may open invoke streams on this host, and how many at once (Trio only).

    ``trusted`` is a plain, non-blocking lookup of the remote peer ID (None trusts every
    peer); if it raises, the peer is untrusted. A trusted peer may hold at most
    ``max_streams_per_peer`` streams in flight; the count covers a stream from its opening
    (before its request is read) until its reply is written.
    """

    def __init__(
        self,
        trusted: Callable[[str], bool] | None = None,
        *,
        max_streams_per_peer: int = MAX_STREAMS_PER_PEER,
    ) -> None:
        if max_streams_per_peer < 1:
            raise ValueError("max_streams_per_peer must be at least 1")
        self._trusted = trusted
        self.max_streams_per_peer = max_streams_per_peer
        self._open: dict[str, int] = {}
        #: Refused streams still lingering (see ``REFUSAL_LINGER_S``).
        self.lingering = 0
        #: Streams refused, by error code (``not_enrolled``, ``busy``).
        self.refused: dict[str, int] = {ERR_NOT_ENROLLED: 0, ERR_BUSY: 0}

    def is_trusted(self, remote: str) -> bool:
        if self._trusted is None:
            return True
        try:
            return bool(self._trusted(remote))
        except Exception:
            logger.exception("trust check for %s failed; refusing", remote)
            return False

    def admit(self, remote: str) -> tuple[str, str] | None:
        """None when the stream may be served (and is now counted); else (code, message)."""
        if not self.is_trusted(remote):
            self.refused[ERR_NOT_ENROLLED] += 1
            return ERR_NOT_ENROLLED, "this peer is not enrolled and approved"
        held = self._open.get(remote, 0)
        if held >= self.max_streams_per_peer:
            self.refused[ERR_BUSY] += 1
            return ERR_BUSY, f"this peer already has {held} calls in flight here"
        self._open[remote] = held + 1
        return None

    def release(self, remote: str) -> None:
        held = self._open.get(remote, 0) - 1
        if held > 0:
            self._open[remote] = held
        else:
            self._open.pop(remote, None)

    def in_flight(self, remote: str) -> int:
        return self._open.get(remote, 0)


async def _reset_quietly(stream: INetStream | None) -> None:
    if stream is None:
        return
    try:
        await stream.reset()
    except TRANSPORT_ERRORS:
        logger.debug("stream reset failed", exc_info=True)


def dial_addrs(peer: ID, addrs: list[str]) -> list[Multiaddr]:
    """Transport addresses to dial ``peer`` at; accepts full ``.../p2p/<id>`` forms as well
    (as adverts carry them) and drops those naming a different peer."""
    out: list[Multiaddr] = []
    for addr in addrs:
        if "/p2p/" in addr:
            named, transport = split_p2p_addr(addr)
            if named == peer:
                out.append(transport)
        else:
            out.append(Multiaddr(addr))
    return out


async def open_stream(
    host: IHost,
    peer: ID,
    addrs: list[Multiaddr],
    *,
    limit_s: float,
    protocol: str = INVOKE_PROTOCOL,
) -> INetStream:
    """A new ``protocol`` stream to ``peer``, dialling first if needed.

    A peer that died and came back within the ~200 ms before its old connection is noticed
    as closed still *looks* connected; opening a stream on that corpse fails. Nothing has
    been sent yet, so dropping the connection and dialling once more is safe.
    """
    for attempt in range(2):
        await dial(host, peer, addrs, limit_s=min(limit_s, DIAL_TIMEOUT_S))
        try:
            return await host.new_stream(peer, [TProtocol(protocol)])
        except TRANSPORT_ERRORS:
            if attempt == 1 or not addrs:
                raise
            logger.debug("stale connection to %s; dialling afresh", peer)
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await host.disconnect(peer)
    raise AssertionError("unreachable")


async def _write_reply(stream: INetStream, body: bytes, *, max_frame_bytes: int) -> None:
    await stream.write(codec.frame(body, max_bytes=max_frame_bytes))


async def serve_stream(
    stream: INetStream, *, dispatch: Dispatch, max_frame_bytes: int, gate: InboundGate
) -> None:
    """Answer one inbound invoke stream; never raises (a bad peer must not kill the host).

    The gate decides before anything is read: a refused stream gets its error frame and is
    reset, so whatever the caller announced or sent is never read into memory."""
    remote = stream.muxed_conn.peer_id.to_base58()
    refusal = gate.admit(remote)
    if refusal is not None:
        code, message = refusal
        reply = codec.encode_frame(codec.error_response("", code, message))
        await refuse_stream(stream, remote, reply, code=code, gate=gate)
        return
    try:
        answer = await _answer(stream, remote, dispatch=dispatch, max_frame_bytes=max_frame_bytes)
        if answer is None:
            await _reset_quietly(stream)
            return
        request_id, body = answer
        try:
            await _write_reply(stream, body, max_frame_bytes=max_frame_bytes)
        except FrameTooLarge as error:
            reply = codec.dumps(codec.error_response(request_id, ERR_FRAME_TOO_LARGE, str(error)))
            await _write_reply(stream, reply, max_frame_bytes=max_frame_bytes)
        await stream.close()
    except TRANSPORT_ERRORS as error:
        logger.debug("invoke stream from %s failed: %r", remote, error)
        await _reset_quietly(stream)
    finally:
        gate.release(remote)


async def refuse_stream(
    stream: INetStream, remote: str, reply: bytes, *, code: str, gate: InboundGate
) -> None:
    """Write ``reply`` (an error frame with the empty id: the request is unread), half-close,
    then reset.

    A caller's request usually arrives right after the protocol is negotiated, i.e. while
    the refusal is being written; a reset at once could fail that write before the caller
    reads the refusal. So the stream lingers (bounded, and never read: the caller's window
    is not reopened, and whatever it managed to send is dropped) until the caller closes
    its side, then it is reset."""
    logger.debug("refusing an invoke stream from %s: %s", remote, code)
    counted = linger = gate.lingering < MAX_LINGERING_REFUSALS
    gate.lingering += int(counted)
    try:
        with trio.move_on_after(REFUSAL_WRITE_TIMEOUT_S):
            try:
                await stream.write(reply)
                await stream.close()
            except TRANSPORT_ERRORS as error:
                logger.debug("refusal to %s not delivered: %r", remote, error)
                linger = False
        if linger:
            with trio.move_on_after(REFUSAL_LINGER_S):
                while not _caller_done(stream):
                    _drop_unread(stream)
                    await trio.sleep(REFUSAL_POLL_S)
    finally:
        gate.lingering -= int(counted)
        _drop_unread(stream)
        with trio.move_on_after(REFUSAL_WRITE_TIMEOUT_S):
            await _reset_quietly(stream)


def _caller_done(stream: INetStream) -> bool:
    """True once the caller closed or reset its side (yamux in libp2p 0.8.1)."""
    muxed = getattr(stream, "muxed_stream", None)
    return bool(getattr(muxed, "recv_closed", False) or getattr(muxed, "reset_received", False))


def _drop_unread(stream: INetStream) -> None:
    """Discard what the muxer buffered for a stream we will never read.

    libp2p 0.8.1's yamux keeps a reset stream's unread buffer for 60 s, and appends to it
    whatever else arrives meanwhile; emptied, the stream is dropped at once on reset and
    later data for it is ignored. A no-op where the muxer is not that yamux."""
    muxed = getattr(stream, "muxed_stream", None)
    buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
    if isinstance(buffers, dict):
        buffer = buffers.get(getattr(muxed, "stream_id", None))
        if isinstance(buffer, bytearray):
            buffer.clear()


async def _answer(
    stream: INetStream, remote: str, *, dispatch: Dispatch, max_frame_bytes: int
) -> tuple[str, bytes] | None:
    """(request id, reply body) for one request, or None when the stream should be reset."""
    try:
        with trio.fail_after(INBOUND_READ_TIMEOUT_S):
            obj = await codec.read_frame(stream, max_bytes=max_frame_bytes)
    except trio.TooSlowError:
        logger.warning("peer %s opened an invoke stream but sent no request", remote)
        return None
    except FrameTooLarge as error:
        return "", codec.dumps(codec.error_response("", ERR_FRAME_TOO_LARGE, str(error)))
    except ProtocolError as error:
        return "", codec.dumps(codec.error_response("", error.code, str(error)))
    request_id = codec.request_id_of(obj)
    try:
        request = codec.parse_request(obj)
        result = await dispatch(request, remote)
    except ProtocolError as error:
        return request_id, codec.dumps(codec.error_response(request_id, error.code, str(error)))
    except RemoteError as error:
        reply = codec.error_response(request_id, error.code, error.message)
        return request_id, codec.dumps(reply)
    try:
        if isinstance(result, bytes):
            result = packing.unpack(result)
        return request_id, codec.dumps(codec.ok_response(request_id, result))
    except (TypeError, ValueError, ProtocolError) as error:
        message = f"result of {request.method} is not JSON-serialisable: {error}"
        reply = codec.error_response(request_id, ERR_HANDLER_ERROR, message)
        return request_id, codec.dumps(reply)
