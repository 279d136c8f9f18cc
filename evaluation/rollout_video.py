"""Rollout videos (mp4, H.264 via PyAV): what the policy saw, agentview | wrist, at the control rate."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

CONTROL_HZ = 20  # LIBERO's OSC controller runs at 20 Hz


class RolloutVideo:
    """Collect frames during an episode, write them once its outcome (and so the file name) is known."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def add(self, frame: np.ndarray) -> None:
        self.frames.append(frame)

    def write(self, path: Path, fps: int = CONTROL_HZ) -> Path | None:
        if not self.frames:
            return None

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.mp4")
        h, w = self.frames[0].shape[:2]
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
            for f in self.frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[: h - h % 2, : w - w % 2]), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        tmp.replace(path)
        self.frames.clear()
        return path
