"""The wire format of the policy server: msgpack with numpy arrays as tagged maps.

The encoding is the one `openpi_client.msgpack_numpy` defines (StarVLA's deployment tools use the same one), so
their clients and geo3d's read each other's messages byte for byte:
- an array is a map with **bytes** keys `{b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype":
  dtype.str, b"shape": [...]}`, in that key order;
- a numpy scalar is `{b"__npgeneric__": True, b"data": <its Python value>, b"dtype": dtype.str}` (it comes
  back as a numpy scalar, not a 1-element array);
- every other key or string is a msgpack str, `bytes` a msgpack bin (msgpack >= 1.0 defaults on both sides).
Object, void and complex dtypes are refused, as there.

Decoding is defensive (a server reads untrusted frames): the dtype, shape and byte count of every array are
checked before numpy sees them, and anything malformed raises ValueError. The str-keyed form
(`{"__ndarray__": True, ...}`) that geo3d wrote before it matched the field is still read.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

NDARRAY, NPGENERIC = b"__ndarray__", b"__npgeneric__"
_REFUSED_KINDS = ("O", "V", "c")  # object / void / complex: not rebuildable from bytes, or not msgpack-able scalars
# Decoding budget: a request is a few maps of arrays (a StarVLA batch of 32 examples is ~200 containers).
MAX_CONTAINERS, MAX_ARRAY_LEN, MAX_MAP_LEN = 1024, 1024, 256


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise TypeError(f"cannot send numpy dtype {obj.dtype} over the wire (object/void/complex)")
    if isinstance(obj, np.ndarray):
        return {NDARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _field(obj: dict, name: str) -> Any:
    key = name.encode()
    if key in obj:
        return obj[key]
    if name in obj:
        return obj[name]
    raise ValueError(f"malformed array in message: no {name!r} field")


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"malformed array in message: dtype must be a string, got {type(value).__name__}")
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed array in message: dtype {value!r}: {e}") from None
    if dtype.kind in _REFUSED_KINDS or dtype.subdtype is not None or dtype.itemsize == 0:
        raise ValueError(f"array dtype {dtype} is not accepted (object/void/complex/sub-array/zero-size)")
    return dtype


def _array(obj: dict) -> np.ndarray:
    dtype, data, shape = _dtype(_field(obj, "dtype")), _field(obj, "data"), _field(obj, "shape")
    if not isinstance(data, bytes):
        raise ValueError(f"malformed array in message: data must be bytes, got {type(data).__name__}")
    if not isinstance(shape, (list, tuple)) or not all(type(s) is int and s >= 0 for s in shape) or len(shape) > 32:
        raise ValueError(f"malformed array in message: shape must be <= 32 non-negative ints, got {shape!r}")
    if math.prod(shape) * dtype.itemsize != len(data):
        raise ValueError(f"malformed array in message: shape {list(shape)} of {dtype} needs "
                         f"{math.prod(shape) * dtype.itemsize} bytes, data has {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar(obj: dict) -> np.generic:
    dtype, data = _dtype(_field(obj, "dtype")), _field(obj, "data")
    if isinstance(data, (dict, list)):
        raise ValueError(f"malformed numpy scalar in message: data is a {type(data).__name__}")
    try:
        return dtype.type(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"malformed numpy scalar in message: {dtype} from {data!r}: {e}") from None


def _decode(obj: dict) -> Any:
    if obj.get(NDARRAY) is True or obj.get("__ndarray__") is True:
        return _array(obj)
    if obj.get(NPGENERIC) is True or obj.get("__npgeneric__") is True:
        return _scalar(obj)
    return obj


def packb(obj: Any) -> bytes:
    """Serialise a (nested) dict/list of python values, numpy arrays and numpy scalars."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of `packb`; arrays come back read-only views on the message bytes (copy to mutate).
    Raises ValueError (or msgpack's own exceptions) on a malformed message, and on one with more than
    MAX_CONTAINERS maps/lists or longer ones than MAX_ARRAY_LEN / MAX_MAP_LEN: a small frame of tiny containers
    or strings would otherwise decode into Python objects ~50x its size."""
    left = [MAX_CONTAINERS]

    def spend() -> None:
        left[0] -= 1
        if left[0] < 0:
            raise ValueError(f"message holds more than {MAX_CONTAINERS} maps/lists")

    def on_list(items: list) -> list:
        spend()
        return items

    def on_map(obj: dict) -> Any:
        spend()
        return _decode(obj)

    return msgpack.unpackb(data, object_hook=on_map, list_hook=on_list, raw=False, strict_map_key=True,
                           max_array_len=MAX_ARRAY_LEN, max_map_len=MAX_MAP_LEN)
