"""`geo3d inspect`: light at import time; torch, transformers and the simulator are imported inside.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from omegaconf import OmegaConf

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, handle_errors
from geo3d.core.config import ConfigError, load_config, merge_overrides, set_if_given
from geo3d.core.errors import Geo3dError

LATE_SECTIONS = ("encoder.", "eval.")  # keys that live in precompute.yaml / eval.yaml, applied after merging them


def compose_inspect_config(config: list[Path] | None, overrides: list[str] | None, suite: str | None,
                           data_root: str | None, ckpt: str | None):
    """The run's config (a checkpoint's, else the train composition) + the `encoder` and `eval` sections."""
    from geo3d.cli.inspection.run import checkpoint_config
    from geo3d.evaluation.cli import config_schema as eval_schema
    from geo3d.precompute.cli import config_schema as precompute_schema
    from geo3d.train.run_config import compose_train_config, config_schema

    overrides = list(overrides or [])
    late = [o for o in overrides if o.startswith(LATE_SECTIONS)]
    early = [o for o in overrides if o not in late]
    if ckpt:
        unknown = [o for o in early if not config_schema().defines(o.split("=", 1)[0])]
        if unknown:  # the checkpoint's own config may hold keys of an older geo3d: only the overrides are checked
            raise ConfigError(f"unknown config key(s) {unknown}: not keys of a training run's config")
        base = merge_overrides(checkpoint_config(ckpt), early)
        set_if_given(base, "data.suite", suite)
        set_if_given(base, "data.data_root", data_root)
    else:
        base = compose_train_config(config, early, {"suite": suite, "data_root": data_root})
    sections = load_config(["precompute.yaml", "eval.yaml"])
    cfg = merge_overrides(OmegaConf.merge({"encoder": sections.encoder, "eval": sections.eval}, base), late)
    late_sections = OmegaConf.masked_copy(cfg, ["encoder", "eval"])
    precompute_schema().union(eval_schema()).check(late_sections)  # the late keys: defined, typed, in range
    return cfg


@handle_errors
def inspect_cmd(
    overrides: Optional[List[str]] = OVERRIDES_ARG,
    suite: Optional[str] = typer.Option(None, help="Dataset suite (with --frame) or LIBERO benchmark suite (with "
                                                   "--sim-task)."),
    frame: Optional[int] = typer.Option(None, help="Global frame index of the suite's mixture (the training index)."),
    data_root: Optional[Path] = typer.Option(None, help="Folder holding the suite folders (else $GEO3D_DATA_ROOT)."),
    sim_task: Optional[int] = typer.Option(None, help="Instead of a dataset frame: this benchmark task of --suite, "
                                                      "rendered live in the simulator through eval's path."),
    init_state: int = typer.Option(0, help="With --sim-task: which bundled init state to reset to."),
    ckpt: Optional[Path] = typer.Option(None, help="Use a checkpoint's config, norm stats and geometry encoder."),
    encoder_weights: Optional[Path] = typer.Option(None, help="MapAnything weights dir (a checkpoint trained on "
                                                              "MapAnything tokens)."),
    out: Path = typer.Option(..., help="Directory for vlm_<view>.png, geometry_<view>.png and inspect.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an inspection already in --out."),
    config: Optional[List[Path]] = CONFIG_OPTION,
) -> None:
    """Write exactly what the VLM and the geometry encoder receive for one frame, plus inspect.json (instruction,
    tokenized prompt, state, raw + normalized action chunk, pad mask, content id, orientation).

    Exit codes: 0 written; 2 bad input (nothing written).
    """
    from geo3d.cli.inspection.run import build_paths, inspect_sample, prepare_out
    from geo3d.cli.inspection.sources import dataset_sample, sim_sample

    if (frame is None) == (sim_task is None):
        raise Geo3dError("give exactly one of --frame N (a dataset frame) or --sim-task TASK_ID (a simulator frame)")
    cfg = compose_inspect_config(config, overrides, suite if sim_task is None else None,
                                 str(data_root) if data_root else None, str(ckpt) if ckpt else None)
    prepare_out(out, overwrite)
    weights = str(encoder_weights) if encoder_weights else None
    if sim_task is not None and not suite:
        raise Geo3dError("--sim-task needs --suite (a LIBERO benchmark suite, e.g. libero_spatial)")
    from geo3d.data.mixture import LiberoMixture
    mixture = None if ckpt and sim_task is not None else LiberoMixture.from_config(cfg)  # frames / norm stats
    paths = build_paths(cfg, str(ckpt) if ckpt else None, mixture, weights)
    if sim_task is None:
        sample = dataset_sample(mixture, int(frame))
    else:
        sample = sim_sample(suite, sim_task, init_state, int(cfg.data.image_size), cfg.eval)
    result = inspect_sample(paths, sample, out)
    typer.echo(f"wrote {', '.join(result['files'].values())} and inspect.json to {out}")
