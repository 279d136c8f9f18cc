"""Layerwise DiT for the flow-matching head (GR00T-style blocks: AdaLN, attention, FFN).

Every block cross-attends to its own context = cat(VL hidden state of layer i, geometry tokens of layer i).
The head's own tokens (state, future, noisy actions) are appended to the keys/values ("joint" attention, the
fork's `use_concat_cross_context`): with cross-attention only, tokens never see each other and the state token
could not reach the action tokens. Keys are split into the fixed context part, whose K/V are computed once
and broadcast over the R noise repeats (training) or reused across Euler steps (inference), and the self part.
Attention is explicit (no fused kernel) so each layer can report the probability mass on geometry keys; the
queries are only 1+F+T tokens, so this is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


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


class JointAttention(nn.Module):
    """Queries = head tokens; keys = [context (VL ‖ geometry), head tokens]. Returns output and geometry mass."""

    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(hidden, inner)
        self.to_k = nn.Linear(hidden, inner)
        self.to_v = nn.Linear(hidden, inner)
        self.to_out = nn.Linear(inner, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, h*d] -> [B, h, L, d]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def context_kv(self, context: torch.Tensor, mask: torch.Tensor) -> ContextKV:
        return ContextKV(self._split(self.to_k(context)), self._split(self.to_v(context)), mask.bool())

    def forward(self, x: torch.Tensor, ctx: ContextKV, self_mask: torch.Tensor,
                geom_slice: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B*R, L, D] (rows b-major over R repeats); ctx holds B rows, broadcast over R without a copy."""
        b = ctx.k.shape[0]
        r = x.shape[0] // b
        q, k, v = (self._split(f(x)) for f in (self.to_q, self.to_k, self.to_v))  # [B*R, h, L, d]
        q, k, v = (t.unflatten(0, (b, r)) for t in (q, k, v))  # [B, R, h, L, d]
        scale = self.head_dim ** -0.5
        s_ctx = torch.matmul(q, ctx.k[:, None].transpose(-1, -2)) * scale  # [B, R, h, L, S]
        s_self = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, R, h, L, L]
        keep = torch.cat([ctx.mask[:, None, :].expand(b, r, -1), self_mask.unflatten(0, (b, r))], dim=-1)
        scores = torch.cat([s_ctx, s_self], dim=-1).float()
        scores = scores.masked_fill(~keep[:, :, None, None, :], torch.finfo(scores.dtype).min)
        probs = scores.softmax(dim=-1).to(q.dtype)
        n_ctx = ctx.k.shape[2]
        out = torch.matmul(probs[..., :n_ctx], ctx.v[:, None]) + torch.matmul(probs[..., n_ctx:], v)
        with torch.no_grad():
            mass = probs[..., geom_slice].float().sum(dim=-1).mean()
        out = out.flatten(0, 1).transpose(1, 2).flatten(-2)  # [B*R, L, h*d]
        return self.dropout(self.to_out(out)), mass


class FeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, mult * hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(mult * hidden, hidden), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiTBlock(nn.Module):
    """AdaLN(temb) -> joint attention -> residual -> LayerNorm -> GELU-tanh FFN x4 -> residual."""

    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.norm1 = AdaLayerNorm(hidden)
        self.attn = JointAttention(hidden, heads, head_dim, dropout)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-5, elementwise_affine=False)
        self.ff = FeedForward(hidden, dropout)

    def forward(self, x, temb, ctx: ContextKV, self_mask, geom_slice) -> tuple[torch.Tensor, torch.Tensor]:
        attn_out, mass = self.attn(self.norm1(x, temb), ctx, self_mask, geom_slice)
        x = x + attn_out
        return x + self.ff(self.norm2(x)), mass


class DiT(nn.Module):
    """N blocks; block i reads context i. Output: final AdaLN + projection (GR00T's proj_out_1/2)."""

    def __init__(self, num_layers: int, hidden: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.timestep_encoder = TimestepEncoder(hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, head_dim, dropout) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(hidden, 2 * hidden)
        self.proj_out_2 = nn.Linear(hidden, hidden)

    def context_kv(self, contexts: list[torch.Tensor], mask: torch.Tensor) -> list[ContextKV]:
        """Project each layer's context once; reused for every repeat and every denoising step."""
        return [blk.attn.context_kv(c, mask) for blk, c in zip(self.blocks, contexts, strict=True)]

    def forward(self, x: torch.Tensor, t_bucket: torch.Tensor, ctx: list[ContextKV], self_mask: torch.Tensor,
                geom_slice: slice) -> tuple[torch.Tensor, torch.Tensor]:
        temb = self.timestep_encoder(t_bucket)
        masses = []
        for blk, c in zip(self.blocks, ctx, strict=True):
            x, mass = blk(x, temb, c, self_mask, geom_slice)
            masses.append(mass)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=-1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x), torch.stack(masses)
