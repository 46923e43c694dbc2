"""The ``vla`` command: ``train``, ``eval``, ``serve``, ``push``, ``configs``, ``info`` and ``convert lerobot``.

``vla train CONFIG.yaml`` (or a built-in config's name: ``vla train quickstart``) [--set key.sub=value ...] [--resume [--trust-checkpoint]]`` also runs under
``torchrun --nproc-per-node N -m vla_train train ...``. Every user-caused error (a config, a path, a
file, a checkpoint, a busy run directory, a full disk) prints one line, ``vla CMD: error: ...``, and
exits 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys

# torch and vla_core are imported by the commands, not here: `vla --help` answers without loading torch.


def _train(args: argparse.Namespace) -> int:
    from vla_core import ConfigError

    from vla_train.config import load_config
    from vla_train.trainer import train

    if args.trust_checkpoint and not args.resume:
        raise ConfigError("--trust-checkpoint only applies with --resume")
    train(load_config(args.config, args.set), resume=args.resume, trust_checkpoint=args.trust_checkpoint)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vla_core import ConfigError

    from vla_train.eval import evaluate

    if args.asynchronous or args.inference_delay is not None or args.rtc:
        from vla_train.eval_async import evaluate_async

        if args.save_video:
            raise ConfigError("--save-video: not available with --async / --inference-delay / --rtc")
        result = evaluate_async(args.path, episodes=args.episodes, seed=args.seed, inference_delay=args.inference_delay or 0,
                                asynchronous=args.asynchronous, rtc=args.rtc,
                                compile_mode=args.compile)
        print(f"eval_async.json: {result['policy']}/eval_async.json")
        print(f"mean_boundary_jump: {result['mean_boundary_jump']:.4f}")
        print(f"success_rate: {result['success_rate']:.3f}")
        return 0
    result = evaluate(args.path, episodes=args.episodes, seed=args.seed, save_video=args.save_video,
                      compile_mode=args.compile)
    print(f"eval.json: {result['policy']}/eval.json")
    print(f"success_rate: {result['success_rate']:.3f}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from vla_train.serve import serve

    serve(args.path, host=args.host, port=args.port, device=args.device, api_key_env=args.api_key_env,
          obs_map=args.obs_map, compile_mode=args.compile)
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

    options = {k: getattr(args, k) for k in ("base_model", "eagle_config", "tokenizer") if getattr(args, k, None)}
    out = convert_lerobot(args.src, args.dst, **options)
    print(f"converted {args.src} -> {out}")
    return 0


def _convert_groot(args: argparse.Namespace) -> int:
    from vla_train.convert.groot import convert

    split = {k: getattr(args, k).split(",") if getattr(args, k) else None for k in ("cameras", "state_keys", "action_keys")}
    out = convert(args.src, args.dst, eagle_config=args.eagle_config, embodiment=args.embodiment,
                  normalization=args.normalization, tokenizer=args.tokenizer, **split)
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


def _toy_tokenizer(args: argparse.Namespace) -> int:
    from vla_train.toy.tokenizer import save_toy_tokenizer

    vocab = save_toy_tokenizer(args.dst, state_bins=args.state_bins)
    print(f"wrote {args.dst} ({len(vocab)} words: the toy instructions, pi0.5's prompt words and "
          f"{args.state_bins} state bins)")
    return 0


# Policy.compile's modes (vla_core.COMPILE_MODES; a test keeps them equal): a literal here, because
# building the parser must not import torch.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _add_compile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                        help=f"compile the policy's inference path (Policy.compile); MODE: {', '.join(COMPILE_MODES)} "
                             "(default: default; reduce-overhead captures CUDA graphs on a GPU)")


def _push(args: argparse.Namespace) -> int:
    import os

    from vla_train.push import push_run

    token = os.environ.get(args.token_env) if args.token_env else None
    info = push_run(args.path, args.repo_id, private=args.private or None, token=token, revision=args.revision,
                    commit_message=args.message)
    print(f"pushed to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from vla_train.builtin_configs import list_configs, resolve_config

    print(resolve_config(args.name).read_text() if args.name else list_configs(), end="" if args.name else "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vla", description="Train, evaluate and convert vla policies.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a policy from a YAML config")
    train.add_argument("config", help="a YAML file, or a built-in config's name (see `vla configs`)")
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
    _add_compile(ev)
    ev.set_defaults(func=_eval)
    serve = sub.add_parser("serve", help="serve a policy over the openpi websocket protocol (openpi-client)")
    serve.add_argument("path", help="a run directory or a pretrained policy directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    serve.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    serve.add_argument("--api-key-env", metavar="NAME", help="require the API key held by this environment variable")
    serve.add_argument("--obs-map", metavar="JSON_OR_FILE",
                       help='client key -> policy feature, e.g. \'{"observation/image": "observation.images.top"}\'')
    _add_compile(serve)
    serve.set_defaults(func=_serve)
    push = sub.add_parser("push", help="upload a trained policy and its model card to the Hugging Face Hub")
    push.add_argument("path", help="a run directory or a pretrained policy directory")
    push.add_argument("repo_id", help="the Hub model repo, owner/name (created if needed)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--token-env", metavar="NAME",
                      help="environment variable holding the Hub token (default: huggingface_hub's login)")
    push.set_defaults(func=_push)
    configs = sub.add_parser("configs", help="list the built-in configs, or print one (to copy and edit)")
    configs.add_argument("name", nargs="?", help="a built-in config's name, e.g. quickstart")
    configs.set_defaults(func=_configs)
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
    lerobot = kinds.add_parser("lerobot", help="a LeRobot policy directory (0.6.x act, diffusion, pi0; 0.5.1 groot)")
    lerobot.add_argument("src")
    lerobot.add_argument("dst")
    lerobot.add_argument("--base-model", help="groot: the GR00T base model directory (its config.json)")
    lerobot.add_argument("--eagle-config", help="groot: Eagle's config.json (or its directory)")
    lerobot.add_argument("--tokenizer", help="groot: a local Eagle tokenizer directory (for task strings)")
    lerobot.set_defaults(func=_convert)
    groot = kinds.add_parser("groot", help="an Isaac-GR00T N1.5 checkpoint directory")
    groot.add_argument("src")
    groot.add_argument("dst")
    groot.add_argument("--eagle-config", required=True, help="Eagle's config.json (Isaac-GR00T vendors it)")
    groot.add_argument("--embodiment", required=True, help="embodiment tag in experiment_cfg/metadata.json")
    groot.add_argument("--cameras", required=True, help="video keys, comma-separated, in the data config's order")
    groot.add_argument("--normalization", required=True, choices=["min_max"], help="the data config's state/action mode")
    groot.add_argument("--state-keys", help="state keys, comma-separated, in the data config's order")
    groot.add_argument("--action-keys", help="action keys, comma-separated, in the data config's order")
    groot.add_argument("--tokenizer", help="a local Eagle tokenizer directory (for task strings)")
    groot.set_defaults(func=_convert_groot)
    toy = kinds.add_parser("toy", help="write the toy task's demonstrations as a LeRobot v3.0 dataset")
    toy.add_argument("dst")
    toy.add_argument("--episodes", type=int, default=200)
    toy.add_argument("--seed", type=int, default=0)
    toy.add_argument("--image-size", type=int, default=64)
    toy.add_argument("--png", action="store_true", help="store frames as PNG in parquet instead of mp4")
    toy.set_defaults(func=_export_toy)
    toy_tok = kinds.add_parser("toy-tokenizer", help="write a word-level tokenizer for the toy task's instructions "
                                                     "(and pi0.5's state prompt), for the language backbones")
    toy_tok.add_argument("dst")
    toy_tok.add_argument("--state-bins", type=int, default=256, help="bin numbers to know (discrete_state_bins)")
    toy_tok.set_defaults(func=_toy_tokenizer)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user causes (and can fix): reported in one line, exit status 2."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    from vla_core import CheckpointError, ConfigError, MissingExtraError, UnknownComponentError

    from vla_train.runlock import RunDirectoryInUseError
    from vla_train.trainer import TrainingDivergedError

    return (ConfigError, UnknownComponentError, MissingExtraError, CheckpointError, CheckpointException,
            TrainingDivergedError, RunDirectoryInUseError, ValueError, OSError)


def _extra_hint(err: BaseException) -> str:
    """For an unknown component while vla-backbones or vla-heads is not installed: the extra that brings them."""
    from importlib.util import find_spec

    from vla_core import UnknownComponentError

    if isinstance(err, UnknownComponentError) and not (find_spec("vla_backbones") and find_spec("vla_heads")):
        return " (the built-in backbones and heads come with `pip install 'vla-train[models]'`)"
    return ""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except user_errors() as err:
        from vla_train.checkpoint import describe_error

        print(f"vla {args.command}: error: {describe_error(err)}{_extra_hint(err)}", file=sys.stderr)
        return 2
