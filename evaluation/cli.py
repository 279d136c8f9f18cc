"""`geo3d serve | eval | report`. Nothing heavy at module level: each verb imports its machinery inside.

Imports inside its functions are deliberate: `geo3d --help` imports every verb module (0.4 s so; ~10 s with torch,
transformers and zarr imported at the top: measured on the 2-core Xeon, cli/command.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import List, Optional

import typer

from geo3d.core.cliutil import CONFIG_OPTION, OVERRIDES_ARG, build_config, handle_errors
from geo3d.core.config_schema import DATA_RULES, Float, Int, OneOf, Rule, Schema, Str
from geo3d.core.errors import Geo3dError
from geo3d.core.storage_faults import resume_command, storage_guard
from geo3d.evaluation.server_requests import PROTOCOLS

DEFAULTS = ("data", "eval")
# Types and ranges configs/eval.yaml's defaults cannot say (null defaults, bounds, choices).
RULES = {
    **DATA_RULES,
    "serve.port": Int(min=0, max=65535), "serve.encoder_weights": Str(null=True),
    "serve.protocol": OneOf("auto", *PROTOCOLS),
    "serve.ping_interval_s": Float(min=0), "serve.ping_timeout_s": Float(min=0),
    "serve.batch.max_size": Int(min=1), "serve.batch.wait_ms": Float(min=0),
    "serve.limits.max_frame_mb": Float(above=0),  # 0 would close every connection on its first frame
    "serve.limits.max_connections": Int(min=1),
    "serve.limits.max_instruction_chars": Int(min=1), "serve.limits.max_instruction_tokens": Int(min=1),
    "serve.limits.min_image_side": Int(min=1), "serve.limits.max_image_side": Int(min=1),
    "serve.limits.max_views": Int(min=1), "serve.limits.max_examples": Int(min=1),
    "eval.tasks": Rule(("list", "str", "int"), null=True),
    "eval.episodes_per_task": Int(min=1), "eval.max_steps": Int(min=1, null=True),
    "eval.settle_steps": Int(min=0), "eval.replan_steps": Int(min=1), "eval.render_size": Int(min=1),
    "eval.workers": Int(min=1), "eval.gl": OneOf("auto", "osmesa", "egl"),
    "eval.encoder_weights": Str(null=True), "eval.server": Str(null=True), "eval.out": Str(null=True),
    "report.out": Str(null=True),
}


@functools.lru_cache(maxsize=None)
def config_schema() -> Schema:
    """`geo3d serve | eval | replay | report`'s keys: configs/data.yaml + configs/eval.yaml."""
    return Schema("eval", DEFAULTS, rules=RULES)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@handle_errors
def serve_cmd(
    ckpt: Path = typer.Option(..., "--ckpt", help="Checkpoint dir (checkpoints/steps_N) or a run dir (latest)."),
    host: Optional[str] = typer.Option(None, "--host", help="Interface to bind (serve.host, default 127.0.0.1: this "
                                       "machine only; 0.0.0.0 for clients on other nodes, no authentication)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port for websocket + GET /healthz (serve.port; 0 = any)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Client profile: geo3d | starvla | openpi | auto "
                                           "(serve.protocol; auto: from each request's shape)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (serve.device)."),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights",
                                                  help="MapAnything weights dir, if the run was trained on them."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Serve a checkpoint to geo3d's, StarVLA's or openpi's LIBERO client (msgpack + numpy over a websocket;
    evaluation/README.md); HTTP GET /healthz -> 200 ok."""
    from geo3d.evaluation.policy_handle import load_local_policy, policy_info
    from geo3d.evaluation.server import PolicyServer, ServeSettings

    cfg = build_config(DEFAULTS, config, overrides, {"serve.host": host, "serve.port": port, "serve.protocol": protocol,
                                                      "serve.device": device, "serve.encoder_weights": encoder_weights},
                       schema=config_schema())
    settings = ServeSettings.from_cfg(cfg)  # a bad protocol or limit fails before the checkpoint loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    policy = load_local_policy(ckpt, str(cfg.serve.device), cfg.serve.encoder_weights)
    server = PolicyServer(policy, policy_info(policy), settings)
    reach = ("loopback only: clients on other machines cannot connect (--host 0.0.0.0 allows them)"
             if settings.host in LOOPBACK else
             f"bound to {settings.host}: reachable from other machines, with no authentication")
    ready = lambda url: print(f"serving {policy_info(policy).get('checkpoint')} on {url} "  # noqa: E731
                              f"(protocol {settings.protocol}; {reach}; health: GET /healthz)", flush=True)
    try:
        asyncio.run(server.run(on_ready=ready))
    except KeyboardInterrupt:
        print("server stopped")
    except OSError as e:
        raise Geo3dError(f"cannot listen on {settings.host}:{settings.port}: {e}; choose another --port") from e


@handle_errors
def eval_cmd(
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint (or run) dir to load in-process."),
    server: Optional[str] = typer.Option(None, "--server", help="ws://host:port of `geo3d serve` (instead of --ckpt)."),
    suite: Optional[str] = typer.Option(None, "--suite", help="libero_spatial | libero_object | libero_goal | libero_10."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated task ids or names (default: all)."),
    episodes_per_task: Optional[int] = typer.Option(None, "--episodes-per-task", help="Init states per task (<= 50)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Step cap (default: the suite's standard cap)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Parallel episode processes."),
    video: Optional[bool] = typer.Option(None, "--video/--no-video", help="Write an mp4 per episode."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results dir (default: RUN_DIR/eval_<suite>_step<N>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted evaluation in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing results in --out."),
    device: Optional[str] = typer.Option(None, "--device", help="In-process policy device (auto | cpu | cuda)."),
    encoder_weights: Optional[str] = typer.Option(None, "--encoder-weights", help="MapAnything weights dir."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Evaluate a policy in the LIBERO simulator; writes results.json, results.md, episodes.jsonl."""
    from geo3d.evaluation.evaluate import evaluate
    from geo3d.evaluation.runner import PolicySource

    cfg = build_config(DEFAULTS, config, overrides, {
        "eval.suite": suite, "eval.tasks": tasks, "eval.episodes_per_task": episodes_per_task,
        "eval.max_steps": max_steps, "eval.workers": workers, "eval.video": video,
        "eval.out": str(out) if out else None, "eval.device": device, "eval.encoder_weights": encoder_weights,
        "eval.server": server}, schema=config_schema())
    if (ckpt is None) == (cfg.eval.server is None):
        raise Geo3dError("give exactly one policy: --ckpt DIR (loaded here) or --server ws://host:port")
    source = PolicySource(server=cfg.eval.server, ckpt=str(ckpt) if ckpt else None, device=str(cfg.eval.device),
                          encoder_weights=cfg.eval.encoder_weights)
    where = cfg.eval.out or (str(ckpt) if ckpt else ".")  # default results dir: inside the checkpoint's run
    with storage_guard("eval", where, resume=resume_command(add=("--resume",), drop=("--overwrite",)),
                       safe=lambda: "every finished episode already in episodes.jsonl (--resume skips them)"):
        results = evaluate(cfg, source, resume=resume, overwrite=overwrite)
    from geo3d.evaluation.results import markdown

    print(markdown(results))
    print(f"results: {results['out']}/results.json")


@handle_errors
def report_cmd(
    run_dirs: List[Path] = typer.Argument(..., help="Training run directories to compare (one per compressor)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir for report.png / report.md (default ./report)."),
    config: Optional[List[Path]] = CONFIG_OPTION,
) -> None:
    """Loss curves, compressor grad norms, geometry attention mass, and success rates from RUN_DIR/eval*/."""
    from geo3d.evaluation.report_render import write_report  # matplotlib

    cfg = build_config(DEFAULTS, config, None, {"report.out": str(out) if out else None}, schema=config_schema())
    paths = write_report(run_dirs, Path(cfg.report.out or "report"))
    for p in paths:
        print(f"wrote {p}")


@handle_errors
def replay_cmd(
    suite: str = typer.Option(..., "--suite", help="The dataset's LIBERO suite: libero_spatial | libero_object | ..."),
    episodes: Optional[str] = typer.Option(None, "--episodes", help="Comma-separated episode indices (default: all)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the suite folders "
                                             "(default: data.data_root, $GEO3D_DATA_ROOT, else demo_data/)."),
    task: Optional[int] = typer.Option(None, "--task", help="Simulator task id (default: from generation.json)."),
    init_state: Optional[int] = typer.Option(None, "--init-state", help="Bundled init state (default: generation.json)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Scene seed (default: generation.json, else eval.seed)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Replay only the first N actions (a quick check)."),
    video: bool = typer.Option(False, "--video/--no-video", help="Write OUT/videos/<episode>.mp4."),
    out: Path = typer.Option(Path("runs/replay"), "--out", help="Where replay.json / replay.md go."),
    config: Optional[List[Path]] = CONFIG_OPTION,
    overrides: Optional[List[str]] = OVERRIDES_ARG,
) -> None:
    """Execute dataset episodes' recorded actions in the simulator under eval's protocol (eval.* settings) and
    check they reproduce: outcome, observation.state, images vs stored frames. Exit 0 all reproduced, 1 not."""
    from geo3d.data.suites import resolve_data_root
    from geo3d.evaluation.replay import dataset_episodes, markdown, replay, write_reports

    cfg = build_config(DEFAULTS, config, overrides, {"data.data_root": str(data_root) if data_root else None},
                       schema=config_schema())
    root = resolve_data_root("demo", cfg.data.data_root)  # given root, else $GEO3D_DATA_ROOT, else demo_data/
    wanted = dataset_episodes(root, suite) if not episodes else [int(e) for e in episodes.split(",")]
    reports = []
    for ep in wanted:
        vdir = str(out / "videos") if video else None
        reports.append(replay(cfg, suite, ep, root, task, init_state, seed, max_steps, vdir))
        print(markdown(reports[-1:]).splitlines()[-1], flush=True)
    write_reports(reports, out)
    print(markdown(reports))
    for r in reports:
        for p in r.problems:
            print(f"{r.suite} episode {r.episode}: {p}")
    print(f"results: {out / 'replay.json'}")
    if not all(r.ok for r in reports):
        raise typer.Exit(1)

