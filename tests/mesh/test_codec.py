"""Frames and envelopes of the invoke protocol, against an in-memory byte stream."""

from __future__ import annotations

import pytest

from quantum_mesh.mesh import codec
from quantum_mesh.mesh.errors import FrameTooLarge, ProtocolError, RemoteError


class BytesStream:
    """Serves ``data`` in reads of at most ``chunk`` bytes, then EOF (b"")."""

    def __init__(self, data: bytes = b"", *, chunk: int = 3) -> None:
        self.data, self.chunk, self.written = data, chunk, b""
        self.largest_read_request = 0

    async def read(self, n: int | None = None) -> bytes:
        assert n is not None
        self.largest_read_request = max(self.largest_read_request, n)
        out, self.data = self.data[: min(n, self.chunk)], self.data[min(n, self.chunk) :]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


async def test_frame_round_trip_across_short_reads() -> None:
    obj = codec.make_request("r1", "ping", {"text": "héllo", "n": [1, 2.5]})
    sink = BytesStream()
    await codec.write_frame(sink, obj)
    assert int.from_bytes(sink.written[:4], "big") == len(sink.written) - 4
    assert await codec.read_frame(BytesStream(sink.written, chunk=3)) == obj


async def test_oversized_length_is_refused_before_the_body_is_read() -> None:
    stream = BytesStream((1001).to_bytes(4, "big") + b"x" * 1001, chunk=10_000)
    with pytest.raises(FrameTooLarge):
        await codec.read_frame(stream, max_bytes=1000)
    assert stream.largest_read_request == 4  # only the header was asked for


def test_oversized_frame_is_refused_on_encode() -> None:
    with pytest.raises(FrameTooLarge):
        codec.encode_frame({"blob": "x" * 100}, max_bytes=50)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", (10).to_bytes(4, "big") + b'{"v":1', (2).to_bytes(4, "big")],
    ids=["empty", "short-header", "short-body", "no-body"],
)
async def test_truncated_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="truncated"):
        await codec.read_frame(BytesStream(data))


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b"\xff\xfe", b'"str"'])
async def test_non_object_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        await codec.read_frame(BytesStream(codec.frame(body)))


def test_unknown_request_version_is_coded_unsupported_version() -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.parse_request({"v": 2, "id": "a", "method": "ping", "params": {}})
    assert caught.value.code == "unsupported_version"


@pytest.mark.parametrize(
    "obj",
    [
        {"v": 1, "id": "", "method": "ping", "params": {}},
        {"v": 1, "id": "a", "method": 5, "params": {}},
        {"v": 1, "id": "a", "method": "ping", "params": [1]},
    ],
)
def test_malformed_requests_are_bad_requests(obj: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as caught:
        codec.parse_request(obj)
    assert caught.value.code == "bad_request"


def test_responses() -> None:
    assert codec.parse_response(codec.ok_response("a", {"x": 1}), expected_id="a") == {"x": 1}
    with pytest.raises(RemoteError) as caught:
        codec.parse_response(codec.error_response("a", "busy", "full"), expected_id="a")
    assert (caught.value.code, caught.value.message) == ("busy", "full")
    with pytest.raises(ProtocolError):
        codec.parse_response(codec.ok_response("b", {}), expected_id="a")
    with pytest.raises(ProtocolError):
        codec.parse_response(codec.error_response("b", "busy", "full"), expected_id="a")
    # A callee that refused before reading the request answers with an empty id.
    with pytest.raises(RemoteError) as refused:
        codec.parse_response(codec.error_response("", "not_enrolled", "no"), expected_id="a")
    assert refused.value.code == "not_enrolled"
    with pytest.raises(ProtocolError) as version:
        codec.parse_response({**codec.ok_response("a", {}), "v": 9}, expected_id="a")
    assert version.value.code == "unsupported_version"
