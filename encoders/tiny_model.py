"""A small random-init network with MapAnything's data path, sized for a CPU.

patch-14 ViT per view (cls token = per-view register) -> fusion LayerNorm -> alternating per-view / global
attention over [patches, register] per view plus one global scale token, view 0 tagged as reference ->
final LayerNorm -> per-view feature grids [B, D, h, w]. Deterministic: weights come from a seeded generator.
Two taps, like the real model's: `encoder` (after the fusion norm, per view) and `info_sharing` (final).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from geo3d.core.errors import Geo3dError
from geo3d.core.taps import ENCODER, INFO_SHARING
from geo3d.encoders.views import PATCH_SIZE

TAPS = (INFO_SHARING, ENCODER)


class Block(nn.Module):
    """Pre-norm transformer block (attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Per-view image encoder: patch embedding, cls token, interpolated position embedding, blocks."""

    def __init__(self, width: int, depth: int, heads: int, base_grid: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(3, width, PATCH_SIZE, PATCH_SIZE)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 1 + base_grid * base_grid, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.base_grid = base_grid

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """DINOv2-style: bicubic-interpolate the patch position table when the grid differs from the base."""
        cls_pos, grid_pos = self.pos[:, :1], self.pos[:, 1:]
        if (h, w) != (self.base_grid, self.base_grid):
            g = grid_pos.reshape(1, self.base_grid, self.base_grid, -1).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=(h, w), mode="bicubic", align_corners=False)
            grid_pos = g.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([cls_pos, grid_pos], dim=1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [N,3,H,W] -> (patch features [N,width,h,w], cls register [N,width])."""
        x = self.patch(img)
        n, c, h, w = x.shape
        x = torch.cat([self.cls.expand(n, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        x = x + self._pos_embed(h, w)
        for blk in self.blocks:
            x = blk(x)
        return x[:, 1:].transpose(1, 2).reshape(n, c, h, w), x[:, 0]


class TinyInfoSharing(nn.Module):
    """Alternating attention: odd layers attend within a view, even layers across all views + scale token."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.proj_embed = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ref_view = nn.Parameter(torch.zeros(dim))  # marks view 0 as the reference view
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, feats: list[torch.Tensor], registers: list[torch.Tensor],
                scale_token: torch.Tensor) -> list[torch.Tensor]:
        """feats V x [B,C,h,w], registers V x [B,C], scale_token [B,C] -> V x [B,dim,h,w]."""
        v_count = len(feats)
        b, _, h, w = feats[0].shape
        per_view = [torch.cat([f.flatten(2).transpose(1, 2), r[:, None]], dim=1) for f, r in zip(feats, registers)]
        x = self.proj_embed(torch.stack(per_view, dim=1))  # [B,V,n,dim], n = h*w + 1
        x = torch.cat([x[:, :1] + self.ref_view, x[:, 1:]], dim=1)
        s = self.proj_embed(scale_token)[:, None]  # [B,1,dim]
        n, d = x.shape[2], x.shape[3]
        for i, blk in enumerate(self.blocks):
            if i % 2 == 0:  # global: every token of every view plus the scale token
                y = blk(torch.cat([x.reshape(b, v_count * n, d), s], dim=1))
                x, s = y[:, :-1].reshape(b, v_count, n, d), y[:, -1:]
            else:  # per view: fold views into the batch
                x = blk(x.reshape(b * v_count, n, d)).reshape(b, v_count, n, d)
        x = self.norm(x[:, :, : h * w])
        return [x[:, v].transpose(1, 2).reshape(b, d, h, w) for v in range(v_count)]


class TinyGeometryModel(nn.Module):
    """encoder -> fusion norm -> info sharing, the MapAnything structure up to the per-view features."""

    def __init__(self, width: int, depth: int, heads: int, out_dim: int, seed: int,
                 init_device: torch.device | str | None = None):
        """`init_device` None: seeded on the CPU (same seed -> same bytes anywhere). A device: the parameters are
        allocated there without torch's default init and drawn from that device's generator (a 1.1B stand-in in
        well under a second on a GPU, instead of ~30 s of CPU init + hashing); its bytes are not reproducible
        across device types, so such weights are never hashed (geo3d.encoders.tiny, init=device_random)."""
        super().__init__()
        if width % heads or out_dim % heads:
            raise Geo3dError(f"encoder.tiny: width {width} and out_dim {out_dim} must be multiples of heads {heads}")
        with torch.device("meta") if init_device is not None else contextlib.nullcontext():
            self.encoder = TinyViT(width, depth, heads)
            self.fusion_norm_layer = nn.LayerNorm(width, eps=1e-6)
            self.scale_token = nn.Parameter(torch.zeros(width))
            self.info_sharing = TinyInfoSharing(width, out_dim, depth, heads)
        if init_device is not None:
            self.to_empty(device=init_device)
        self._seeded_init(seed, torch.device(init_device or "cpu"))

    @torch.no_grad()
    def _seeded_init(self, seed: int, device: torch.device) -> None:
        """Every parameter from one seeded generator in registration order: same seed -> same bytes. On the meta
        device (shapes only: FLOP counts, parameter counts) there is nothing to fill."""
        if device.type == "meta":
            return
        gen = torch.Generator(device=device).manual_seed(seed)
        for name, p in self.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                std = 0.02 if p.dim() <= 1 or name.startswith(("encoder.pos", "encoder.cls")) else 1 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=gen, device=device) * std)

    def forward(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """V normalized images [B,3,H,W] -> V per-view feature grids [B,out_dim,h,w] (the final tap)."""
        return self.features(views, (INFO_SHARING,))[INFO_SHARING]

    def features(self, views: list[torch.Tensor], taps: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
        """Per tap, V per-view grids from one pass; info_sharing runs only when it is asked for."""
        v_count = len(views)
        feats, regs = self.encoder(torch.cat(views, dim=0))  # view-major, like MapAnything
        with torch.autocast(feats.device.type, enabled=False):  # fusion norm in fp32, as MapAnything does
            feats = self.fusion_norm_layer(feats.float().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        out: dict[str, list[torch.Tensor]] = {}
        if ENCODER in taps:
            out[ENCODER] = list(feats.chunk(v_count))
        if INFO_SHARING in taps:
            scale = self.scale_token[None].expand(views[0].shape[0], -1)
            out[INFO_SHARING] = self.info_sharing(list(feats.chunk(v_count)), list(regs.chunk(v_count)), scale)
        return out
