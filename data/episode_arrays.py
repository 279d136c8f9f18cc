"""In-memory episode: what the writer stores and what synthetic fixtures and the demo renderer produce."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geo3d.data.lerobot_layout import ACTION_DIM, STATE_DIM
from geo3d.core.errors import DataError


@dataclass
class EpisodeArrays:
    """One episode exactly as it is to be stored (images already rotated by the caller, if wanted).

    agentview, wrist: uint8 [L,H,W,3]; state: float32 [L,8]; action: float32 [L,7].
    """

    task: str
    agentview: np.ndarray
    wrist: np.ndarray
    state: np.ndarray
    action: np.ndarray

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def validate(self) -> None:
        """Refuse inconsistent arrays before anything is written."""
        n = len(self.agentview)
        problems = []
        if n < 1:
            problems.append("episode has no frames")
        for name, arr in (("agentview", self.agentview), ("wrist", self.wrist)):
            if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
                problems.append(f"{name} must be uint8 [L,H,W,3], got {arr.dtype} {arr.shape}")
        if self.agentview.shape != self.wrist.shape:
            problems.append(f"agentview {self.agentview.shape} and wrist {self.wrist.shape} differ")
        if self.state.shape != (n, STATE_DIM):
            problems.append(f"state must be [{n},{STATE_DIM}], got {self.state.shape}")
        if self.action.shape != (n, ACTION_DIM):
            problems.append(f"action must be [{n},{ACTION_DIM}], got {self.action.shape}")
        if not self.task:
            problems.append("task (the language instruction) is empty")
        if problems:
            raise DataError("invalid EpisodeArrays: " + "; ".join(problems))
