"""host_memory: with freed memory retained, a repeated step stops page-faulting its big tensors."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource, sys, torch
    from vla_train.host_memory import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    def step():  # a 38.5 MiB activation (over glibc's 32 MiB mmap ceiling) and a 10 MiB one
        a, b = torch.ones(12, 64, 112, 112), torch.ones(8, 102, 3200)
        return ((a * 2).sum() + (b + 1).sum()).item()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
""")


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_is_reused_without_page_faults():
    default, retained = faults_per_step("default"), faults_per_step("retain")
    # 48 MiB of fresh pages per step is ~12k faults by default; reused heap memory needs almost none.
    assert default > 5000, default
    assert retained < default / 3, (retained, default)


def test_trainer_applies_it_only_when_asked(monkeypatch):
    from vla_train import trainer
    from vla_train.config import ParallelConfig

    assert not ParallelConfig().retain_host_memory  # a library does not change the allocator unasked
    calls = []
    monkeypatch.setattr(trainer, "retain_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.setattr(trainer, "init_world", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop here")))
    cfg = trainer.TrainConfig.from_dict({"policy": {}, "data": {"type": "toy"}, "steps": 1, "batch_size": 1,
                                          "output_dir": "unused", "parallel": {"retain_host_memory": False}})
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.Trainer(cfg)
    assert calls == []
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.Trainer(cfg.replace(parallel={}))
    assert calls == []
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.Trainer(cfg.replace(parallel={"retain_host_memory": True}))
    assert calls == [True]
