"""Encoder taps (issue 23): one precompute pass writes one store per tap from the same forward, bit for bit what
separate passes give; each store carries its tap in its identity; naming; verify-cache refuses another tap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import parse_run_label, parse_taps, run_label, tap_store_path
from geo3d.encoders.recompute import encoder_from_record
from geo3d.encoders.tiny import TinyEncoder
from geo3d.features_store import FeatureReader, StoreSpec
from geo3d.features_store.store import open_arrays, trial_record
from geo3d.precompute import run as run_module
from geo3d.precompute.cli import precompute_config
from geo3d.precompute.run import run_precompute

from data_fixtures import make_synthetic_libero
from helpers import Result, run_geo3d

SMALL_ENC = dict(width=32, depth=2, heads=2, out_dim=16, seed=0, image_size=56, tokens_per_view=4)
OVERRIDES = ["data.suite=libero_spatial", "data.image_size=56", "encoder.tokens_per_view=4", "encoder.tiny.width=32",
             "encoder.tiny.heads=2", "encoder.tiny.out_dim=16", "store.shard_frames=8", "precompute.batch_size=4",
             "precompute.decode_workers=0", "precompute.cpu_threads=1"]


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 2, 56, 56, 3), generator=g, dtype=torch.uint8)


def test_both_taps_from_one_forward_equal_separate_encoders_bit_for_bit():
    both = TinyEncoder(**SMALL_ENC).encode_taps(_images(3), ("info_sharing", "encoder"))
    alone = {t: TinyEncoder(**SMALL_ENC, tap=t).encode(_images(3)) for t in ("info_sharing", "encoder")}
    assert both["info_sharing"].shape == (3, 2, 4, 16) and both["encoder"].shape == (3, 2, 4, 32)
    for t in alone:
        assert both[t].dtype == torch.bfloat16 and torch.equal(both[t], alone[t])
    assert not torch.equal(both["info_sharing"][..., :16], both["encoder"][..., :16])


def test_the_encoder_tap_is_per_view_and_skips_info_sharing(monkeypatch):
    """No exchange between views: changing the wrist image leaves the agentview encoder tokens unchanged (the
    info_sharing tokens change); an encoder-only pass never runs info_sharing."""
    enc = TinyEncoder(**SMALL_ENC)
    x = _images(1)
    y = x.clone()
    y[:, 1] = _images(1, seed=5)[:, 1]
    a, b = enc.encode_taps(x, ("info_sharing", "encoder")), enc.encode_taps(y, ("info_sharing", "encoder"))
    assert torch.equal(a["encoder"][:, 0], b["encoder"][:, 0])
    assert not torch.equal(a["info_sharing"][:, 0], b["info_sharing"][:, 0])
    monkeypatch.setattr(enc.model.info_sharing, "forward", lambda *a, **k: pytest.fail("info_sharing ran"))
    assert torch.equal(enc.encode_taps(x, ("encoder",))["encoder"], a["encoder"])


def test_identity_names_the_tap_and_refuses_unknown_ones():
    enc = TinyEncoder(**SMALL_ENC)
    i, e = enc.identity("info_sharing"), enc.identity("encoder")
    assert (i["tap"], e["tap"]) == ("info_sharing", "encoder") and i["fingerprint"] == e["fingerprint"]
    assert i["config"]["layer"] == "info_sharing final (after norm)" and "fusion_norm_layer" in e["config"]["layer"]
    assert enc.identity() == i and TinyEncoder(**SMALL_ENC, tap="encoder").dim == 32
    with pytest.raises(Geo3dError, match="has no tap 'info_sharing_7'"):
        TinyEncoder(**SMALL_ENC, tap="info_sharing_7")


def test_tap_names_store_paths_and_labels():
    assert parse_taps("info_sharing, encoder") == ("info_sharing", "encoder")
    assert parse_taps(["info_sharing_11"]) == ("info_sharing_11",)
    for bad, msg in (([], "empty"), (["encoder", "encoder"], "repeats"), (["dino"], "unknown encoder tap")):
        with pytest.raises(Geo3dError, match=msg):
            parse_taps(bad)
    assert tap_store_path("/s/spatial.zarr", "info_sharing") == Path("/s/spatial.zarr")
    assert tap_store_path("/s/spatial.zarr", "encoder") == Path("/s/spatial@encoder.zarr")
    assert tap_store_path("/s/spatial", "info_sharing_7") == Path("/s/spatial@info_sharing_7")
    assert run_label("qformer", "encoder") == "qformer@encoder" and run_label("none", "encoder") == "none"
    assert parse_run_label("qformer@encoder") == ("qformer", "encoder") and parse_run_label("pool") == ("pool", None)


def test_a_store_spec_without_a_tap_reads_as_info_sharing():
    """Stores and checkpoints made before taps existed hold the final info_sharing tokens: they keep working."""
    enc = TinyEncoder(**SMALL_ENC)
    old = {k: v for k, v in enc.identity().items() if k != "tap"}
    assert StoreSpec(frames=4, views=2, tokens=4, dim=16, encoder=old).encoder == enc.identity()

    again = encoder_from_record(old, enc.preprocessing(), 4, device="cpu")
    assert again.tap == "info_sharing" and torch.equal(again.encode(_images(1)), enc.encode(_images(1)))
    enc_tap = encoder_from_record(enc.identity("encoder"), enc.preprocessing(), 4, device="cpu")
    assert enc_tap.tap == "encoder" and enc_tap.encode(_images(1)).shape[-1] == 32


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_libero(tmp_path_factory.mktemp("libero"), suites=("libero_spatial",),
                                 episodes_per_suite=2, lengths=[12, 9], size=64)


def _precompute(data_root: Path, store: Path, taps: list[str]) -> dict[str, str]:
    cfg = precompute_config([*OVERRIDES, f"data.data_root={data_root}", f"precompute.store={store}",
                             f"precompute.taps=[{','.join(taps)}]"])
    r = run_precompute(cfg)
    assert r.store_complete
    return r.stores


def _contents(store: str | Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(a[:]) for k, a in open_arrays(Path(store)).items()}


def _markers(store: str | Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (Path(store) / "commits").glob("*.json")}


def test_one_pass_writes_both_stores_bit_for_bit_like_two_passes(data_root, tmp_path):
    both = _precompute(data_root, tmp_path / "both" / "s.zarr", ["info_sharing", "encoder"])
    assert both == {"info_sharing": str(tmp_path / "both" / "s.zarr"),
                    "encoder": str(tmp_path / "both" / "s@encoder.zarr")}
    sep = {t: _precompute(data_root, tmp_path / t / "s.zarr", [t])[t] for t in ("info_sharing", "encoder")}
    for tap in both:
        a, b = _contents(both[tap]), _contents(sep[tap])
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), tap
        spec = FeatureReader(both[tap]).spec
        assert spec.tap == tap and spec.frame_shape == (2, 4, 16 if tap == "info_sharing" else 32)
    a, b = FeatureReader(both["info_sharing"]).spec, FeatureReader(both["encoder"]).spec
    assert a.encoder["fingerprint"] == b.encoder["fingerprint"] and a.dataset == b.dataset
    logs = [json.loads(x) for f in (Path(both["encoder"]) / "precompute_logs").glob("*.shards.jsonl")
            for x in f.read_text().splitlines()]
    assert logs and all(rec["taps"] == ["info_sharing", "encoder"] for rec in logs)


def _logged_taps(store: str | Path) -> list[list[str]]:
    """The `taps` of every shard record in a store's precompute_logs/."""
    return [json.loads(x)["taps"] for f in (Path(store) / "precompute_logs").glob("*.shards.jsonl")
            for x in f.read_text().splitlines()]


def test_adding_a_tap_later_encodes_only_the_missing_store(data_root, tmp_path, monkeypatch):
    first = _precompute(data_root, tmp_path / "s.zarr", ["info_sharing"])["info_sharing"]
    before = _markers(first)
    buffered: list[set[str]] = []

    class Buffers(run_module.TokenBuffers):
        def __init__(self, shapes, pinned, count):
            buffered.append(set(shapes))
            super().__init__(shapes, pinned, count)

    monkeypatch.setattr(run_module, "TokenBuffers", Buffers)
    stores = _precompute(data_root, tmp_path / "s.zarr", ["info_sharing", "encoder"])
    assert _markers(first) == before  # the finished store is never rewritten
    assert buffered == [{"encoder"}]  # no token buffers for the complete store
    # each store's shard log lists only the shards written to it
    assert _logged_taps(first) and all(t == ["info_sharing"] for t in _logged_taps(first))
    assert _logged_taps(stores["encoder"]) and all(t == ["encoder"] for t in _logged_taps(stores["encoder"]))
    ref = _precompute(data_root, tmp_path / "ref" / "s.zarr", ["encoder"])["encoder"]
    a, b = _contents(stores["encoder"]), _contents(ref)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_trial_beside_a_complete_store_marks_only_the_incomplete_one(data_root, tmp_path):
    """--limit-frames adding a tap: the new tap's store is the trial; the finished store stays a complete one."""
    first = _precompute(data_root, tmp_path / "s.zarr", ["info_sharing"])["info_sharing"]
    cfg = precompute_config([*OVERRIDES, f"data.data_root={data_root}", f"precompute.store={tmp_path / 's.zarr'}",
                             "precompute.taps=[info_sharing,encoder]", "precompute.limit_frames=8"])
    r = run_precompute(cfg)
    assert not r.store_complete and r.trial is not None and r.trial["shards"] == 1
    assert trial_record(first) is None
    assert trial_record(r.stores["encoder"]) == r.trial


def test_verify_cache_refuses_a_store_of_another_tap(data_root, tmp_path):
    stores = _precompute(data_root, tmp_path / "s.zarr", ["encoder"])

    def verify(*args: str) -> Result:
        return run_geo3d(["verify-cache", stores["encoder"], "--data-root", str(data_root), "--no-progress", *args],
                         expect=None)

    ok = verify("--tap", "encoder")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "tap: encoder" in ok.stdout
    bad = verify("--tap", "info_sharing")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = [x for x in bad.stderr.splitlines() if x.startswith("error: ")]
    assert "holds 'encoder' tokens" in line and "asks for 'info_sharing'" in line
    # verify-cache takes its store as an argument: the hint names the sibling store that way, not as --store
    assert f"run `geo3d verify-cache {tmp_path / 's.zarr'}`" in line and "--store" not in line


@pytest.mark.parametrize("how", [["--taps", "info_sharing,encoder"], ["precompute.taps=info_sharing,encoder"]])
def test_the_cli_takes_taps_as_a_flag_or_a_dotlist(data_root, tmp_path, how):
    """`--taps a,b` and `precompute.taps=a,b` (what `geo3d submit` forwards) both reach the strict schema as a list."""
    store = tmp_path / "s.zarr"
    r = run_geo3d(["precompute", *OVERRIDES, f"data.data_root={data_root}", "--store", str(store),
                   *how], expect=None)
    assert r.returncode == 0, r.stderr[-2000:]
    assert FeatureReader(store).spec.tap == "info_sharing"
    assert FeatureReader(tmp_path / "s@encoder.zarr").spec.tap == "encoder"
    bad = run_geo3d(["precompute", *OVERRIDES, f"data.data_root={data_root}", "--store", str(tmp_path / "b.zarr"),
                     "--taps", "info_sharing,bogus"], expect=None)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "bogus" in bad.stderr
    assert not (tmp_path / "b.zarr").exists()
