"""Test-side stand-ins for the field's LIBERO clients, written from their published message formats and NOT from
geo3d's server code (nothing here imports geo3d.evaluation): what `geo3d serve` must answer unchanged.

- Wire: openpi_client.msgpack_numpy's encoding -- arrays as maps with bytes keys b"__ndarray__", b"data",
  b"dtype", b"shape"; numpy scalars as b"__npgeneric__" maps; msgpack >= 1.0 defaults (bin type on, raw off).
- StarVLA (examples/simBenchmarks/LIBERO): handshake map read for `action_chunk_size` and
  `training_obs_image_size` [H,W]; request {"examples": [{"image": [agentview, wrist], "lang"}], "unnorm_key",
  "do_sample", "use_ddim", "num_ddim_steps"}; reads response["data"]["actions"] [B,T,D]; gripper 1 = open,
  0 = close, turned into the env command 1 - 2*(v > 0.5); a text frame is an error (RuntimeError).
- openpi (examples/libero/main.py): request {"observation/image", "observation/wrist_image",
  "observation/state" float64[8], "prompt"}; reads top-level "actions" [H,7] and steps the env with each row
  unchanged; a text frame is an error (RuntimeError).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import msgpack
import numpy as np
from websockets.sync.client import connect


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


def field_packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default)


def field_unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_hook)


class _Client:
    def __init__(self, url: str) -> None:
        self._stack = ExitStack()  # websockets >= 17.1 wants connect() entered (the clients call it bare)
        self.ws = self._stack.enter_context(connect(url, compression=None, max_size=None, proxy=None, open_timeout=20))
        self.metadata = field_unpackb(self.ws.recv())

    def _call(self, obj: Any) -> Any:
        self.ws.send(field_packb(obj))
        response = self.ws.recv(timeout=60)
        if isinstance(response, str):
            raise RuntimeError(f"Error in inference server:\n{response}")
        return field_unpackb(response)

    def close(self) -> None:
        self._stack.close()


class StarVLAClient(_Client):
    """What StarVLA's LIBERO ModelClient does with the server."""

    @property
    def chunk_size(self) -> int:
        return int(self.metadata["action_chunk_size"])

    def predict_action(self, examples: list[dict], unnorm_key: str | None = None) -> np.ndarray:
        response = self._call({"examples": examples, "unnorm_key": unnorm_key, "do_sample": False,
                               "use_ddim": True, "num_ddim_steps": 10})
        return np.asarray(response["data"]["actions"])  # (B, T, D)


def starvla_env_action(row: np.ndarray) -> np.ndarray:
    """StarVLA's eval_libero: world vector, rotation delta, then the binarized 'open_gripper' (1 = open)."""
    return np.concatenate([row[:3], row[3:6], [1.0 - 2.0 * float(row[6] > 0.5)]])


class OpenpiClient(_Client):
    """What openpi's WebsocketClientPolicy + examples/libero/main.py do with the server."""

    def infer(self, obs: dict) -> dict:
        return self._call(obs)


def openpi_env_action(row: np.ndarray) -> np.ndarray:
    """openpi's LIBERO loop sends each action row to env.step unchanged."""
    return np.asarray(row, dtype=np.float64)


def openpi_obs(images: np.ndarray, state: np.ndarray, prompt: str) -> dict:
    return {"observation/image": np.ascontiguousarray(images[0]), "observation/wrist_image":
            np.ascontiguousarray(images[1]), "observation/state": np.asarray(state, np.float64), "prompt": prompt}
