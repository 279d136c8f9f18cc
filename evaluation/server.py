"""`geo3d serve`: a websocket policy server for geo3d's own client and the field's LIBERO clients.

- Profiles (evaluation/protocols.py): `serve.protocol` geo3d | starvla | openpi | auto (each request's shape
  decides). On connect the server sends the profile's handshake map; each binary msgpack request gets one reply
  (geo3d: {status, ok, type, request_id, data | error}; StarVLA: {ok, data: {actions [B,T,D]}}; openpi:
  {actions [H,7]}). Errors go back the way the client reads them: a binary error map to geo3d's client, a
  text frame to StarVLA's and openpi's (both raise it). The connection stays open after an error.
- Limits (serve.limits, evaluation/server_requests.py): frame size (websockets `max_size`: a bigger frame
  closes that connection with code 1009), connections (HTTP 503 beyond), instruction length in characters and
  checkpoint tokens, image sides, views, StarVLA examples per request. A refusal never stops the server.
- Batching (evaluation/batching.py): concurrent queries from all connections share one forward.
- Plain HTTP `GET /healthz` on the same port answers 200 "ok" (load balancers, SLURM scripts, curl).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from geo3d.evaluation.batching import Batcher, needs_of, predict_batch
from geo3d.evaluation.msgpack_wire import packb, unpackb
from geo3d.evaluation.observation import fit_views
from geo3d.evaluation.policy_handle import Policy
from geo3d.evaluation.protocols import BY_NAME, Gripper, Incoming, detect, handshake
from geo3d.evaluation.server_requests import BadRequest, Checker, Limits, Needs, Query

log = logging.getLogger("geo3d.serve")
HEALTH_PATH = "/healthz"
MAX_MESSAGE_CHARS = 2000  # error messages quote client input: keep replies small
RECV_QUEUE_FRAMES = 2     # frames buffered per connection (websockets max_queue): bounds memory with max_size


@dataclass(frozen=True)
class ServeSettings:
    """The `serve:` section (configs/eval.yaml) plus eval's gripper mapping, checked once."""

    host: str
    port: int
    protocol: str
    limits: Limits
    batch_size: int
    batch_wait_s: float
    gripper: Gripper
    ping_interval_s: float
    ping_timeout_s: float

    @classmethod
    def from_cfg(cls, cfg: Any) -> "ServeSettings":
        s = cfg.serve  # types, ranges and choices were checked by the config schema (evaluation/cli.py)
        return cls(str(s.host), int(s.port), str(s.protocol), Limits.from_cfg(s.limits), int(s.batch.max_size),
                   float(s.batch.wait_ms) / 1000.0, Gripper.from_cfg(cfg.eval.gripper), float(s.ping_interval_s),
                   float(s.ping_timeout_s))


class PolicyServer:
    """One policy, many connections; queries are batched (one forward at a time) off the event loop, so health
    checks and refusals answer while a chunk is being computed."""

    def __init__(self, policy: Policy, metadata: dict[str, Any], settings: ServeSettings,
                 needs: Needs | None = None) -> None:
        needs = needs or needs_of(policy)
        self.policy, self.settings = policy, settings
        self.metadata = {**metadata, "uses_state": needs.uses_state,
                         **({"preset": needs.preset} if needs.preset else {})}
        self.image_size: int | None = metadata.get("image_size")
        self.checker = Checker(settings.limits, needs)
        self.batcher = Batcher(self._forward, settings.batch_size, settings.batch_wait_s)
        self._admitted: set[Any] = set()
        self.served = 0
        self.refused = 0

    def _forward(self, queries: list[Query]) -> list[Any]:
        sized = [Query(fit_views(q.images, self.image_size), q.instruction, q.state) for q in queries]
        return predict_batch(self.policy, sized)

    def health(self) -> dict[str, Any]:
        return {**self.metadata, "protocol": self.settings.protocol, "served": self.served, "refused": self.refused,
                "batching": self.batcher.stats()}

    async def _infer(self, proto: Any, inc: Incoming) -> bytes | str:
        results, ms = await self.batcher.submit(inc.queries)
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            e = failed[0]
            log.error("inference failed (request_id=%s): %s: %s", inc.request_id, type(e).__name__, e)
            return proto.error(inc, f"policy error: {type(e).__name__}: {e}"[:MAX_MESSAGE_CHARS])
        self.served += len(results)
        return proto.reply(inc, results, self.settings.gripper, ms)

    async def answer(self, raw: Any, current: str | None) -> tuple[bytes | str, str | None]:
        """(the reply frame, the connection's profile). `current`: the profile so far (None: auto, unknown)."""
        proto = BY_NAME[current] if current else None
        inc = None
        try:
            if isinstance(raw, str):
                raise BadRequest("text frames are not accepted; send a binary msgpack map")
            try:
                msg = unpackb(raw)
            except Exception as e:  # msgpack and the array decoder raise several types for garbage
                raise BadRequest(f"request is not valid msgpack: {type(e).__name__}: {str(e)[:300]}") from None
            proto = BY_NAME[detect(msg) if self.settings.protocol == "auto" else self.settings.protocol]
            inc = proto.parse(msg, self.checker)
            del msg  # a queued query keeps only its arrays, not the whole decoded request
            if inc.kind == "health":
                return proto.status(inc, self.health()), proto.name
            if inc.kind in ("reset", "ctrl"):
                return proto.status(inc, {}), proto.name
            return await self._infer(proto, inc), proto.name
        except BadRequest as e:
            self.refused += 1
            message = f"bad request: {e}"[:MAX_MESSAGE_CHARS]
        except Exception as e:  # a bug on this side: report it, keep serving
            log.exception("request failed")
            message = f"server error: {type(e).__name__}: {e}"[:MAX_MESSAGE_CHARS]
        if proto is None:  # auto mode and nothing readable yet: text is what every client can read
            return f"geo3d serve: {message}", None
        return proto.error(inc, message), proto.name

    async def _handler(self, ws: Any) -> None:
        log.info("connection from %s", ws.remote_address)
        current = None if self.settings.protocol == "auto" else self.settings.protocol
        try:
            await ws.send(packb(handshake(self.settings.protocol, self.metadata)))
            async for raw in ws:
                frame, current = await self.answer(raw, current)
                await ws.send(frame)
        except ConnectionClosed as e:
            if e.rcvd is None and e.sent is not None and e.sent.code == 1009:
                log.warning("closed %s: %s", ws.remote_address, e.sent.reason)
        finally:
            self._admitted.discard(ws)
        log.info("connection from %s closed", ws.remote_address)

    def _process_request(self, connection: Any, request: Any) -> Any:
        """HTTP GET /healthz answers without an upgrade; beyond serve.limits.max_connections a 503 says why."""
        if request.path == HEALTH_PATH:
            return connection.respond(HTTPStatus.OK, "ok\n")
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        cap = self.settings.limits.max_connections
        if len(self._admitted) >= cap:
            self.refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"geo3d serve: {cap} connections already "
                                      "open (serve.limits.max_connections); retry later\n")
        self._admitted.add(connection)
        return None

    async def run(self, on_ready: Callable[[str], None] | None = None) -> None:
        self.batcher.start()
        try:
            async with serve(self._handler, self.settings.host, self.settings.port,
                             process_request=self._process_request, compression=None,
                             max_size=self.settings.limits.max_frame_bytes, max_queue=RECV_QUEUE_FRAMES,
                             ping_interval=self.settings.ping_interval_s,
                             ping_timeout=self.settings.ping_timeout_s) as server:
                port = server.sockets[0].getsockname()[1] if server.sockets else self.settings.port
                if on_ready is not None:
                    on_ready(f"ws://{self.settings.host}:{port}")
                await server.serve_forever()
        finally:
            await self.batcher.stop()
