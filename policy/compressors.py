"""Geometry compressors: cached MapAnything tokens [B, G=V*T, D] -> one [B, K, H] token set per DiT layer.

The variable under test in the ablation. Every compressor returns a list of N tensors (one per DiT block) so
the head has a single code path; variants whose tokens are shared across layers return the same tensor N
times (no copy). `none` (the baseline without 3D) has no module at all: the policy holds `compressor=None`.
"""

from __future__ import annotations

import torch
from torch import nn

from geo3d.core.errors import Geo3dError
from geo3d.policy.configuration_policy import COMPRESSOR_TYPES, PolicyConfig


def group_mean(x: torch.Tensor, groups: int, views: int = 1) -> torch.Tensor:
    """Mean of `groups` contiguous groups along dim 1 ([B,G,C] -> [B,groups,C]); leftovers join the last group.

    views=1 is the fork's plain G//K grouping. views=V treats the G tokens as V cameras one after the other and
    gives each camera groups/V groups of its own, so no group straddles two cameras (the plain grouping at
    G=2*196, K=16 makes group 8 of 4 agentview and 20 wrist tokens)."""
    if views > 1:
        return torch.cat([group_mean(v, groups // views) for v in x.chunk(views, dim=1)], dim=1)
    size = x.shape[1] // groups
    head = x[:, : size * (groups - 1)].reshape(x.shape[0], groups - 1, size, x.shape[2]).mean(dim=2)
    tail = x[:, size * (groups - 1):].mean(dim=1, keepdim=True)
    return torch.cat([head, tail], dim=1)


class GeometryCompressor(nn.Module):
    """Base: remembers N and casts the input to the module's dtype (bf16 cache -> fp32 weights).

    Subclasses define `forward(geometry [B,G,D]) -> list of N tensors [B,K,H]`."""

    num_tokens: int

    def __init__(self, num_layers: int):
        super().__init__()
        self.num_layers = num_layers

    def _cast(self, geometry: torch.Tensor) -> torch.Tensor:
        return geometry.to(next(self.parameters()).dtype)


class MeanCompressor(GeometryCompressor):
    """The old fusion the research set out to beat: one globally averaged token, Linear D->H, every layer."""

    def __init__(self, geom_dim: int, hidden: int, num_layers: int):
        super().__init__(num_layers)
        self.num_tokens = 1
        self.proj = nn.Linear(geom_dim, hidden)

    def forward(self, geometry: torch.Tensor) -> list[torch.Tensor]:
        token = self.proj(self._cast(geometry).mean(dim=1, keepdim=True))
        return [token] * self.num_layers


class PoolCompressor(GeometryCompressor):
    """Static prefix: Linear D->H, then group-mean into K tokens; the same K tokens at every layer.

    Pooling runs before the projection: a Linear commutes with a mean, so the result equals project-then-pool
    while the matmul runs on K rows instead of G.
    """

    def __init__(self, geom_dim: int, hidden: int, num_tokens: int, num_layers: int, views: int):
        super().__init__(num_layers)
        self.num_tokens, self.views = num_tokens, views
        self.proj = nn.Linear(geom_dim, hidden)

    def forward(self, geometry: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.proj(group_mean(self._cast(geometry), self.num_tokens, self.views))
        return [tokens] * self.num_layers


class PerLayerCompressor(GeometryCompressor):
    """N separate Linear D->H + the same group pooling: each DiT layer gets its own projection of the geometry."""

    def __init__(self, geom_dim: int, hidden: int, num_tokens: int, num_layers: int, views: int):
        super().__init__(num_layers)
        self.num_tokens, self.views = num_tokens, views
        self.projs = nn.ModuleList(nn.Linear(geom_dim, hidden) for _ in range(num_layers))

    def forward(self, geometry: torch.Tensor) -> list[torch.Tensor]:
        pooled = group_mean(self._cast(geometry), self.num_tokens, self.views)  # pool once, project per layer (exact)
        return [proj(pooled) for proj in self.projs]


class QFormerCompressor(GeometryCompressor):
    """K learned queries cross-attend (8 heads) over all G projected tokens: input-adaptive compression."""

    def __init__(self, geom_dim: int, hidden: int, num_tokens: int, heads: int, num_layers: int):
        super().__init__(num_layers)
        self.num_tokens = num_tokens
        self.proj = nn.Linear(geom_dim, hidden)
        self.queries = nn.Parameter(torch.randn(1, num_tokens, hidden) * 0.02)
        self.query_norm = nn.LayerNorm(hidden)
        self.kv_norm = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)

    def forward(self, geometry: torch.Tensor) -> list[torch.Tensor]:
        kv = self.kv_norm(self.proj(self._cast(geometry)))
        queries = self.query_norm(self.queries).expand(kv.shape[0], -1, -1)
        tokens, _ = self.attn(queries, kv, kv, need_weights=False)
        return [tokens] * self.num_layers


def build_compressor(cfg: PolicyConfig, hidden: int) -> GeometryCompressor | None:
    """The compressor named by `model.compressor.type`, emitting width `hidden` (= the DiT/VLM hidden size)."""
    c, d, n = cfg.compressor, cfg.geometry.dim, cfg.action_head.num_layers
    views = cfg.geometry.views if c.grouping == "per_view" else 1  # pool/per_layer groups (group_mean)
    if c.type == "none":
        return None
    if c.type == "mean":
        return MeanCompressor(d, hidden, n)
    if c.type == "pool":
        return PoolCompressor(d, hidden, c.num_tokens, n, views)
    if c.type == "per_layer":
        return PerLayerCompressor(d, hidden, c.num_tokens, n, views)
    if c.type == "qformer":
        return QFormerCompressor(d, hidden, c.num_tokens, c.heads, n)
    raise Geo3dError(f"unknown model.compressor.type {c.type!r}; valid: {', '.join(COMPRESSOR_TYPES)}")
