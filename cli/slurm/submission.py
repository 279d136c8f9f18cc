"""Write a submission's record and hand it to SLURM.

A submission dir `<slurm.submit_dir>/<UTC time>_<verb>/` holds the rendered scripts, resolved_config.yaml,
provenance.json, jobs.json (the job ids) and logs/ (every job's output), so a run records how it was made
and `sbatch <dir>/<script>` (or `bash <dir>/ablation.sh`) resubmits it unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig

from geo3d.core.config import save_resolved
from geo3d.core.errors import Geo3dError
from geo3d.core.provenance import provenance
from geo3d.cli.slurm.jobs import LOG_DIR, JobScript, absolute
from geo3d.cli.slurm.render import write_script

JOB_LINE = "geo3d-job"


def new_submission_dir(cfg: DictConfig, verb: str) -> Path:
    """A fresh dir under slurm.submit_dir (absolute); a second submission in the same second gets a suffix."""
    root = Path(absolute(str(cfg.slurm.submit_dir)))  # type: ignore[arg-type]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{stamp}_{verb}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise Geo3dError(f"cannot make a new submission dir under {root}")


def write_record(job_dir: Path, cfg: DictConfig, scripts: Sequence[JobScript]) -> None:
    (job_dir / LOG_DIR).mkdir(parents=True, exist_ok=True)
    for s in scripts:
        write_script(job_dir / s.file, s.text)
    save_resolved(cfg, job_dir)
    (job_dir / "provenance.json").write_text(json.dumps(provenance(), indent=2) + "\n")


def _sbatch_exe() -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise Geo3dError("sbatch not found: run `geo3d submit` on a SLURM login node (or add --dry-run to only "
                         "print the scripts)")
    return exe


def sbatch(script: Path) -> str:
    """Submit one script with `sbatch --parsable`; return the job id."""
    r = subprocess.run([_sbatch_exe(), "--parsable", str(script)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Geo3dError(f"sbatch {script} failed: {r.stderr.strip()} (the script is kept there; fix the "
                         f"setting it names, e.g. slurm.partition, and submit again)")
    return r.stdout.strip().split(";")[0]


def run_launcher(launcher: Path) -> list[tuple[str, str]]:
    """Run a chain launcher (ablation.sh); return the (name, job id) pairs it submitted, in order."""
    _sbatch_exe()
    r = subprocess.run(["bash", str(launcher)], capture_output=True, text=True)
    jobs = [(p[1], p[2]) for p in (line.split() for line in r.stdout.splitlines())
            if len(p) == 3 and p[0] == JOB_LINE]
    if r.returncode != 0:
        done = ", ".join(f"{n}={i}" for n, i in jobs) or "none"
        raise Geo3dError(f"{launcher} failed after submitting [{done}]: {r.stderr.strip()} (cancel those with "
                         f"scancel, fix the setting, and submit again)")
    return jobs


def record_jobs(job_dir: Path, jobs: Sequence[tuple[str, str]], scripts: Sequence[JobScript]) -> Path:
    logs = {s.name: s.log for s in scripts}
    rows = [{"name": n, "job_id": i, "script": str(job_dir / f"{n}.sbatch"), "log": logs.get(n)} for n, i in jobs]
    path = job_dir / "jobs.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def print_scripts(scripts: Sequence[JobScript], job_dir: Path) -> str:
    """--dry-run output: every script with the path it would be written to."""
    return "\n".join(f"# ==> {job_dir / s.file} <==\n{s.text}" for s in scripts)


def summary(jobs: Sequence[tuple[str, str]], scripts: Sequence[JobScript], job_dir: Path) -> str:
    logs = {s.name: s.log for s in scripts}
    def log_of(name: str, jid: str) -> str:
        return str(logs.get(name) or "").replace("%A", jid).replace("%a", "*").replace("%j", jid)
    lines = [f"submitted {name}: job {jid}  log {log_of(name, jid)}" for name, jid in jobs]
    return "\n".join([*lines, f"scripts, resolved config and jobs.json: {job_dir}"])
