"""Unit-level behaviour of the training machinery: sampler, schedule, freeze/param groups, EMA, config
composition, resume config diff, checkpoint listing, metrics truncation, store/dataset join checks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from geo3d.core.config import ConfigError
from geo3d.core.errors import Geo3dError, StoreError
from geo3d.core.preemption import Preempted, PreemptionFlag
from geo3d.data.mixture import LiberoMixture
from geo3d.features_store import FeatureReader
from geo3d.policy.run_dir import MARKER, latest_checkpoint, list_checkpoints, read_metrics
from geo3d.train.metrics import MetricsLogger, module_grad_norms
from geo3d.train.optim import EMA, apply_freeze, build_optimizer, build_scheduler, cosine_factor
from geo3d.train.preflight import preflight
from geo3d.train.run_config import compose_train_config, resume_differences, run_dir_of
from geo3d.train.sampler import ResumableSampler
from geo3d.train.store_check import check_store_matches_dataset, check_token_shape


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_resumes_exactly_and_ranks_partition_each_epoch():
    full = _take(iter(ResumableSampler(10, seed=3)), 27)  # crosses two epoch boundaries
    for consumed in (0, 4, 10, 13):
        resumed = _take(iter(ResumableSampler(10, seed=3, consumed=consumed)), 27 - consumed)
        assert resumed == full[consumed:]
    assert sorted(full[:10]) == list(range(10)) and full[:10] != full[10:20]  # a new permutation per epoch
    r0 = _take(iter(ResumableSampler(10, seed=3, rank=0, world_size=2)), 5)
    r1 = _take(iter(ResumableSampler(10, seed=3, rank=1, world_size=2)), 5)
    assert sorted(r0 + r1) == list(range(10))


def test_cosine_schedule_warms_up_then_decays_each_group_to_min_lr():
    assert cosine_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert cosine_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert cosine_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    model = nn.ModuleDict({"vlm": nn.Linear(2, 2), "action_head": nn.Linear(2, 2)})
    cfg = OmegaConf.create({"lr": {"base": 1e-5, "vlm": 1e-5, "action_head": 1e-4}, "max_steps": 20,
                            "optimizer": {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.0,
                                          "implementation": "auto"},
                            "schedule": {"warmup_steps": 2, "min_lr": 5e-7}})
    opt = build_optimizer(dict(model.items()), cfg)
    sched = build_scheduler(opt, cfg)
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.95)] * 2
    for _ in range(20):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-7, 5e-7])


def test_freeze_removes_a_module_from_the_optimizer_and_unknown_names_fail():
    groups = {"vlm": nn.Linear(2, 2), "compressor": nn.Linear(2, 2), "action_head": nn.Linear(2, 2)}
    apply_freeze(groups, ["vlm"])
    assert not any(p.requires_grad for p in groups["vlm"].parameters())
    cfg = OmegaConf.create({"lr": {"base": 1e-5}, "optimizer": {"betas": [0.9, 0.95], "eps": 1e-8,
                                                                 "weight_decay": 0.0, "implementation": "auto"}})
    opt = build_optimizer(groups, cfg)
    assert [g["name"] for g in opt.param_groups] == ["compressor", "action_head"]
    with pytest.raises(Geo3dError, match="unknown module"):
        apply_freeze(groups, ["mapanything_encoder"])
    groups["action_head"](torch.ones(1, 2)).sum().backward()
    norms = module_grad_norms(groups)
    assert norms["vlm"] is None and norms["compressor"] is None and float(norms["action_head"]) > 0


def test_ema_tracks_weights():
    m = nn.Linear(2, 1)
    ema = EMA(m, decay=0.5)
    before = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(2.0)
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], before + 1.0)
    sd = ema.weights_into(m.state_dict())
    assert torch.allclose(sd["weight"], before + 1.0)


def test_config_composition_demo_preset_flags_and_overrides(tmp_path):
    cfg = compose_train_config([], ["train.max_steps=7"], {"suite": "demo", "compressor": "qformer",
                                                           "out": str(tmp_path / "r")})
    assert cfg.model_config == "tiny" and cfg.model.compressor.type == "qformer"
    assert cfg.train.max_steps == 7 and cfg.train.grad_accum_steps == 1
    assert run_dir_of(cfg) == tmp_path / "r"
    full = compose_train_config(["configs/train/ablation_pool.yaml"], [], {})
    assert full.model_config == "qwen2_5_vl_3b" and full.model.compressor.type == "pool"
    assert (full.train.per_device_batch_size, full.train.grad_accum_steps, full.train.max_steps,
            full.train.save_interval, full.train.seed) == (4, 4, 80000, 10000, 42)
    assert full.train.lr.vlm == 1e-5 and full.train.lr.action_head == 1e-4 and full.train.lr.compressor == 1e-4
    assert full.data.suite == "libero_all" and run_dir_of(full) == Path("runs/qwen_mapanything_pool_s42")
    frozen = compose_train_config(["configs/train/ablation_qformer.yaml", "configs/train/frozen_vlm.yaml"], [], {})
    assert list(frozen.train.freeze) == ["vlm"]


def test_resume_refuses_changed_trajectory_keys_but_allows_extending():
    saved = compose_train_config([], [], {"suite": "demo"})
    longer = compose_train_config([], ["train.max_steps=999"], {"suite": "demo"})
    assert resume_differences(saved, longer) == []
    other = compose_train_config([], ["train.lr.vlm=0.5"], {"suite": "demo"})
    assert resume_differences(saved, other) == ["train.lr.vlm: run has 0.0001, now 0.5"]


def test_resume_accepts_a_run_saved_before_the_patch_embed_switch_existed():
    """Runs (and SLURM requeues of them) started before `model.vlm.patch_embed` existed must still resume."""
    current = compose_train_config([], [], {"suite": "demo"})
    saved = OmegaConf.to_container(current, resolve=True)
    del saved["model"]["vlm"]["patch_embed"]
    assert resume_differences(OmegaConf.create(saved), current) == []
    conv = compose_train_config([], ["model.vlm.patch_embed=conv3d"], {"suite": "demo"})
    assert resume_differences(conv, current) == []


def test_resume_store_check_ignores_the_encoder_runtime_but_not_its_weights(monkeypatch, tmp_path):
    """The runtime (device, kernel versions) is informational: another one resumes; other weights refuse."""
    from geo3d.features_store import StoreSpec
    from geo3d.train import preflight as preflight_module

    identity = {"name": "tiny", "tap": "info_sharing", "fingerprint": "abc", "config": {"width": 32}}
    recorded = {**identity, "runtime": {"device_type": "cuda", "torch": "2.5.1"}}
    monkeypatch.setattr(preflight_module, "read_marker", lambda ckpt: {"store": {"encoder": recorded}})

    def spec(encoder: dict) -> StoreSpec:
        return StoreSpec(frames=8, views=2, tokens=4, dim=16, encoder=encoder, preprocessing={}, dataset={})

    preflight_module.check_resume_store(tmp_path, spec({**identity, "runtime": {"device_type": "cpu",
                                                                                "torch": "2.6.0"}}))
    preflight_module.check_resume_store(tmp_path, spec(identity))  # a store made before runtimes were recorded
    with pytest.raises(StoreError, match='fingerprint: checkpoint has "abc", store has "xyz"'):
        preflight_module.check_resume_store(tmp_path, spec({**identity, "fingerprint": "xyz"}))


def test_config_refuses_zero_intervals_before_any_work():
    preflight(compose_train_config([], [], {"suite": "demo"}))
    for key in ("save_interval", "grad_accum_steps", "per_device_batch_size", "max_steps"):
        with pytest.raises(ConfigError, match=f"train.{key} must be >= 1"):
            compose_train_config([], [f"train.{key}=0"], {"suite": "demo"})


def test_checkpoint_listing_ignores_partial_and_unmarked(tmp_path):
    ck = tmp_path / "checkpoints"
    for name, marked in (("steps_5", True), ("steps_10", True), (".steps_15.partial", True), ("steps_20", False)):
        (ck / name).mkdir(parents=True)
        if marked:
            (ck / name / MARKER).write_text("{}")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10]
    assert latest_checkpoint(tmp_path) == ck / "steps_10"


def test_metrics_truncate_after_drops_records_past_the_resume_step(tmp_path):
    log = MetricsLogger(tmp_path, enabled=True)
    for s in range(1, 6):
        log.log({"step": s, "loss": float(s)})
    with log.path.open("a") as f:
        f.write('{"step": 6, "lo')  # the torn last line of a run killed mid-write
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_preemption_flag_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    flag = PreemptionFlag().install()
    try:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.signal_name == "SIGUSR1"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_signal_policy_ctrl_c_is_the_user_and_a_second_one_stops_at_once():
    """Issue 25 rows 8-9: Ctrl-C stops at the same safe point as SIGTERM/SIGUSR1 but maps to exit 130 (never the
    requeue code 75); a second Ctrl-C raises KeyboardInterrupt at once."""
    before = signal.getsignal(signal.SIGINT)
    flag = PreemptionFlag().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.requested and flag.signal_name == "SIGINT" and flag.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGINT) is before
    scheduler = PreemptionFlag()
    scheduler.signal_name = "SIGUSR1"
    assert scheduler.exit_code == 75
    assert Preempted("x", "SIGINT").exit_code == 130 and Preempted("x", "SIGTERM").exit_code == 75


# ---- store / dataset join ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_and_store(tmp_path_factory):
    from data_fixtures import make_synthetic_libero
    from train_fixtures import make_matching_store
    root = tmp_path_factory.mktemp("join")
    make_synthetic_libero(root / "data", suites=("libero_spatial", "libero_object"), episodes_per_suite=2,
                          length=10, size=32)
    spatial = LiberoMixture("libero_spatial", root / "data", image_size=32)
    store = make_matching_store(spatial, root / "store", views=2, tokens=4, dim=8, shard_frames=8)
    return root, spatial, store


def test_store_join_accepts_its_dataset_and_refuses_another_suite(data_and_store):
    root, spatial, store = data_and_store
    reader = FeatureReader(store)
    check_store_matches_dataset(reader, spatial, store, check_frames=8)
    check_token_shape(reader.spec, {"views": 2, "tokens_per_view": 4, "dim": 8}, store)
    other = LiberoMixture("libero_object", root / "data", image_size=32)
    with pytest.raises(StoreError, match="this store holds libero_spatial; the run asks for libero_object"):
        check_store_matches_dataset(reader, other, store, check_frames=8)
    with pytest.raises(StoreError, match=r"\[2, 4, 8\] but the model expects .*\[2, 196, 1536\]"):
        check_token_shape(reader.spec, {"views": 2, "tokens_per_view": 196, "dim": 1536}, store)


def test_store_join_detects_changed_frame_content_and_view_order(data_and_store, tmp_path):
    from train_fixtures import make_matching_store
    _, spatial, _ = data_and_store
    swapped = make_matching_store(spatial, tmp_path / "swapped", views=2, tokens=4, dim=8,
                                  preprocessing={"views": ["wrist", "agentview"]})
    with pytest.raises(StoreError, match="view order"):
        check_store_matches_dataset(FeatureReader(swapped), spatial, swapped, check_frames=8)

    class Tampered:  # the same index, but one sampled frame decodes to different pixels
        def __init__(self, m):
            self.m = m

        def __getattr__(self, k):
            return getattr(self.m, k)

        def __len__(self):
            return len(self.m)

        def read_stored_frames(self, i):
            f = self.m.read_stored_frames(i)
            return f if i else np.ascontiguousarray(255 - f)

    store = tmp_path / "ok"
    make_matching_store(spatial, store, views=2, tokens=4, dim=8)
    with pytest.raises(StoreError, match=r"content identity .*\(first: frame 0\)"):
        check_store_matches_dataset(FeatureReader(store), Tampered(spatial), store, check_frames=4)
