"""Flow-matching action head: the DiT over [state token, F future tokens, T noisy action tokens].

Flow matching (GR00T / pi0 convention): x_t = (1-t)*noise + t*action, target velocity = action - noise,
t = (s_max - s)/s_max with s ~ Beta(1.5, 1) (more samples near t=0, the noisy end). Each batch is repeated R
times with fresh noise and t; the contexts are not recomputed for the repeats (see dit.Attention).
Inference integrates dx/dt from t=0 (noise) to t=1 in a few Euler steps with cached context K/V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta

from geo3d.policy.configuration_policy import ActionHeadConfig
from geo3d.policy.dit import DiT, sinusoidal_embedding


class MLP(nn.Module):
    """Two-layer ReLU MLP (state encoder, action decoder)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.layer1 = nn.Linear(d_in, d_hidden)
        self.layer2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.relu(self.layer1(x)))


class ActionEncoder(nn.Module):
    """W1(a) ‖ sinusoid(t) -> W2 -> swish -> W3: embeds noisy actions together with their flow time."""

    def __init__(self, action_dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.W1 = nn.Linear(action_dim, hidden)
        self.W2 = nn.Linear(2 * hidden, hidden)
        self.W3 = nn.Linear(hidden, hidden)

    def forward(self, actions: torch.Tensor, t_bucket: torch.Tensor) -> torch.Tensor:
        a = self.W1(actions)
        tau = sinusoidal_embedding(t_bucket, self.hidden).to(a.dtype)[:, None].expand_as(a)
        return self.W3(F.silu(self.W2(torch.cat([a, tau], dim=-1))))


class FlowMatchingHead(nn.Module):
    def __init__(self, cfg: ActionHeadConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        out_dim = cfg.output_dim or d
        self.dit = DiT(cfg.num_layers, d, cfg.num_heads, cfg.head_dim, cfg.dropout, cfg.attention == "cross+self",
                       out_dim, cfg.gradient_checkpointing)
        self.state_encoder = MLP(cfg.state_dim, cfg.mlp_hidden, d)
        if not cfg.use_state:  # built like the fork's (its size counts), never fed: frozen, so no optimizer state
            self.state_encoder.requires_grad_(False)  # and no unused-parameter error under DDP
        self.action_encoder = ActionEncoder(cfg.action_dim, d)
        self.future_tokens = nn.Parameter(torch.randn(cfg.num_future_tokens, d) * 0.02)
        rows = cfg.position_rows or cfg.horizon  # the fork: a 1024-row table of which the first T rows are used
        self.position_embedding = nn.Parameter(torch.randn(rows, d) * 0.02)  # on the action tokens
        self.action_decoder = MLP(out_dim, cfg.mlp_hidden, cfg.action_dim)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.cfg.use_state) + self.cfg.num_future_tokens

    def bucket(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.cfg.timestep_buckets).long().clamp_(0, self.cfg.timestep_buckets - 1)

    def sample_t(self, n: int, device) -> torch.Tensor:
        """Flow time t = (s_max - s)/s_max, s ~ Beta(alpha, beta), drawn on `device` from its generator (seed
        it for repeats): no host sample and pageable copy per step on a GPU; on CPU the same draws as before.
        The concentrations are filled on the device (torch.full), not copied there from host scalars."""
        alpha = torch.full((), self.cfg.beta_alpha, device=device)
        beta = torch.full((), self.cfg.beta_beta, device=device)
        s = Beta(alpha, beta, validate_args=False).sample((n,))  # validation would sync: .all() on the device
        return (self.cfg.noise_s - s) / self.cfg.noise_s

    def velocity(self, x_t, t, state, ctx, action_keep, geom_slice,
                 want_mass: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predicted velocity [B*R, T, A] and (if `want_mass`) per-layer geometry attention mass [N].
        `state` is None when the head has no state token (`use_state: false`)."""
        n = x_t.shape[0]
        tb = self.bucket(t)
        future = self.future_tokens[None].expand(n, -1, -1)
        actions = self.action_encoder(x_t, tb) + self.position_embedding[None, : self.cfg.horizon]
        prefix = [self.state_encoder(state)[:, None]] if self.cfg.use_state else []
        seq = torch.cat([*prefix, future, actions], dim=1)
        prefix_keep = torch.ones(n, self.num_prefix_tokens, dtype=torch.bool, device=seq.device)
        out, mass = self.dit(seq, tb, ctx, torch.cat([prefix_keep, action_keep], dim=1), geom_slice, want_mass)
        return self.action_decoder(out[:, -self.cfg.horizon:]), mass

    def loss(self, ctx, state, actions, action_pad, geom_slice,
             want_mass: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked flow-matching MSE over R noise repeats. Padded steps are neither targets nor attended keys."""
        r = self.cfg.repeats
        actions = actions.repeat_interleave(r, 0)
        state = state.repeat_interleave(r, 0) if state is not None else None
        keep = ~action_pad.bool().repeat_interleave(r, 0)
        t = self.sample_t(actions.shape[0], actions.device).to(actions.dtype)
        noise = torch.randn_like(actions)
        x_t = (1 - t)[:, None, None] * noise + t[:, None, None] * actions
        pred, mass = self.velocity(x_t, t, state, ctx, keep, geom_slice, want_mass)
        err = (pred - (actions - noise)).square() * keep[..., None]
        return err.sum() / (keep.sum() * actions.shape[-1]).clamp(min=1), mass

    @torch.no_grad()
    def sample(self, ctx, state, geom_slice, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler integration from noise (t=0) to actions (t=1). `state` [B, state_dim] or None (no state token)."""
        n = state.shape[0] if state is not None else ctx[0].k.shape[0]
        dtype, device = self.future_tokens.dtype, self.future_tokens.device
        x = torch.randn((n, self.cfg.horizon, self.cfg.action_dim), generator=generator, dtype=dtype).to(device)
        keep = torch.ones(n, self.cfg.horizon, dtype=torch.bool, device=device)
        dt = 1.0 / num_steps
        for i in range(num_steps):
            t = torch.full((n,), i * dt, device=device, dtype=dtype)
            v, _ = self.velocity(x, t, state, ctx, keep, geom_slice)
            x = x + dt * v
        return x

