"""Reader (and writer) for LeRobotDataset v3.0 directories: parquet tables plus mp4 videos.

Needs the ``vla-train[lerobot]`` extra (pyarrow, and PyAV, whose wheels bundle FFmpeg).
``LeRobotV3Dataset`` is a map-style dataset whose items carry the batch keys of
``vla_core.features`` (no batch dimension); ``vla_train.data.build_dataset`` builds one from the
``data:`` section of a training config (type ``lerobot``, an entry point of vla-train).
"""

from __future__ import annotations

from vla_train.data.lerobot.config import LeRobotDataset, LeRobotDatasetConfig
from vla_train.data.lerobot.dataset import LeRobotDataError, LeRobotV3Dataset
from vla_train.data.lerobot.meta import LeRobotMeta, load_meta
from vla_train.data.lerobot.video import FrameTimestampError, VideoDecodeError

__all__ = [
    "FrameTimestampError",
    "LeRobotDataError",
    "LeRobotDataset",
    "LeRobotDatasetConfig",
    "LeRobotMeta",
    "LeRobotV3Dataset",
    "VideoDecodeError",
    "load_meta",
]
