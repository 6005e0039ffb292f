"""Both ends of one invoke exchange over a fresh libp2p stream (Trio only).

One request frame, one response frame, then the stream closes. A new stream per call keeps
calls independent: a slow or failed call never blocks another, and yamux makes streams cheap.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from multiaddr import Multiaddr

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.errors import (
    FrameTooLarge,
    InvokeTimeout,
    PeerUnreachable,
    ProtocolError,
    RemoteError,
)
from quantum_mesh.mesh.host import PEERSTORE_ADDR_TTL_S, dial, split_p2p_addr
from quantum_mesh.mesh.protocol import (
    DIAL_TIMEOUT_S,
    ERR_FRAME_TOO_LARGE,
    ERR_HANDLER_ERROR,
    INBOUND_READ_TIMEOUT_S,
    INVOKE_PROTOCOL,
)

logger = logging.getLogger(__name__)

#: What a server-side dispatcher returns: a result object, or its JSON already encoded.
DispatchResult = dict[str, Any] | bytes
Dispatch = Callable[[codec.Request, str], Awaitable[DispatchResult]]

#: Transport failures: libp2p's own error root plus socket errors underneath it.
TRANSPORT_ERRORS: tuple[type[Exception], ...] = (BaseLibp2pError, OSError)
DIAL_ERRORS: tuple[type[Exception], ...] = (trio.TooSlowError, BaseLibp2pError, OSError)


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
    host: IHost, peer: ID, addrs: list[Multiaddr], *, limit_s: float
) -> INetStream:
    """A new invoke stream to ``peer``, dialling first if needed.

    A peer that died and came back within the ~200 ms before its old connection is noticed
    as closed still *looks* connected; opening a stream on that corpse fails. Nothing has
    been sent yet, so dropping the connection and dialling once more is safe.
    """
    for attempt in range(2):
        await dial(host, peer, addrs, limit_s=min(limit_s, DIAL_TIMEOUT_S))
        try:
            return await host.new_stream(peer, [TProtocol(INVOKE_PROTOCOL)])
        except TRANSPORT_ERRORS:
            if attempt == 1 or not addrs:
                raise
            logger.debug("stale connection to %s; dialling afresh", peer)
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await host.disconnect(peer)
    raise AssertionError("unreachable")


async def invoke_peer(
    host: IHost,
    peer_id: str,
    method: str,
    params: dict[str, Any],
    *,
    limit_s: float,
    addrs: list[str] | None = None,
    max_frame_bytes: int,
) -> dict[str, Any]:
    """Call ``method`` on ``peer_id`` and return its ``result``.

    Raises:
        PeerUnreachable: the peer cannot be dialled or the connection died mid-call.
        InvokeTimeout: no complete reply within ``limit_s``.
        RemoteError: the peer answered ``ok: false``.
        FrameTooLarge, ProtocolError: a frame broke docs/wire-protocol.md.
    """
    try:
        peer = ID.from_base58(peer_id)
    except ValueError as error:
        raise PeerUnreachable(f"{peer_id!r} is not a peer ID") from error
    request_id = uuid.uuid4().hex
    request = codec.encode_frame(
        codec.make_request(request_id, method, params), max_bytes=max_frame_bytes
    )
    try:
        maddrs = dial_addrs(peer, addrs or [])
    except ValueError as error:
        raise PeerUnreachable(f"bad address for {peer_id}: {error}") from error
    if maddrs:
        host.get_peerstore().add_addrs(peer, maddrs, PEERSTORE_ADDR_TTL_S)
    stream: INetStream | None = None
    try:
        with trio.fail_after(limit_s):
            try:
                stream = await open_stream(host, peer, maddrs, limit_s=limit_s)
            except DIAL_ERRORS as error:
                raise PeerUnreachable(f"cannot reach peer {peer_id}: {error!r}") from error
            try:
                await stream.write(request)
                reply = await codec.read_frame(stream, max_bytes=max_frame_bytes)
            except ProtocolError as error:
                raise PeerUnreachable(
                    f"connection to {peer_id} lost during {method}: {error}"
                ) from error
            except TRANSPORT_ERRORS as error:
                raise PeerUnreachable(
                    f"connection to {peer_id} failed during {method}: {error!r}"
                ) from error
    except trio.TooSlowError as error:
        await _reset_quietly(stream)
        raise InvokeTimeout(f"{method} on {peer_id} timed out after {limit_s} s") from error
    except BaseException:
        with trio.CancelScope(shield=True):
            await _reset_quietly(stream)
        raise
    try:
        await stream.close()
    except TRANSPORT_ERRORS:
        logger.debug("closing a finished invoke stream failed", exc_info=True)
    return codec.parse_response(reply, expected_id=request_id)


async def _write_reply(stream: INetStream, body: bytes, *, max_frame_bytes: int) -> None:
    await stream.write(codec.frame(body, max_bytes=max_frame_bytes))


async def serve_stream(stream: INetStream, *, dispatch: Dispatch, max_frame_bytes: int) -> None:
    """Answer one inbound invoke stream; never raises (a bad peer must not kill the host)."""
    remote = stream.muxed_conn.peer_id.to_base58()
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
    if isinstance(result, bytes):
        return request_id, codec.ok_response_body(request_id, result)
    try:
        return request_id, codec.dumps(codec.ok_response(request_id, result))
    except (TypeError, ValueError) as error:
        message = f"result of {request.method} is not JSON-serialisable: {error}"
        reply = codec.error_response(request_id, ERR_HANDLER_ERROR, message)
        return request_id, codec.dumps(reply)
