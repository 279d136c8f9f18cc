"""A `Policy` that lives behind `geo3d serve`: lets `geo3d eval` run the simulator apart from the model
(e.g. sim on CPU nodes, policy on one GPU), exactly like the LIBERO clients of the field."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from geo3d.core.errors import Geo3dError
from geo3d.evaluation.msgpack_wire import packb, unpackb

# Keepalive pings answered late must not end an evaluation: under load (a 2-core machine at load 8-10,
# scripts/bench_serve.py) websockets' default 20 s ping timeout dropped a simulator worker's connection. The
# server side is serve.ping_timeout_s; this client waits as long for the server's pongs.
PING_TIMEOUT_S = 600


class RemotePolicy:
    """Synchronous websocket client; one connection, one request in flight."""

    def __init__(self, url: str, connect_timeout: float = 60.0):
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self._stack = ExitStack()  # websockets >= 16 wants connect() entered as a context manager
                self._ws = self._stack.enter_context(
                    connect(url, compression=None, max_size=None, open_timeout=10, proxy=None,
                            ping_timeout=PING_TIMEOUT_S))
                break
            except (OSError, TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise Geo3dError(f"cannot reach policy server {url}: {e}; start it with "
                                     "`geo3d serve --ckpt DIR` or check --server") from None
                time.sleep(1.0)
        self.url = url
        self.metadata: dict[str, Any] = unpackb(self._ws.recv())  # the handshake map
        self.image_size = self.metadata.get("image_size")
        self.num_views = self.metadata.get("num_views")
        self.action_horizon = self.metadata.get("action_horizon")
        self.action_dim, self.state_dim = self.metadata.get("action_dim"), self.metadata.get("state_dim")

    def request(self, mtype: str, payload: dict | None = None) -> dict[str, Any]:
        """Send one message, return the `data` of an ok reply; an error reply raises Geo3dError."""
        try:
            self._ws.send(packb({"type": mtype, "payload": payload or {}}))
            raw = self._ws.recv()
        except ConnectionClosed as e:
            raise Geo3dError(f"lost the connection to policy server {self.url} ({e}); restart `geo3d serve` and "
                             "continue with `geo3d eval --resume`") from None
        if isinstance(raw, str):  # a server that cannot tell which client this is answers errors as text
            raise Geo3dError(f"policy server {self.url}: {raw}")
        reply = unpackb(raw)
        if not isinstance(reply, dict) or not reply.get("ok"):
            message = reply.get("error", {}).get("message", reply) if isinstance(reply, dict) else reply
            raise Geo3dError(f"policy server {self.url}: {message}")
        return reply["data"]

    def health(self) -> dict[str, Any]:
        return self.request("health")

    def predict_action(self, images: np.ndarray, instruction: str, state: np.ndarray) -> np.ndarray:
        data = self.request("infer", {"images": np.ascontiguousarray(images, dtype=np.uint8),
                                      "instruction": instruction, "state": np.asarray(state, np.float32)})
        return np.array(data["actions"], dtype=np.float32)

    def close(self) -> None:
        self._stack.close()
