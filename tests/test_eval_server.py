"""The policy server: msgpack+numpy wire format, round trips with a real websocket client, malformed requests
answered with an error and survived, /healthz, and a real checkpoint served by `geo3d serve`."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from websockets.sync.client import connect

from eval_fixtures import IMAGE, SHARED_RUNS, ServeProcess, serve_settings, start_server, trained_runs
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.server import PolicyServer
from geo3d.evaluation.server_requests import Needs
from geo3d.evaluation.msgpack_wire import packb, unpackb
from geo3d.core.errors import Geo3dError

pytestmark = SHARED_RUNS


class EchoPolicy:
    """Test policy: remembers its inputs; actions encode the state so the reply can be checked exactly."""

    image_size = 32

    def __init__(self):
        self.calls = []

    def predict_action(self, images, instruction, state):
        if instruction == "explode":
            raise RuntimeError("boom")
        self.calls.append((images.copy(), instruction, state.copy()))
        return np.tile(state[:7], (8, 1)) + np.arange(8)[:, None]


@pytest.fixture
def server():
    """A PolicyServer (geo3d profile, default limits) on a free port in a background event loop thread."""
    policy = EchoPolicy()
    srv = PolicyServer(policy, {"image_size": 32, "num_views": 2, "action_horizon": 8},
                       serve_settings("serve.port=0", "serve.protocol=geo3d"), Needs(num_views=2))
    url, stop = start_server(srv)
    yield url, policy, stop
    stop()


def _obs(size=32, state=None):
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8), "instruction": "pick up the bowl",
            "state": np.arange(8, dtype=np.float32) if state is None else state}


def test_wire_round_trips_arrays_of_every_dtype():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.uint8(7), np.zeros((0, 4), np.int64)],
           "c": np.array([True, False]), "s": "text", "n": None, "f16": np.ones((2, 2), np.float16)}
    back = unpackb(packb(msg))
    for k in ("a", "c", "f16"):
        assert back[k].dtype == msg[k].dtype and np.array_equal(back[k], msg[k])
    assert back["b"][0] == 7 and back["b"][1].shape == (0, 4) and back["s"] == "text" and back["n"] is None
    with pytest.raises(TypeError):
        packb({"x": np.array([object()])})


def test_infer_round_trip_and_metadata(server):
    url, policy, _ = server
    with connect(url, proxy=None) as ws:
        meta = unpackb(ws.recv())
        assert meta["image_size"] == 32 and meta["action_horizon"] == 8
        obs = _obs()
        ws.send(packb({"type": "infer", "request_id": 17, "payload": obs}))
        reply = unpackb(ws.recv())
    assert reply["ok"] and reply["request_id"] == 17 and reply["type"] == "inference_result"
    actions = reply["data"]["actions"]
    assert actions.shape == (8, 7) and actions.dtype == np.float32
    assert np.array_equal(actions, np.tile(obs["state"][:7], (8, 1)) + np.arange(8)[:, None])
    images, instruction, state = policy.calls[0]
    assert np.array_equal(images, obs["images"]) and instruction == obs["instruction"]


def test_flat_payload_and_list_of_views_resized_to_policy_size(server):
    url, policy, _ = server
    with connect(url, proxy=None) as ws:
        ws.recv()
        obs = _obs(size=48)
        obs["images"] = list(obs["images"])  # StarVLA clients send a list of views
        ws.send(packb(obs))                   # no "type": a flat map is an infer payload
        reply = unpackb(ws.recv())
    assert reply["ok"], reply
    assert policy.calls[0][0].shape == (2, 32, 32, 3)  # the training resize brought 48 -> 32


@pytest.mark.parametrize("raw, expect", [
    (b"\xc1\xc1 not msgpack", "not valid msgpack"),
    ("a text frame", "text frames"),
    (packb([1, 2, 3]), "msgpack map"),
    (packb({"type": "dance"}), "unsupported message type"),
    (packb({"type": "infer", "payload": {"instruction": "x"}}), "missing ['images', 'state']"),
    (packb({**_obs(), "images": np.zeros((2, 32, 32, 3), np.float32)}), "uint8"),
    (packb({**_obs(), "images": np.zeros((3, 32, 32, 3), np.uint8)}), "3 views"),
    (packb({**_obs(), "state": np.zeros(5, np.float32)}), "8 values"),
    (packb({**_obs(), "state": np.full(8, np.nan, np.float32)}), "NaN"),
    (packb({**_obs(), "instruction": ""}), "non-empty string"),
    (packb({**_obs(), "instruction": "explode"}), "policy error: RuntimeError: boom"),
])
def test_malformed_request_gets_error_reply_and_server_keeps_serving(server, raw, expect):
    url, _, _ = server
    with connect(url, proxy=None) as ws:
        ws.recv()
        ws.send(raw)
        reply = unpackb(ws.recv())
        assert reply["ok"] is False and reply["status"] == "error"
        assert expect in reply["error"]["message"], reply
        ws.send(packb({"type": "infer", "payload": _obs()}))  # same connection still answers
        assert unpackb(ws.recv())["ok"]


def test_health_over_http_and_websocket(server):
    url, _, _ = server
    http = url.replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(http, timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"ok\n"
    client = RemotePolicy(url)
    assert client.health()["image_size"] == 32
    with pytest.raises(Geo3dError, match="bad request"):
        client.request("infer", {"instruction": "x"})
    client.close()


def test_client_reports_a_lost_server_clearly(server):
    url, _, stop = server
    client = RemotePolicy(url)
    obs = _obs()
    assert client.predict_action(obs["images"], obs["instruction"], obs["state"]).shape == (8, 7)
    stop()
    with pytest.raises(Geo3dError, match="lost the connection to policy server"):
        client.predict_action(obs["images"], obs["instruction"], obs["state"])


@pytest.fixture(scope="module")
def served_checkpoint(tmp_path_factory):
    runs = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")
    srv = ServeProcess(runs["qformer"])
    yield srv
    srv.stop()


@pytest.mark.slow  # trains a real checkpoint first
def test_geo3d_serve_answers_with_a_real_checkpoint(served_checkpoint):
    assert "loopback only" in "".join(served_checkpoint.output)  # the start line says who can connect
    client = RemotePolicy(served_checkpoint.url)
    meta = client.metadata
    assert meta["compressor"] == "qformer" and meta["image_size"] == IMAGE and meta["step"] == 2
    assert meta["action_chunk_size"] == 8 and meta["uses_state"] is True and meta["preset"] == "geo3d"
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)  # any size: resized like training frames
    actions = client.predict_action(images, "pick up the black bowl", np.zeros(8, np.float32))
    assert actions.shape == (8, 7) and np.all(np.isfinite(actions))
    with pytest.raises(Geo3dError, match="'state' must have 8 values"):
        client.predict_action(images, "pick up the black bowl", np.zeros(3, np.float32))
    again = client.predict_action(images, "pick up the black bowl", np.zeros(8, np.float32))
    assert again.shape == (8, 7)  # still serving after the bad request
    assert client.health()["served"] == 2
    client.close()
