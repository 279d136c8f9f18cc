"""`geo3d submit` without a cluster: rendered sbatch scripts (--dry-run), config routing, errors, and the
job scripts' signal plumbing run under plain bash with stand-ins for `geo3d` and `scontrol` on PATH."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import Result, run_geo3d

BASE = ["--store", "/data/s.zarr", "--suite", "demo", "--encoder", "tiny"]


def submit(*args: str, env: dict | None = None, cwd: Path | None = None) -> Result:
    return run_geo3d(["submit", *args], expect=None, env=env, cwd=cwd)


def split_scripts(out: str) -> dict[str, str]:
    """--dry-run output -> {file name: script text}."""
    scripts: dict[str, str] = {}
    for block in out.split("# ==> ")[1:]:
        header, _, text = block.partition("\n")
        scripts[Path(header.removesuffix(" <==")).name] = text
    return scripts


def sbatch_lines(text: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dry")
    r = submit("ablation", *BASE, "--out", "runs", "--compressors", "pool,qformer", "--dry-run",
               "slurm.precompute.num_shards=4", "slurm.precompute.max_parallel=2", "precompute.batch_size=8",
               "train.max_steps=5", "eval.episodes_per_task=3", "slurm.submit_dir=subs", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd, split_scripts(r.stdout)


def test_dry_run_renders_the_chain_and_writes_nothing(ablation):
    cwd, scripts = ablation
    evals = {f"eval_{c}_{s}.sbatch" for c in ("pool", "qformer") for s in ("libero_spatial", "libero_object")}
    assert set(scripts) == {"precompute.sbatch", "verify.sbatch", "train_pool.sbatch", "train_qformer.sbatch",
                            "ablation.sh"} | evals  # eval_suites auto: the demo suite's two LIBERO suites
    assert not (cwd / "subs").exists()
    pre = sbatch_lines(scripts["precompute.sbatch"])
    assert "--array=0-3%2" in pre and "--gres=gpu:1" in pre and "--requeue" in pre and "--signal=B:USR1@300" in pre
    out = next(o for o in pre if o.startswith("--output="))
    assert Path(out.removeprefix("--output=")).is_absolute() and out.endswith("precompute_%A_%a.out")
    assert "--requeue" not in sbatch_lines(scripts["verify.sbatch"])
    # overrides are routed: precompute.* to geo3d precompute, the rest to geo3d train; paths made absolute
    assert "EXTRA_ARGS=(precompute.batch_size=8)" in scripts["precompute.sbatch"]
    assert "STORES=(/data/s.zarr)" in scripts["verify.sbatch"] and "TAPS=(info_sharing)" in scripts["verify.sbatch"]
    assert "train.max_steps=5" in scripts["train_pool.sbatch"]
    assert f"OUT={cwd / 'runs' / 'qformer'}" in scripts["train_qformer.sbatch"]
    launcher = scripts["ablation.sh"]
    assert "RUNS=(pool qformer)" in launcher and '--dependency="afterok:$LAST_ID"' in launcher
    assert "EVAL_SUITES=(libero_spatial libero_object)" in launcher and '"afterok:$TRAIN_ID"' in launcher
    ev = scripts["eval_qformer_libero_object.sbatch"]  # eval.* overrides reach geo3d eval only
    assert f"CKPT={cwd / 'runs' / 'qformer'}" in ev and "SUITE=libero_object" in ev
    assert "EXTRA_ARGS=(eval.episodes_per_task=3)" in ev and "eval.episodes" not in scripts["train_pool.sbatch"]
    assert "--requeue" in sbatch_lines(ev) and "--signal=B:USR1@300" in sbatch_lines(ev)
    assert '--resume "${EXTRA_ARGS[@]}"' in ev


def test_ablation_over_taps_and_seeds(tmp_path):
    """none + qformer on both taps x 2 seeds: precompute writes both taps in one pass, verify checks each tap's
    store, each run reads its tap's store (--tap) with its seed, run dirs and jobs are named compressor@tap_s<seed>."""
    r = submit("ablation", *BASE, "--out", "runs", "--compressors", "none,qformer,qformer@encoder", "--seeds", "0,1",
               "slurm.ablation.eval_suites=[libero_spatial]", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    scripts = split_scripts(r.stdout)
    runs = [f"{c}_s{s}" for c in ("none", "qformer", "qformer@encoder") for s in (0, 1)]
    assert set(scripts) == {"precompute.sbatch", "verify.sbatch", "ablation.sh", *(f"train_{n}.sbatch" for n in runs),
                            *(f"eval_{n}_libero_spatial.sbatch" for n in runs)}
    assert "EXTRA_ARGS=('precompute.taps=[info_sharing,encoder]')" in scripts["precompute.sbatch"]
    verify = scripts["verify.sbatch"]
    assert "STORES=(/data/s.zarr /data/s@encoder.zarr)" in verify and "TAPS=(info_sharing encoder)" in verify
    enc = scripts["train_qformer@encoder_s1.sbatch"]
    assert "STORE=/data/s@encoder.zarr" in enc and "EXTRA_ARGS=(--tap encoder --seed 1" in enc
    assert f"OUT={tmp_path / 'runs' / 'qformer@encoder_s1'}" in enc
    assert "STORE=/data/s.zarr" in scripts["train_qformer_s0.sbatch"] and "--tap info_sharing --seed 0" in \
        scripts["train_qformer_s0.sbatch"]
    assert "--tap" not in scripts["train_none_s1.sbatch"] and "--seed 1" in scripts["train_none_s1.sbatch"]
    assert f"RUNS=({' '.join(runs)})" in scripts["ablation.sh"]
    assert f"CKPT={tmp_path / 'runs' / 'qformer@encoder_s0'}" in scripts["eval_qformer@encoder_s0_libero_spatial.sbatch"]
    for bad, msg in ((["--compressors", "none@encoder"], "has no tap"),
                     (["--compressors", "qformer,qformer@info_sharing"], "compressors repeat"),
                     (["--compressors", "qformer@encoder", "precompute.taps=[info_sharing]"], "lacks ['encoder']"),
                     (["--compressors", "qformer@dino"], "unknown encoder tap"), (["--seeds", "0,x"], "integers")):
        r = submit("ablation", *BASE, "--out", "runs", *bad, "--dry-run", cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr, (bad, r.stderr)


def test_submit_eval_renders_one_job_and_refuses_bad_input(tmp_path):
    r = submit("eval", "--ckpt", "runs/pool", "--suite", "libero_10", "--eval-out", "res", "eval.tasks=[0]",
               "--time", "00:30:00", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (name, text), = split_scripts(r.stdout).items()
    assert name == "eval.sbatch" and "--time=00:30:00" in sbatch_lines(text)
    assert f"CKPT={tmp_path / 'runs' / 'pool'}" in text and "SUITE=libero_10" in text
    assert f"EXTRA_ARGS=(--out {tmp_path / 'res'} 'eval.tasks=[0]')" in text
    r = submit("eval", "--ckpt", "runs/pool", "--suite", "demo", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "not a LIBERO benchmark suite" in r.stderr
    r = submit("eval", "--suite", "libero_10", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "--ckpt" in r.stderr


def test_rendered_scripts_are_valid_bash_with_nothing_site_specific(ablation):
    _, scripts = ablation
    for name, text in scripts.items():
        r = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr}"
        assert "# @" not in text, f"{name}: unrendered marker"
        opts = sbatch_lines(text)
        assert not [o for o in opts if o.startswith(("--partition", "--account", "--qos", "--constraint"))]


def test_site_settings_come_from_config_and_flags(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("slurm:\n  account: proj42\n  gpu_type: a100\n  extra_sbatch: ['--exclusive', 'mail-type=FAIL']\n"
                    "  setup: ['module load cuda/12.4']\n")
    r = submit("train", "--compressor", "pool", "--out", "run1", "--store", "s", "--partition", "gpu",
               "--time", "01:00:00", "--activate", "source /opt/env/bin/activate", "-c", str(site), "--dry-run",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = split_scripts(r.stdout)["train_pool.sbatch"]
    opts = sbatch_lines(text)
    for want in ("--partition=gpu", "--account=proj42", "--gres=gpu:a100:1", "--time=01:00:00", "--exclusive",
                 "--mail-type=FAIL"):
        assert want in opts, (want, opts)
    lines = text.splitlines()
    assert lines.index("source /opt/env/bin/activate") < lines.index("module load cuda/12.4")


@pytest.mark.parametrize("nodes,gpus", [("2", "8"), ("1", "2")])
def test_several_gpus_or_nodes_use_srun_accelerate_launch(nodes, gpus, tmp_path):
    r = submit("train", "--compressor", "qformer", "--out", "r", "--store", "s", "--nodes", nodes, "--gpus", gpus,
               "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = split_scripts(r.stdout)["train_qformer.sbatch"]
    opts = sbatch_lines(text)
    assert f"--nodes={nodes}" in opts and "--ntasks-per-node=1" in opts and f"--gres=gpu:{gpus}" in opts
    assert f"GPUS_PER_NODE={gpus}" in text
    assert "accelerate launch" in text and "srun" in text and "REQUEUE_EXIT_CODES='75 1'" in text
    accel = next(line for line in text.splitlines() if line.startswith("ACCELERATE_CONFIG="))
    assert Path(accel.split("=", 1)[1]).is_file()


@pytest.mark.parametrize("args,message", [
    (["train", "--out", "r", "--store", "s"], "pass --compressor"),
    (["precompute", "--suite", "demo"], "pass --store"),
    (["verify", "--store", "s", "train.max_steps=3"], "not slurm.*/stage.* keys"),
    (["ablation", *BASE, "--out", "r", "--compressors", "pool,pool"], "compressors repeat"),
    (["train", "--compressor", "pool", "--out", "r", "--store", "s", "--train-config", "train/ablation_pool"],
     "sets data.suite=libero_all but the jobs run --suite demo"),
])
def test_bad_input_is_a_clear_error(args, message, tmp_path):
    for dry in (["--dry-run"], []):
        r = submit(*args, *dry, "slurm.submit_dir=subs", cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "subs").exists()  # nothing written for a refused submission


def test_without_sbatch_nothing_is_submitted_and_the_error_says_why(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent)}
    r = submit("precompute", *BASE, f"slurm.submit_dir={tmp_path}", env=env)
    assert r.returncode == 2 and "sbatch not found" in r.stderr, r.stderr


# -- the job scripts' signal plumbing, under plain bash ---------------------------------------------------
FAKE_GEO3D = """#!{python}
import os, signal, sys, time
log = open(os.environ["FAKE_LOG"], "a")
log.write("argv " + " ".join(sys.argv[1:]) + "\\n"); log.flush()
def stop(signum, frame):
    log.write("got " + signal.Signals(signum).name + "\\n"); log.flush(); sys.exit(75)
signal.signal(signal.SIGUSR1, stop); signal.signal(signal.SIGTERM, stop)
open(os.environ["FAKE_LOG"] + ".started", "w").close()
if os.environ.get("FAKE_EXIT"):
    sys.exit(int(os.environ["FAKE_EXIT"]))
time.sleep(60)
"""


@pytest.fixture
def job(tmp_path):
    """A rendered train script whose `geo3d` and `scontrol` are stand-ins that log what they were given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "geo3d").write_text(FAKE_GEO3D.format(python=sys.executable))
    (bin_dir / "scontrol").write_text(f"#!/bin/bash\necho \"scontrol $*\" >> {tmp_path / 'fake.log'}\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    r = submit("train", "--compressor", "pool", "--out", str(tmp_path / "run"), "--store", "s", "--dry-run",
               "--activate", f"export PATH={bin_dir}:$PATH", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "train.sbatch"
    script.write_text(split_scripts(r.stdout)["train_pool.sbatch"])
    env = {**os.environ, "FAKE_LOG": str(tmp_path / "fake.log"), "SLURM_JOB_ID": "4242"}
    return script, env, tmp_path / "fake.log"


def start_job(script: Path, env: dict, log: Path) -> subprocess.Popen:
    """Run the job script under bash; return once the stand-in geo3d has installed its handlers."""
    p = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not Path(f"{log}.started").exists():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    return p


def test_usr1_reaches_python_and_the_job_requeues_itself(job):
    script, env, log = job
    p = start_job(script, env, log)
    p.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@N` does: the batch shell only
    _, err = p.communicate(timeout=30)
    lines = log.read_text().splitlines()
    assert p.returncode == 0, err
    assert "got SIGUSR1" in lines and "scontrol requeue 4242" in lines, (lines, err)
    assert "--resume" not in lines[0]  # fresh run dir, first start


def test_failure_exit_code_passes_through_and_nothing_requeues(job):
    script, env, log = job
    r = subprocess.run(["bash", str(script)], env={**env, "FAKE_EXIT": "3"}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 3, r.stderr
    assert not any(line.startswith("scontrol") for line in log.read_text().splitlines())


def test_a_requeued_run_or_existing_checkpoint_resumes(job, tmp_path):
    script, env, log = job
    subprocess.run(["bash", str(script)], env={**env, "FAKE_EXIT": "0", "SLURM_RESTART_COUNT": "1"}, timeout=30)
    ckpt = tmp_path / "run" / "checkpoints" / "steps_2"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.json").write_text("{}")
    subprocess.run(["bash", str(script)], env={**env, "FAKE_EXIT": "0"}, timeout=30)
    argv = [line for line in log.read_text().splitlines() if line.startswith("argv")]
    assert len(argv) == 2 and all(" --resume" in a for a in argv), argv


def test_term_from_slurm_is_forwarded_and_slurm_decides_about_requeue(job):
    script, env, log = job
    p = start_job(script, env, log)
    p.send_signal(signal.SIGTERM)  # scancel / preemption / scontrol requeue: SLURM ends the job itself
    _, err = p.communicate(timeout=30)
    lines = log.read_text().splitlines()
    assert p.returncode == 75 and "got SIGTERM" in lines, (lines, err)
    assert not any(line.startswith("scontrol") for line in lines)


def test_a_refused_requeue_is_retried_then_reported(job, tmp_path):
    script, env, log = job
    (tmp_path / "bin" / "scontrol").write_text(f"#!/bin/bash\necho \"scontrol $*\" >> {log}\nexit 1\n")
    p = start_job(script, {**env, "PATH": f"{tmp_path / 'bin'}:{env['PATH']}", "GEO3D_REQUEUE_RETRY_S": "0.2"}, log)
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=60)
    tries = [line for line in log.read_text().splitlines() if line == "scontrol requeue 4242"]
    assert p.returncode == 75 and len(tries) == 3 and "requeue failed" in err, (tries, err)


def test_the_verify_job_checks_every_tap_store_and_fails_if_one_does(tmp_path):
    """Rendered for qformer + qformer@encoder: verify-cache runs on both stores with --tap, each report lands in the
    logs (verify_<job>.json, verify_<job>_encoder.json), and the job fails with the worst exit code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "geo3d").write_text(f"#!/bin/bash\necho \"argv $*\" >> {tmp_path / 'fake.log'}\necho '{{}}'\n"
                                   "[[ $2 == *@encoder.zarr ]] && exit ${FAKE_EXIT:-0}; exit 0\n")
    (bin_dir / "geo3d").chmod(0o755)
    r = submit("ablation", *BASE, "--out", "runs", "--compressors", "qformer,qformer@encoder", "--dry-run",
               "--activate", f"export PATH={bin_dir}:$PATH", f"slurm.submit_dir={tmp_path / 'subs'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    script = tmp_path / "verify.sbatch"
    script.write_text(split_scripts(r.stdout)["verify.sbatch"])

    logs = next(shlex.split(line.split("=", 1)[1])[0] for line in script.read_text().splitlines()
                if line.startswith("LOG_DIR="))
    Path(logs).mkdir(parents=True)
    env = {**os.environ, "SLURM_JOB_ID": "77"}
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True, timeout=30).returncode == 0
    argv = [line for line in (tmp_path / "fake.log").read_text().splitlines()]
    assert argv[0].startswith("argv verify-cache /data/s.zarr --json --tap info_sharing")
    assert argv[1].startswith("argv verify-cache /data/s@encoder.zarr --json --tap encoder")
    assert sorted(p.name for p in Path(logs).iterdir()) == ["verify_77.json", "verify_77_encoder.json"]
    r = subprocess.run(["bash", str(script)], env={**env, "FAKE_EXIT": "1"}, capture_output=True, timeout=30)
    assert r.returncode == 1
