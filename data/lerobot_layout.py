"""LeRobot on-disk layout facts shared by the writer and the reader (paths, keys, feature schema).

Kept in one place so the writer and the reader cannot drift apart. Field names follow lerobot's
v2.0/v2.1 (`meta/*.jsonl`, one parquet + one mp4 per episode) and v3.0 (`meta/episodes/*.parquet`,
many episodes per parquet/mp4 file) formats as found in the IPEC-COMMUNITY LIBERO datasets.
"""

from __future__ import annotations

from typing import Any

AGENTVIEW_KEY = "observation.images.image"
WRIST_KEY = "observation.images.wrist_image"
CAMERA_KEYS = (AGENTVIEW_KEY, WRIST_KEY)  # V order everywhere: agentview, wrist
VIEW_NAMES = ("agentview", "wrist")  # the names of CAMERA_KEYS (same order) that stores record as preprocessing.views
STATE_KEY = "observation.state"
ACTION_KEY = "action"
STATE_DIM = 8
ACTION_DIM = 7
CHUNKS_SIZE = 1000
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")

V2_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_TASKS_PATH = "meta/tasks.parquet"

STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]  # as in the IPEC LIBERO info.json
ACTION_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def video_feature(height: int, width: int, fps: int, codec: str = "av1") -> dict[str, Any]:
    """A camera feature entry of `meta/info.json` (lerobot's `info` block with `video.*` keys)."""
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "rgb"],
        "info": {
            "video.fps": float(fps),
            "video.height": height,
            "video.width": width,
            "video.channels": 3,
            "video.codec": codec,
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "has_audio": False,
        },
    }


def libero_features(height: int, width: int, fps: int) -> dict[str, Any]:
    """The `features` block of a LIBERO dataset: two cameras, 8-d state, 7-d action, index columns."""
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    return {
        AGENTVIEW_KEY: video_feature(height, width, fps),
        WRIST_KEY: video_feature(height, width, fps),
        STATE_KEY: {"dtype": "float32", "shape": [STATE_DIM], "names": {"motors": STATE_NAMES}},
        ACTION_KEY: {"dtype": "float32", "shape": [ACTION_DIM], "names": {"motors": ACTION_NAMES}},
        "timestamp": scalar("float32"),
        "frame_index": scalar("int64"),
        "episode_index": scalar("int64"),
        "index": scalar("int64"),
        "task_index": scalar("int64"),
    }


def huggingface_schema_metadata(features: dict[str, Any]) -> dict[str, Any]:
    """The `huggingface` parquet schema metadata that HF `datasets` writes (lerobot v2 files carry it)."""
    out: dict[str, Any] = {}
    for key, ft in features.items():
        if ft["dtype"] == "video":
            continue
        value = {"dtype": ft["dtype"], "_type": "Value"}
        out[key] = value if ft["shape"] == [1] else {"feature": value, "length": ft["shape"][0],
                                                     "_type": "Sequence"}
    return {"info": {"features": out}}
