"""The ``vla`` command: ``train``, ``eval``, ``serve``, ``info`` and ``convert lerobot``.

``vla train CONFIG.yaml [--set key.sub=value ...] [--resume [--trust-checkpoint]]`` also runs under
``torchrun --nproc-per-node N -m vla_train train ...``. Every user-caused error (a config, a path, a
file, a checkpoint, a busy run directory, a full disk) prints one line, ``vla CMD: error: ...``, and
exits 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys

from vla_core import CheckpointError, ConfigError, MissingExtraError, UnknownComponentError


def _train(args: argparse.Namespace) -> int:
    from vla_train.config import load_config
    from vla_train.trainer import train

    if args.trust_checkpoint and not args.resume:
        raise ConfigError("--trust-checkpoint only applies with --resume")
    train(load_config(args.config, args.set), resume=args.resume, trust_checkpoint=args.trust_checkpoint)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vla_train.eval import evaluate

    if args.asynchronous or args.inference_delay is not None or args.rtc:
        from vla_train.eval_async import evaluate_async

        if args.save_video:
            raise ConfigError("--save-video: not available with --async / --inference-delay / --rtc")
        result = evaluate_async(args.path, episodes=args.episodes, seed=args.seed, inference_delay=args.inference_delay or 0,
                                asynchronous=args.asynchronous, rtc=args.rtc)
        print(f"eval_async.json: {result['policy']}/eval_async.json")
        print(f"mean_boundary_jump: {result['mean_boundary_jump']:.4f}")
        print(f"success_rate: {result['success_rate']:.3f}")
        return 0
    result = evaluate(args.path, episodes=args.episodes, seed=args.seed, save_video=args.save_video)
    print(f"eval.json: {result['policy']}/eval.json")
    print(f"success_rate: {result['success_rate']:.3f}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from vla_train.serve import serve

    serve(args.path, host=args.host, port=args.port, device=args.device, api_key_env=args.api_key_env,
          obs_map=args.obs_map)
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.memory:
        from vla_train.memory import describe_memory

        print(describe_memory(args.path, ranks=args.ranks, lora=args.lora))
        return 0
    from vla_train.info import describe

    print(describe(args.path))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from vla_train.convert import convert_lerobot

    out = convert_lerobot(args.src, args.dst)
    print(f"converted {args.src} -> {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from vla_train.adapters import export

    print(f"wrote {export(args.src, args.dst, merge=args.merge, base=args.base)}")
    return 0


def _export_toy(args: argparse.Namespace) -> int:
    from vla_train.data.lerobot.convert_toy import export_toy_dataset

    toy = {"num_episodes": args.episodes, "seed": args.seed, "image_size": args.image_size}
    print(f"wrote {export_toy_dataset(args.dst, toy, video=not args.png)} (LeRobot v3.0)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="Train, evaluate and convert vla policies.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy from a YAML config")
    train.add_argument("config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    train.add_argument("--resume", action="store_true", help="continue from output_dir's latest checkpoint")
    train.add_argument("--trust-checkpoint", action="store_true",
                       help="with --resume: load an old-format checkpoint whose metadata is a pickle (it can run "
                            "code: only for checkpoints from a source you trust)")
    train.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="closed-loop episodes of the toy task; prints success_rate last")
    ev.add_argument("path", help="a run directory or a pretrained policy directory")
    ev.add_argument("--episodes", type=int, default=50)
    ev.add_argument("--seed", type=int, default=100_000)
    ev.add_argument("--save-video", action="store_true", help="write eval.gif and eval.png of one episode")
    ev.add_argument("--inference-delay", type=int, metavar="N",
                    help="simulate a policy that takes N control steps per chunk (the robot waits, unless --async)")
    ev.add_argument("--async", dest="asynchronous", action="store_true",
                    help="keep executing the current chunk while the next one is computed")
    ev.add_argument("--rtc", action="store_true", help="with --async: real-time chunking (flow-matching heads)")
    ev.set_defaults(func=_eval)
    serve = sub.add_parser("serve", help="serve a policy over the openpi websocket protocol (openpi-client)")
    serve.add_argument("path", help="a run directory or a pretrained policy directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    serve.add_argument("--api-key-env", metavar="NAME", help="require the API key held by this environment variable")
    serve.add_argument("--obs-map", metavar="JSON_OR_FILE",
                       help='client key -> policy feature, e.g. \'{"observation/image": "observation.images.top"}\'')
    serve.set_defaults(func=_serve)
    info = sub.add_parser("info", help="config, parameter counts and normalization stats of a policy")
    info.add_argument("path", help="a policy directory, or with --memory a YAML config with the policy's features")
    info.add_argument("--memory", action="store_true",
                      help="estimate per-rank memory of weights, gradients and AdamW state (full FT, LoRA, FSDP2)")
    info.add_argument("--ranks", type=int, default=1, help="with --memory: FSDP2 ranks to shard over")
    info.add_argument("--lora", action="store_true", help="with --memory: add LoRA rows (the config's peft: section "
                                                          "or the components' default targets, r=8)")
    info.set_defaults(func=_info)
    export = sub.add_parser("export", help="LoRA adapters onto their base policy: as adapters, or merged (--merge)")
    export.add_argument("src", help="an adapter directory, or a LoRA run directory (its adapter/)")
    export.add_argument("dst")
    export.add_argument("--merge", action="store_true", help="fold the adapters into the weights: a plain policy")
    export.add_argument("--base", help="the base policy directory (default: the adapters' base_model_name_or_path)")
    export.set_defaults(func=_export)
    convert = sub.add_parser("convert", help="convert a checkpoint, or export the toy task as a LeRobot dataset")
    kinds = convert.add_subparsers(dest="framework", required=True)
    lerobot = kinds.add_parser("lerobot", help="a LeRobot 0.6.x policy directory (act, diffusion, pi0)")
    lerobot.add_argument("src")
    lerobot.add_argument("dst")
    lerobot.set_defaults(func=_convert)
    toy = kinds.add_parser("toy", help="write the toy task's demonstrations as a LeRobot v3.0 dataset")
    toy.add_argument("dst")
    toy.add_argument("--episodes", type=int, default=200)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--image-size", type=int, default=64)
    toy.add_argument("--png", action="store_true", help="store frames as PNG in parquet instead of mp4")
    toy.set_defaults(func=_export_toy)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user causes (and can fix): reported in one line, exit status 2."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    from vla_train.runlock import RunDirectoryInUseError
    from vla_train.trainer import TrainingDivergedError

    return (ConfigError, UnknownComponentError, MissingExtraError, CheckpointError, CheckpointException,
            TrainingDivergedError, RunDirectoryInUseError, ValueError, OSError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except user_errors() as err:
        from vla_train.checkpoint import describe_error

        print(f"vla {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2
