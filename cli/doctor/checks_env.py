"""Compute environment: torch, CUDA, bf16, GPU memory vs the run's estimate, attention kernels, SLURM."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, Iterator

from geo3d.cli.doctor.findings import FAIL, NA, OK, WARN, Finding, missing
from geo3d.core.storage_faults import human_bytes


def check_torch(plan: Any) -> Iterator[Finding]:
    import torch

    yield Finding("torch", OK, f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none, CPU wheel'})")
    if not torch.cuda.is_available():
        yield missing("CUDA", plan.needs_gpu, "no CUDA device visible" + (" (the run needs a GPU)" if plan.needs_gpu
                      else "; this run can use the CPU"), "run on a GPU node (srun --gres=gpu:1 geo3d doctor ...) "
                      "with a CUDA build of torch (make install TORCH=...)")
        yield missing("bf16", plan.needs_gpu and plan.wants_bf16, "no GPU to test bf16 on",
                      "a GPU with bf16 (Ampere or newer), or train.mixed_precision=fp16")
        return
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    yield Finding("CUDA", OK, f"{len(names)} device(s): {', '.join(names)}")
    bf16 = torch.cuda.is_bf16_supported()
    yield Finding("bf16", OK if bf16 else (FAIL if plan.wants_bf16 else WARN),
                  "supported" if bf16 else "not supported by this GPU",
                  "use a GPU with bf16 (Ampere or newer) or set train.mixed_precision=fp16")


def check_gpu_memory(plan: Any) -> Iterator[Finding]:
    """Free memory of the smallest visible GPU vs the run's per-GPU estimate (train/memory.py, the table that
    `train --dry-run` prints: weights, gradients, Adam state by precision, activations at the configured batch)."""
    import torch

    table = plan.memory_table()
    ddp = next(r for r in table.rows if r.strategy == "ddp" and r.gpus == 1)
    zero2 = {r.gpus: r.total_gb for r in table.rows if r.strategy == "zero2"}
    what = (f"training needs ~{ddp.total_gb:.1f} GiB per GPU under DDP (ZeRO-2: "
            + ", ".join(f"{v:.1f} GiB on {n}" for n, v in sorted(zero2.items()))
            + "; estimate of train/memory.py, no CUDA context or fragmentation)")
    if not torch.cuda.is_available():
        yield missing("GPU memory", plan.needs_gpu, what + "; no GPU here to compare with", "run doctor on a GPU node")
        return
    count = torch.cuda.device_count()
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(count)) / 2**30
    fits_zero2 = [n for n, v in sorted(zero2.items()) if v <= free]
    fix = (f"DeepSpeed ZeRO-2 on {fits_zero2[0]} GPUs fits (configs/accelerate/deepspeed_zero2.yaml)" if fits_zero2
           else "freeze the VLM (configs/train/frozen_vlm.yaml), lower train.per_device_batch_size, or a larger GPU")
    yield Finding("GPU memory", OK if free >= ddp.total_gb else FAIL,
                  f"{what}; smallest of {count} GPU(s) has {free:.1f} GiB free", fix)


def check_attention(plan: Any) -> Iterator[Finding]:
    import importlib.util

    import torch.nn.functional as F

    impl = plan.attn_implementation
    sdpa = hasattr(F, "scaled_dot_product_attention")
    yield Finding("SDPA", OK if sdpa else (FAIL if impl == "sdpa" else WARN),
                  "torch.nn.functional.scaled_dot_product_attention available" if sdpa else "missing (torch < 2.0)",
                  "install torch >= 2.0")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    need = impl == "flash_attention_2"
    if has_flash:
        yield Finding("flash-attn", OK, "flash_attn installed")
    else:
        yield missing("flash-attn", need, f"flash_attn not installed (model.vlm.attn_implementation={impl})",
                      "pip install flash-attn on the GPU node, or model.vlm.attn_implementation=sdpa")


def check_slurm(plan: Any) -> Iterator[Finding]:
    """`sinfo` reachable, and the site config's partition (and account, via sacctmgr when available)."""
    s = plan.slurm_cfg
    if shutil.which("sinfo") is None:
        yield missing("SLURM", plan.needs_slurm, "sinfo not on PATH", "run doctor on a login node of the cluster")
        return
    r = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        yield missing("SLURM", plan.needs_slurm, f"sinfo failed: {' '.join(r.stderr.split())[:200]}",
                      "check the controller (scontrol ping) / your network")
        return
    parts = {line.split()[0].rstrip("*"): line.split()[1] for line in r.stdout.splitlines() if line.split()}
    yield Finding("SLURM", OK, f"sinfo reachable: partitions {sorted(parts)}")
    if s.partition is None:
        yield Finding("SLURM partition", OK, "slurm.partition not set: the cluster's default partition")
    elif s.partition not in parts:
        yield Finding("SLURM partition", FAIL, f"slurm.partition={s.partition} is not a partition here",
                      f"set slurm.partition to one of {sorted(parts)} in your site.yaml")
    else:
        state = parts[s.partition]
        yield Finding("SLURM partition", OK if state == "up" else WARN, f"{s.partition} is {state}",
                      "ask the admins, or choose another partition")
    yield from _check_account(s.account)


def _check_account(account: str | None) -> Iterator[Finding]:
    if account is None:
        yield Finding("SLURM account", OK, "slurm.account not set: your default account")
        return
    if shutil.which("sacctmgr") is None:
        yield Finding("SLURM account", NA, f"slurm.account={account}: sacctmgr not available to check it")
        return
    r = subprocess.run(["sacctmgr", "-nP", "show", "assoc", "where", f"account={account}", "format=account"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        yield Finding("SLURM account", NA, f"slurm.account={account}: sacctmgr failed ({r.stderr.strip()[:120]})")
    elif account not in r.stdout.split():
        yield Finding("SLURM account", FAIL, f"slurm.account={account} has no association here",
                      "use an account `sacctmgr show assoc user=$USER` lists")
    else:
        yield Finding("SLURM account", OK, f"{account} exists")
