"""The JSON form of numpy arrays, shared by every layer (database rows, protocol-1 frames).

Complex statevectors are stored as base64 of their little-endian bytes: exact (bit-for-bit)
and ~3x smaller than lists of [re, im] pairs. On invoke protocol 2 arrays travel as raw bytes
instead (``mesh/packing.py``); ``decode_array`` accepts both forms, so code reading a
payload never cares which wire it came over.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from numpy.typing import NDArray

_ALLOWED_DTYPES = {"complex128", "float64", "int64", "uint8", "bool"}


def encode_array(array: NDArray[Any]) -> dict[str, Any]:
    """Encode an array as ``{"dtype", "shape", "b64"}``."""
    arr = np.ascontiguousarray(array)
    dtype = str(arr.dtype)
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"Unsupported dtype for encoding: {dtype}")
    return {
        "dtype": dtype,
        "shape": list(arr.shape),
        "b64": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode(),
    }


def decode_array(payload: dict[str, Any] | NDArray[Any]) -> NDArray[Any]:
    """Inverse of :func:`encode_array`; validates dtype and size before allocating.

    An array that arrived already decoded (protocol 2) is checked and returned as is."""
    if isinstance(payload, np.ndarray):
        if str(payload.dtype) not in _ALLOWED_DTYPES:
            raise ValueError(f"Unsupported dtype in payload: {payload.dtype}")
        return payload
    dtype = payload.get("dtype")
    if dtype not in _ALLOWED_DTYPES:
        raise ValueError(f"Unsupported dtype in payload: {dtype!r}")
    shape = tuple(int(s) for s in payload.get("shape", []))
    raw = base64.b64decode(payload["b64"], validate=True)
    np_dtype = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"Array payload has {len(raw)} bytes, expected {expected} for {shape}")
    return np.frombuffer(raw, dtype=np_dtype).astype(np.dtype(dtype)).reshape(shape)


def json_default(obj: Any) -> Any:
    """``json.dumps`` ``default`` hook: arrays in their JSON form, numpy scalars as numbers."""
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")
