"""Run by the distributed tests (``torchrun ... fsdp_probe.py CONFIG.yaml OUT.json [--set k=v ...]``).

Trains with the test components and writes per-step losses, each rank's local parameter and
optimizer-state bytes and the full sizes as JSON.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "support"))

import torch  # noqa: E402
import vla_test_components  # noqa: E402,F401
from vla_train.config import load_config  # noqa: E402
from vla_train.trainer import Trainer  # noqa: E402


def local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def main() -> None:
    config_path, out_path, *rest = sys.argv[1:]
    overrides = [a for a in rest if a != "--set"]
    trainer = Trainer(load_config(config_path, overrides))
    losses = []
    while trainer.step < trainer.config.steps:
        losses.append(trainer.train_step()["loss"])
        trainer.step += 1
    params = sum(local_bytes(p) for p in trainer.model.parameters())
    full = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    optim = sum(local_bytes(v) for s in trainer.optimizer.state.values() for v in s.values() if v.dim() > 0)
    result = {"rank": trainer.world.rank, "losses": losses, "param_bytes": params, "full_param_bytes": full,
              "optim_bytes": optim}
    Path(f"{out_path}.rank{trainer.world.rank}").write_text(json.dumps(result))
    trainer.close()


main()
