"""`make gpu-check`: before spending GPU-days, measure stage 2 on one GPU node in one command (<= 8 min on one
H100/H200, nothing downloaded) and write every figure with its settings to gpu_check.json.

Sections (each one's failure is recorded and makes the exit code 1; the others still run):
  env        GPU, driver, torch / CUDA / transformers versions, flash_attention_2 availability
  matmul     the measured dense bf16 matmul rate: the MFU denominator
  steps      training step of Qwen2.5-VL-3B (published architecture, random init; $GEO3D_QWEN_VL_DIR for a real
             one) + DiT head (fork preset, 977.75M) with the qformer and none compressors, bf16 autocast over
             fp32 masters, fused AdamW: batch 4 and 16, gradient checkpointing off/on -> ms/step, samples/s,
             MFU (FlopCounterMode FLOPs / time / matmul rate), peak allocated memory next to train/memory.py
  vision     the vision tower's forward per attention implementation (sdpa; flash_attention_2 if usable)
  processor  which image processor backend transformers picks here; PIL vs torchvision pixels if both exist
  feed       a short real `geo3d train` on the demo data with a [2,196,1536] store from the tiny encoder:
             data-wait share of the step and samples/s with the configured DataLoader workers
  serve      p50/p95 of Policy.from_pretrained(...).predict_action (batch 1, 4 Euler steps) and through `geo3d serve`
  precompute scripts/gpu_precompute.py's run(tiny) (stage 1 on the GPU)
Without CUDA it runs `--tiny` (the default there): the same code paths at tiny size on the CPU, so the test
suite runs it (tests/test_gpu_check.py); tiny figures are not GPU figures and are labelled so.

    python scripts/gpu_check.py [--tiny | --full] [--out gpu_check.json] [--only steps,feed] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
import transformers
from transformers.utils import is_flash_attn_2_available

from geo3d.core.device import describe_cpu

SCRIPTS = Path(__file__).resolve().parent
SECTIONS = ("env", "matmul", "steps", "vision", "processor", "feed", "serve", "precompute")


def environment(device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers":
                           transformers.__version__, "python": platform.python_version(), "cpu": describe_cpu(),
                           "device": device, "flash_attention_2_available": bool(is_flash_attn_2_available())}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        out.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gib=total / 2**30,
                   context_and_others_gib=(total - free) / 2**30, cudnn=torch.backends.cudnn.version(),
                   capability=f"{props.major}.{props.minor}", driver=_driver())
    return out


def _driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                       text=True, timeout=30)
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def run_section(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    t0 = time.perf_counter()
    try:
        results[name] = {"ok": True, "result": fn()}
    except Exception as e:  # noqa: BLE001 - a check reports every section, it does not stop at the first
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
    results[name]["seconds"] = time.perf_counter() - t0
    print(f"[gpu-check] {name}: {'ok' if results[name]['ok'] else 'FAILED ' + results[name]['error'][:300]} "
          f"({results[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)


def precompute_section(tiny: bool) -> Any:
    """Stage 1 on the GPU: scripts/gpu_precompute.py's figures (its own JSON too)."""
    import gpu_precompute  # a sibling script, like gpu_check_e2e / gpu_check_steps

    return gpu_precompute.run(tiny)


def plan(args: argparse.Namespace, device: str, work: Path) -> list[tuple[str, Callable[[], Any]]]:
    import gpu_check_e2e as e2e
    import gpu_check_steps as st
    full = not args.tiny
    state: dict[str, Any] = {}
    wanted = ["env", *args.only.split(",")] if args.only else list(SECTIONS)  # env always: it names the machine

    def model_dir() -> Path:
        if "model" not in state:
            state["model"], state["model_kind"] = st.make_model_dir(work / "qwen", full, device)
        return state["model"]

    def peak() -> float:
        if "peak" not in state:
            state["peak"] = st.matmul_peak(device, full)
        return state["peak"]["tflops"]

    def steps() -> Any:
        batches, warm, n = ((4, 16), 2, 5) if full else ((2, 4), 1, 2)
        rows, _ = st.measure_compressor(model_dir(), full, "qformer", device, peak(), batches, warm, n)
        more, state["vision"] = st.measure_compressor(model_dir(), full, "none", device, peak(), batches, warm, n,
                                                      vision_batch=batches[-1] if "vision" in wanted else None)
        return {"model": state["model_kind"], "preset": "fork", "rows": rows + more}

    def vision() -> Any:
        if "vision" not in state:  # without the steps section: a policy of its own
            _, state["vision"] = st.measure_compressor(model_dir(), full, "none", device, peak(), (1,), 0, 1,
                                                       vision_batch=16 if full else 4)
        return state["vision"]

    def store() -> tuple[Path, list[str]]:
        if "store" not in state:
            path, data, sec = e2e.make_store(work, full)
            state["store"], state["store_s"] = (path, data), sec
        return state["store"]

    def feed() -> Any:
        path, data = store()
        return {**e2e.feed(work, path, data, model_dir(), full), "precompute_s": state["store_s"]}

    def serve() -> Any:
        path, data = store()
        run = e2e.serve_checkpoint(work, path, data, model_dir(), full)
        calls = 25 if full else 20
        return {"in_process": e2e.serve_latency(run, device, calls), "geo3d_serve": e2e.serve_remote(run, device, calls)}

    sections = {"env": lambda: environment(device), "matmul": lambda: {**st.matmul_peak(device, full)},
                "steps": steps, "vision": vision,
                "processor": lambda: e2e.image_processors(model_dir()), "feed": feed, "serve": serve,
                "precompute": lambda: precompute_section(args.tiny)}
    return [(name, sections[name]) for name in SECTIONS if name in wanted]


def render(results: dict[str, Any]) -> str:
    """One table: every figure with its settings (gpu_check.json has the rest)."""
    env = results["sections"].get("env", {}).get("result", {})
    where = env.get("gpu") or f"CPU {env.get('cpu')} (tiny mode: not GPU figures)"
    lines = [f"gpu-check {results['mode']} on {where}, driver {env.get('driver')}, torch {env.get('torch')} "
             f"CUDA {env.get('cuda')}, transformers {env.get('transformers')}, {results['date']}"]
    sec = {k: v.get("result") for k, v in results["sections"].items() if v.get("ok")}
    if "matmul" in sec:
        lines.append(f"bf16 matmul {sec['matmul']['size']}^3: {sec['matmul']['tflops']:.1f} TFLOP/s (MFU denominator)")
    if "steps" in sec:
        lines.append(f"train step ({sec['steps']['model']}, preset {sec['steps']['preset']}, bf16 autocast, "
                     "fp32 masters):")
        lines.append(f"  {'compressor':<9} {'batch':>5} {'ckpt':>5} {'ms/step':>8} {'samples/s':>9} {'MFU':>6} "
                     f"{'peak GiB':>8} {'est GiB':>8}")
        for r in sec["steps"]["rows"]:
            peak = f"{r['peak_allocated_gib']:.1f}" if r["peak_allocated_gib"] is not None else "n/a"
            lines.append(f"  {r['compressor']:<9} {r['batch']:>5} {str(r['grad_checkpointing']):>5} "
                         f"{r['ms_per_step']:>8.1f} {r['samples_per_s']:>9.2f} {100 * r['mfu']:>5.1f}% {peak:>8} "
                         f"{r['estimate_allocated_gib']:>8.1f}")
    for r in sec.get("vision") or []:
        lines.append(f"vision tower fwd, batch {r['batch']}, {r['attn_implementation']}: {r['ms_forward']:.1f} ms")
    if "processor" in sec:
        p = sec["processor"]
        lines.append(f"image processor: {p['picked']}; PIL vs torchvision max |diff| {p['pixel_max_abs_diff']}")
    if "feed" in sec:
        f = sec["feed"]
        lines.append(f"geo3d train feed: data wait {100 * f['data_wait_share']:.1f}% of the step, "
                     f"{f['samples_per_s']:.2f} samples/s ({f['num_workers']} workers, batch "
                     f"{f['per_device_batch_size']} x accum {f['grad_accum_steps']})")
    if "serve" in sec:
        for k, v in sec["serve"].items():
            lines.append(f"serve {k}: p50 {v['p50_ms']:.1f} ms, p95 {v['p95_ms']:.1f} ms over {v['calls']} calls")
    if "precompute" in sec:
        lines.append(f"precompute: {json.dumps(sec['precompute'], default=str)[:300]}")
    for name, v in results["sections"].items():
        if not v.get("ok"):
            lines.append(f"FAILED {name}: {v['error'][:300]}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", default=None, help="tiny models (the default without CUDA)")
    mode.add_argument("--full", dest="tiny", action="store_false", help="full size (the default with CUDA)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch (full mode: ~30 GB); default a temp dir")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.tiny is None:
        args.tiny = not cuda
    if not args.tiny and not cuda:
        print("error: --full needs a CUDA GPU (none visible); run on a GPU node, or --tiny for the CPU smoke run",
              file=sys.stderr)
        return 2
    unknown = set((args.only or "").split(",")) - set(SECTIONS) - {""}
    if unknown:
        print(f"error: unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    device = "cuda:0" if cuda else "cpu"  # --tiny on a GPU: a quick smoke run of the same paths there
    sys.path.insert(0, str(SCRIPTS))
    work = Path(tempfile.mkdtemp(prefix="geo3d-gpu-check-", dir=args.workdir))
    results: dict[str, Any] = {"mode": "tiny" if args.tiny else "full", "device": device, "sections": {},
                               "date": datetime.datetime.now().isoformat(timespec="seconds"),
                               "command": " ".join(sys.argv)}
    try:
        for name, fn in plan(args, device, work):
            run_section(results["sections"], name, fn)
            args.out.write_text(json.dumps(results, indent=2, default=str))  # a run cut short keeps what it measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    print(f"wrote {args.out}")
    return 0 if all(v["ok"] for v in results["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
