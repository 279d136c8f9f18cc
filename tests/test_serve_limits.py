"""`geo3d serve`'s limits and safe defaults: loopback bind, frame size, connections, instruction length in
characters and in the checkpoint tokenizer's tokens (refused, never truncated), image sides, views, StarVLA
examples -- each refusal a clear error, and the server keeps serving."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from contextlib import ExitStack

import numpy as np
import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from geo3d.core.config import ConfigError
from geo3d.core.errors import Geo3dError
from geo3d.evaluation.batching import token_counter
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.msgpack_wire import packb
from geo3d.evaluation.server import PolicyServer
from geo3d.evaluation.server_requests import Needs
from geo3d.policy.processor_policy import load_hf_processor

from eval_fixtures import serve_settings, start_server
from field_clients import OpenpiClient, StarVLAClient, openpi_obs


class CountingPolicy:
    def __init__(self):
        self.calls = 0

    def predict_action(self, images, instruction, state):
        self.calls += 1
        return np.zeros((8, 7), np.float32)


def serve(*overrides, needs=None):
    policy = CountingPolicy()
    srv = PolicyServer(policy, {"image_size": 32, "num_views": 2, "action_horizon": 8},
                       serve_settings("serve.port=0", *overrides), needs or Needs(num_views=2))
    url, stop = start_server(srv)
    return url, stop, policy, srv


def obs(size=64, instruction="pick up the bowl", n_views=2):
    imgs = np.zeros((n_views, size, size, 3), np.uint8)
    return imgs, instruction, np.zeros(8, np.float32)


def test_defaults_bind_loopback_and_come_from_configs_eval_yaml():
    s = serve_settings()
    assert s.host == "127.0.0.1" and s.protocol == "auto"
    assert s.limits.max_frame_bytes == 32 * 2**20 and s.limits.max_instruction_tokens == 256
    with pytest.raises(ConfigError, match=r"serve.protocol must be one of \['auto', 'geo3d', 'starvla', 'openpi'\]"):
        serve_settings("serve.protocol=grpc")
    # a frame cap of 0 would close every connection on its first frame: refused; any positive size is kept
    with pytest.raises(ConfigError, match=r"serve.limits.max_frame_mb must be > 0, got 0"):
        serve_settings("serve.limits.max_frame_mb=0")
    assert serve_settings("serve.limits.max_frame_mb=0.5").limits.max_frame_bytes == 2**19


@pytest.mark.parametrize("images, instruction, expect", [
    (np.zeros((2, 8, 8, 3), np.uint8), "x", "views are 8x8; each side must be 32..2048"),
    (np.zeros((2, 1, 60000, 3), np.uint8), "x", "views are 1x60000"),
    (np.zeros((2, 4000, 64, 3), np.uint8), "x", "views are 4000x64"),
    (np.zeros((3, 64, 64, 3), np.uint8), "x", "3 views, the policy takes 2"),
    (np.zeros((2, 64, 64, 3), np.uint8), "a" * 1001, "1001 characters, the limit is 1000"),
])
def test_oversized_or_undersized_inputs_are_refused_and_the_server_keeps_serving(images, instruction, expect):
    url, stop, policy, _ = serve()
    try:
        client = RemotePolicy(url)
        with pytest.raises(Geo3dError, match=expect):
            client.predict_action(images, instruction, np.zeros(8, np.float32))
        assert policy.calls == 0  # refused before the model
        assert client.predict_action(*obs()).shape == (8, 7)
        client.close()
    finally:
        stop()


def test_instruction_tokens_are_counted_with_the_checkpoint_tokenizer_and_refused_not_truncated(tiny_vlm_dir):
    count = token_counter(load_hf_processor(str(tiny_vlm_dir)).tokenizer)
    long = " ".join(f"w{i}" for i in range(120))  # < 1000 characters, > 40 tokens
    assert len(long) < 1000 and count(long) > 40
    url, stop, policy, _ = serve("serve.limits.max_instruction_tokens=40", needs=Needs(num_views=2, count_tokens=count))
    try:
        client = RemotePolicy(url)
        with pytest.raises(Geo3dError, match=f"is {count(long)} tokens with the checkpoint's tokenizer, the limit "
                                             "is 40 .*refused, never truncated"):
            client.predict_action(*obs(instruction=long))
        assert policy.calls == 0
        assert client.predict_action(*obs(instruction="pick up the black bowl")).shape == (8, 7)
        client.close()
    finally:
        stop()


def test_a_frame_over_the_cap_closes_only_that_connection():
    url, stop, _, srv = serve("serve.limits.max_frame_mb=1")
    try:
        with ExitStack() as stack:
            ws = stack.enter_context(connect(url, proxy=None, max_size=None))
            ws.recv()
            ws.send(b"\0" * (2 * 2**20))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=20)
            assert closed.value.rcvd.code == 1009  # "message too big"
        client = RemotePolicy(url)
        assert client.predict_action(*obs()).shape == (8, 7)
        client.close()
        with urllib.request.urlopen(url.replace("ws://", "http://") + "/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        stop()


def test_connections_beyond_the_cap_get_http_503_saying_why():
    url, stop, _, _ = serve("serve.limits.max_connections=3")
    try:
        clients = [RemotePolicy(url) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            with connect(url, proxy=None, open_timeout=10):
                pass
        assert refused.value.response.status_code == 503
        assert b"serve.limits.max_connections" in refused.value.response.body
        clients.pop().close()
        again = RemotePolicy(url)  # a freed slot is usable again
        assert again.predict_action(*obs()).shape == (8, 7)
        for c in [*clients, again]:
            c.close()
    finally:
        stop()


def test_starvla_examples_and_openpi_images_are_checked_too():
    url, stop, policy, _ = serve("serve.limits.max_examples=2", needs=Needs(num_views=2, uses_state=False))
    try:
        starvla = StarVLAClient(url)
        ex = {"image": list(np.zeros((2, 64, 64, 3), np.uint8)), "lang": "x"}
        with pytest.raises(RuntimeError, match="'examples' must be a list of 1..2 maps"):
            starvla.predict_action([ex] * 3)
        with pytest.raises(RuntimeError, match=r"examples\[1\].image' views are 8x8"):
            starvla.predict_action([ex, {**ex, "image": list(np.zeros((2, 8, 8, 3), np.uint8))}])
        assert starvla.predict_action([ex, ex]).shape == (2, 8, 7)
        openpi = OpenpiClient(url)
        with pytest.raises(RuntimeError, match="all views must have one shape"):
            openpi.infer({**openpi_obs(np.zeros((2, 64, 64, 3), np.uint8), np.zeros(8), "x"),
                          "observation/wrist_image": np.zeros((32, 32, 3), np.uint8)})
        with pytest.raises(RuntimeError, match="'prompt' must be a non-empty string"):
            openpi.infer(openpi_obs(np.zeros((2, 64, 64, 3), np.uint8), np.zeros(8), 17))
        starvla.close()
        openpi.close()
    finally:
        stop()


@pytest.mark.parametrize("timeout_s, dropped", [(1, True), (30, False)])
def test_keepalive_timeout_is_serve_ping_timeout_s(timeout_s, dropped):
    """A client too busy to answer pings (its event loop blocked 4 s, like a simulator worker holding the GIL)
    is dropped only after serve.ping_timeout_s."""
    url, stop, _, _ = serve("serve.ping_interval_s=0.3", f"serve.ping_timeout_s={timeout_s}")

    async def busy_client() -> str:
        async with aconnect(url, proxy=None, ping_interval=None) as ws:
            await ws.recv()
            time.sleep(4)  # blocks the loop: pings pile up unanswered
            try:
                await ws.send(packb({"type": "ping"}))
                await asyncio.wait_for(ws.recv(), 10)
                return "alive"
            except ConnectionClosed as e:
                return f"closed {e.rcvd.code if e.rcvd else ''}"

    try:
        result = asyncio.run(busy_client())
    finally:
        stop()
    assert result == ("closed 1011" if dropped else "alive"), result
