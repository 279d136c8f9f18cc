"""geo3d on a REAL SLURM: a throwaway single-node cluster (munged + slurmctld + slurmd, 2 CPUs, 2 fake GPUs).

- the chain `geo3d submit ablation` submits: a 2-task precompute array -> verify -> a short train run ->
  its eval job in the LIBERO simulator, ending in a verified store, a checkpoint and its results;
- the time-limit signal on a `geo3d submit eval` job: it keeps its episodes, requeues, and resumes the rest;
- `scontrol requeue` of the precompute array mid-run: the tasks resume and the store is bit-identical to
  the uninterrupted one;
- the time-limit signal (USR1 to the batch shell) on a train job: it checkpoints, requeues itself, resumes
  with --resume, and ends with weights identical to the uninterrupted run;
- a failed stage cancels the jobs waiting on it; the multi-GPU template passes USR1 on through srun; the
  `#SBATCH --signal=B:USR1@N` directive itself (1-minute limit) triggers save + requeue + resume.
The last two run stand-ins for `accelerate`/`geo3d` (no GPUs; a real train would outlast the 1-min limit).
Installs slurm-wlm + munge with apt when missing; skips (with the reason) only without root or apt.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geo3d.core.config import PACKAGE_ROOT
from geo3d.policy.weights_io import load_weights

from data_fixtures import make_synthetic_libero
from slurm_cluster import SlurmCluster, cannot_run_reason

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GEO3D = str(Path(sys.executable).parent / "geo3d")
# `make test`'s venv in the checkout, else the venv running the tests (e.g. a git worktree without its own .venv)
VENV = PACKAGE_ROOT / ".venv" if (PACKAGE_ROOT / ".venv" / "bin" / "activate").is_file() else Path(sys.prefix)
ACTIVATE = f"source {VENV / 'bin' / 'activate'}"
STEPS = 120  # enough that the USR1 sent after step 1 lands mid-run: with 40 (~15 s) a loaded CI machine took ~15 s
             # to deliver it and the run ended first (2026-12-04); 120 is ~45 s at the demo's ~2.6 steps/s
# Small jobs: two array tasks share the node's 2 CPUs; the tiny encoder/policy run on CPU.
JOB_SIZE = ["slurm.precompute.num_shards=2", "slurm.precompute.cpus=1", "slurm.precompute.mem=1G",
            "slurm.precompute.time=00:15:00", "slurm.verify.cpus=1", "slurm.verify.mem=1G",
            "slurm.verify.time=00:10:00", "slurm.train.cpus=1", "slurm.train.mem=2G",
            "slurm.train.time=00:20:00"]
PRECOMPUTE_ARGS = ["store.shard_frames=8", "precompute.decode_workers=0", "precompute.batch_size=8"]
TRAIN_ARGS = [f"train.max_steps={STEPS}", f"train.save_interval={10 * STEPS}", "train.log_interval=1"]
EVAL_JOB = ["slurm.eval.cpus=1", "slurm.eval.mem=6G", "slurm.eval.time=00:20:00", "eval.tasks=[0]"]


@pytest.fixture(scope="module")
def cluster(request):
    reason = cannot_run_reason()
    if reason:
        print(f"SKIP real-SLURM tests: {reason}")
        pytest.skip(reason)
    failed_before = request.session.testsfailed
    c = SlurmCluster(cpus=2, gpus=2, memory_mb=16000)
    with c:
        yield c
        if request.session.testsfailed > failed_before:
            print(c.logs())
    c.cleanup()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    # demo layout (libero_spatial + libero_object), 256 frames: 32 store shards, so a task can be caught mid-run
    make_synthetic_libero(root / "data", episodes_per_suite=4, length=32)
    return root


def submit(cluster: SlurmCluster, *args: str) -> tuple[Path, dict[str, str]]:
    """Run `geo3d submit ...` against the cluster; return (submission dir, {job name: id})."""
    r = subprocess.run([GEO3D, "submit", *args, "--activate", ACTIVATE, *JOB_SIZE], env=cluster.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"geo3d submit failed:\n{r.stdout}\n{r.stderr}"
    job_dir = Path(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    jobs = {row["name"]: row["job_id"] for row in json.loads((job_dir / "jobs.json").read_text())}
    return job_dir, jobs


def logs_text(job_dir: Path) -> str:
    return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')}" for p in sorted((job_dir / "logs").glob("*")))


def assert_completed(cluster: SlurmCluster, job_dir: Path, jobs: dict[str, str], timeout: float = 600) -> None:
    states = cluster.wait(list(jobs.values()), timeout=timeout)
    bad = {n: states[j] for n, j in jobs.items() if any(s != "COMPLETED" for s in states[j])}
    records = [cluster.run("scontrol", "show", "job", jobs[n], check=False).stdout for n in bad]
    assert not bad, f"jobs did not complete: {bad}\n{''.join(records)}\n{logs_text(job_dir)}\n{cluster.logs(200)}"


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every data chunk and commit marker of a store (metadata with timestamps and run logs excluded)."""
    files = {}
    for p in sorted(store.rglob("*")):
        rel = p.relative_to(store).as_posix()
        if p.is_file() and ("/c/" in rel or rel.startswith("commits/")):
            files[rel] = p.read_bytes() if "/c/" in rel else b""
    return files


def final_weights(run: Path) -> dict:
    return load_weights(run / "checkpoints" / f"steps_{STEPS}")


@pytest.fixture(scope="module")
def chain(cluster, work):
    """The full chain once: precompute array (2 tasks) -> verify -> train (pool) -> eval on libero_spatial (one
    short episode in the simulator), via `geo3d submit ablation`."""
    job_dir, jobs = submit(cluster, "ablation", "--suite", "demo", "--data-root", str(work / "data"),
                           "--encoder", "tiny", "--store", str(work / "store.zarr"), "--out", str(work / "runs"),
                           "--compressors", "pool", f"slurm.submit_dir={work / 'submissions'}",
                           "slurm.ablation.eval_suites=[libero_spatial]", "eval.episodes_per_task=1",
                           "eval.max_steps=10", *EVAL_JOB, *PRECOMPUTE_ARGS, *TRAIN_ARGS)
    assert list(jobs) == ["precompute", "verify", "train_pool", "eval_pool_libero_spatial"]
    assert_completed(cluster, job_dir, jobs)
    return job_dir, jobs


def test_chain_precompute_verify_train(chain, cluster, work):
    job_dir, jobs = chain
    store = work / "store.zarr"
    # both array tasks ran, each on its own fake GPU, and the verify job ran after them and found no fault
    assert len(cluster.job_records(jobs["precompute"])) == 2
    report = json.loads((job_dir / "logs" / f"verify_{jobs['verify']}.json").read_text())
    assert report["faults"] == [] and report["committed_shards"] == report["num_shards"] == 32
    r = subprocess.run([GEO3D, "verify-cache", str(store), "--data-root", str(work / "data"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ckpt = work / "runs" / "pool" / "checkpoints" / f"steps_{STEPS}"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "checkpoint.json").is_file()
    # the submission records how it was made: scripts, resolved config, provenance, job ids, logs
    for name in ("precompute.sbatch", "verify.sbatch", "train_pool.sbatch", "ablation.sh",
                 "resolved_config.yaml", "provenance.json", "jobs.json"):
        assert (job_dir / name).is_file(), name
    assert "--dependency=afterok" in (job_dir / "ablation.sh").read_text()
    train_log = next((job_dir / "logs").glob(f"train_pool_{jobs['train_pool']}.out")).read_text()
    assert f"done: step {STEPS}" in train_log and "exit 0" in train_log


def wait_for(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")
        time.sleep(0.2)


def usr1_requeued(cluster: SlurmCluster, job_dir: Path, job: str, name: str, timeout: float = 600) -> str:
    """Do what `#SBATCH --signal=B:USR1@N` does at the time limit (USR1 to the batch shell only); return the
    job's log once it saved, requeued itself and completed."""
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    assert_completed(cluster, job_dir, {name: job}, timeout)
    log = (job_dir / "logs" / f"{name}_{job}.out").read_text()
    assert "requeueing job" in log and "restart 1" in log, log
    assert cluster.job_records(job)[0]["Restarts"] == "1"
    return log


def test_precompute_array_requeued_mid_run_resumes_to_an_identical_store(chain, cluster, work):
    store = work / "store_requeued.zarr"
    job_dir, jobs = submit(cluster, "precompute", "--suite", "demo", "--data-root", str(work / "data"),
                           "--encoder", "tiny", "--store", str(store), f"slurm.submit_dir={work / 'submissions'}",
                           *PRECOMPUTE_ARGS)
    array = jobs["precompute"]
    # mid-run: a first shard is committed and the tasks are still running. Requeue the whole array, so no
    # surviving task finishes the store for the others: the requeued tasks themselves must resume.
    logs = [job_dir / "logs" / f"precompute_{array}_{task}.out" for task in (0, 1)]
    # both tasks past their signal handler (tqdm's first bar line comes after it): a task still importing torch
    # when the requeue lands dies of the SIGTERM (exit 143) instead of stopping at a safe point
    wait_for(lambda: all(p.is_file() and "%|" in p.read_text(errors="replace") for p in logs)
             and (store / "commits").is_dir() and any((store / "commits").glob("*.json")), 300,
             "both tasks running and a first committed shard", cluster)
    cluster.run("scontrol", "requeue", array)
    assert_completed(cluster, job_dir, jobs)
    todo = []
    for task in (0, 1):
        log = (job_dir / "logs" / f"precompute_{array}_{task}.out").read_text()
        first, _, rerun = log.partition("(restart 1)")
        # stopped at a safe point (a shard in flight may have been dropped: "...; dropped unfinished shard(s) [16];")
        assert rerun and "stopped on SIGTERM;" in first and "committed work is kept" in first, log
        todo.append(int(re.search(r"shards \((\d+) to do\)", rerun).group(1)))
    assert 0 < max(todo) < 32, todo  # the reruns skipped the committed shards and did the rest
    assert chunk_files(store) == chunk_files(work / "store.zarr")


def test_train_time_limit_signal_checkpoints_requeues_and_resumes_exactly(chain, cluster, work):
    run = work / "runs_requeued" / "pool"
    job_dir, jobs = submit(cluster, "train", "--compressor", "pool", "--suite", "demo", "--data-root",
                           str(work / "data"), "--store", str(work / "store.zarr"), "--out", str(run),
                           f"slurm.submit_dir={work / 'submissions'}", *TRAIN_ARGS)
    job = jobs["train_pool"]
    metrics = run / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, 300, "a first step", cluster)
    log = usr1_requeued(cluster, job_dir, job, "train_pool")
    assert "--resume" in log, log
    ours, reference = final_weights(run), final_weights(work / "runs" / "pool")
    assert ours.keys() == reference.keys()
    assert all(ours[k].equal(reference[k]) for k in ours), "resumed run diverged from the uninterrupted one"


def test_chain_eval_job_evaluates_the_trained_checkpoint(chain, work):
    results = json.loads((work / "runs" / "pool" / f"eval_libero_spatial_step{STEPS}" / "results.json").read_text())
    assert results["complete"] and results["step"] == STEPS and len(results["episodes"]) == 1
    assert results["checkpoint"].endswith(f"checkpoints/steps_{STEPS}")


def test_eval_time_limit_signal_requeues_and_resumes_the_episodes(chain, cluster, work):
    out = work / "eval_requeued"
    job_dir, jobs = submit(cluster, "eval", "--ckpt", str(work / "runs" / "pool"), "--suite", "libero_spatial",
                           "--eval-out", str(out), f"slurm.submit_dir={work / 'submissions'}",
                           "eval.episodes_per_task=3", "eval.max_steps=15", *EVAL_JOB)
    job = jobs["eval"]
    episodes = out / "episodes.jsonl"
    wait_for(lambda: episodes.is_file() and episodes.read_text().count("\n") >= 1, 400, "a first episode", cluster)
    usr1_requeued(cluster, job_dir, job, "eval", timeout=1200)  # a loaded 2-core machine: minutes per episode
    done = [json.loads(line) for line in episodes.read_text().splitlines()]
    assert sorted(r["episode"] for r in done) == [0, 1, 2]  # each episode run exactly once
    assert json.loads((out / "results.json").read_text())["complete"]


def test_a_failed_stage_cancels_the_jobs_waiting_on_it(cluster, work):
    # MapAnything without weights: precompute exits 2 at once; verify and train must not wait forever
    job_dir, jobs = submit(cluster, "ablation", "--suite", "demo", "--data-root", str(work / "data"),
                           "--encoder", "mapanything", "--store", str(work / "never.zarr"), "--out",
                           str(work / "never_runs"), "--compressors", "pool",
                           f"slurm.submit_dir={work / 'submissions'}")
    states = cluster.wait(list(jobs.values()), timeout=300)
    assert states[jobs["precompute"]] == ["FAILED", "FAILED"], states
    assert states[jobs["verify"]] == ["CANCELLED"] and states[jobs["train_pool"]] == ["CANCELLED"], states
    assert "--weights is required" in (job_dir / "logs" / f"precompute_{jobs['precompute']}_0.out").read_text()
    assert not (work / "never_runs").exists()


STAND_IN = """#!{python}
# Stand-in for `{name}` (no GPUs / no time to spend here): records what the job gave it; on USR1 it exits
# {stop_code} as the real program does after saving its state; with --resume it finishes at once.
import os, signal, sys, time
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(f"node={{os.environ.get('SLURM_NODEID')}} step={{os.environ.get('SLURM_STEP_ID')}} "
            f"gpus={{os.environ.get('CUDA_VISIBLE_DEVICES')}} argv={{' '.join(sys.argv[1:])}}\\n")
def stop(signum, frame):
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write("got " + signal.Signals(signum).name + "\\n")
    sys.exit({stop_code})
signal.signal(signal.SIGUSR1, stop)
open(os.environ["FAKE_LOG"] + ".started", "w").close()
if "--resume" in sys.argv:
    sys.exit(0)
time.sleep(300)
"""


def stand_in(work: Path, name: str, stop_code: int) -> tuple[Path, Path]:
    """(bin dir holding a stand-in `name`, the log it writes)."""
    bin_dir = work / f"fake_{name}"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(STAND_IN.format(python=sys.executable, name=name, stop_code=stop_code))
    (bin_dir / name).chmod(0o755)
    return bin_dir, work / f"fake_{name}.log"


def submit_stand_in(cluster: SlurmCluster, work: Path, bin_dir: Path, log: Path, *args: str) -> tuple[Path, str]:
    r = subprocess.run([GEO3D, "submit", "train", "--compressor", "qformer", "--store", str(work / "store.zarr"),
                        "--activate", f"export PATH={bin_dir}:$PATH FAKE_LOG={log}",
                        f"slurm.submit_dir={work / 'submissions'}", *JOB_SIZE, *args],
                       env=cluster.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    job_dir = Path(r.stdout.strip().splitlines()[-1].split(": ", 1)[1])
    return job_dir, json.loads((job_dir / "jobs.json").read_text())[0]["job_id"]


def test_multi_gpu_template_forwards_usr1_through_srun_and_requeues(cluster, work):
    """The multi-GPU/multi-node path: srun starts one launcher per node; USR1 reaches it through srun."""
    bin_dir, log = stand_in(work, "accelerate", stop_code=1)  # torchrun reports the workers' exit 75 as 1
    job_dir, job = submit_stand_in(cluster, work, bin_dir, log, "--out", str(work / "multi"), "--nodes", "1",
                                   "--gpus", "2")
    wait_for(lambda: Path(f"{log}.started").exists(), 120, "the launcher to start", cluster)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    states = cluster.wait([job], timeout=300)
    lines = log.read_text().splitlines()
    assert states[job] == ["COMPLETED"], (states, lines, logs_text(job_dir))
    assert lines[0].startswith("node=0 step=0 gpus=0,1 argv=launch --config_file /"), lines
    assert "--machine_rank 0 --main_process_ip localhost" in lines[0] and "--num_processes 2" in lines[0]
    assert "got SIGUSR1" in lines and "--resume" in lines[-1], lines
    assert cluster.job_records(job)[0]["Restarts"] == "1"


def test_the_time_limit_signal_directive_itself_requeues_the_job(cluster, work):
    """`#SBATCH --signal=B:USR1@50` with a 1-minute limit: SLURM itself sends USR1 (within its ~30 s check
    interval), the job saves, requeues, and resumes."""
    bin_dir, log = stand_in(work, "geo3d", stop_code=75)
    job_dir, job = submit_stand_in(cluster, work, bin_dir, log, "--out", str(work / "timelimit"),
                                   "slurm.train.time=00:01:00", "slurm.signal_seconds=50")
    assert "--signal=B:USR1@50" in (job_dir / "train_qformer.sbatch").read_text()
    states = cluster.wait([job], timeout=300)
    lines = log.read_text().splitlines()
    assert states[job] == ["COMPLETED"], (states, lines, logs_text(job_dir))
    assert "got SIGUSR1" in lines and "--resume" in lines[-1], lines
    assert "requeueing job" in logs_text(job_dir)
