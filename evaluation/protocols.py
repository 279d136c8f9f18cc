"""The client profiles of `geo3d serve`: geo3d's own, StarVLA's LIBERO client and openpi's, each with its
handshake keys, request keys, reply shape, action units and error channel (written from the published message
formats; nothing is copied from those projects).

- geo3d: request {type, request_id, payload: {images [V,H,W,3], instruction, state [8]}}; reply {ok, data:
  {actions [H,7]}}, gripper in the dataset's units (-1 open / +1 close); errors as a binary map.
- starvla: request {examples: [{image: [agentview, wrist], lang, state?}], unnorm_key, ...}; reply {ok, data:
  {actions [B,H,7]}}, gripper 1 = open / 0 = close (the client sends 1 - 2*(v > 0.5)); errors as text frames.
- openpi: request {observation/image, observation/wrist_image, observation/state [8], prompt}; reply {actions
  [H,7]}, each row the env command itself (the client sends it unchanged); errors as text frames.

Units: every profile's gripper is derived from `episode.sim_gripper`, geo3d's own eval mapping (eval.gripper), so
the env command each client ends up sending equals the one `geo3d eval` sends (tests/test_serve_protocols.py
replays a demo episode through each). Arm deltas are the model's, unchanged.
`auto` picks the profile from each request's shape: `examples` -> starvla; `observation/...`, `prompt` or
`__ctrl__` keys -> openpi; anything else -> geo3d.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geo3d.evaluation.episode import sim_gripper
from geo3d.evaluation.msgpack_wire import packb
from geo3d.evaluation.server_requests import (PROTOCOLS, BadRequest, Checker, Query, parse_infer, plain_id,
                                              split_message)

STARVLA_UNNORM_KEY = "geo3d"  # one set of action statistics per checkpoint (its training mixture)
OPENPI_KEYS = ("observation/image", "observation/wrist_image", "observation/state", "prompt")


@dataclass(frozen=True)
class Gripper:
    """eval.gripper: dataset gripper x sim_sign = the simulator command, binarized at 0."""

    sign: float
    binarize: bool

    @classmethod
    def from_cfg(cls, c: Any) -> "Gripper":
        return cls(float(c.sim_sign), bool(c.binarize))


def sim_commands(chunk: np.ndarray, g: Gripper) -> np.ndarray:
    """Dataset-convention actions [H,7] -> the env commands geo3d's eval would send (float32)."""
    out = np.array(chunk, dtype=np.float32)
    out[:, 6] = [sim_gripper(v, g.sign, g.binarize) for v in chunk[:, 6]]
    return out


def starvla_actions(chunk: np.ndarray, g: Gripper) -> np.ndarray:
    """StarVLA's units: gripper 1 = open / 0 = close, from the env command (-1 open / +1 close)."""
    out = sim_commands(chunk, g)
    out[:, 6] = (1.0 - out[:, 6]) / 2.0
    return out


@dataclass
class Incoming:
    """A parsed request: what to do, and what the reply must echo."""

    kind: str                                  # infer | health | reset | ctrl
    request_id: Any = None
    mtype: str = "infer"
    queries: list[Query] = field(default_factory=list)


class Geo3dProtocol:
    name, client = "geo3d", "geo3d"

    def handshake(self, info: dict[str, Any]) -> dict[str, Any]:
        return dict(info)

    def parse(self, msg: Any, checker: Checker) -> Incoming:
        mtype, request_id, payload = split_message(msg)
        if mtype in ("health", "ping"):
            return Incoming("health", request_id, mtype)
        if mtype == "reset":
            return Incoming("reset", request_id, mtype)
        return Incoming("infer", request_id, mtype, [parse_infer(payload, checker)])

    def status(self, inc: Incoming, data: dict[str, Any]) -> bytes:
        return packb({"status": "ok", "ok": True, "type": inc.mtype, "request_id": inc.request_id, "data": data})

    def reply(self, inc: Incoming, chunks: list[np.ndarray], g: Gripper, infer_ms: float) -> bytes:
        return packb({"status": "ok", "ok": True, "type": "inference_result", "request_id": inc.request_id,
                      "data": {"actions": chunks[0]}})

    def error(self, inc: Incoming | None, message: str) -> bytes | str:
        return packb({"status": "error", "ok": False, "type": inc.mtype if inc else "unknown",
                      "request_id": inc.request_id if inc else None, "error": {"message": message}})


class _TextErrors:
    """openpi's and StarVLA's clients raise a text frame as `RuntimeError("Error in inference server: ...")`."""

    client = ""

    def error(self, inc: Incoming | None, message: str) -> bytes | str:
        return f"geo3d serve ({self.client} profile): {message}"


class StarVLAProtocol(_TextErrors, Geo3dProtocol):
    name, client = "starvla", "StarVLA"

    def handshake(self, info: dict[str, Any]) -> dict[str, Any]:
        size = info.get("image_size")
        return {**info, "env": "geo3d_policy_server", "action_chunk_size": info.get("action_horizon"),
                "training_obs_image_size": [size, size] if size else None,
                "available_unnorm_keys": [STARVLA_UNNORM_KEY], "default_unnorm_key": STARVLA_UNNORM_KEY}

    def parse(self, msg: Any, checker: Checker) -> Incoming:
        if not isinstance(msg, dict):
            raise BadRequest(f"a StarVLA request must be a msgpack map, got {type(msg).__name__}")
        mtype, request_id = msg.get("type", "infer"), plain_id(msg.get("request_id"), "default")
        if isinstance(mtype, str) and mtype == "ping":
            return Incoming("health", request_id, "ping")
        if not isinstance(mtype, str) or mtype not in ("infer", "predict_action"):
            raise BadRequest(f"unsupported message type {str(mtype)[:64]!r}; StarVLA clients send infer or ping")
        payload = msg.get("payload", msg)
        if not isinstance(payload, dict) or "examples" not in payload:
            raise BadRequest("a StarVLA request needs 'examples': a list of {image: [agentview, wrist], lang}")
        key = payload.get("unnorm_key")
        if key is not None and not (isinstance(key, str) and key == STARVLA_UNNORM_KEY):
            raise BadRequest(f"unnorm_key {str(key)[:64]!r}: a geo3d checkpoint has one set of action statistics "
                             f"(its training mixture); send unnorm_key None (the client's default)")
        examples = payload["examples"]
        if not isinstance(examples, list) or not 1 <= len(examples) <= checker.limits.max_examples:
            raise BadRequest(f"'examples' must be a list of 1..{checker.limits.max_examples} maps")
        return Incoming("infer", request_id, "infer", [self._example(ex, i, checker) for i, ex in enumerate(examples)])

    def _example(self, ex: Any, i: int, checker: Checker) -> Query:
        if not isinstance(ex, dict) or "image" not in ex or "lang" not in ex:
            raise BadRequest(f"examples[{i}] must be a map with 'image' (a list of [H,W,3] uint8 views) and 'lang'")
        images = ex["image"] if isinstance(ex["image"], (list, tuple)) else [ex["image"]]
        where = f"examples[{i}].state"
        state = checker.state(ex["state"], where) if "state" in ex else checker.missing_state(self.client, where)
        return Query(checker.images(images, f"examples[{i}].image"),
                     checker.instruction(ex["lang"], f"examples[{i}].lang"), state)

    def reply(self, inc: Incoming, chunks: list[np.ndarray], g: Gripper, infer_ms: float) -> bytes:
        actions = np.stack([starvla_actions(c, g) for c in chunks])  # [B, T, D]
        return packb({"status": "ok", "ok": True, "type": "inference_result", "request_id": inc.request_id,
                      "data": {"actions": actions}})


class OpenpiProtocol(_TextErrors, Geo3dProtocol):
    name, client = "openpi", "openpi"

    def handshake(self, info: dict[str, Any]) -> dict[str, Any]:
        return dict(info)

    def parse(self, msg: Any, checker: Checker) -> Incoming:
        if not isinstance(msg, dict):
            raise BadRequest(f"an openpi request must be a msgpack map, got {type(msg).__name__}")
        if "__ctrl__" in msg:  # episode_start / episode_end of some openpi clients: acknowledged, nothing kept
            return Incoming("ctrl", None, "ctrl")
        missing = [k for k in ("observation/image", "observation/wrist_image", "prompt") if k not in msg]
        if missing:
            raise BadRequest(f"an openpi LIBERO request needs {list(OPENPI_KEYS)}; missing {missing}")
        state = (checker.state(msg["observation/state"], "observation/state") if "observation/state" in msg
                 else checker.missing_state(self.client, "observation/state"))
        views = checker.images([msg["observation/image"], msg["observation/wrist_image"]],
                               "observation/image, observation/wrist_image")
        return Incoming("infer", None, "infer", [Query(views, checker.instruction(msg["prompt"], "prompt"), state)])

    def status(self, inc: Incoming, data: dict[str, Any]) -> bytes:
        return packb(data)

    def reply(self, inc: Incoming, chunks: list[np.ndarray], g: Gripper, infer_ms: float) -> bytes:
        return packb({"actions": sim_commands(chunks[0], g), "server_timing": {"infer_ms": infer_ms}})


BY_NAME = {p.name: p for p in (Geo3dProtocol(), StarVLAProtocol(), OpenpiProtocol())}


def detect(msg: Any) -> str:
    """The profile a decoded request's shape belongs to (auto mode)."""
    if not isinstance(msg, dict):
        return "geo3d"
    payload = msg.get("payload") if isinstance(msg.get("payload"), dict) else msg
    if "examples" in payload:
        return "starvla"
    if "__ctrl__" in msg or "prompt" in msg or any(isinstance(k, str) and k.startswith("observation/") for k in msg):
        return "openpi"
    return "geo3d"


def handshake(protocol: str, info: dict[str, Any]) -> dict[str, Any]:
    """What the server sends on connect: the profile's keys, or every profile's for auto (they do not clash)."""
    names = PROTOCOLS if protocol == "auto" else (protocol,)
    out: dict[str, Any] = {}
    for name in names:
        out.update(BY_NAME[name].handshake(info))
    return {**out, "protocol": protocol}
