"""On a REAL single-node SLURM (tests/slurm_cluster.py): a precompute job whose store fills a small tmpfs ends
FAILED with exit code 74 and is not requeued; `geo3d doctor --slurm` sees the cluster and checks the site
config's partition."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_fixtures import make_synthetic_libero

from geo3d.core.storage_faults import STORAGE_FAULT_EXIT_CODE
from slurm_cluster import SlurmCluster, cannot_run_reason
from storage_fixtures import small_fs

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GEO3D = str(Path(sys.executable).parent / "geo3d")
# the environment running this test, with this checkout first on the path (a worktree has no .venv of its own)
ACTIVATE = f"source {Path(sys.executable).parent / 'activate'}"
JOB = ["slurm.precompute.num_shards=1", "slurm.precompute.cpus=1", "slurm.precompute.mem=1G",
       "slurm.precompute.time=00:10:00"]
SMALL = ["data.image_size=56", "encoder.tokens_per_view=16", "encoder.tiny.width=32", "encoder.tiny.heads=2",
         "encoder.tiny.out_dim=512", "store.shard_frames=8", "precompute.decode_workers=0",
         "precompute.batch_size=4"]


@pytest.fixture(scope="module")
def cluster():
    reason = cannot_run_reason()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster(cpus=2, gpus=2, memory_mb=8000)
    with c:
        yield c
    c.cleanup()


def test_full_disk_precompute_job_fails_with_74_and_is_not_requeued(cluster, tmp_path):
    data = make_synthetic_libero(tmp_path / "data", suites=("libero_spatial",), episodes_per_suite=3,
                                 lengths=[45, 30, 55], size=64)
    with small_fs(tmp_path, "2m") as fs:
        assert fs is not None  # the cluster needs root: so does a tmpfs
        r = subprocess.run([GEO3D, "submit", "precompute", "--suite", "libero_spatial", "--data-root", str(data),
                            "--encoder", "tiny", "--store", str(fs.path / "store"), "--activate", ACTIVATE,
                            f"slurm.submit_dir={tmp_path / 'subs'}", *JOB, *SMALL],
                           env=cluster.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        job_dir = Path(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
        job = json.loads((job_dir / "jobs.json").read_text())[0]["job_id"]
        cluster.wait([job], timeout=300)
        rec = cluster.job_records(job)[0]
        log = "\n".join(p.read_text() for p in (job_dir / "logs").glob("*.out"))
        assert rec["JobState"] == "FAILED" and rec["ExitCode"].startswith(f"{STORAGE_FAULT_EXIT_CODE}:"), (rec, log)
        assert rec.get("Restarts") == "0", rec
        assert "storage fault: the filesystem is full (ENOSPC)" in log and "NOT requeueing" in log, log


def test_doctor_sees_the_cluster_and_checks_the_partition(cluster):
    base = [GEO3D, "doctor", "--suite", "demo", "--config", "train/demo", "--slurm", "--json"]
    ok = subprocess.run([*base, "slurm.partition=debug"], env=cluster.env, capture_output=True, text=True,
                        timeout=120)
    found = {f["check"]: f for f in json.loads(ok.stdout)["findings"]}
    assert found["SLURM"]["status"] == "ok" and "debug" in found["SLURM"]["detail"], found["SLURM"]
    assert found["SLURM partition"]["status"] == "ok", found["SLURM partition"]
    bad = subprocess.run([*base, "slurm.partition=nope"], env=cluster.env, capture_output=True, text=True,
                         timeout=120)
    found = {f["check"]: f for f in json.loads(bad.stdout)["findings"]}
    assert bad.returncode == 1 and found["SLURM partition"]["status"] == "FAIL", found["SLURM partition"]
