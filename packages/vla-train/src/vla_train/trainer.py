"""The trainer. Build order (read top to bottom): config -> world -> run-directory lock -> data ->
policy -> stats -> weight dtype -> LoRA adapters (peft) -> parallelize (FSDP2) -> optimizer -> EMA -> checkpointer (resume) -> loop -> export -> eval.

One ``Trainer`` per process; under ``torchrun`` every rank runs the same code on its share of
each global batch. Rank 0 holds the run directory's lock (:mod:`vla_train.runlock`) from the start
until ``train()`` ends or ``close()`` is called.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from vla_core import ACTION, ConfigError, FeatureType, Policy, build_policy
from vla_core.features import DECLARED_PREFIXES, PAD_SUFFIX

from vla_train.adapters import apply_peft, export_adapted, load_base_weights, trainable_summary
from vla_train.checkpoint import Checkpointer, ModelAndOptimizer, RNGState, export_pretrained
from vla_train.config import TrainConfig, save_config
from vla_train.data import BatchStream, build_dataset, check_features, compute_stats, policy_delta_indices
from vla_train.distributed import World, close_world, init_world
from vla_train.ema import EMA
from vla_train.host_memory import retain_freed_memory
from vla_train.metrics import MetricsLogger, read_metrics, summary
from vla_train.optim import build_optimizer, build_scheduler, clip_gradients
from vla_train.parallelize import apply_activation_checkpointing, apply_fsdp2, build_mesh, float_buffers
from vla_train.runlock import RunDirectoryInUseError, RunLock


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN/Inf; the message names the step and the last checkpoint."""


class TrainState:
    """The loop's own counters (a Stateful for the checkpoint): the step and the data position."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.trainer.step, "world_size": self.trainer.world.world_size,
                "data": self.trainer.batches.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.step = int(state["step"])
        self.trainer.batches.load_state_dict(state["data"])


def policy_spec(config: TrainConfig, dataset) -> dict[str, Any]:
    """The policy spec (``type`` defaults to the generic ``vla``) with the dataset's features filled in
    where the YAML leaves them out."""
    spec = dict(config.policy)
    features = {k: v.to_dict() for k, v in dataset.features.items()}
    spec.setdefault("input_features", {k: v for k, v in features.items() if v["type"] != FeatureType.ACTION.value})
    spec.setdefault("output_features", {ACTION: features[ACTION]})
    return spec


class Trainer:
    def __init__(self, config: TrainConfig, *, resume: bool = False, trust_checkpoint: bool = False) -> None:
        if config.parallel.retain_host_memory:
            retain_freed_memory()
        self.world: World = init_world(config.parallel.device, need_group=config.parallel.fsdp is True)
        self.run_dir = Path(config.output_dir)
        self.lock = self.lock_run_dir()
        try:
            self.build(config, resume=resume, trust_checkpoint=trust_checkpoint)
        except BaseException:
            self.lock.release()
            raise

    def lock_run_dir(self) -> RunLock:
        """Rank 0 takes the run directory's lock; every rank fails at once if it cannot."""
        lock, error = RunLock(self.run_dir), None
        if self.world.is_main:
            try:
                lock.acquire()
            except (RunDirectoryInUseError, OSError) as err:
                error = err
        if not self.world.all_true(error is None):
            lock.release()
            raise error or RunDirectoryInUseError(f"rank 0 could not lock output_dir {self.run_dir}")
        return lock

    def build(self, config: TrainConfig, *, resume: bool, trust_checkpoint: bool) -> None:
        self.sharded = config.parallel.fsdp if config.parallel.fsdp is not None else self.world.world_size > 1
        if self.world.world_size > 1 and not self.sharded:
            raise ConfigError("parallel.fsdp: several processes train only with FSDP; set it to true or null")
        accum = config.optim.grad_accum_steps
        if config.batch_size % (self.world.world_size * accum):
            raise ConfigError(f"batch_size: {config.batch_size} is not divisible by world size "
                              f"{self.world.world_size} x optim.grad_accum_steps {accum}")
        self.micro_batch_size = config.batch_size // (self.world.world_size * accum)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", every=config.checkpoint.every,
                                         keep_last=config.checkpoint.keep_last, world=self.world,
                                         trust_legacy=trust_checkpoint)
        self.resuming = self.checkpointer.latest() is not None
        if self.resuming and not resume:
            raise ConfigError(f"output_dir {self.run_dir} already holds checkpoints: pass --resume to continue, "
                              "or choose another output_dir (--set output_dir=...)")
        torch.manual_seed(config.seed)  # same initial weights on every rank

        self.dataset = build_dataset(config.data)
        self.policy: Policy = build_policy(policy_spec(config, self.dataset))
        check_features(self.policy.input_features, self.policy.output_features, self.dataset.features,
                       str(config.data["type"]))
        self.config = config = config.replace(policy={"type": self.policy.registered_name,
                                                       **self.policy.config.to_dict()})
        self.dataset.set_delta_indices(config.data.get("delta_indices") or policy_delta_indices(
            self.dataset.features, self.policy.config.n_obs_steps, self.policy.horizon))
        if config.peft is not None and config.peft.base is not None:
            load_base_weights(self.policy, config.peft.base)
        if not self.resuming:  # a resumed run reads its stats from the checkpoint
            self.policy.normalizer.set_stats(compute_stats(
                self.dataset, max_frames=self.dataset.config.stats_frames, seed=config.seed))
        if config.parallel.weight_dtype != "float32":
            self.policy.set_dtype(config.parallel.weight_dtype)
        if config.peft is not None:  # before FSDP2 wraps the policy: the adapters are sharded with their layer
            apply_peft(self.policy, config.peft, base=config.peft.base)
        self.trainable_line = trainable_summary(self.policy)
        if self.world.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")

        self.model = self.parallelize(self.policy)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.schedule, config.steps)
        use_ema = config.optim.ema if config.optim.ema is not None else bool(self.policy.training_defaults.get("ema"))
        self.ema = EMA(self.model, decay=config.optim.ema_decay, warmup=config.optim.ema_warmup) if use_ema else None
        self.batches = BatchStream(self.dataset, micro_batch_size=self.micro_batch_size, rank=self.world.rank,
                                   world_size=self.world.world_size, seed=config.seed,
                                   num_workers=self.dataset.config.num_workers)
        self.step = 0
        torch.manual_seed(config.seed + 1 + self.world.rank)  # training randomness (dropout, noise) per rank
        self.resumed_from = self.checkpointer.load(self.state()) if self.resuming else None

    # ------------------------------------------------------------------ building
    def parallelize(self, policy: Policy) -> torch.nn.Module:
        cfg = self.config.parallel
        mode = cfg.mixed_precision
        if mode == "auto":
            mode = "none" if self.world.device.type != "cuda" else (
                "fsdp" if self.sharded and not float_buffers(policy) else "autocast")
        if mode == "fsdp" and not self.sharded:
            raise ConfigError("parallel.mixed_precision: 'fsdp' needs FSDP (parallel.fsdp: true or torchrun)")
        self.mixed_precision = mode
        self.autocast_dtype = torch.bfloat16 if mode == "autocast" else None
        if cfg.activation_checkpointing:
            apply_activation_checkpointing(policy)
        policy.to(self.world.device)
        if self.sharded:
            bf16 = mode == "fsdp"
            apply_fsdp2(policy, build_mesh(self.world.device, self.world.world_size),
                        param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32 if bf16 else None,
                        reshard_after_forward=cfg.reshard_after_forward, cpu_offload=cfg.cpu_offload)
        return policy

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds (Stateful objects); the RNG streams are per rank."""
        state = {"model": ModelAndOptimizer(self.model, self.optimizer, trainable_only=self.config.peft is not None),
                 "scheduler": self.scheduler,
                 "trainer": TrainState(self), "rng": RNGState()}
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    # ------------------------------------------------------------------ the loop
    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch on the device, without the observations the policy does not declare (a dataset may
        hold more cameras or states than the policy reads; the policy refuses undeclared ones)."""
        declared = self.policy.input_features
        return {k: v.to(self.world.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
                if not k.startswith(DECLARED_PREFIXES) or k.removesuffix(PAD_SUFFIX) in declared}

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns rank-averaged metrics."""
        accum = self.config.optim.grad_accum_steps
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = self._to_device(next(self.batches))
            if self.sharded:
                self.model.set_requires_gradient_sync(micro == accum - 1)
            with torch.autocast(self.world.device.type, dtype=self.autocast_dtype or torch.float32,
                                enabled=self.autocast_dtype is not None):
                out = self.model(batch)
            (out.loss / accum).backward()
            for key, value in {"loss": out.loss, **out.metrics}.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / accum
        names = sorted(sums)
        averaged = self.world.mean(torch.stack([sums[k] for k in names])).tolist()
        values = dict(zip(names, averaged))
        if not math.isfinite(values["loss"]):
            self.diverged(f"the loss is {values['loss']}")
        grad_norm = clip_gradients(self.trainable, self.config.optim.grad_clip)
        if not torch.isfinite(grad_norm):
            self.diverged(f"the gradient norm is {grad_norm.item()}")
        values["lr"] = self.scheduler.get_last_lr()[0]
        values["grad_norm"] = grad_norm.item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        return values

    def diverged(self, what: str) -> None:
        latest = self.checkpointer.latest()
        where = f"the last good checkpoint is {latest} (continue with --resume)" if latest else "no checkpoint was written"
        raise TrainingDivergedError(f"{what} at step {self.step + 1}: training stopped; {where}")

    def train(self) -> Path:
        """Run the remaining steps, checkpoint, export, evaluate; returns the run directory. The run
        directory's lock is released when this returns or raises."""
        try:
            return self._train()
        finally:
            self.lock.release()

    def _train(self) -> Path:
        cfg = self.config
        logger = MetricsLogger(self.run_dir, cfg.log, total_steps=cfg.steps, start_step=self.step,
                               enabled=self.world.is_main, run_config=cfg.to_dict())
        logger.write(f"device {self.world.device}, {self.world.world_size} process(es), "
                     f"fsdp {'on' if self.sharded else 'off'}, mixed precision {self.mixed_precision}, "
                     f"micro-batch {self.micro_batch_size} x {cfg.optim.grad_accum_steps} accumulation")
        logger.write(self.trainable_line + (" (LoRA)" if cfg.peft is not None else ""))
        if self.resumed_from is not None:
            logger.write(f"resumed from {self.resumed_from} at step {self.step}")
        start = time.perf_counter()
        last_checkpoint = self.resumed_from
        try:
            while self.step < cfg.steps:
                values = self.train_step()
                self.step += 1
                logger.log(self.step, values, samples=cfg.batch_size)
                if self.checkpointer.due(self.step) or (self.step == cfg.steps and cfg.checkpoint.every > 0):
                    last_checkpoint = self.checkpointer.save(self.step, self.state())
        finally:
            logger.close()
        pretrained = self.export()
        if self.world.is_main:
            logger.plot()
            records = read_metrics(self.run_dir / "metrics.jsonl") if (self.run_dir / "metrics.jsonl").is_file() else []
            print(summary(steps=cfg.steps, seconds=time.perf_counter() - start, run_dir=self.run_dir,
                          pretrained=pretrained, checkpoint=last_checkpoint,
                          loss_first=records[0]["loss"] if records else None,
                          loss_last=records[-1]["loss"] if records else None), flush=True)
            if cfg.eval.episodes > 0 and hasattr(self.dataset, "make_env") and pretrained is not None:
                from vla_train.eval import evaluate

                result = evaluate(self.run_dir, episodes=cfg.eval.episodes, seed=cfg.eval.seed,
                                  batch_size=cfg.eval.batch_size, save_video=cfg.eval.save_video)
                print(f"success_rate: {result['success_rate']:.3f}", flush=True)
        self.world.barrier()
        return self.run_dir

    def export(self) -> Path | None:
        """``save_pretrained`` of the (EMA) policy into run_dir/pretrained, with the dataset spec for eval."""
        shadow = self.ema.shadow if self.ema is not None and self.config.checkpoint.export_ema else None
        if self.config.peft is not None:  # run_dir/adapter, and the merged policy when peft.merge_on_export
            out = export_adapted(self.model, self.config.policy, self.config.peft, self.run_dir, world=self.world,
                                 sharded=self.sharded, ema_shadow=shadow)
        else:
            out = export_pretrained(self.model, self.config.policy, self.run_dir / "pretrained", world=self.world,
                                    sharded=self.sharded, ema_shadow=shadow)
        if out is not None:
            shutil.copy(self.run_dir / "config.yaml", out / "train_config.yaml")
        return out

    def close(self) -> None:
        self.lock.release()
        close_world()


def train(config: TrainConfig, *, resume: bool = False, trust_checkpoint: bool = False) -> Path:
    """Train from a config; returns the run directory (its path is the last line printed).

    ``trust_checkpoint`` resumes from a checkpoint in the old pickle-based format (it can run code)."""
    trainer = Trainer(config, resume=resume, trust_checkpoint=trust_checkpoint)
    try:
        run_dir = trainer.train()
    finally:
        trainer.close()
    if trainer.world.is_main:
        print(f"run directory: {run_dir}", flush=True)
    return run_dir


__all__ = ["RunDirectoryInUseError", "Trainer", "TrainingDivergedError", "train"]
