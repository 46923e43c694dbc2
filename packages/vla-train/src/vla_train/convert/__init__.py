"""Converters from other frameworks' checkpoints into vla's ``save_pretrained`` format."""

from vla_train.convert.lerobot import LEROBOT_CONVERTERS, convert_lerobot

__all__ = ["LEROBOT_CONVERTERS", "convert_lerobot"]
