"""What every source-format reader shares (LeRobot folders, LIBERO HDF5 folders): a path and episodes by index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geo3d.core.errors import DataError


class EpisodeDataset:
    """Base of the readers behind `LiberoMixture`: subclasses set `self.path` and `self._episodes` {index: info}."""

    path: Path
    _episodes: dict[int, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def episode(self, episode_index: int) -> Any:
        try:
            return self._episodes[episode_index]
        except KeyError:
            raise DataError(f"{self.path}: no episode {episode_index} (has {self.num_episodes})") from None
