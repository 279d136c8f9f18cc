"""The wire format of the policy server: msgpack with numpy arrays as tagged maps.

This is the convention LIBERO clients of the field speak (openpi / StarVLA): an array travels as
{"__ndarray__": True, "data": raw bytes, "dtype": dtype str, "shape": tuple}. Keeping it byte-compatible
means an existing client can talk to `geo3d serve` and our client can talk to theirs.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NDARRAY_TAG = "__ndarray__"
# numpy scalars (np.float32(1.0)) are sent as 0-d arrays; object/void dtypes cannot be rebuilt from bytes.
_REFUSED_KINDS = ("O", "V")


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        if arr.dtype.kind in _REFUSED_KINDS:
            raise TypeError(f"cannot send numpy dtype {arr.dtype} over the wire (object/void arrays)")
        arr = np.ascontiguousarray(arr)
        return {NDARRAY_TAG: True, "data": arr.tobytes(), "dtype": arr.dtype.str, "shape": arr.shape}
    return obj


def _decode(obj: dict) -> Any:
    if obj.get(NDARRAY_TAG) is True:
        try:
            dtype = np.dtype(obj["dtype"])
            shape = tuple(int(s) for s in obj["shape"])
            return np.frombuffer(obj["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed ndarray in message: {e}") from e
    return obj


def packb(obj: Any) -> bytes:
    """Serialise a (nested) dict/list of python values and numpy arrays."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Inverse of `packb`; arrays come back read-only views on the message bytes (copy to mutate)."""
    return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
