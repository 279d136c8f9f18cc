"""`geo3d submit precompute|verify|train|eval|ablation`: render the sbatch templates (scripts/slurm/) with the
resolved config and submit them with plain `sbatch --parsable` (no extra dependency).

Config: configs/data.yaml < configs/slurm.yaml < --config files < flags < key=value overrides. Overrides
under `slurm.`/`stage.` (and data.suite / data.data_root) configure the submission; any other key=value is
passed on to the stage command (ablation: precompute./encoder./store. keys to `geo3d precompute`, the rest
to `geo3d train`). --dry-run prints the scripts and submits nothing.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from omegaconf import DictConfig

from geo3d.cli.slurm.jobs import ablation_jobs, eval_job, precompute_job, require, train_job, verify_job
from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, build_config, handle_errors
from geo3d.core.config_schema import DATA_RULES, Int, OneOf, Rule, Schema, Str
from geo3d.core.errors import Geo3dError
from geo3d.core.storage_faults import storage_guard

submit_app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULTS = ("data", "slurm")
_SITE = ("partition", "account", "qos", "constraint", "gpu_type", "activate")
_SLURM_SIZE = Rule(("str", "int"))  # time limits (04:00:00 or minutes) and memory (64G or MB) as sbatch takes them
# Types and ranges configs/slurm.yaml's defaults cannot say. Site-specific sbatch options without a key of their
# own go in slurm.extra_sbatch (a list), so the slurm section stays a closed key set: a typo is refused.
RULES = {
    **DATA_RULES,
    **{f"slurm.{k}": Str(null=True) for k in _SITE},
    "slurm.signal_seconds": Int(min=0),
    "slurm.*.time": _SLURM_SIZE, "slurm.*.mem": _SLURM_SIZE,
    "slurm.*.gpus": Int(min=0), "slurm.*.cpus": Int(min=1), "slurm.*.nodes": Int(min=1),
    "slurm.precompute.num_shards": Int(min=1), "slurm.precompute.max_parallel": Int(min=1, null=True),
    "slurm.train.main_process_port": Int(min=1, max=65535),
    "slurm.ablation.eval_suites": Rule(("list",), choices=("auto",)),
    "slurm.ablation.seeds": Rule(("list",), null=True),
    "stage.encoder": OneOf("tiny", "mapanything"),
    **{f"stage.{k}": Str(null=True) for k in ("store", "weights", "out", "compressor", "ckpt", "eval_suite",
                                               "eval_out")},
}


@functools.lru_cache(maxsize=None)
def config_schema() -> Schema:
    """`geo3d submit`'s keys: configs/data.yaml + configs/slurm.yaml."""
    return Schema("submit", DEFAULTS, rules=RULES)


SUBMIT_KEYS = ("slurm.", "stage.", "data.suite=", "data.data_root=")
PRECOMPUTE_KEYS = ("precompute.", "encoder.", "store.")
EVAL_KEYS = ("eval.",)
DRY_RUN = typer.Option(False, "--dry-run", help="Print the rendered scripts; write and submit nothing.")
ACTIVATE = typer.Option(None, help="Shell line that puts geo3d on PATH in the job (slurm.activate), e.g. "
                                   "'source /path/.venv/bin/activate'. Default: the env running this command.")
PARTITION = typer.Option(None, help="SLURM partition (slurm.partition).")
ACCOUNT = typer.Option(None, help="SLURM account (slurm.account).")
SUITE = typer.Option(None, help="LIBERO suite (data.suite): libero_spatial|object|goal|10|all|demo.")
DATA_ROOT = typer.Option(None, help="Folder holding the suite folders (data.data_root).")
STORE = typer.Option(None, help="Features store path (stage.store).")
TIME = typer.Option(None, help="Time limit per job, e.g. 04:00:00 or 2-00:00:00.")


def split_overrides(overrides: Optional[List[str]], stage_keys: tuple[str, ...],
                    eval_keys: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Route key=value overrides: submission keys, then those for `geo3d precompute`, then those for
    `geo3d eval`, the rest for train."""
    routed: dict[str, list[str]] = {"submit": [], "precompute": [], "eval": [], "train": []}
    for o in overrides or []:
        dest = ("submit" if o.startswith(SUBMIT_KEYS) else "precompute" if o.startswith(stage_keys)
                else "eval" if o.startswith(eval_keys) else "train")
        routed[dest].append(o)
    return routed


def resolve(config: Optional[List[Path]], overrides: Optional[List[str]], flags: dict[str, Any],
            forward_to: str | None) -> DictConfig:
    """The submission config; other overrides go to stage `forward_to` (precompute|train|eval|ablation|None)."""
    routed = split_overrides(overrides, PRECOMPUTE_KEYS if forward_to == "ablation" else ("",) if
                             forward_to == "precompute" else (),
                             EVAL_KEYS if forward_to == "ablation" else ("",) if forward_to == "eval" else ())
    passed = routed["precompute"] + routed["eval"] + routed["train"]
    if forward_to is None and passed:
        raise Geo3dError(f"these overrides are not slurm.*/stage.* keys: {passed}; this job passes none on")
    cfg = build_config(DEFAULTS, config, routed["submit"], flags, schema=config_schema())
    if cfg.slurm.activate is None:  # documented default: the environment running `geo3d submit`
        from geo3d.cli.slurm.jobs import default_activate
        cfg.slurm.activate = default_activate()
    cfg.stage.precompute_overrides = [*cfg.stage.precompute_overrides, *routed["precompute"]]
    cfg.stage.train_overrides = [*cfg.stage.train_overrides, *routed["train"]]
    cfg.stage.eval_overrides = [*cfg.stage.eval_overrides, *routed["eval"]]
    return cfg


def check_forwarded(cfg: DictConfig) -> None:
    """The key=value a job passes on is checked now by the stage's own schema, not hours later on a node."""
    from geo3d.evaluation.cli import DEFAULTS as EVAL_DEFAULTS
    from geo3d.evaluation.cli import config_schema as eval_schema
    from geo3d.precompute.cli import precompute_config
    from geo3d.train.run_config import check_train_overrides

    precompute_config(list(cfg.stage.precompute_overrides))
    check_train_overrides(list(cfg.stage.train_overrides), list(cfg.stage.train_configs))
    build_config(EVAL_DEFAULTS, None, list(cfg.stage.eval_overrides), schema=eval_schema())


def submit_jobs(cfg: DictConfig, verb: str, build: Callable[[DictConfig, Path], list], dry_run: bool) -> None:
    """Render with `build(cfg, job_dir)`; print (--dry-run) or write the record and submit."""
    from geo3d.cli.slurm import submission as sub
    check_forwarded(cfg)
    preview_dir = Path(str(cfg.slurm.submit_dir)).resolve() / f"<UTC time>_{verb}"
    scripts = build(cfg, preview_dir)  # every input error surfaces here, before anything is written
    if dry_run:
        typer.echo(sub.print_scripts(scripts, preview_dir))
        return
    with storage_guard(f"submit {verb}", Path(str(cfg.slurm.submit_dir)).resolve(),
                       safe=lambda: "nothing was submitted (scripts are written before sbatch runs)"):
        job_dir = sub.new_submission_dir(cfg, verb)
        scripts = build(cfg, job_dir)
        sub.write_record(job_dir, cfg, scripts)
    launcher = [s for s in scripts if s.file.endswith(".sh")]
    if launcher:
        jobs = sub.run_launcher(job_dir / launcher[0].file)
    else:
        jobs = [(s.name, sub.sbatch(job_dir / s.file)) for s in scripts]
    sub.record_jobs(job_dir, jobs, scripts)
    typer.echo(sub.summary(jobs, scripts, job_dir))


@submit_app.command("precompute")
@handle_errors
def precompute_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    suite: Optional[str] = SUITE, data_root: Optional[Path] = DATA_ROOT, store: Optional[Path] = STORE,
    encoder: Optional[str] = typer.Option(None, help="tiny | mapanything (stage.encoder)."),
    weights: Optional[Path] = typer.Option(None, help="MapAnything weights folder (stage.weights)."),
    num_shards: Optional[int] = typer.Option(None, help="Array tasks, one shard each (slurm.precompute.num_shards)."),
    time: Optional[str] = TIME, partition: Optional[str] = PARTITION, account: Optional[str] = ACCOUNT,
    activate: Optional[str] = ACTIVATE, config: Optional[List[Path]] = CONFIG_OPTION, dry_run: bool = DRY_RUN,
) -> None:
    """Submit stage 1 as an array job: one task per shard, one GPU each, requeued on preemption."""
    cfg = resolve(config, overrides, {
        "data.suite": suite, "data.data_root": _s(data_root), "stage.store": _s(store), "stage.encoder": encoder,
        "stage.weights": _s(weights), "slurm.precompute.num_shards": num_shards, "slurm.precompute.time": time,
        "slurm.partition": partition, "slurm.account": account, "slurm.activate": activate}, forward_to="precompute")
    submit_jobs(cfg, "precompute", lambda c, d: [precompute_job(c, d)], dry_run)


@submit_app.command("verify")
@handle_errors
def verify_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    store: Optional[Path] = STORE, data_root: Optional[Path] = DATA_ROOT,
    time: Optional[str] = TIME, partition: Optional[str] = PARTITION, account: Optional[str] = ACCOUNT,
    activate: Optional[str] = ACTIVATE, config: Optional[List[Path]] = CONFIG_OPTION, dry_run: bool = DRY_RUN,
) -> None:
    """Submit `geo3d verify-cache STORE` as a job (its JSON report goes beside the logs)."""
    cfg = resolve(config, overrides, {
        "stage.store": _s(store), "data.data_root": _s(data_root), "slurm.verify.time": time,
        "slurm.partition": partition, "slurm.account": account, "slurm.activate": activate}, forward_to=None)
    submit_jobs(cfg, "verify", lambda c, d: [verify_job(c, d)], dry_run)


@submit_app.command("train")
@handle_errors
def train_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    compressor: Optional[str] = typer.Option(None, help="none | mean | pool | per_layer | qformer (stage.compressor)."),
    suite: Optional[str] = SUITE, data_root: Optional[Path] = DATA_ROOT, store: Optional[Path] = STORE,
    out: Optional[Path] = typer.Option(None, help="Run directory (stage.out)."),
    train_config: Optional[List[Path]] = typer.Option(None, help="YAML passed to `geo3d train --config`."),
    nodes: Optional[int] = typer.Option(None, help="Nodes (slurm.train.nodes)."),
    gpus: Optional[int] = typer.Option(None, help="GPUs per node (slurm.train.gpus); nodes or GPUs > 1 "
                                                "run one process per GPU via accelerate launch."),
    time: Optional[str] = TIME, partition: Optional[str] = PARTITION, account: Optional[str] = ACCOUNT,
    activate: Optional[str] = ACTIVATE, config: Optional[List[Path]] = CONFIG_OPTION, dry_run: bool = DRY_RUN,
) -> None:
    """Submit one compressor run (checkpoints and requeues itself before the time limit, then resumes)."""
    cfg = resolve(config, overrides, {
        "stage.compressor": compressor, "data.suite": suite, "data.data_root": _s(data_root),
        "stage.store": _s(store), "stage.out": _s(out), "slurm.train.nodes": nodes, "slurm.train.gpus": gpus,
        "slurm.train.time": time, "slurm.partition": partition, "slurm.account": account,
        "slurm.activate": activate}, forward_to="train")
    if train_config:
        cfg.stage.train_configs = [*cfg.stage.train_configs, *map(str, train_config)]
    submit_jobs(cfg, "train", lambda c, d: [train_job(c, d, require(c, "stage.compressor", "--compressor"),
                                                      require(c, "stage.out", "--out"))], dry_run)


@submit_app.command("eval")
@handle_errors
def eval_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint dir or run dir (its latest) (stage.ckpt)."),
    suite: Optional[str] = typer.Option(None, help="LIBERO suite: libero_spatial|object|goal|10 (stage.eval_suite)."),
    eval_out: Optional[Path] = typer.Option(None, "--eval-out", help="Results dir (stage.eval_out); default "
                                                                       "RUN_DIR/eval_<suite>_step<N>."),
    weights: Optional[Path] = typer.Option(None, help="MapAnything weights folder, for runs trained on its tokens "
                                                      "(stage.weights)."),
    time: Optional[str] = TIME, partition: Optional[str] = PARTITION, account: Optional[str] = ACCOUNT,
    activate: Optional[str] = ACTIVATE, config: Optional[List[Path]] = CONFIG_OPTION, dry_run: bool = DRY_RUN,
) -> None:
    """Submit `geo3d eval` of one checkpoint on one suite (requeued on the time limit, then resumed); other
    key=value overrides (eval.tasks=[0], eval.episodes_per_task=10, ...) are passed to `geo3d eval`."""
    cfg = resolve(config, overrides, {
        "stage.ckpt": _s(ckpt), "stage.eval_suite": suite, "stage.eval_out": _s(eval_out), "stage.weights": _s(weights),
        "slurm.eval.time": time, "slurm.partition": partition, "slurm.account": account,
        "slurm.activate": activate}, forward_to="eval")
    submit_jobs(cfg, "eval", lambda c, d: [eval_job(c, d, require(c, "stage.ckpt", "--ckpt"),
                                                    require(c, "stage.eval_suite", "--suite"),
                                                    out=c.stage.eval_out)], dry_run)


@submit_app.command("ablation")
@handle_errors
def ablation_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    compressors: Optional[str] = typer.Option(None, help="Comma list of compressor[@tap], e.g. "
                                                         "none,qformer,qformer@encoder (slurm.ablation.compressors)."),
    seeds: Optional[str] = typer.Option(None, help="Comma list of training seeds, one run each (slurm.ablation.seeds)."),
    suite: Optional[str] = SUITE, data_root: Optional[Path] = DATA_ROOT, store: Optional[Path] = STORE,
    encoder: Optional[str] = typer.Option(None, help="tiny | mapanything (stage.encoder)."),
    weights: Optional[Path] = typer.Option(None, help="MapAnything weights folder (stage.weights)."),
    out: Optional[Path] = typer.Option(None, help="Root of the run dirs: <out>/<compressor> (stage.out)."),
    train_config: Optional[List[Path]] = typer.Option(None, help="YAML passed to every `geo3d train --config`."),
    partition: Optional[str] = PARTITION, account: Optional[str] = ACCOUNT,
    activate: Optional[str] = ACTIVATE, config: Optional[List[Path]] = CONFIG_OPTION, dry_run: bool = DRY_RUN,
) -> None:
    """Submit precompute (every tap the runs read) -> verify -> one train job per compressor[@tap] and seed -> its
    eval jobs (slurm.ablation.eval_suites; eval.* overrides go to them), chained with --dependency=afterok."""
    cfg = resolve(config, overrides, {
        "data.suite": suite, "data.data_root": _s(data_root), "stage.store": _s(store), "stage.encoder": encoder,
        "stage.weights": _s(weights), "stage.out": _s(out), "slurm.partition": partition,
        "slurm.account": account, "slurm.activate": activate}, forward_to="ablation")
    if compressors:
        cfg.slurm.ablation.compressors = [c.strip() for c in compressors.split(",") if c.strip()]
    if seeds:
        try:
            cfg.slurm.ablation.seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise Geo3dError(f"--seeds {seeds!r}: give integers, e.g. --seeds 0,1,2") from None
    if train_config:
        cfg.stage.train_configs = [*cfg.stage.train_configs, *map(str, train_config)]
    submit_jobs(cfg, "ablation", ablation_jobs, dry_run)


def _s(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path)
