"""wandb for real: an offline run (WANDB_MODE=offline) of `geo3d train` writes its run files, the history it
logged equals metrics.jsonl record for record, and the run's config is the resolved config + store identity."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import spawn_geo3d
from train_fixtures import make_train_data, train_args

wandb = pytest.importorskip("wandb", reason="wandb is an optional extra: pip install 'geo3d[wandb]'")
from wandb_records import config as run_config  # noqa: E402
from wandb_records import history  # noqa: E402


def _flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, list):
            out.update({f"{prefix}{k}/{i}": x for i, x in enumerate(v)})
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow  # a real `geo3d train` process (and wandb's own service process)
def test_offline_wandb_run_mirrors_metrics_jsonl(tmp_path):
    data, store = make_train_data(tmp_path)
    out = tmp_path / "run"
    proc = spawn_geo3d(train_args(data, store, out, "mean", 4, "train.log_interval=1", "train.wandb.enabled=true",
                                "train.wandb.mode=offline", "train.num_workers=0"),
                     env={"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}, expect=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, list(out.rglob("*"))
    assert (files[0].parent / "files").is_dir() and files[0].stat().st_size > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = history(files[0])
    assert len(metrics) == 4 and len(rows) == len(metrics)
    for rec, row in zip(metrics, rows):
        want = _flat(rec)
        got = {k: v for k, v in row.items() if not k.startswith("_")}
        assert got == want  # every key and value, float for float
        assert row["_step"] == rec["step"]
    cfg = run_config(files[0])
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    for section in ("data", "model", "train"):
        assert cfg[section] == resolved[section], section
    ident = cfg["store_identity"]
    assert ident["path"] == str(store) and ident["encoder"]["fingerprint"] == "train-tests-0"
    assert ident["shape"] == [2, 16, 32]
