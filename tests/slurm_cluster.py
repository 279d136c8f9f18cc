"""A throwaway single-node SLURM cluster for tests: real munged + slurmctld + slurmd, fake GPUs.

Everything lives in one private temp dir (config, state, spool, logs, munge socket, /dev/nvidia* stand-ins)
and uses free TCP ports, so it never touches a site's /etc/slurm or a munged already running on the host.
`stop()` always runs (context manager) and ends only the daemons this harness started, by pid.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

APT_PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/bin/sbatch"]
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}


def ensure_slurm() -> str | None:
    """Install SLURM + munge from Debian when missing. Returns None when usable, else why it cannot run."""
    if all(Path(b).exists() for b in BINARIES):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *APT_PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-500:]}"
    missing = [b for b in BINARIES if not Path(b).exists()]
    return f"apt installed SLURM but these are still missing: {missing}" if missing else None


def cannot_run_reason() -> str | None:
    """Why a real cluster cannot run here (None when it can): needs root (daemons, mknod) and SLURM."""
    if os.geteuid() != 0:
        return "starting slurmd/munged and making fake GPU devices needs root"
    return ensure_slurm()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """One node `localhost` with `cpus` CPUs and `gpus` fake GPUs (gres gpu:fake), partition `debug`."""

    def __init__(self, cpus: int = 2, gpus: int = 2, memory_mb: int = 16000, root: Path | None = None):
        self.cpus, self.gpus, self.memory_mb = cpus, gpus, memory_mb
        self.root = Path(root or tempfile.mkdtemp(prefix="geo3d-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self._procs: list[subprocess.Popen] = []
        self._requeued_since: dict[str, float] = {}
        self._started = False

    # -- environment ------------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (and anything they start) to talk to this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        hidden = env.pop("GEO3D_TEST_HIDDEN_GPUS", None)  # tests/conftest.py hid the GPUs: jobs get slurm's own
        if hidden is not None:
            env.pop("CUDA_VISIBLE_DEVICES", None)
            if hidden != "<unset>":
                env["CUDA_VISIBLE_DEVICES"] = hidden
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    # -- lifecycle --------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "dev"):
            (r / d).mkdir(parents=True, exist_ok=True)
        for i in range(self.gpus):
            dev = r / "dev" / f"nvidia{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(195, i))  # character device, like a real GPU
        ctl_port, d_port = _free_port(), _free_port()
        self.conf.write_text("\n".join([
            f"ClusterName=geo3dtest{os.getpid()}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctl_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MinJobAge=3600",
            "KillWait=30",  # SLURM's default: TERM, then KILL 30 s later
            "DependencyParameters=kill_invalid_depend",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/jobcomp.txt",
            "GresTypes=gpu",
            f"NodeName=localhost CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:fake:{self.gpus} "
            "State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        last = f"[0-{self.gpus - 1}]" if self.gpus > 1 else "0"
        (r / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName=localhost Name=gpu Type=fake File={r}/dev/nvidia{last}\n")

    def _start_munged(self) -> None:
        """A private munged (own key, socket, pid file) run as the munge user, as munged expects."""
        m = self.munge_dir
        m.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munge user must reach its socket dir
        user = pwd.getpwnam("munge")
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))  # a private key: nothing shared with a site's munged
        for p in (m, key):
            os.chown(p, user.pw_uid, user.pw_gid)
        os.chmod(m, 0o755)
        os.chmod(key, 0o400)
        self._spawn(["/usr/sbin/munged", "--foreground", f"--socket={self.munge_socket}", f"--key-file={key}", f"--pid-file={m}/munged.pid",
                     f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"], user=user)
        self._wait_file(m / "munged.pid", 10)
        self._wait_file(self.munge_socket, 10, content=False)

    def _spawn(self, cmd: list[str], user: pwd.struct_passwd | None = None) -> None:
        """Run a daemon in the foreground as our child, so stop() can end and reap it by pid."""
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        with open(self.root / "log" / f"{Path(cmd[0]).name}.out", "ab") as log:
            self._procs.append(subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True, **ids))

    @staticmethod
    def _wait_file(path: Path, timeout: float, content: bool = True) -> Path:
        deadline = time.monotonic() + timeout
        while not (path.exists() and (not content or path.read_text().strip())):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path} did not appear within {timeout}s")
            time.sleep(0.1)
        return path

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Start munged, slurmctld and slurmd; return once the node reports idle (or raise with logs)."""
        self._write_config()
        self._started = True
        self._start_munged()
        self._spawn(["/usr/sbin/slurmctld", "-D", "-i"])
        self._wait_file(self.root / "slurmctld.pid", 20)
        self._spawn(["/usr/sbin/slurmd", "-D", "-N", "localhost"])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"node not idle after {timeout}s (sinfo says {state!r})\n{self.logs()}")

    def stop(self) -> None:
        """Shut the daemons down (scontrol shutdown), then munged by pid; kill stragglers by their pid files."""
        if not self._started:
            return
        self._started = False
        # a second Ctrl-C must not leave daemons behind half way through
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            if (self.root / "slurmctld.pid").exists():
                self.run("scontrol", "shutdown", check=False, timeout=30)
            for proc in reversed(self._procs):  # slurmd, slurmctld, then munged (they need it to shut down)
                self._stop(proc, grace=0 if proc is self._procs[0] else 15)
            self._procs.clear()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    @staticmethod
    def _stop(proc: subprocess.Popen, grace: float) -> None:
        """Give the daemon `grace` seconds to exit by itself (scontrol shutdown), TERM it, then KILL it."""
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace if sig is None else 10)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- jobs -------------------------------------------------------------------------------------------
    def sbatch(self, *args: str) -> str:
        """Submit with `sbatch --parsable` and return the job id."""
        return self.run("sbatch", "--parsable", *args).stdout.strip().split(";")[0]

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol show job` as dicts (one per array task), kept for MinJobAge after the end."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        records = []
        for line in out.splitlines():
            rec = {}
            for field in line.split():
                key, _, value = field.partition("=")
                rec[key] = value
            if rec.get("JobId"):
                records.append(rec)
        return records

    def states(self, job_id: str) -> list[str]:
        return [r.get("JobState", "?") for r in self.job_records(job_id)]

    def release_requeued(self, job_id: str, settle: float = 2.5) -> None:
        """A requeued job waits ~2 min (BeginTime) before it may start again; start it sooner (tests only).

        Not at once: slurmd refuses ("credential revoked") a relaunch within the second of the kill, so the
        job must have been pending for `settle` seconds."""
        now = time.monotonic()
        for rec in self.job_records(job_id):
            key = f"{rec['JobId']}/{rec.get('Restarts')}"
            if rec.get("JobState") == "PENDING" and rec.get("Reason") == "BeginTime":
                since = self._requeued_since.setdefault(key, now)
                if now - since >= settle:
                    self.run("scontrol", "update", f"JobId={rec['JobId']}", "StartTime=now", check=False)

    def wait(self, job_ids: list[str], timeout: float = 300, poll: float = 1.0) -> dict[str, list[str]]:
        """Wait until every job (every array task) is in a final state, starting requeued jobs at once.

        Raises with the daemons' logs on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            states = {j: self.states(j) for j in job_ids}
            if all(s and all(x in FINAL_STATES for x in s) for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not finished after {timeout}s: {states}\n{self.logs()}")
            for j in job_ids:
                self.release_requeued(j)
            time.sleep(poll)

    def wait_state(self, job_id: str, wanted: str, timeout: float = 120) -> None:
        """Wait until every task of `job_id` is in `wanted` (e.g. RUNNING)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.states(job_id)
            if s and all(x == wanted for x in s):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} not {wanted} after {timeout}s: {s}\n{self.logs()}")
            time.sleep(0.3)

    def logs(self, tail: int = 60) -> str:
        """The last lines of the daemons' logs, for failure messages."""
        parts = []
        for p in (self.root / "log/slurmctld.log", self.root / "log/slurmd.log", self.munge_dir / "munged.log"):
            try:
                lines = p.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                lines = ["<missing>"]
            parts.append(f"==== {p} ====\n" + "\n".join(lines))
        return "\n".join(parts)
