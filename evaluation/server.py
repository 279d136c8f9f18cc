"""`geo3d serve`: a websocket policy server speaking msgpack + numpy (the openpi / StarVLA convention).

Protocol (documented for clients in evaluation/server_requests.py):
- on connect the server sends one map: the policy metadata (action horizon/dim, state dim, image size, ...)
- each binary msgpack request gets exactly one reply:
    {"status": "ok", "ok": True, "type": <type>, "request_id": <echo>, "data": {...}}
    {"status": "error", "ok": False, "type": <type>, "request_id": <echo>, "error": {"message": str}}
  infer -> data = {"actions": float32 [8,7]} (unnormalized, gripper -1 open / +1 close)
  health / ping -> data = metadata; reset -> data = {} (the policy is stateless between queries)
- a malformed request (not msgpack, text frame, missing/ill-typed fields) gets an error reply and the
  connection stays open; so does a policy exception (the message says so; the server keeps serving).
- plain HTTP `GET /healthz` on the same port answers 200 "ok" (for load balancers, SLURM scripts, curl).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, Callable

from geo3d.evaluation.observation import fit_views
from geo3d.evaluation.policy_handle import Policy, check_action_chunk
from geo3d.evaluation.server_requests import BadRequest, parse_infer, split_message
from geo3d.evaluation.msgpack_wire import packb, unpackb

log = logging.getLogger("geo3d.serve")
HEALTH_PATH = "/healthz"


def _reply(mtype: str, request_id: Any, data: dict | None = None, error: str | None = None) -> bytes:
    if error is not None:
        return packb({"status": "error", "ok": False, "type": mtype, "request_id": request_id,
                      "error": {"message": error}})
    return packb({"status": "ok", "ok": True, "type": mtype, "request_id": request_id, "data": data or {}})


class PolicyServer:
    """One policy, many connections; inference is serialised (one model) and runs off the event loop so
    health checks answer while a chunk is being computed."""

    def __init__(self, policy: Policy, metadata: dict[str, Any], host: str = "0.0.0.0", port: int = 10093):
        self.policy, self.metadata, self.host, self.port = policy, metadata, host, port
        self.image_size: int | None = metadata.get("image_size")
        self.num_views: int | None = metadata.get("num_views")
        self.state_dim: int | None = metadata.get("state_dim")  # the checkpoint's (policy_info)
        self._lock = asyncio.Lock()
        self.served = 0

    def _infer_blocking(self, payload: Any) -> dict[str, Any]:
        images, instruction, state = parse_infer(payload, self.num_views, self.state_dim)
        images = fit_views(images, self.image_size)
        actions = check_action_chunk(self.policy.predict_action(images, instruction, state))
        return {"actions": actions}

    async def _answer(self, raw: Any) -> bytes:
        mtype, request_id = "unknown", None
        try:
            if isinstance(raw, str):
                raise BadRequest("text frames are not accepted; send a binary msgpack map")
            try:
                msg = unpackb(raw)
            except Exception as e:  # msgpack raises several types for garbage
                raise BadRequest(f"request is not valid msgpack: {e}") from None
            mtype, request_id, payload = split_message(msg)
            if mtype in ("health", "ping"):
                return _reply(mtype, request_id, {**self.metadata, "served": self.served})
            if mtype == "reset":
                return _reply(mtype, request_id, {})
            async with self._lock:
                data = await asyncio.to_thread(self._infer_blocking, payload)
            self.served += 1
            return _reply("inference_result", request_id, data)
        except BadRequest as e:
            return _reply(mtype, request_id, error=f"bad request: {e}")
        except Exception as e:  # the policy failed: report it, keep serving
            log.exception("inference failed (request_id=%s)", request_id)
            return _reply(mtype, request_id, error=f"policy error: {type(e).__name__}: {e}")

    async def _handler(self, ws: Any) -> None:
        import websockets

        log.info("connection from %s", ws.remote_address)
        try:
            await ws.send(packb(self.metadata))
            async for raw in ws:
                await ws.send(await self._answer(raw))
        except websockets.ConnectionClosed:
            pass
        log.info("connection from %s closed", ws.remote_address)

    @staticmethod
    def _process_request(connection: Any, request: Any) -> Any:
        """HTTP GET /healthz answers without a websocket upgrade; every other path upgrades."""
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        from websockets.asyncio.server import serve

        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         compression=None, max_size=None) as server:
            port = server.sockets[0].getsockname()[1] if server.sockets else self.port
            if on_ready is not None:
                on_ready(f"ws://{self.host}:{port}")
            await server.serve_forever()
