"""The MapAnything adapter without the real model: its error paths for real, and its forward path on stand-ins.

The real package and weights cannot be here (not on PyPI, GBs of weights). These tests run the adapter's own
code against (a) the real environment, where `mapanything` is absent, and (b) a stand-in `mapanything` +
`uniception` on PYTHONPATH that records how the adapter calls `from_pretrained` and what it feeds each module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import geo3d.precompute.run as run
from geo3d.core.device import resolve_compute_dtype
from geo3d.core.errors import Geo3dError
from geo3d.encoders.mapanything import MapAnythingEncoder, import_mapanything_class
from geo3d.encoders.views import pool_view_features

from helpers import REPO

FAKE_MODELS = textwrap.dedent('''
    import json, os
    from types import SimpleNamespace
    import torch, torch.nn as nn

    class _Encoder(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.data_norm_type = os.environ.get("FAKE_MA_NORM", "dinov2")
            self.proj = nn.Conv2d(3, dim, 14, 14)
            try:  # exactly how uniception's DINOv2Encoder builds its ViT ("Requires internet access")
                self.hub = torch.hub.load("facebookresearch/dinov2", "dinov2_vitg14", force_reload=False,
                                          pretrained=False)
            except:  # noqa: E722  (uniception: "Load from cache")
                self.hub = torch.hub.load("facebookresearch/dinov2", "dinov2_vitg14", pretrained=False)
        def forward(self, inp):
            f = self.proj(inp.image)
            return SimpleNamespace(features=f, registers=f.mean((2, 3))[:, :, None])

    class _InfoSharing(nn.Module):
        indices = [3, 1]  # like uniception's IFR: intermediates come back in depth order (1, then 3)
        def forward(self, inp):
            assert inp.additional_input_tokens.shape[-1] == 1 and len(inp.additional_input_tokens_per_view) == 2
            assert all(f.dtype == torch.float32 for f in inp.features)  # fusion norm ran in fp32
            mixed = sum(inp.features) / len(inp.features)
            inter = [SimpleNamespace(features=[f * k + mixed for f in inp.features]) for k in (2.0, 3.0)]
            return SimpleNamespace(features=[f + mixed for f in inp.features]), inter

    class MapAnything(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.encoder, self.info_sharing = _Encoder(dim), _InfoSharing()
            self.fusion_norm_layer = nn.LayerNorm(dim)
            self.scale_token = nn.Parameter(torch.zeros(dim))
        @classmethod
        def from_pretrained(cls, path, **kw):
            with open(os.environ["FAKE_MA_LOG"], "w") as f:
                json.dump({"path": str(path), **kw}, f)
            if os.environ.get("FAKE_MA_STRICT_FAIL"):
                raise RuntimeError("Error(s) in loading state_dict for MapAnything: Missing key(s): encoder.x")
            return cls(kw["info_sharing_config"]["module_args"]["dim"])
        def _encode_n_views(self, views):
            out = self.encoder(SimpleNamespace(image=torch.cat([v["img"] for v in views]),
                                               data_norm_type=views[0]["data_norm_type"][0]))
            return out.features.chunk(len(views)), list(out.registers.chunk(len(views)))
''')
FAKE_UNICEPTION = textwrap.dedent('''
    from dataclasses import dataclass
    from typing import Any
    @dataclass
    class MultiViewTransformerInput:
        features: Any
        additional_input_tokens: Any = None
        additional_input_tokens_per_view: Any = None
''')
CONFIG = {"name": "mapanything", "pretrained_checkpoint_path": "/somewhere/else/ckpt.pth",
          "encoder_config": {"encoder_str": "dinov2", "uses_torch_hub": True, "torch_hub_pretrained": True},
          "info_sharing_config": {"model_type": "alternating_attention", "model_return_type": "intermediate_features",
                                  "module_args": {"dim": 24, "pretrained_checkpoint_path": "/x/aat_init.pth"}}}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    d = tmp_path / "map-anything-apache"
    _write(d / "config.json", json.dumps(CONFIG))
    (d / "model.safetensors").write_bytes(b"\0" * 64)
    return d


@pytest.fixture
def fake_pkgs(tmp_path: Path) -> Path:
    root = tmp_path / "pkgs"
    for f in ("mapanything/__init__.py", "uniception/__init__.py", "uniception/models/__init__.py",
              "uniception/models/info_sharing/__init__.py"):
        _write(root / f, "")
    _write(root / "mapanything/models/__init__.py", FAKE_MODELS)
    _write(root / "uniception/models/info_sharing/base.py", FAKE_UNICEPTION)
    return root


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    torch_home = tmp_path / "torch_home"
    _write(torch_home / "hub/facebookresearch_dinov2_main/hubconf.py", textwrap.dedent('''
        import torch
        dependencies = ["torch"]
        def dinov2_vitg14(*, pretrained=True, **kwargs):
            vit = torch.nn.Identity()
            vit.pretrained = pretrained
            return vit
    '''))
    return torch_home


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "geo3d.cli", "precompute", "--encoder", "mapanything", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def _one_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


@pytest.mark.slow  # real processes: the stand-in packages are put on PYTHONPATH before start-up
def test_cli_errors_are_one_clear_message(tmp_path, weights, fake_pkgs):
    store = str(tmp_path / "s")
    # bad weights path
    _one_clear_error(_cli(["--weights", str(tmp_path / "nope"), "--store", store], {}),
                     "is not a directory", "huggingface-cli download facebook/map-anything-apache")
    # weights dir without the safetensors
    partial = tmp_path / "partial"
    _write(partial / "config.json", "{}")
    _one_clear_error(_cli(["--weights", str(partial), "--store", store], {}), "lacks model.safetensors")
    if importlib.util.find_spec("mapanything") is None:  # the package is not installed here (real environment)
        _one_clear_error(_cli(["--weights", str(weights), "--store", store], {}),
                         "`mapanything` package is not installed", "git+https://github.com/facebookresearch/map-anything")
    else:  # the real package (a user's cluster): this stand-in config.json lacks its head configs
        _one_clear_error(_cli(["--weights", str(weights), "--store", store], {}), "does not fit the installed")
    # package present (stand-in) but no DINOv2 hub code in TORCH_HOME
    empty_home = tmp_path / "empty_torch_home"
    _one_clear_error(_cli(["--weights", str(weights), "--store", store],
                          {"PYTHONPATH": str(fake_pkgs), "TORCH_HOME": str(empty_home),
                           "FAKE_MA_LOG": str(tmp_path / "log.json")}),
                     "DINOv2 torch hub code is missing", "git clone https://github.com/facebookresearch/dinov2",
                     str(empty_home / "hub"))
    # image size not a multiple of 14: refused before the (slow) model build
    _one_clear_error(_cli(["--weights", str(weights), "--store", store, "data.image_size=200"], {}),
                     "image size 200 is not a multiple of the patch size 14")
    assert not Path(store).exists()  # nothing written on error


def test_loads_offline_strict_with_patched_config_and_encodes(monkeypatch, tmp_path, weights, fake_pkgs, hub):
    log = tmp_path / "log.json"
    monkeypatch.syspath_prepend(str(fake_pkgs))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("FAKE_MA_LOG", str(log))
    enc = MapAnythingEncoder(weights=weights, image_size=56, tokens_per_view=4, device="cpu")
    call = json.loads(log.read_text())
    assert call["strict"] is True and call["local_files_only"] is True and call["path"] == str(weights)
    assert call["encoder_config"]["torch_hub_pretrained"] is False
    assert call["info_sharing_config"]["module_args"]["pretrained_checkpoint_path"] is None
    assert call["pretrained_checkpoint_path"] is None
    assert CONFIG["encoder_config"]["torch_hub_pretrained"] is True  # the file's config object is not mutated
    x = torch.randint(0, 256, (3, 2, 56, 56, 3), dtype=torch.uint8)
    out = enc.encode(x)
    assert out.shape == (3, 2, 4, 24) and out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    ident = enc.identity()
    assert ident["name"] == "mapanything" and ident["fingerprint"].startswith("sha256:")
    assert set(ident["config"]["files_sha256"]) == {"config.json", "model.safetensors"}
    assert enc.preprocessing()["autocast_dtype"] == ident["compute_dtype"] == resolve_compute_dtype("auto", "cpu")


def test_strict_load_failure_is_a_clear_error(monkeypatch, tmp_path, weights, fake_pkgs, hub):
    monkeypatch.syspath_prepend(str(fake_pkgs))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("FAKE_MA_LOG", str(tmp_path / "log.json"))
    monkeypatch.setenv("FAKE_MA_STRICT_FAIL", "1")
    with pytest.raises(Geo3dError, match="do not match the model built from its config.json"):
        MapAnythingEncoder(weights=weights, image_size=56, tokens_per_view=4, device="cpu")


def test_missing_dependency_of_the_package_is_named(monkeypatch, fake_pkgs):
    bad = fake_pkgs / "mapanything/models/__init__.py"
    bad.write_text("import uniception_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(fake_pkgs))
    for mod in [m for m in sys.modules if m.startswith("mapanything")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(Geo3dError, match="installed but cannot be imported.*uniception_missing_dependency_xyz"):
        import_mapanything_class()
    monkeypatch.setitem(sys.modules, "mapanything", None)  # as if uninstalled
    with pytest.raises(Geo3dError, match="package is not installed"):
        import_mapanything_class()


def test_runtime_error_on_import_is_reported_like_a_missing_package(monkeypatch, fake_pkgs):
    """Issue 25 row 14: a torchvision built for another torch fails at import with a RuntimeError, not an
    ImportError; it gets the same one-line message, with the install hint that keeps the installed torch."""
    (fake_pkgs / "mapanything/models/__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(fake_pkgs))
    for mod in [m for m in sys.modules if m.startswith("mapanything")]:
        monkeypatch.delitem(sys.modules, mod)
    with pytest.raises(Geo3dError) as e:
        import_mapanything_class()
    msg = str(e.value)
    assert "cannot be imported (RuntimeError: operator torchvision::nms does not exist)" in msg
    assert "pip install --no-deps uniception==0.1.7" in msg and "without replacing your torch" in msg
    assert "Installing MapAnything" in (REPO / "precompute/README.md").read_text()


def test_construction_makes_no_network_call(monkeypatch, tmp_path, weights, fake_pkgs, hub):
    """torch.hub would ask GitHub for the default branch before using its cache (a hang where packets are
    dropped): with every name lookup and connect made to fail and recorded, none may be attempted."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] or args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.syspath_prepend(str(fake_pkgs))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("FAKE_MA_LOG", str(tmp_path / "log.json"))
    enc = MapAnythingEncoder(weights=weights, image_size=28, tokens_per_view=4, device="cpu")
    assert attempts == []
    assert enc.model.encoder.hub.pretrained is False  # the cached hub code built the ViT, no weight download
    assert torch.hub.load.__module__ == "torch.hub"  # the redirection ends with construction


def test_normalization_follows_the_models_data_norm_type(monkeypatch, tmp_path, weights, fake_pkgs, hub):
    monkeypatch.syspath_prepend(str(fake_pkgs))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("FAKE_MA_LOG", str(tmp_path / "log.json"))
    monkeypatch.setenv("FAKE_MA_NORM", "dust3r")
    enc = MapAnythingEncoder(weights=weights, image_size=28, tokens_per_view=4, device="cpu")
    assert enc.preprocessing()["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3, "data_norm_type": "dust3r"}
    white = torch.full((1, 2, 28, 28, 3), 255, dtype=torch.uint8)
    assert all(torch.all(v == 1.0) for v in enc.model_inputs(white))  # (1 - 0.5) / 0.5
    monkeypatch.setenv("FAKE_MA_NORM", "some_future_norm")
    with pytest.raises(Geo3dError, match="unknown image normalization data_norm_type='some_future_norm'"):
        MapAnythingEncoder(weights=weights, image_size=28, tokens_per_view=4, device="cpu")


def test_taps_of_one_forward_match_the_models_outputs(monkeypatch, tmp_path, weights, fake_pkgs, hub):
    """encoder = the fusion norm's output (info_sharing's input); info_sharing_<i> = the IFR's intermediate of
    layer i (returned in depth order); all from one forward equal separate single-tap encoders bit for bit."""
    monkeypatch.syspath_prepend(str(fake_pkgs))
    monkeypatch.setenv("TORCH_HOME", str(hub))
    monkeypatch.setenv("FAKE_MA_LOG", str(tmp_path / "log.json"))
    torch.manual_seed(0)  # the stand-in's layers are random-init: the same seed builds the same "weights"
    enc = MapAnythingEncoder(weights=weights, image_size=56, tokens_per_view=4, device="cpu", dtype="float32")
    assert enc.available_taps() == ("info_sharing", "encoder", "info_sharing_1", "info_sharing_3")
    x = torch.randint(0, 256, (2, 2, 56, 56, 3), dtype=torch.uint8)
    taps = enc.available_taps()
    both = enc.encode_taps(x, taps)
    views = enc.model_inputs(x)
    with torch.inference_mode():
        feats, _ = enc.model._encode_n_views([{"img": v, "data_norm_type": ["dinov2"]} for v in views])
        fused = [enc.model.fusion_norm_layer(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for f in feats]
        mixed = sum(fused) / 2
    want = {"encoder": fused, "info_sharing": [f + mixed for f in fused],
            "info_sharing_1": [f * 2.0 + mixed for f in fused], "info_sharing_3": [f * 3.0 + mixed for f in fused]}
    for tap in taps:
        assert torch.equal(both[tap], pool_view_features(want[tap], 4)), tap
        torch.manual_seed(0)
        alone = MapAnythingEncoder(weights=weights, image_size=56, tokens_per_view=4, device="cpu", dtype="float32",
                                   tap=tap)
        assert torch.equal(alone.encode(x), both[tap]) and alone.identity()["tap"] == tap
    assert enc.identity("info_sharing_3")["config"]["layer"].startswith("info_sharing layer 3")
    with pytest.raises(Geo3dError, match="has no tap 'info_sharing_7'"):
        enc.encode_taps(x, ("info_sharing_7",))


@pytest.mark.parametrize("workers, cpus, expect", [(0, 8, 8), (2, 8, 6), (4, 2, 1)])
def test_cpu_threads_default_uses_every_cpu_without_decode_workers(monkeypatch, workers, cpus, expect):
    monkeypatch.setattr(run, "usable_cpus", lambda: cpus)
    assert run._cpu_threads(SimpleNamespace(cpu_threads=None), workers) == expect
    assert run._cpu_threads(SimpleNamespace(cpu_threads=3), workers) == 3  # explicit wins


@pytest.mark.parametrize("device, cpus, expect", [("cpu", 16, (2, 1)), ("cuda:0", 16, (8, 4)), ("cuda", 6, (3, 1)),
                                                  ("cuda", 64, (8, 4)), ("cuda", 2, (2, 1))])
def test_auto_decode_workers_and_writer_threads_follow_the_device(monkeypatch, device, cpus, expect):
    """auto: the CPU encoder keeps the cores; on CUDA half the CPUs decode and a quarter write (the setting that fed
    the H200's encoder fully, docs/gpu.md); a number is taken as given."""
    monkeypatch.setattr(run, "usable_cpus", lambda: cpus)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert run.cpu_split(SimpleNamespace(decode_workers="auto", writer_threads="auto"), device) == expect
    assert run.cpu_split(SimpleNamespace(decode_workers=5, writer_threads=3), device) == (5, 3)


def test_auto_cpu_split_shares_a_node_between_torchrun_workers(monkeypatch):
    """8 torchrun workers on a 128-CPU node: 16 CPUs each, so 8 decoders + 4 writers each, not 8 x 64 CPUs' worth."""
    monkeypatch.setattr(run, "usable_cpus", lambda: 128)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert run.cpu_split(SimpleNamespace(decode_workers="auto", writer_threads="auto"), "cuda:3") == (8, 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert run.cpu_split(SimpleNamespace(decode_workers="auto", writer_threads="auto"), "cuda:3") == (4, 2)
