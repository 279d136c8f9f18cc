"""Training-step benchmark: the demo's per-step time split, measured side by side in one run, on this machine.

The demo's setup (configs/train/demo.yaml: tiny Qwen2.5-VL, qformer, batch 4, num_workers 0) on the shipped
demo_data with a matching store of random tokens. Per step, interleaved over --steps steps (medians):
  data wait          next(loader): video decode + resize + store read + processor (the demo loads in-process)
  VLM fwd/bwd        the VLM's forward and a backward of its hidden states alone
  compressor + head  the full policy's fwd/bwd minus the VLM's (the same step, measured right after)
  optimizer          clip + AdamW step + zero_grad
Three variants run on the same batches from the same initial weights, in rotating order: fp32 with the VLM's
patch embedding as transformers' Conv3d (the step before the cut), fp32 with it as a matmul
(`model.vlm.patch_embed=matmul`, the default), and bf16 CPU autocast; trainable parameters fp32 as in training
(policy/precision.py). Which precision `auto` picks here is printed. `--device auto` runs on CUDA when there is
one (CUDA autocast, timings synchronised with the GPU, the batch copied to it), else on the CPU.
The full-size GPU step (Qwen2.5-VL-3B, MFU, peak memory) is `make gpu-check` (scripts/gpu_check.py).

    python scripts/bench_train_step.py [--steps 12] [--compressor qformer] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from geo3d.core.device import (
    describe_cpu,  # noqa: E402
    resolve_device,
)
from geo3d.data.norm_stats import compute_norm_stats
from geo3d.data.suites import DEMO_DATA_ROOT  # noqa: E402
from geo3d.policy.modeling_policy import build_policy
from geo3d.policy.precision import accelerate_precision, keep_trainable_fp32
from geo3d.policy.processor_policy import PolicyProcessor
from geo3d.train import preflight
from geo3d.train.dataset import GeoTrainDataset, TrainCollator, move_batch
from geo3d.train.optim import build_optimizer
from geo3d.train.run_config import compose_train_config

from train_fixtures import make_matching_store  # noqa: E402


def _parts(compressor: str, store: Path, patch_embed: str, device: str):
    cfg = compose_train_config([Path("train/demo")], [f"model.vlm.patch_embed={patch_embed}"],
                               {"compressor": compressor, "suite": "demo", "data_root": str(DEMO_DATA_ROOT),
                                "store": str(store)})
    mixture = preflight.open_mixture(cfg)
    torch.manual_seed(0)
    policy = build_policy(cfg.model, device=device)
    keep_trainable_fp32(policy, "bf16")
    optimizer = build_optimizer(policy.module_groups(), cfg.train)
    processor = PolicyProcessor.for_training(policy.vlm.model_dir, cfg.model, compute_norm_stats(mixture))
    dataset = GeoTrainDataset(mixture, str(store))
    loader = torch.utils.data.DataLoader(dataset, batch_size=int(cfg.train.per_device_batch_size), shuffle=True,
                                         num_workers=0, collate_fn=TrainCollator(processor),
                                         generator=torch.Generator().manual_seed(0))
    return cfg, policy, optimizer, loader


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def step_split(policy, optimizer, batch, precision: str, max_grad_norm: float, device: str) -> dict[str, float]:
    """One measured step: VLM alone fwd/bwd, then the full policy fwd/bwd, then the optimizer."""
    kind = torch.device(device).type
    ctx = (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    n = policy.cfg.action_head.num_layers

    def vlm_only() -> None:
        with ctx():
            hidden = policy.vlm(batch, n)
        torch.stack([h.float().mean() for h in hidden]).sum().backward()

    def full() -> None:
        with ctx():
            loss = policy(batch).loss
        loss.backward()

    def opt() -> None:
        torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    vlm = _timed(vlm_only, device)
    optimizer.zero_grad(set_to_none=True)
    total = _timed(full, device)
    return {"VLM fwd/bwd": vlm, "compressor + head": max(0.0, total - vlm), "optimizer": _timed(opt, device)}


# (label, model.vlm.patch_embed, compute precision): the first row is the step before this benchmark's cut
VARIANTS = [("fp32, patch embed conv3d (before)", "conv3d", "no"), ("fp32, patch embed matmul", "matmul", "no"),
            ("bf16, patch embed matmul", "matmul", "bf16")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--compressor", default="qformer")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    args = ap.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as d:
        from geo3d.data.mixture import LiberoMixture
        mix = LiberoMixture("demo", DEMO_DATA_ROOT)
        store = make_matching_store(mix, Path(d) / "store.zarr", 2, 196, 128, shard_frames=64)
        cfg, conv_policy, conv_opt, loader = _parts(args.compressor, store, "conv3d", device)
        _, policy, optimizer, _ = _parts(args.compressor, store, "matmul", device)
        policy.load_state_dict(conv_policy.state_dict())  # the same initial weights (and keys) for every variant
        models = {"conv3d": (conv_policy, conv_opt), "matmul": (policy, optimizer)}
        it = iter(loader)
        next(it)  # first batch opens files and warms the decoder
        rows: dict[str, dict[str, list[float]]] = {label: {} for label, _, _ in VARIANTS}
        for step in range(args.steps):
            t0 = time.perf_counter()
            batch = move_batch(next(it), torch.device(device))
            _sync(device)
            data = time.perf_counter() - t0
            order = VARIANTS[step % len(VARIANTS):] + VARIANTS[:step % len(VARIANTS)]  # none always goes first
            for label, patch_embed, precision in order:  # the same batch for every variant, back to back
                split = {"data wait": data, **step_split(*models[patch_embed], batch, precision,
                                                         float(cfg.train.max_grad_norm), device)}
                for k, v in split.items():
                    rows[label].setdefault(k, []).append(v)
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else describe_cpu()
    print(f"device {device}: {where}; torch threads {torch.get_num_threads()}; train.mixed_precision auto -> "
          f"{accelerate_precision('auto', device)}")
    print(f"demo step ({args.compressor}, batch {cfg.train.per_device_batch_size}), median of {args.steps} steps:")
    totals = {}
    for label, split in rows.items():
        med = {k: statistics.median(v) for k, v in split.items()}
        totals[label] = total = sum(med.values())
        parts = ", ".join(f"{k} {v * 1e3:.0f} ms ({v / total:.0%})" for k, v in med.items())
        print(f"  {label}: {total * 1e3:.0f} ms/step = {parts}")
    vlm = {label: statistics.median(rows[label]["VLM fwd/bwd"]) for label in rows}
    before, after, bf16 = (label for label, _, _ in VARIANTS)
    print(f"VLM fwd/bwd, patch embed matmul vs conv3d (fp32): {vlm[after] / vlm[before]:.2f}x; "
          f"step {totals[after] / totals[before]:.2f}x")
    print(f"bf16 autocast step time vs fp32: {totals[bf16] / totals[after]:.2f}x")


if __name__ == "__main__":
    main()
