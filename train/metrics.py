"""Training diagnostics: metrics.jsonl (one JSON object per logged step), optional wandb, grad norms, timing.

metrics.jsonl is the run's source of truth for loss curves and the seed's diagnostics (gradient flow into
the compressor, attention mass on geometry tokens per DiT layer); `geo3d report` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from geo3d.core.errors import Geo3dError
from geo3d.policy.run_dir import METRICS_FILE


def module_grad_norms(groups: Mapping[str, nn.Module]) -> dict[str, torch.Tensor | None]:
    """L2 norm of the gradients of each module group, as a device scalar (no host sync: `read_grad_norms` reads
    them on logging steps); None when the group has no gradients (frozen)."""
    out: dict[str, torch.Tensor | None] = {}
    for name, module in groups.items():
        grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
        out[name] = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)])) \
            if grads else None
    return out


def read_grad_norms(norms: Mapping[str, torch.Tensor | None],
                    total: torch.Tensor | None) -> tuple[dict[str, float | None], float | None]:
    """The per-module and total norms as floats, with one device->host copy for all of them."""
    values = [v for v in (*norms.values(), total) if v is not None]
    floats = iter(torch.stack([v.float().reshape(()) for v in values]).cpu().tolist() if values else [])
    per_module = {k: (next(floats) if v is not None else None) for k, v in norms.items()}
    return per_module, (next(floats) if total is not None else None)


class StepTimer:
    """Splits wall time into data wait (blocked on the loader) and compute (forward/backward/step)."""

    def __init__(self) -> None:
        self.data = 0.0
        self.compute = 0.0
        self._t = time.perf_counter()

    def mark_data(self) -> None:
        now = time.perf_counter()
        self.data += now - self._t
        self._t = now

    def mark_compute(self) -> None:
        now = time.perf_counter()
        self.compute += now - self._t
        self._t = now

    def restart(self) -> None:
        """Start the next interval now: time spent between steps (a checkpoint save) is neither data nor compute."""
        self._t = time.perf_counter()

    def pop(self) -> dict[str, float]:
        out = {"time_data_s": self.data, "time_compute_s": self.compute}
        self.data = self.compute = 0.0
        return out


class MetricsLogger:
    """Appends to <run>/metrics.jsonl on the main process; mirrors to wandb when `train.wandb.enabled`."""

    def __init__(self, run_dir: Path, enabled: bool, wandb_cfg: DictConfig | None = None,
                 full_config: DictConfig | None = None, run_name: str | None = None,
                 store: Mapping[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self._wandb = None
        if enabled and wandb_cfg is not None and wandb_cfg.get("enabled", False):
            self._wandb = _start_wandb(wandb_cfg, full_config, run_name, Path(run_dir), store)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (written after the checkpoint a resumed run restarts from)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if _step_of(line) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def log(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._wandb is not None:
            self._wandb.log(_flatten(record), step=int(record["step"]))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _step_of(line: str) -> float:
    """A record's step; +inf (dropped by truncate_after) for a blank or torn line, e.g. a write cut by kill -9."""
    try:
        return float(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return float("inf")


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        elif isinstance(v, list):
            out.update({f"{key}/{i}": x for i, x in enumerate(v)})
        else:
            out[key] = v
    return out


def _start_wandb(wandb_cfg: DictConfig, full_config: DictConfig | None, run_name: str | None, run_dir: Path,
                 store: Mapping[str, Any] | None = None):
    """wandb is optional (pip install 'geo3d[wandb]'); offline unless train.wandb.mode says otherwise.
    The run's config = the resolved config + `store_identity` (path, shape, encoder, preprocessing; None
    without a store), so a wandb run names the exact tokens it trained on."""
    try:
        import wandb  # type: ignore[import-not-found]
    except ImportError as e:
        raise Geo3dError("train.wandb.enabled=true but wandb is not installed: pip install 'geo3d[wandb]' "
                         "or set train.wandb.enabled=false") from e
    config = OmegaConf.to_container(full_config, resolve=True) if full_config is not None else {}
    config["store_identity"] = dict(store) if store is not None else None  # type: ignore[index]
    # one wandb run per run directory: run names repeat (qformer_s42 in every demo run, both presets of an
    # ablation), the directory does not, and `--resume` keeps it, so a resumed run continues its own curve
    wandb_id = f"{run_name}-{hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]}"
    return wandb.init(project=wandb_cfg.get("project", "geo3d"), entity=wandb_cfg.get("entity"),
                      mode=wandb_cfg.get("mode", "offline"), name=run_name, dir=str(run_dir),
                      config=config, resume="allow", id=wandb_id)
