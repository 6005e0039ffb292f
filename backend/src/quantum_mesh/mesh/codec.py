"""Length-prefixed frames and the request/response envelopes of the invoke protocols.

A frame is a 4-byte big-endian body length followed by that many bytes of body: UTF-8 JSON
on protocol 1, msgpack on protocol 2 (``mesh/packing.py``). The
length is checked against the limit *before* the body is read, so a hostile or corrupt
prefix can never make us allocate 4 GiB. A stream that ends early is a truncated frame: a
killed peer shows up as a plain EOF, and only the length prefix tells it from a short reply.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from libp2p.network.stream.exceptions import StreamEOF

from quantum_mesh.arrays import json_default
from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError, RemoteError
from quantum_mesh.mesh.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    ERR_BAD_REQUEST,
    ERR_UNSUPPORTED_VERSION,
    FRAME_HEADER_BYTES,
    PROTOCOL_VERSION,
)

_HEADER = struct.Struct(">I")


class ByteStream(Protocol):
    """The two methods of a libp2p ``INetStream`` the codec needs."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded invoke request."""

    id: str
    method: str
    params: dict[str, Any]
    #: The caller's host key (``mesh/hostlocal.py``) when it offers shared memory for big
    #: arrays in the reply; ``None`` otherwise.
    local: str | None = None


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding of protocol 1 and of adverts (arrays in their JSON
    form, ``quantum_mesh.arrays``)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=json_default).encode(
        "utf-8"
    )


def frame(body: bytes, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Prefix ``body`` with its length, refusing bodies over ``max_bytes``."""
    if len(body) > max_bytes:
        raise FrameTooLarge(f"frame body of {len(body)} bytes exceeds the {max_bytes} limit")
    return _HEADER.pack(len(body)) + body


def encode_frame(obj: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    return frame(dumps(obj), max_bytes=max_bytes)


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse a frame body; anything but a JSON object is a protocol error."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(f"frame body is not UTF-8 JSON: {error}") from error
    if not isinstance(obj, dict):
        raise ProtocolError("frame body must be a JSON object")
    return obj


async def read_exactly(stream: ByteStream, n: int) -> bytes:
    """Read exactly ``n`` bytes; EOF before that raises ``ProtocolError`` (truncated)."""
    chunks: list[bytes] = []
    remaining = n
    while remaining > 0:
        try:
            chunk = await stream.read(remaining)
        except StreamEOF as error:
            raise ProtocolError(f"truncated frame: {n - remaining} of {n} bytes") from error
        if not chunk:
            raise ProtocolError(f"truncated frame: {n - remaining} of {n} bytes")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


async def read_frame_bytes(
    stream: ByteStream, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    """Read one frame and return its body, enforcing the limit before reading the body."""
    (length,) = _HEADER.unpack(await read_exactly(stream, FRAME_HEADER_BYTES))
    if length > max_bytes:
        raise FrameTooLarge(f"peer announced a {length}-byte frame; the limit is {max_bytes}")
    return await read_exactly(stream, length)


#: What a ``FrameReader`` asks the stream for at a time (more when a frame needs more).
READ_CHUNK_BYTES = 256 * 1024


class FrameReader:
    """Reads consecutive frames from one long-lived stream with as few reads as possible.

    A reply and the frames queued behind it often arrive in one muxer message; reading the
    4-byte prefix and the body separately would cost two reads per frame, each with its own
    flow-control bookkeeping in the muxer."""

    def __init__(self, stream: ByteStream, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._buffer = bytearray()

    async def _fill(self, needed: int) -> None:
        while len(self._buffer) < needed:
            try:
                chunk = await self._stream.read(max(READ_CHUNK_BYTES, needed - len(self._buffer)))
            except StreamEOF:
                chunk = b""
            if not chunk:
                raise ProtocolError(f"truncated frame: {len(self._buffer)} of {needed} bytes")
            self._buffer += chunk

    async def next_frame(self) -> bytes:
        """The next frame's body. Raises ``ProtocolError`` at EOF (``"truncated frame: 0 of
        4 bytes"`` when the stream ended cleanly between frames) and ``FrameTooLarge``."""
        await self._fill(FRAME_HEADER_BYTES)
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max_bytes:
            raise FrameTooLarge(
                f"peer announced a {length}-byte frame; the limit is {self._max_bytes}"
            )
        end = FRAME_HEADER_BYTES + length
        await self._fill(end)
        body = bytes(self._buffer[FRAME_HEADER_BYTES:end])
        del self._buffer[:end]
        return body


async def read_frame(
    stream: ByteStream, *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> dict[str, Any]:
    return decode_body(await read_frame_bytes(stream, max_bytes=max_bytes))


async def write_frame(
    stream: ByteStream, obj: dict[str, Any], *, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> None:
    await stream.write(encode_frame(obj, max_bytes=max_bytes))


# --- envelopes -------------------------------------------------------------------------------


def make_request(
    request_id: str,
    method: str,
    params: dict[str, Any],
    *,
    version: int = PROTOCOL_VERSION,
    local: str | None = None,
) -> dict[str, Any]:
    request = {"v": version, "id": request_id, "method": method, "params": params}
    if local is not None:
        request["local"] = local
    return request


def ok_response(
    request_id: str, result: dict[str, Any], *, version: int = PROTOCOL_VERSION
) -> dict[str, Any]:
    return {"v": version, "id": request_id, "ok": True, "result": result}


def error_response(
    request_id: str, code: str, message: str, *, version: int = PROTOCOL_VERSION
) -> dict[str, Any]:
    return {
        "v": version,
        "id": request_id,
        "ok": False,
        "error": {"code": code, "message": message},
    }


def _check_version(obj: dict[str, Any], expected: int) -> None:
    version = obj.get("v")
    if version != expected:
        raise ProtocolError(
            f"protocol version {version!r} is not supported here (this stream speaks {expected})",
            code=ERR_UNSUPPORTED_VERSION,
        )


def request_id_of(obj: dict[str, Any]) -> str:
    """The request's id if it has a usable one, for addressing an error reply."""
    value = obj.get("id")
    return value if isinstance(value, str) else ""


def parse_request(obj: dict[str, Any], *, version: int = PROTOCOL_VERSION) -> Request:
    """Validate a request envelope; ``ProtocolError.code`` says what an error reply carries."""
    _check_version(obj, version)
    request_id, method, params = obj.get("id"), obj.get("method"), obj.get("params", {})
    if not isinstance(request_id, str) or not request_id:
        raise ProtocolError("request 'id' must be a non-empty string", code=ERR_BAD_REQUEST)
    if not isinstance(method, str) or not method:
        raise ProtocolError("request 'method' must be a non-empty string", code=ERR_BAD_REQUEST)
    if not isinstance(params, dict):
        raise ProtocolError("request 'params' must be a JSON object", code=ERR_BAD_REQUEST)
    local = obj.get("local")
    return Request(
        id=request_id, method=method, params=params, local=local if isinstance(local, str) else None
    )


def parse_response(
    obj: dict[str, Any], *, expected_id: str, version: int = PROTOCOL_VERSION
) -> dict[str, Any]:
    """Return the ``result`` of an ok response, or raise ``RemoteError`` for an error one.

    An error response with the empty id answers whatever was asked: the callee refused the
    stream before reading the request (``not_enrolled``, ``busy``) or could not parse it.
    """
    _check_version(obj, version)
    response_id = obj.get("id")
    refused_unread = response_id == "" and obj.get("ok") is False
    if response_id != expected_id and not refused_unread:
        raise ProtocolError(f"response id {response_id!r} does not match {expected_id!r}")
    if obj.get("ok") is True:
        result = obj.get("result")
        if not isinstance(result, dict):
            raise ProtocolError("response 'result' must be an object (a map)")
        return result
    error = obj.get("error")
    if obj.get("ok") is False and isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        raise RemoteError(
            code if isinstance(code, str) else "unknown_error",
            message if isinstance(message, str) else "",
        )
    raise ProtocolError("response must carry 'ok' with a 'result' or an 'error' object")
