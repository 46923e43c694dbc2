"""The ``vla`` command: ``vla convert lerobot SRC DST`` (train / eval / info come with the trainer)."""

from __future__ import annotations

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
    from vla_train.convert import convert_lerobot

    out = convert_lerobot(args.src, args.dst)
    print(f"converted {args.src} -> {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="Train, evaluate and convert vla policies.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="convert another framework's checkpoint")
    convert_sub = convert.add_subparsers(dest="framework", required=True)
    lerobot = convert_sub.add_parser("lerobot", help="a LeRobot 0.6.x policy directory (act, diffusion, pi0)")
    lerobot.add_argument("src")
    lerobot.add_argument("dst")
    lerobot.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
