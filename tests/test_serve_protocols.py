"""`geo3d serve`'s client profiles against independent implementations of the StarVLA and openpi wire formats
(tests/field_clients.py): the msgpack-numpy encoding byte for byte, handshake keys, request keys, reply shapes,
errors each client can read, and the action units -- a demo episode's recorded actions replayed through each
profile give the same env commands as geo3d's own eval."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from geo3d.core.cliutil import build_config
from geo3d.data.suites import DEMO_DATA_ROOT, open_dataset, resolve_suite
from geo3d.evaluation.cli import DEFAULTS, config_schema
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.episode import to_sim_action
from geo3d.evaluation.evaluate import settings_from
from geo3d.evaluation.msgpack_wire import packb, unpackb
from geo3d.evaluation.server import PolicyServer
from geo3d.evaluation.server_requests import Needs

from eval_fixtures import serve_settings, start_server
from field_clients import (
    OpenpiClient,
    StarVLAClient,
    field_packb,
    field_unpackb,
    openpi_env_action,
    openpi_obs,
    starvla_env_action,
)

H, SIZE = 8, 64


class ReplayPolicy:
    """Answers "replay step T" with the recorded chunk actions[T:T+8] (the last action repeated past the end)."""

    def __init__(self, actions: np.ndarray):
        self.actions, self.calls = actions, []

    def predict_action(self, images, instruction, state):
        self.calls.append((images.shape, instruction, np.array(state)))
        t = int(instruction.split()[-1]) if instruction.startswith("replay step") else 0
        idx = np.minimum(np.arange(t, t + H), len(self.actions) - 1)
        return self.actions[idx]


def demo_actions(episode: int = 0) -> np.ndarray:
    ds = open_dataset(resolve_suite("libero_spatial", DEMO_DATA_ROOT)[0])
    try:
        return ds.episode_columns(episode)["action"].astype(np.float32)
    finally:
        ds.close()


@pytest.fixture(scope="module")
def actions():
    return demo_actions(0)


def serve(policy, protocol="auto", uses_state=True, preset="geo3d", *overrides):
    srv = PolicyServer(policy, {"image_size": SIZE, "num_views": 2, "action_horizon": H, "action_dim": 7},
                       serve_settings("serve.port=0", f"serve.protocol={protocol}", *overrides),
                       Needs(num_views=2, uses_state=uses_state, preset=preset))
    return start_server(srv)


def views(seed=0, size=224):
    return np.random.default_rng(seed).integers(0, 256, (2, size, size, 3), dtype=np.uint8)


def test_wire_matches_the_field_encoding_byte_for_byte():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "img": views()[0], "s": np.float32(1.5),
           "i": np.int64(7), "b": np.bool_(True), "txt": "x", "nested": [np.zeros((0, 4), np.int16), {"k": 1}]}
    assert packb(msg) == field_packb(msg)
    for back in (unpackb(field_packb(msg)), field_unpackb(packb(msg))):
        assert np.array_equal(back["a"], msg["a"]) and back["a"].dtype == np.float32
        assert np.array_equal(back["img"], msg["img"]) and back["img"].dtype == np.uint8
        assert type(back["s"]) is np.float32 and back["s"] == 1.5  # a numpy scalar stays a scalar
        assert type(back["i"]) is np.int64 and type(back["b"]) is np.bool_
        assert back["nested"][0].shape == (0, 4) and back["nested"][1] == {"k": 1}


@pytest.mark.parametrize("array, expect", [
    ({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}, "needs 8 bytes"),
    ({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}, "not accepted"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "non-negative"),
    ({b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [2**40, 2**40]}, "needs"),
    ({b"__ndarray__": True, b"data": b"\0", b"dtype": "nonsense", b"shape": [1]}, "dtype"),
    ({b"__ndarray__": True, b"data": "text", b"dtype": "|u1", b"shape": [4]}, "data must be bytes"),
    ({b"__npgeneric__": True, b"data": [1, 2], b"dtype": "<f4"}, "scalar"),
])
def test_wire_decoder_refuses_malformed_arrays(array, expect):
    with pytest.raises(ValueError, match=expect):
        unpackb(msgpack_map({"x": array}))


def msgpack_map(obj) -> bytes:
    return msgpack.packb(obj)


def test_starvla_client_round_trip(actions):
    policy = ReplayPolicy(actions)
    url, stop = serve(policy, "auto", uses_state=False, preset="fork")
    try:
        client = StarVLAClient(url)
        assert client.chunk_size == H and client.metadata["training_obs_image_size"] == [SIZE, SIZE]
        ex = [{"image": list(views(1)), "lang": "replay step 0"}, {"image": list(views(2)), "lang": "replay step 8"}]
        out = client.predict_action(ex)
        assert out.shape == (2, H, 7) and out.dtype == np.float32
        assert np.array_equal(out[:, :, :6], np.stack([actions[0:8, :6], actions[8:16, :6]]))  # arm unchanged
        assert set(np.unique(out[:, :, 6])) <= {0.0, 1.0}  # StarVLA's units: 1 = open, 0 = close
        shapes, _, state = policy.calls[0]
        assert shapes == (2, SIZE, SIZE, 3) and not state.any()  # resized to the checkpoint; no state: zeros
        with pytest.raises(RuntimeError, match="unnorm_key 'libero_goal'.*one set of action statistics"):
            client.predict_action(ex, unnorm_key="libero_goal")
        assert client.predict_action(ex[:1]).shape == (1, H, 7)  # the connection survived the error
        client.close()
    finally:
        stop()


def test_starvla_request_to_a_state_checkpoint_names_what_is_missing_and_the_preset_that_would_not_need_it():
    url, stop = serve(ReplayPolicy(np.zeros((20, 7), np.float32)), "starvla", uses_state=True, preset="geo3d")
    try:
        client = StarVLAClient(url)
        with pytest.raises(RuntimeError) as err:
            client.predict_action([{"image": list(views()), "lang": "pick up the bowl"}])
        msg = str(err.value)
        assert "preset geo3d" in msg and "needs the robot state, 8 values" in msg and "examples[0].state" in msg
        assert "preset=fork" in msg
        with_state = [{"image": list(views()), "lang": "pick up the bowl", "state": np.zeros(8)}]
        assert client.predict_action(with_state).shape == (1, H, 7)  # the same client, with a state, is served
        client.close()
    finally:
        stop()


def test_openpi_client_round_trip(actions):
    policy = ReplayPolicy(actions)
    url, stop = serve(policy, "auto")
    try:
        client = OpenpiClient(url)
        assert client.metadata["action_horizon"] == H
        state = np.arange(8, dtype=np.float64)
        out = client.infer(openpi_obs(views(), state, "replay step 8"))
        assert set(out) == {"actions", "server_timing"} and out["actions"].shape == (H, 7)
        assert np.array_equal(out["actions"][:, :6], actions[8:16, :6])
        assert np.array_equal(policy.calls[0][2], state.astype(np.float32))  # the state reaches the policy
        assert client.infer({"__ctrl__": "episode_start", "__task__": "x", "__episode_id__": 0}) == {}
        with pytest.raises(RuntimeError, match="Error in inference server:\n.*missing \\['prompt'\\]"):
            client.infer({k: v for k, v in openpi_obs(views(), state, "x").items() if k != "prompt"})
        assert client.infer(openpi_obs(views(), state, "replay step 0"))["actions"].shape == (H, 7)
        client.close()
    finally:
        stop()


def test_each_profile_sends_errors_the_way_its_client_reads_them():
    url, stop = serve(ReplayPolicy(np.zeros((20, 7), np.float32)), "auto")
    try:
        geo = RemotePolicy(url)
        with pytest.raises(Exception, match="'state' must have 8 values"):
            geo.predict_action(views(), "x", np.zeros(3, np.float32))  # geo3d: a binary error map
        for client, bad in ((StarVLAClient(url), {"examples": [{"image": list(views()[:1]), "lang": "x"}]}),
                            (OpenpiClient(url), openpi_obs(views(), np.zeros(5), "x"))):
            client.ws.send(field_packb(bad))
            reply = client.ws.recv(timeout=30)
            assert isinstance(reply, str) and "bad request" in reply  # text frame: both clients raise it
            client.close()
        geo.close()
    finally:
        stop()


def test_explicit_protocol_answers_other_shapes_with_its_own_error():
    url, stop = serve(ReplayPolicy(np.zeros((20, 7), np.float32)), "starvla", uses_state=False)
    try:
        client = OpenpiClient(url)
        with pytest.raises(RuntimeError, match="StarVLA request needs 'examples'"):
            client.infer(openpi_obs(views(), np.zeros(8), "x"))
        client.close()
    finally:
        stop()


def geo3d_eval_commands(actions: np.ndarray) -> np.ndarray:
    """What `geo3d eval` sends to env.step for each recorded action (eval.gripper from configs/eval.yaml)."""
    settings = settings_from(build_config(DEFAULTS, None, None, schema=config_schema()))
    return np.stack([to_sim_action(a, settings) for a in actions])


def test_units_a_demo_episode_through_each_profile_gives_geo3d_evals_env_commands(actions):
    """The recorded actions of demo episode 0 served chunk by chunk: the env command each client derives from
    the reply (StarVLA: 1 - 2*(v > 0.5); openpi: the row itself) equals geo3d eval's, step for step."""
    expected = geo3d_eval_commands(actions)
    url, stop = serve(ReplayPolicy(actions), "auto", uses_state=False, preset="fork")
    try:
        starvla, openpi = StarVLAClient(url), OpenpiClient(url)
        got = {"starvla": [], "openpi": []}
        for t in range(0, len(actions), H):
            ex = {"image": list(views(t)), "lang": f"replay step {t}"}
            got["starvla"] += [starvla_env_action(r) for r in starvla.predict_action([ex])[0]]
            got["openpi"] += [openpi_env_action(r) for r in openpi.infer(openpi_obs(views(t), np.zeros(8),
                                                                                    f"replay step {t}"))["actions"]]
        starvla.close()
        openpi.close()
    finally:
        stop()
    n = len(actions)
    for name, rows in got.items():
        rows = np.stack(rows)[:n]
        assert np.allclose(rows[:, :6], expected[:, :6], atol=1e-6), name
        assert np.array_equal(rows[:, 6], expected[:, 6]), f"{name}: gripper differs on " \
            f"{int((rows[:, 6] != expected[:, 6]).sum())}/{n} steps"
    # teeth: geo3d's own units fed to StarVLA's mapping (what the issue saw) invert the gripper on every step
    raw = np.array([starvla_env_action(a)[6] for a in actions])
    assert (raw != expected[:, 6]).sum() == n and len(np.unique(expected[:, 6])) == 2
