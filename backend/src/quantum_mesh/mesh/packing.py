"""MessagePack bodies with numpy arrays as raw bytes: the encoding of invoke protocol 2.

Control fields stay ordinary msgpack maps; an ``ndarray`` travels as one extension value
holding its dtype, shape and little-endian bytes, so a 2^20-amplitude statevector is 16 MiB
on the wire (JSON/base64 made it ~22 MiB of text parsed twice). Decoding checks dtype and
size against the bytes actually present before building the array, and every decoding
failure is a ``ProtocolError``: a peer's bytes never raise anything else.

Between peers that share a host, big arrays may instead travel as a *spilled* extension
value (``SPILLED_EXT``: the same header and the name of a file in shared memory, see
``mesh/hostlocal.py``). It is only ever sent to a peer that asked for it, and a receiver
that did not expect it refuses it.
"""

from __future__ import annotations

import math
import struct
from functools import partial
from typing import Any, Literal

import msgpack
import numpy as np
from numpy.typing import NDArray

from quantum_mesh.mesh.errors import ProtocolError
from quantum_mesh.mesh.hostlocal import Spill, SpilledArray, read_spilled

#: msgpack extension type code of an ndarray.
NDARRAY_EXT: int = 1
#: msgpack extension type code of an ndarray spilled to host-local shared memory.
SPILLED_EXT: int = 2
#: What ``unpack`` does with a spilled array: read it now, leave it for a worker process
#: (``SpilledArray``), or refuse it (a peer we never offered shared memory to).
SpilledMode = Literal["read", "defer", "refuse"]
#: Dtypes an array may have on the wire (index = the byte on the wire); append only.
WIRE_DTYPES: tuple[str, ...] = (
    "complex128",
    "float64",
    "int64",
    "uint8",
    "bool",
    "float32",
    "complex64",
    "int32",
)
_DTYPE_CODE = {name: code for code, name in enumerate(WIRE_DTYPES)}
#: Dimensions an array may have on the wire.
MAX_NDIM = 32
_HEAD = struct.Struct("<BB")
_DIM = struct.Struct("<Q")


def _pack_array(array: NDArray[Any], spill: Spill | None = None) -> msgpack.ExtType:
    code = _DTYPE_CODE.get(array.dtype.name)
    if code is None:
        raise TypeError(f"arrays of dtype {array.dtype} cannot travel on the mesh")
    if array.ndim > MAX_NDIM:
        raise TypeError(f"arrays of {array.ndim} dimensions cannot travel on the mesh")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    head = _HEAD.pack(code, array.ndim) + b"".join(_DIM.pack(d) for d in array.shape)
    if spill is not None and spill.wants(little.nbytes):
        name = spill.write(little.reshape(-1).view(np.uint8).data)
        return msgpack.ExtType(SPILLED_EXT, head + name.encode("ascii"))
    return msgpack.ExtType(NDARRAY_EXT, head + little.tobytes())


def _default(obj: Any, spill: Spill | None = None) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj, spill)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.complexfloating):
        return _pack_array(np.asarray(obj))
    raise TypeError(f"{type(obj).__name__} cannot travel on the mesh")


def _header(data: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """dtype (little-endian), shape and where the header ends."""
    if len(data) < _HEAD.size:
        raise ProtocolError("truncated ndarray header")
    code, ndim = _HEAD.unpack_from(data)
    if code >= len(WIRE_DTYPES) or ndim > MAX_NDIM:
        raise ProtocolError(f"bad ndarray header (dtype {code}, {ndim} dimensions)")
    offset = _HEAD.size + ndim * _DIM.size
    if len(data) < offset:
        raise ProtocolError("truncated ndarray shape")
    shape = tuple(_DIM.unpack_from(data, _HEAD.size + i * _DIM.size)[0] for i in range(ndim))
    return np.dtype(WIRE_DTYPES[code]).newbyteorder("<"), shape, offset


def _unpack_array(data: bytes) -> NDArray[Any]:
    dtype, shape, offset = _header(data)
    # Checked before any allocation: the announced size must be exactly the bytes present.
    if math.prod(shape) * dtype.itemsize != len(data) - offset:
        raise ProtocolError(f"ndarray of shape {shape} does not match its {len(data)} bytes")
    # A writable native-order copy: receivers may update arrays in place.
    wire = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return wire.astype(dtype.newbyteorder("="))


def _spilled_array(data: bytes, mode: SpilledMode) -> Any:
    if mode == "refuse":
        raise ProtocolError("a spilled array from a peer that was not offered shared memory")
    dtype, shape, offset = _header(data)
    try:
        name = data[offset:].decode("ascii")
    except UnicodeDecodeError as error:
        raise ProtocolError("spilled array name is not ASCII") from error
    if mode == "defer":
        return SpilledArray(name=name, dtype=dtype.str, shape=shape)
    return read_spilled(name, dtype, shape)


def _ext_hook(code: int, data: bytes, spilled: SpilledMode = "refuse") -> Any:
    if code == NDARRAY_EXT:
        return _unpack_array(data)
    if code == SPILLED_EXT:
        return _spilled_array(data, spilled)
    raise ProtocolError(f"unknown msgpack extension type {code}")


def pack(obj: Any, *, spill: Spill | None = None) -> bytes:
    """Encode ``obj``; numpy arrays and scalars included. With ``spill`` (a peer on this
    host), arrays of at least ``spill.min_bytes`` go to shared-memory files instead.

    Raises:
        TypeError: something in ``obj`` cannot travel (a set, an object array, ...).
        FrameTooLarge: the spilled arrays exceed ``spill.limit``.
    """
    default = _default if spill is None else partial(_default, spill=spill)
    try:
        return msgpack.packb(obj, default=default, use_bin_type=True, strict_types=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as error:
        if spill is not None:
            spill.discard()
        raise TypeError(str(error)) from error
    except BaseException:
        if spill is not None:
            spill.discard()
        raise


def unpack(body: bytes, *, spilled: SpilledMode = "refuse") -> Any:
    """Decode one body; any malformed input is a ``ProtocolError``. ``spilled`` says what
    happens to arrays spilled to shared memory (only peers we offered it may send them)."""
    hook = _ext_hook if spilled == "refuse" else partial(_ext_hook, spilled=spilled)
    try:
        return msgpack.unpackb(body, ext_hook=hook, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(f"frame body is not valid msgpack: {error}") from error


def array_bytes(obj: Any, *, depth: int = 2) -> int:
    """Bytes of the numpy arrays in ``obj`` down to ``depth`` levels of maps and lists: a
    cheap estimate of what packing will copy, to decide where to pack."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if depth <= 0:
        return 0
    if isinstance(obj, dict):
        return sum(array_bytes(v, depth=depth - 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(array_bytes(v, depth=depth - 1) for v in obj)
    return 0
