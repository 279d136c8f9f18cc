"""Validation of policy-server requests: every malformed request gets a reply that says what was wrong.

Request (msgpack map): {"type": "infer" | "health" | "ping" | "reset", "request_id": any, "payload": {...}};
a map without "type" is an infer payload itself (StarVLA clients send either form). Infer payload:
  images       uint8 [V,H,W,3] upright (agentview, wrist), or a list of V uint8 [H,W,3] arrays
  instruction  str
  state        float [8] (eef pos 3, eef axis-angle 3, gripper qpos 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geo3d.data.lerobot_layout import STATE_DIM  # the simulator state (eef pos 3, axis-angle 3, gripper qpos 2)

MESSAGE_TYPES = ("infer", "health", "ping", "reset")


class BadRequest(ValueError):
    """The request cannot be answered; the message goes back to the client verbatim."""


def split_message(msg: Any) -> tuple[str, Any, Any]:
    """(type, request_id, payload) of a decoded message."""
    if not isinstance(msg, dict):
        raise BadRequest(f"a request must be a msgpack map, got {type(msg).__name__}")
    mtype = msg.get("type", "infer")
    if mtype not in MESSAGE_TYPES:
        raise BadRequest(f"unsupported message type {mtype!r}; use one of {list(MESSAGE_TYPES)}")
    payload = msg.get("payload", msg)
    return mtype, msg.get("request_id"), payload


def _images(value: Any, num_views: int | None) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, np.ndarray) for v in value):
            raise BadRequest("'images' list must hold numpy arrays, one [H,W,3] uint8 per view")
        if len({v.shape for v in value}) != 1:
            raise BadRequest(f"all views must have one shape, got {[v.shape for v in value]}")
        value = np.stack(value)
    if not isinstance(value, np.ndarray):
        raise BadRequest(f"'images' must be a uint8 array [V,H,W,3], got {type(value).__name__}")
    if value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3 or min(value.shape) < 1:
        raise BadRequest(f"'images' must be uint8 [V,H,W,3], got {value.dtype} {list(value.shape)}")
    if num_views is not None and value.shape[0] != num_views:
        raise BadRequest(f"'images' has {value.shape[0]} views, the policy takes {num_views} (agentview, wrist)")
    return value


def _state(value: Any, state_dim: int) -> np.ndarray:
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
        raise BadRequest(f"'state' must be a numeric array [{state_dim}], got {type(value).__name__}")
    state = value.astype(np.float32).reshape(-1)
    if state.shape != (state_dim,):
        raise BadRequest(f"'state' must have {state_dim} values (eef pos, axis-angle, gripper qpos), "
                         f"got shape {list(value.shape)}")
    if not np.all(np.isfinite(state)):
        raise BadRequest("'state' contains NaN or inf")
    return state


def parse_infer(payload: Any, num_views: int | None = None, state_dim: int | None = None,
                ) -> tuple[np.ndarray, str, np.ndarray]:
    """(images uint8 [V,H,W,3], instruction, state float32 [8]) or BadRequest naming the bad field."""
    if not isinstance(payload, dict):
        raise BadRequest(f"infer payload must be a map, got {type(payload).__name__}")
    missing = [k for k in ("images", "instruction", "state") if k not in payload]
    if missing:
        raise BadRequest(f"infer payload is missing {missing}; it needs images, instruction, state")
    instruction = payload["instruction"]
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRequest("'instruction' must be a non-empty string")
    return _images(payload["images"], num_views), instruction, _state(payload["state"], state_dim or STATE_DIM)
