"""Progress and results: a tqdm bar, ``metrics.jsonl``, the trackers (TensorBoard, wandb, trackio), the loss plot
and the summary.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per logged step (``step``, ``loss``,
``lr``, ``grad_norm``, ``samples_per_s``, ``elapsed_s`` and the head's metrics). A run that starts
at step ``s`` (0, or the step of the checkpoint it resumes from) first cuts the file to the records of
steps ``<= s``, so every step appears once, in order, whatever was logged after the checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vla_train.config import LogConfig
from vla_train.trackers import open_trackers


class MetricsLogger:
    """``metrics.jsonl``, the progress bar and the trackers of ``config.trackers`` (:mod:`vla_train.trackers`);
    ``enabled`` is false on every rank but 0, which then writes and opens nothing. ``run_config`` (the
    training config as a dict) is handed to the trackers that record one (wandb, trackio)."""

    def __init__(self, run_dir: Path, config: LogConfig, *, total_steps: int, start_step: int, enabled: bool,
                 run_config: Mapping[str, Any] | None = None) -> None:
        self.run_dir, self.config, self.enabled = run_dir, config, enabled
        self.total_steps, self.start_step = total_steps, start_step
        self.start_time = time.perf_counter()
        self._last_time, self._last_step = self.start_time, start_step
        self.bar = None
        self.trackers: list = []
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        truncate_metrics(self.path, start_step)
        if config.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        self.trackers = open_trackers(config.active_trackers, run_dir, project=config.project, name=config.run_name,
                                      config=run_config or {})

    def log(self, step: int, values: dict[str, float], *, samples: int) -> None:
        """Record step ``step`` (1-based); ``samples`` is the global batch size."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            rate = samples * (step - self._last_step) / max(now - self._last_time, 1e-9)
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}", samples_s=f"{rate:.0f}",
                                 refresh=False)
        if step % self.config.every == 0 or step == self.total_steps:
            rate = samples * (step - self._last_step) / max(now - self._last_time, 1e-9)
            record = {"step": step, **values, "samples_per_s": rate, "elapsed_s": now - self.start_time}
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            for tracker in self.trackers:
                tracker.log({**values, "samples_per_s": rate}, step)
            self._last_time, self._last_step = now, step

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()

    def plot(self) -> Path | None:
        """Draw ``loss.png`` from metrics.jsonl (matplotlib, Agg); ``None`` if disabled or nothing logged."""
        if not (self.enabled and self.config.plot and self.path.is_file()):
            return None
        records = read_metrics(self.path)
        if not records:
            return None
        try:
            import matplotlib
        except ImportError:  # the `plot` extra is optional: the run goes on without its picture
            print("loss.png not drawn: matplotlib is not installed (pip install 'vla-train[plot]')", flush=True)
            return None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in records], [r["loss"] for r in records])
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log" if min(r["loss"] for r in records) > 0 else "linear")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.run_dir / "loss.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        return out


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only the records of steps ``<= last_step`` (and drop a line cut short by a crash); atomic."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; for steps logged twice (a resumed run) the last record wins."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def summary(*, steps: int, seconds: float, run_dir: Path, pretrained: Path | None, checkpoint: Path | None,
            loss_first: float | None, loss_last: float | None) -> str:
    lines = [f"trained {steps} steps in {seconds:.1f} s"]
    if loss_first is not None and loss_last is not None:
        lines.append(f"loss: {loss_first:.4f} -> {loss_last:.4f}")
    if checkpoint is not None:
        lines.append(f"checkpoint: {checkpoint}")
    if pretrained is not None:
        lines.append(f"pretrained policy: {pretrained}")
    return "\n".join(lines)
