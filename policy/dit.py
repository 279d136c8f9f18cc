"""Layerwise DiT for the flow-matching head (GR00T-style blocks: AdaLN, attention, FFN).

Every block attends to its own context = cat(VL hidden state of layer i, geometry tokens of layer i). Two
designs (`model.action_head.attention`, train/README.md "Design presets"):
- "cross" (the fork, GR00T's cross-attention blocks): queries = the head's tokens, keys = the context only; the
  state, future and action tokens never see each other.
- "cross+self" (geo3d): the head's tokens are appended to the keys/values, so the state token reaches the
  action tokens and the action tokens see each other (the fork's `use_concat_cross_context`).
The context K/V are computed once per layer and shared by the R noise repeats (training) and the Euler steps
(inference). Attention runs in torch's fused `scaled_dot_product_attention`; the probability mass on the
geometry keys (a diagnostic) is computed explicitly, without gradients, only when the caller asks for it
(the trainer does on logging steps). `gradient_checkpointing` recomputes each block in the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[...] integer/float timesteps -> [..., dim] cos|sin features (dim even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEncoder(nn.Module):
    """Bucketed t -> sinusoid(256) -> MLP(256->D->D); conditions every block through AdaLN."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, t_bucket: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t_bucket, self.freq_dim).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, scaled and shifted by a projection of the timestep embedding."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, 2 * hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-5, elementwise_affine=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


@dataclass
class ContextKV:
    """One layer's context keys/values [B, heads, S, head_dim] and key mask [B, S] (True = attend)."""

    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor


class Attention(nn.Module):
    """Queries = head tokens; keys = the context (+ the head tokens when `joint`). Returns output, geometry mass."""

    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float, joint: bool):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim, self.joint = heads, head_dim, joint
        self.to_q = nn.Linear(hidden, inner)
        self.to_k = nn.Linear(hidden, inner)
        self.to_v = nn.Linear(hidden, inner)
        self.to_out = nn.Linear(inner, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, h*d] -> [B, h, L, d]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def context_kv(self, context: torch.Tensor, mask: torch.Tensor) -> ContextKV:
        return ContextKV(self._split(self.to_k(context)), self._split(self.to_v(context)), mask.bool())

    def forward(self, x: torch.Tensor, ctx: ContextKV, self_mask: torch.Tensor, geom_slice: slice,
                want_mass: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B*R, L, D] (rows b-major over R repeats); ctx holds B rows, used for all R without a copy."""
        b, (n, length, _) = ctx.k.shape[0], x.shape
        q = self._split(self.to_q(x))  # [B*R, h, L, d]
        if self.joint:  # keys = [context ‖ own tokens], per repeat: [B*R, h, S+L, d]
            k, v = (torch.cat([c.repeat_interleave(n // b, 0), self._split(f(x))], dim=2)
                    for c, f in ((ctx.k, self.to_k), (ctx.v, self.to_v)))
            keep = torch.cat([ctx.mask.repeat_interleave(n // b, 0), self_mask], dim=1)
        else:  # fold the R repeats into the query length: [B, h, R*L, d] against the B context rows
            q, (k, v), keep = q.unflatten(0, (b, -1)).transpose(1, 2).flatten(2, 3), (ctx.k, ctx.v), ctx.mask
        keep = keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        mass = self._geometry_mass(q, k, keep, geom_slice) if want_mass else None
        if not self.joint:
            out = out.unflatten(2, (-1, length)).transpose(1, 2).flatten(0, 1)  # back to [B*R, h, L, d]
        return self.dropout(self.to_out(out.transpose(1, 2).flatten(-2))), mass

    @torch.no_grad()
    def _geometry_mass(self, q, k, keep, geom_slice: slice) -> torch.Tensor:
        """Mean (over rows, heads, queries) attention probability summed over the geometry keys."""
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * self.head_dim ** -0.5
        probs = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(dim=-1)
        return probs[..., geom_slice].sum(dim=-1).mean()


class FeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, mult * hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(mult * hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiTBlock(nn.Module):
    """AdaLN(temb) -> attention -> residual -> LayerNorm -> GELU-tanh FFN x4 -> residual (GR00T's block)."""

    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float, joint: bool):
        super().__init__()
        self.norm1 = AdaLayerNorm(hidden)
        self.attn = Attention(hidden, heads, head_dim, dropout, joint)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-5, elementwise_affine=False)
        self.ff = FeedForward(hidden, dropout)

    def forward(self, x, temb, ctx: ContextKV, self_mask, geom_slice, want_mass: bool):
        attn_out, mass = self.attn(self.norm1(x, temb), ctx, self_mask, geom_slice, want_mass)
        x = x + attn_out
        return x + self.ff(self.norm2(x)), mass


class DiT(nn.Module):
    """N blocks; block i reads context i. Output: final AdaLN + projection (GR00T's proj_out_1/2)."""

    def __init__(self, num_layers: int, hidden: int, heads: int, head_dim: int, dropout: float, joint: bool,
                 output_dim: int, gradient_checkpointing: bool = False):
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        self.timestep_encoder = TimestepEncoder(hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, head_dim, dropout, joint) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(hidden, 2 * hidden)
        self.proj_out_2 = nn.Linear(hidden, output_dim)

    def context_kv(self, contexts: list[torch.Tensor], mask: torch.Tensor) -> list[ContextKV]:
        """Project each layer's context once; reused for every repeat and every denoising step."""
        return [blk.attn.context_kv(c, mask) for blk, c in zip(self.blocks, contexts, strict=True)]

    def forward(self, x: torch.Tensor, t_bucket: torch.Tensor, ctx: list[ContextKV], self_mask: torch.Tensor,
                geom_slice: slice, want_mass: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output [B*R, L, output_dim] and, when `want_mass`, the geometry attention mass per block [N]."""
        temb = self.timestep_encoder(t_bucket)
        masses = []
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for blk, c in zip(self.blocks, ctx, strict=True):
            args = (x, temb, c, self_mask, geom_slice, want_mass)
            x, mass = checkpoint(blk, *args, use_reentrant=False) if recompute else blk(*args)
            masses.append(mass)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=-1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x), torch.stack(masses) if want_mass else None
