"""Build the job scripts of `geo3d submit` from the resolved config (configs/slurm.yaml + flags).

Each builder returns a JobScript (its file name and rendered text); nothing here touches the cluster.
Paths given by the user are made absolute at submit time, because jobs run elsewhere.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from geo3d.cli.slurm.render import render
from geo3d.core.config import CONFIG_DIR, data_root_from, load_config
from geo3d.core.errors import Geo3dError
from geo3d.core.preemption import PREEMPTED_EXIT_CODE
from geo3d.core.storage_faults import STORAGE_FAULT_EXIT_CODE
from geo3d.core.taps import DEFAULT_TAP, parse_run_label, parse_taps, tap_store_path
from geo3d.data.suites import SUITE_FOLDERS, suite_members
from geo3d.policy.run_dir import CHECKPOINT_GLOB

LOG_DIR = "logs"


@dataclass(frozen=True)
class JobScript:
    """One rendered script: `file` is its name inside the submission dir; `log` its SLURM output pattern."""

    name: str
    file: str
    text: str
    log: str | None = None


def absolute(path: str | os.PathLike | None) -> str | None:
    return None if path in (None, "") else str(Path(os.path.expanduser(str(path))).resolve())


def require(cfg: DictConfig, key: str, flag: str) -> str:
    value = OmegaConf.select(cfg, key, default=None)
    if value in (None, ""):
        raise Geo3dError(f"{key} is not set: pass {flag} (or set {key} in a --config file)")
    return str(value)


def default_activate() -> str:
    """Put the environment running `geo3d submit` on the job's PATH: its venv/conda env, else its bin dir."""
    if sys.prefix != sys.base_prefix and Path(sys.prefix, "bin", "activate").is_file():
        return f"source {shlex.quote(str(Path(sys.prefix, 'bin', 'activate')))}"
    return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\""


def setup_lines(cfg: DictConfig) -> list[str]:
    if not cfg.slurm.activate:
        raise Geo3dError("slurm.activate is empty: set it to the shell line that puts geo3d on PATH in a job")
    return [str(cfg.slurm.activate), *[str(line) for line in cfg.slurm.setup]]


def sbatch_options(cfg: DictConfig, stage: str, name: str, log: Path, requeue: bool) -> list[str]:
    """#SBATCH options for `stage` (precompute|verify|train): resources, site keys, signal, requeue, log."""
    s, res = cfg.slurm, cfg.slurm[stage]
    opts = [f"--job-name=geo3d-{name}", f"--output={log}", "--open-mode=append", f"--time={res.time}",
            f"--cpus-per-task={res.cpus}", f"--mem={res.mem}"]
    gpus = int(res.gpus)
    if gpus > 0:
        opts.append(f"--gres=gpu:{s.gpu_type}:{gpus}" if s.gpu_type else f"--gres=gpu:{gpus}")
    for key in ("partition", "account", "qos", "constraint"):
        if s[key]:
            opts.append(f"--{key}={s[key]}")
    if requeue:
        opts += ["--requeue", f"--signal=B:USR1@{int(s.signal_seconds)}"]
    opts += [o if str(o).startswith("-") else f"--{o}" for o in s.extra_sbatch]
    return opts


def _common_settings(cfg: DictConfig, job_dir: Path) -> dict:
    return {"LOG_DIR": str(job_dir / LOG_DIR), "REQUEUE_EXIT_CODES": str(PREEMPTED_EXIT_CODE),
            "STORAGE_FAULT_EXIT_CODE": str(STORAGE_FAULT_EXIT_CODE)}


def _data_root_args(cfg: DictConfig) -> list[str]:
    root = data_root_from(cfg)
    return ["--data-root", absolute(root)] if root else []  # type: ignore[list-item]


def precompute_job(cfg: DictConfig, job_dir: Path) -> JobScript:
    """The stage-1 array: tasks 0..num_shards-1; geo3d precompute takes its shard from the array env."""
    p = cfg.slurm.precompute
    n = int(p.num_shards)
    if n < 1:
        raise Geo3dError(f"slurm.precompute.num_shards must be >= 1, got {n}")
    array = f"--array=0-{n - 1}" + (f"%{int(p.max_parallel)}" if p.max_parallel else "")
    log = job_dir / LOG_DIR / "precompute_%A_%a.out"
    extra = _data_root_args(cfg)
    if cfg.stage.weights:
        extra += ["--weights", absolute(cfg.stage.weights)]
    extra += [str(o) for o in cfg.stage.precompute_overrides]
    settings = {**_common_settings(cfg, job_dir), "SUITE": require(cfg, "data.suite", "--suite"),
                "ENCODER": require(cfg, "stage.encoder", "--encoder"),
                "STORE": absolute(require(cfg, "stage.store", "--store")), "EXTRA_ARGS": extra}
    text = render("precompute.sbatch", sbatch=[*sbatch_options(cfg, "precompute", "precompute", log, True), array],
                  settings=settings, setup=setup_lines(cfg))
    return JobScript("precompute", "precompute.sbatch", text, str(log))


def verify_job(cfg: DictConfig, job_dir: Path, taps: tuple[str, ...] = ()) -> JobScript:
    """verify-cache of the store, or of each tap store of an ablation's precompute pass (--tap checked too)."""
    log = job_dir / LOG_DIR / "verify_%j.out"
    store = absolute(require(cfg, "stage.store", "--store"))
    stores = [str(tap_store_path(store, t)) for t in taps] if taps else [store]
    settings = {**_common_settings(cfg, job_dir), "STORES": stores, "TAPS": list(taps) or [""],
                # report verify_<job>.json for the default tap's store (or the one store), verify_<job>_<tap>.json else
                "REPORT_SUFFIXES": [f"_{t}" if t != "info_sharing" else "" for t in taps] or [""],
                "EXTRA_ARGS": [*_data_root_args(cfg), "--no-progress"]}
    text = render("verify.sbatch", sbatch=sbatch_options(cfg, "verify", "verify", log, False), settings=settings,
                  setup=setup_lines(cfg))
    return JobScript("verify", "verify.sbatch", text, str(log))


def _config_arg(path: str) -> str:
    """A --train-config value: a file that exists here is made absolute; else it names a configs/ file."""
    return absolute(path) if Path(path).expanduser().exists() else path  # type: ignore[return-value]


def check_train_configs_suite(cfg: DictConfig, suite: str) -> None:
    """The job passes --suite to geo3d train (it must match the store); a --train-config naming another suite
    would be silently overruled, so refuse it."""
    for c in cfg.stage.train_configs:
        theirs = OmegaConf.select(load_config([str(c)]), "data.suite", default=None)
        if theirs is not None and theirs != suite:
            raise Geo3dError(f"--train-config {c} sets data.suite={theirs} but the jobs run --suite {suite}; "
                             f"pass --suite {theirs} (the store must be built for the same suite)")


def train_job(cfg: DictConfig, job_dir: Path, compressor: str, out: str, tap: str | None = None,
              seed: int | None = None, name: str | None = None) -> JobScript:
    """One compressor run: one process on one GPU, else the multi-node template (accelerate launch per node).
    With a `tap` it reads that tap's store (geo3d.core.taps.tap_store_path) and asks for it (--tap)."""
    t = cfg.slurm.train
    name = f"train_{name or compressor}"
    log = job_dir / LOG_DIR / f"{name}_%j.out"
    suite = require(cfg, "data.suite", "--suite")
    check_train_configs_suite(cfg, suite)
    extra = _data_root_args(cfg)
    for c in cfg.stage.train_configs:
        extra += ["--config", _config_arg(str(c))]
    extra += [str(o) for o in cfg.stage.train_overrides]
    extra = [*(["--tap", tap] if tap else []), *(["--seed", str(seed)] if seed is not None else []), *extra]
    store = absolute(require(cfg, "stage.store", "--store"))
    settings = {**_common_settings(cfg, job_dir), "COMPRESSOR": compressor, "SUITE": suite,
                "STORE": str(tap_store_path(store, tap)) if tap else store, "OUT": absolute(out),
                "CHECKPOINT_GLOB": CHECKPOINT_GLOB, "EXTRA_ARGS": extra}
    opts = sbatch_options(cfg, "train", name, log, True)
    nodes = int(t.nodes)
    template = "train.sbatch"
    if nodes > 1 or int(t.gpus) > 1:  # one process per GPU needs a launcher (torchrun via accelerate)
        template = "train_multinode.sbatch"
        opts += [f"--nodes={nodes}", "--ntasks-per-node=1"]
        accel = Path(str(t.accelerate_config))
        accel = accel if accel.is_absolute() or accel.exists() else CONFIG_DIR.parent / accel  # configs/accelerate/...
        settings |= {"GPUS_PER_NODE": str(int(t.gpus)), "ACCELERATE_CONFIG": str(accel.resolve()),
                     "MAIN_PROCESS_PORT": str(int(t.main_process_port)),
                     # torchrun reports a worker's exit 75 as 1
                     "REQUEUE_EXIT_CODES": f"{PREEMPTED_EXIT_CODE} 1"}
    text = render(template, sbatch=opts, settings=settings, setup=setup_lines(cfg))
    return JobScript(name, f"{name}.sbatch", text, str(log))


def eval_job(cfg: DictConfig, job_dir: Path, ckpt: str, suite: str, name: str = "eval",
             out: str | None = None) -> JobScript:
    """`geo3d eval` of one checkpoint (or run dir) on one LIBERO suite; requeued and resumed like train."""
    if suite not in SUITE_FOLDERS or suite == "demo":
        raise Geo3dError(f"eval suite {suite!r} is not a LIBERO benchmark suite; use one of "
                         f"libero_spatial, libero_object, libero_goal, libero_10")
    log = job_dir / LOG_DIR / f"{name}_%j.out"
    extra = [str(o) for o in cfg.stage.eval_overrides]
    if out:
        extra = ["--out", absolute(out), *extra]  # type: ignore[list-item]
    if cfg.stage.weights:  # MapAnything weights, for a run trained on its tokens
        extra = ["--encoder-weights", absolute(cfg.stage.weights), *extra]  # type: ignore[list-item]
    settings = {**_common_settings(cfg, job_dir), "CKPT": absolute(ckpt), "SUITE": suite, "EXTRA_ARGS": extra}
    text = render("eval.sbatch", sbatch=sbatch_options(cfg, "eval", name, log, True), settings=settings,
                  setup=setup_lines(cfg))
    return JobScript(name, f"{name}.sbatch", text, str(log))


def ablation_eval_suites(cfg: DictConfig) -> list[str]:
    """slurm.ablation.eval_suites: `auto` = the LIBERO suites the training suite is made of (demo: its two)."""
    suites = cfg.slurm.ablation.eval_suites
    if suites == "auto":
        return list(suite_members(require(cfg, "data.suite", "--suite")))
    return [str(s) for s in suites or []]


@dataclass(frozen=True)
class AblationRun:
    """One training run of the chain: `qformer@encoder` at seed 1 -> run dir <out>/qformer@encoder_s1."""

    compressor: str
    tap: str | None  # None for `none` (reads no geometry)
    seed: int | None  # None: the train config's seed

    @property
    def name(self) -> str:
        """Bare compressor for the default tap (run dirs as before taps existed), compressor@tap otherwise."""
        label = f"{self.compressor}@{self.tap}" if self.tap not in (None, "info_sharing") else self.compressor
        return label if self.seed is None else f"{label}_s{self.seed}"


def ablation_runs(cfg: DictConfig) -> list[AblationRun]:
    """slurm.ablation.compressors (`qformer`, `qformer@encoder`, ...; a bare name reads the info_sharing store)
    x slurm.ablation.seeds (null: one run each, with the train config's seed)."""
    entries = [str(c) for c in cfg.slurm.ablation.compressors]
    if not entries:
        raise Geo3dError("no compressors to run: pass --compressors pool,per_layer,qformer "
                         "(or set slurm.ablation.compressors; qformer@encoder trains on the encoder tap's store)")
    parsed = [parse_run_label(e) for e in entries]
    if any(c == "none" and t for c, t in parsed):
        raise Geo3dError("`none` reads no geometry tokens, so it has no tap: list it as `none`")
    runs = [(c, None if c == "none" else (t or DEFAULT_TAP)) for c, t in parsed]
    if len(set(runs)) != len(runs):
        raise Geo3dError(f"compressors repeat: {entries}; each run needs its own compressor@tap")
    seeds = cfg.slurm.ablation.get("seeds")
    seeds = [None] if seeds in (None, []) else [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise Geo3dError(f"slurm.ablation.seeds repeat: {seeds}")
    return [AblationRun(c, t, s) for c, t in runs for s in seeds]


def _precompute_taps(cfg: DictConfig, runs: list[AblationRun]) -> tuple[str, ...]:
    """The taps the runs read, in order (info_sharing first); precompute writes all of them in one pass."""
    taps = tuple(dict.fromkeys(r.tap for r in sorted(runs, key=lambda r: r.tap != DEFAULT_TAP) if r.tap))
    taps = taps or (DEFAULT_TAP,)
    given = [o for o in cfg.stage.precompute_overrides if str(o).startswith("precompute.taps=")]
    if given:
        mine = parse_taps(OmegaConf.from_dotlist([str(given[-1])]).precompute.taps)
        if missing := [t for t in taps if t not in mine]:
            raise Geo3dError(f"{given[-1]} lacks {missing}, which runs of the chain read; add them or drop the override")
    elif taps != (DEFAULT_TAP,):
        cfg.stage.precompute_overrides = [*cfg.stage.precompute_overrides, f"precompute.taps=[{','.join(taps)}]"]
    return taps


def ablation_jobs(cfg: DictConfig, job_dir: Path) -> list[JobScript]:
    """precompute (every tap the runs read, one pass) -> verify (each tap store) -> one train job per run (run dirs
    <out>/<compressor>[@<tap>][_s<seed>]) -> one eval job per run and eval suite, plus the launcher."""
    runs = ablation_runs(cfg)
    taps = _precompute_taps(cfg, runs)
    out_root = Path(require(cfg, "stage.out", "--out"))
    jobs = [precompute_job(cfg, job_dir), verify_job(cfg, job_dir, taps)]
    jobs += [train_job(cfg, job_dir, r.compressor, str(out_root / r.name), r.tap, r.seed, r.name) for r in runs]
    suites = ablation_eval_suites(cfg)
    jobs += [eval_job(cfg, job_dir, str(out_root / r.name), s, f"eval_{r.name}_{s}") for r in runs for s in suites]
    launcher = render("ablation.sh", settings={"JOB_DIR": str(job_dir), "RUNS": [r.name for r in runs],
                                               "EVAL_SUITES": suites})
    return [*jobs, JobScript("ablation", "ablation.sh", launcher)]
