"""Compose the run's configs exactly as the verbs do, decide what the run needs, run every check."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from geo3d.cli.doctor import checks_data as D
from geo3d.cli.doctor import checks_env as E
from geo3d.cli.doctor import checks_models as M
from geo3d.cli.doctor.findings import Finding, guarded
from geo3d.cli.submit import DEFAULTS as SUBMIT_DEFAULTS
from geo3d.cli.submit import config_schema as submit_schema
from geo3d.core.cliutil import build_config
from geo3d.core.config import data_root_from
from geo3d.features_store import StoreLayout
from geo3d.precompute.cli import DEFAULTS as PRECOMPUTE_DEFAULTS
from geo3d.precompute.cli import config_schema as precompute_schema
from geo3d.train.run_config import compose_train_config
from geo3d.train.run_config import config_schema as train_config_schema

STAGES = ("all", "precompute", "train", "eval")


@dataclass
class Plan:
    """The run described by the flags/config, and which parts of it this doctor run must vouch for."""

    pre_cfg: DictConfig
    train_cfg: DictConfig
    slurm_cfg: Any
    stage: str
    ckpt: str | None
    needs_gpu: bool
    needs_slurm: bool
    frames_by_suite: dict[str, int] = field(default_factory=dict)
    _meta: Any = "unread"
    _counts: Any = None
    _memory: Any = None

    @property
    def needs_precompute(self) -> bool:
        return self.stage in ("all", "precompute")

    @property
    def needs_train(self) -> bool:
        return self.stage in ("all", "train")

    @property
    def suite(self) -> str:
        return str(self.pre_cfg.data.suite)

    @property
    def data_root(self) -> str | None:
        return data_root_from(self.pre_cfg)

    @property
    def encoder(self) -> str:
        return str(self.pre_cfg.encoder.name)

    @property
    def weights(self) -> str | None:
        return self.pre_cfg.encoder.mapanything.weights

    @property
    def store(self) -> str | None:
        return self.pre_cfg.precompute.store or self.train_cfg.train.store

    @property
    def uses_geometry(self) -> bool:
        return str(self.train_cfg.model.compressor.type) != "none"

    @property
    def needs_store(self) -> bool:
        return self.needs_precompute or (self.needs_train and self.uses_geometry)

    @property
    def vlm_source(self) -> str:
        return str(self.train_cfg.model.vlm.source)

    @property
    def attn_implementation(self) -> str:
        return str(self.train_cfg.model.vlm.attn_implementation)

    @property
    def wants_bf16(self) -> bool:
        return str(self.train_cfg.train.mixed_precision) in ("auto", "bf16")

    @property
    def tokens_per_view(self) -> int:
        return int(self.pre_cfg.encoder.tokens_per_view)

    @property
    def token_dim(self) -> int:
        """D of the stored tokens: tiny's out_dim; MapAnything's info_sharing dim from its config.json (1536)."""
        if self.encoder == "tiny":
            return int(self.pre_cfg.encoder.tiny.out_dim)
        try:
            config = json.loads((Path(str(self.weights)) / "config.json").read_text())
            return int(config["info_sharing_config"]["module_args"].get("dim", 1536))
        except (OSError, ValueError, KeyError, TypeError):
            return 1536

    @property
    def store_layout(self) -> Any:
        return StoreLayout.from_config(OmegaConf.to_container(self.pre_cfg.store, resolve=True))

    def param_counts(self) -> dict[str, dict[str, int]]:
        """The training run's parameter counts (meta device; computed once)."""
        if self._counts is None:
            from geo3d.train.disk_space import param_counts
            self._counts = _quiet(param_counts, self.train_cfg)
        return self._counts

    def memory_table(self) -> Any:
        """`train --dry-run`'s per-GPU memory table for this run (train/memory.py; computed once)."""
        if self._memory is None:
            from geo3d.train.memory import estimate_memory
            self._memory = _quiet(estimate_memory, self.train_cfg)
        return self._memory

    def store_meta(self) -> dict[str, Any] | None:
        """The existing store's metadata (None when there is no store at --store)."""
        if self._meta == "unread":
            from geo3d.features_store.metadata import read_metadata
            self._meta = None
            if self.store and (Path(self.store) / "zarr.json").is_file():
                self._meta = read_metadata(self.store)
        return self._meta


def _quiet(fn: Any, *args: Any) -> Any:
    """A missing Qwen directory is its own finding: the meta build's fallback warning is not repeated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def compose(config: list[Path] | None, overrides: list[str] | None, flags: dict[str, Any], stage: str,
            ckpt: str | None, gpu: bool, slurm: bool) -> Plan:
    """The same builders and schemas as `geo3d precompute`, `geo3d train` and `geo3d submit`, from one command
    line: each keeps its own keys and drops the others' (a key none of them defines exits 2)."""
    pre_schema, train_schema, slurm_schema = precompute_schema(), train_config_schema(), submit_schema()
    pre = build_config(PRECOMPUTE_DEFAULTS, config, overrides, {
        "data.suite": flags.get("suite"), "data.data_root": flags.get("data_root"), "encoder.name": flags.get("encoder"),
        "encoder.mapanything.weights": flags.get("weights"), "precompute.store": flags.get("store")},
        schema=pre_schema, foreign=train_schema.union(slurm_schema))
    train = compose_train_config(config, overrides, {k: flags.get(k) for k in ("suite", "data_root", "store", "out")
                                                     if flags.get(k) is not None},
                                 foreign=pre_schema.union(slurm_schema))
    slurm_cfg = build_config(SUBMIT_DEFAULTS, config, overrides, schema=slurm_schema,
                             foreign=pre_schema.union(train_schema)).slurm
    needs_gpu = gpu or str(pre.precompute.device).startswith("cuda") or \
        str(train.train.mixed_precision) in ("bf16", "fp16")
    return Plan(pre, train, slurm_cfg, stage, ckpt, needs_gpu, slurm)


def run_checks(plan: Plan) -> list[Finding]:
    checks: list[tuple[str, Any]] = [("torch", E.check_torch), ("attention", E.check_attention)]
    if plan.needs_train:
        checks.append(("GPU memory", E.check_gpu_memory))
    checks.append(("SLURM", E.check_slurm))
    if plan.needs_precompute:
        checks.append(("MapAnything", M.check_mapanything))
    if plan.needs_train:
        checks.append(("Qwen2.5-VL", M.check_qwen))
    checks += [("data", D.check_suites), ("store", D.check_store)]
    if plan.needs_train:
        checks.append(("checkpoint disk space", D.check_run_disk))
    checks.append(("checkpoint", D.check_checkpoint))
    findings: list[Finding] = []
    for name, fn in checks:
        findings += guarded(name, lambda fn=fn: fn(plan))
    return findings


def render(findings: Iterable[Finding]) -> str:
    return "\n".join(f.line() for f in findings)
