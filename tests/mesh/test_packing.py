"""msgpack bodies of invoke protocol 2: arrays as raw bytes, hostile bytes as ProtocolError."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from quantum_mesh.arrays import decode_array, encode_array, json_default
from quantum_mesh.mesh import packing
from quantum_mesh.mesh.errors import ProtocolError


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype=np.complex128).reshape(2, 3) * (1 - 1j),
        np.linspace(0, 1, 5),
        np.array([[1, -2], [3, 4]], dtype=np.int64),
        np.array([True, False]),
        np.zeros((0,), dtype=np.float64),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.arange(4, dtype=">f8"),
    ],
)
def test_arrays_round_trip_bit_for_bit_and_writable(array: np.ndarray) -> None:
    back = packing.unpack(packing.pack({"a": array, "nested": [array]}))
    for got in (back["a"], back["nested"][0]):
        assert got.shape == array.shape and got.dtype == array.dtype.newbyteorder("=")
        assert np.array_equal(got, array)
        got[...] = got  # writable: receivers may update in place


def test_numpy_scalars_become_plain_numbers() -> None:
    back = packing.unpack(packing.pack({"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(1)}))
    assert back == {"i": 3, "f": 0.5, "b": True}


def test_a_statevector_costs_its_bytes_not_base64_text() -> None:
    state = np.ones(2**16, dtype=np.complex128)
    packed = packing.pack({"state": state})
    assert len(packed) < state.nbytes + 128
    assert len(packed) < len(repr(encode_array(state))) * 0.8


@pytest.mark.parametrize("value", [{1, 2}, np.array([object()]), object()])
def test_what_cannot_travel_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError):
        packing.pack({"v": value})


def _ext(data: bytes) -> bytes:
    return msgpack.packb(msgpack.ExtType(packing.NDARRAY_EXT, data))


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        _ext(b"\x00"),  # truncated header
        _ext(struct.pack("<BB", 99, 1) + struct.pack("<Q", 1) + b"x" * 16),  # unknown dtype
        _ext(struct.pack("<BB", 1, 1) + struct.pack("<Q", 2**40) + b"x" * 8),  # size lies
        _ext(struct.pack("<BB", 1, 1)),  # shape missing
        msgpack.packb(msgpack.ExtType(9, b"")),  # unknown extension
        msgpack.packb({1: "int key"}),
    ],
)
def test_hostile_bodies_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        packing.unpack(body)


def test_json_consumers_read_arrays_from_either_wire() -> None:
    state = np.arange(4, dtype=np.complex128)
    assert np.array_equal(decode_array(state), state)
    assert json_default(state) == encode_array(state)
    assert json_default(np.float64(2.5)) == 2.5
    with pytest.raises(ValueError):
        decode_array(np.array(["text"]))
