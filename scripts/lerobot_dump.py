"""Dump every frame of a local LeRobot v3.0 dataset as lerobot's own reader returns it (run with lerobot).

Used by tests/test_lerobot_crosscheck.py, which runs it in an interpreter that has lerobot (or the standalone
`lerobot-dataset` package, module `ledataset`) and compares the dump with geo3d's reader. Writes an .npz with
per frame: index, episode_index, frame_index, timestamp, action, state, and both cameras as uint8 HWC.
Usage: python scripts/lerobot_dump.py DATASET_DIR OUT.npz [--backend torchcodec|pyav]
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def _dataset_class():
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset  # lerobot >= 0.4
    except ImportError:
        from ledataset.datasets.lerobot_dataset import LeRobotDataset  # PyPI lerobot-dataset (0.4.x)
    return LeRobotDataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--backend", default="torchcodec")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ds = _dataset_class()(repo_id=f"local/{os.path.basename(args.root)}", root=args.root,
                          video_backend=args.backend)
    keys = {"agentview": "observation.images.image", "wrist": "observation.images.wrist_image"}
    out: dict[str, list] = {k: [] for k in ("index", "episode_index", "frame_index", "timestamp", "action",
                                            "state", *keys)}
    for i in range(len(ds)):
        item = ds[i]
        for k in ("index", "episode_index", "frame_index", "timestamp"):
            out[k].append(float(item[k]) if k == "timestamp" else int(item[k]))
        out["action"].append(item["action"].numpy())
        out["state"].append(item["observation.state"].numpy())
        for name, key in keys.items():  # float CHW in [0,1] -> uint8 HWC (lerobot divides uint8 by 255)
            out[name].append((item[key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    np.savez(args.out, **{k: np.stack(v) if k in ("action", "state", *keys) else np.asarray(v)
                          for k, v in out.items()})
    print(f"dumped {len(ds)} frames with {type(ds).__module__} ({args.backend})")


if __name__ == "__main__":
    main()
