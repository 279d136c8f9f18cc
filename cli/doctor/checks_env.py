"""Compute environment: torch, CUDA, bf16, GPU memory vs the run's estimate, attention kernels, SLURM."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from transformers.utils import is_flash_attn_2_available

from geo3d.cli.doctor.findings import FAIL, NA, OK, WARN, Finding, missing


def check_torch(plan: Any) -> Iterator[Finding]:
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
    """Free memory of the smallest visible GPU vs the run's per-GPU peak estimate (train/memory.py, the table
    `train --dry-run` prints: weights, gradients, Adam, EMA, bf16 autocast copies, activations, the optimizer's
    scratch, the CUDA context). `free` is read with doctor's own CUDA context open, about the size of the run's,
    so it is compared with the estimate without the context."""
    table = plan.memory_table()
    row = table.row(1)
    a = table.assumptions
    what = (f"training needs ~{row.total_gb:.1f} GiB per GPU (estimate of train/memory.py at micro-batch "
            f"{a['micro_batch']}, AdamW {a['optimizer_implementation']}, incl. {row.context_gb:.2f} GiB CUDA context; "
            "not counted: fragmentation)")
    if not torch.cuda.is_available():
        yield missing("GPU memory", plan.needs_gpu, what + "; no GPU here to compare with", "run doctor on a GPU node")
        return
    count = torch.cuda.device_count()
    free = min(torch.cuda.mem_get_info(i)[0] for i in range(count)) / 2**30
    need = row.total_gb - row.context_gb
    fix = ("freeze the VLM (configs/train/frozen_vlm.yaml), model.vlm.gradient_checkpointing=true, a smaller "
           "train.per_device_batch_size, or a GPU with more memory")
    yield Finding("GPU memory", OK if free >= need else FAIL,
                  f"{what}; smallest of {count} GPU(s) has {free:.1f} GiB free", fix)


def check_attention(plan: Any) -> Iterator[Finding]:
    """SDPA, and whether transformers can use flash_attention_2 here (flash_attn installed and a CUDA GPU):
    the VLM's kernel is `model.vlm.attn_implementation` (sdpa by default; `make gpu-check` times the step)."""
    impl = plan.attn_implementation
    sdpa = hasattr(F, "scaled_dot_product_attention")
    yield Finding("SDPA", OK if sdpa else (FAIL if impl == "sdpa" else WARN),
                  "torch.nn.functional.scaled_dot_product_attention available" if sdpa else "missing (torch < 2.0)",
                  "install torch >= 2.0")
    need = impl == "flash_attention_2"
    if is_flash_attn_2_available():
        note = "in use" if need else f"available, not in use: model.vlm.attn_implementation={impl}"
        yield Finding("flash_attention_2", OK, f"flash_attn installed and usable on this GPU; {note}")
    else:
        why = ("flash_attn installed but transformers cannot use it here (no CUDA GPU, or an unsupported "
               "version)" if importlib.util.find_spec("flash_attn") is not None else "flash_attn not installed")
        yield missing("flash_attention_2", need, f"{why} (model.vlm.attn_implementation={impl})",
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
