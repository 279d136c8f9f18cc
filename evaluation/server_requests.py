"""What `geo3d serve` accepts: the limits (configs/eval.yaml `serve.limits`), the served checkpoint's needs, and
the geo3d request format. Every refusal is a `BadRequest` whose message goes back to the client verbatim.

geo3d request (msgpack map): {"type": "infer" | "health" | "ping" | "reset", "request_id": any, "payload": {...}};
a map without "type" is an infer payload itself. Infer payload:
  images       uint8 [V,H,W,3] upright (agentview, wrist), or a list of V uint8 [H,W,3] arrays
  instruction  str
  state        float [8] (eef pos 3, eef axis-angle 3, gripper qpos 2)
The StarVLA and openpi request formats are in evaluation/protocols.py; all three end in the same `Query`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from geo3d.data.lerobot_layout import STATE_DIM  # the simulator state (eef pos 3, axis-angle 3, gripper qpos 2)

PROTOCOLS = ("geo3d", "starvla", "openpi")  # the client profiles (evaluation/protocols.py), `serve.protocol`

MESSAGE_TYPES = ("infer", "health", "ping", "reset")
STATE_MEANING = "eef pos 3, eef axis-angle 3, gripper qpos 2"


class BadRequest(ValueError):
    """The request cannot be answered; the message goes back to the client verbatim."""


@dataclass(frozen=True)
class Limits:
    """serve.limits: what one request may carry (defaults only in configs/eval.yaml)."""

    max_frame_bytes: int
    max_connections: int
    max_instruction_chars: int
    max_instruction_tokens: int
    min_image_side: int
    max_image_side: int
    max_views: int
    max_examples: int

    @classmethod
    def from_cfg(cls, c: Any) -> "Limits":
        return cls(int(float(c.max_frame_mb) * 2**20), int(c.max_connections), int(c.max_instruction_chars),
                   int(c.max_instruction_tokens), int(c.min_image_side), int(c.max_image_side), int(c.max_views),
                   int(c.max_examples))


@dataclass(frozen=True)
class Needs:
    """What the served checkpoint needs from a request (from its config; None where the policy does not say)."""

    num_views: int | None = None
    state_dim: int = STATE_DIM
    uses_state: bool = True
    preset: str | None = None
    count_tokens: Callable[[str], int] | None = None  # the checkpoint's tokenizer


@dataclass(frozen=True)
class Query:
    """One observation to answer: upright uint8 views [V,H,W,3], the instruction, the raw state [state_dim]."""

    images: np.ndarray
    instruction: str
    state: np.ndarray


class Checker:
    """Validates the parts of a request against the limits and the checkpoint; `where` names the field."""

    def __init__(self, limits: Limits, needs: Needs) -> None:
        self.limits, self.needs = limits, needs

    def images(self, value: Any, where: str) -> np.ndarray:
        lim, views = self.limits, self.needs.num_views
        if isinstance(value, (list, tuple)):
            if not 1 <= len(value) <= lim.max_views:
                raise BadRequest(f"'{where}' holds {len(value)} views; 1..{lim.max_views} are accepted")
            for i, v in enumerate(value):
                if not isinstance(v, np.ndarray) or v.ndim != 3:
                    raise BadRequest(f"'{where}'[{i}] must be a uint8 [H,W,3] array, got "
                                     f"{getattr(v, 'shape', type(v).__name__)}")
            if len({v.shape for v in value}) != 1:
                raise BadRequest(f"'{where}': all views must have one shape, got {[list(v.shape) for v in value]}")
            value = np.stack(value)
        if not isinstance(value, np.ndarray):
            raise BadRequest(f"'{where}' must be a uint8 array [V,H,W,3], got {type(value).__name__}")
        if value.dtype != np.uint8 or value.ndim != 4 or value.shape[-1] != 3:
            raise BadRequest(f"'{where}' must be uint8 [V,H,W,3] (RGB), got {value.dtype} {list(value.shape)}")
        if not 1 <= value.shape[0] <= lim.max_views or (views is not None and value.shape[0] != views):
            raise BadRequest(f"'{where}' has {value.shape[0]} views, the policy takes {views or lim.max_views} "
                             "(agentview, wrist)")
        h, w = value.shape[1:3]
        if not (lim.min_image_side <= h <= lim.max_image_side and lim.min_image_side <= w <= lim.max_image_side):
            raise BadRequest(f"'{where}' views are {h}x{w}; each side must be {lim.min_image_side}.."
                             f"{lim.max_image_side} pixels (serve.limits.min_image_side / max_image_side): the "
                             "server resizes to the checkpoint's size and would otherwise stretch or blow up a frame")
        return value

    def instruction(self, value: Any, where: str) -> str:
        lim = self.limits
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(f"'{where}' must be a non-empty string")
        if len(value) > lim.max_instruction_chars:
            raise BadRequest(f"'{where}' has {len(value)} characters, the limit is {lim.max_instruction_chars} "
                             "(serve.limits.max_instruction_chars); it is refused, never truncated")
        count = self.needs.count_tokens
        if count is not None:
            n = count(value)
            if n > lim.max_instruction_tokens:
                raise BadRequest(f"'{where}' is {n} tokens with the checkpoint's tokenizer, the limit is "
                                 f"{lim.max_instruction_tokens} (serve.limits.max_instruction_tokens); it is "
                                 "refused, never truncated")
        return value

    def state(self, value: Any, where: str) -> np.ndarray:
        dim = self.needs.state_dim
        if isinstance(value, (list, tuple)) and len(value) <= 4 * dim:
            try:
                value = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise BadRequest(f"'{where}' must be {dim} numbers ({STATE_MEANING})") from None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise BadRequest(f"'{where}' must be a numeric array [{dim}], got {type(value).__name__}")
        if value.size != dim:
            raise BadRequest(f"'{where}' must have {dim} values ({STATE_MEANING}), got shape {list(value.shape)}")
        state = value.astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(state)):
            raise BadRequest(f"'{where}' contains NaN or inf")
        return state

    def missing_state(self, client: str, where: str) -> np.ndarray:
        """A request without state: zeros when the checkpoint never reads it (its head has no state token), else
        the one error that names what is missing and which preset would not need it."""
        n = self.needs
        if not n.uses_state:
            return np.zeros(n.state_dim, np.float32)
        preset = f"preset {n.preset}" if n.preset else "a checkpoint"
        raise BadRequest(f"this checkpoint ({preset}, model.action_head.use_state=true) needs the robot state, "
                         f"{n.state_dim} values ({STATE_MEANING}), and the {client} request has none ('{where}' "
                         "missing). Serve a checkpoint trained with preset=fork (no state input), or send the state "
                         f"in '{where}'.")


def split_message(msg: Any) -> tuple[str, Any, Any]:
    """(type, request_id, payload) of a decoded geo3d message."""
    if not isinstance(msg, dict):
        raise BadRequest(f"a request must be a msgpack map, got {type(msg).__name__}")
    mtype = msg.get("type", "infer")
    if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:
        raise BadRequest(f"unsupported message type {str(mtype)[:64]!r}; use one of {list(MESSAGE_TYPES)}")
    return mtype, plain_id(msg.get("request_id")), msg.get("payload", msg)


def plain_id(request_id: Any, default: Any = None) -> Any:
    """A request id to echo back: plain short values only."""
    ok = isinstance(request_id, (int, float, bool)) or (isinstance(request_id, str) and len(request_id) <= 256)
    return request_id if ok else default


def parse_infer(payload: Any, checker: Checker) -> Query:
    """The geo3d infer payload as a Query, or BadRequest naming the bad field."""
    if not isinstance(payload, dict):
        raise BadRequest(f"infer payload must be a map, got {type(payload).__name__}")
    missing = [k for k in ("images", "instruction", "state") if k not in payload]
    if missing:
        raise BadRequest(f"infer payload is missing {missing}; it needs images, instruction, state")
    return Query(checker.images(payload["images"], "images"),
                 checker.instruction(payload["instruction"], "instruction"), checker.state(payload["state"], "state"))
