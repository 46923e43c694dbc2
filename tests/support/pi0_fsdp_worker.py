"""Test helper (run as a script): FSDP2 on 2 gloo ranks, one unit per pi0 layer, against an unsharded copy.

Usage: python pi0_fsdp_worker.py CONFIG_YAML. Exits non-zero on a mismatch. Each rank shards every
``policy.fsdp_units()`` module and the root, runs a training step and a prediction on its own batch
and compares loss, gradients and actions with an unsharded replica of the same weights.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from vla_test_components import set_unit_stats  # noqa: E402

from vla_core import VLAPolicy  # noqa: E402


def run(rank: int, world: int, init: str, config_path: str) -> None:
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = set_unit_stats(VLAPolicy(yaml.safe_load(open(config_path))["policy"]))
    ref = copy.deepcopy(policy)
    units = policy.fsdp_units()
    for module in list(policy.modules()):
        if type(module) in units:
            fully_shard(module)
    fully_shard(policy)
    register_fsdp_forward_method(policy, "predict_action_chunk")
    g = torch.Generator().manual_seed(rank)
    batch = {
        "observation.images.top": torch.rand(2, 3, 32, 32, generator=g), "observation.state": torch.randn(2, 4, generator=g),
        "action": torch.randn(2, 8, 3, generator=g), "observation.language.tokens": torch.randint(3, 64, (2, 8), generator=g),
    }
    torch.manual_seed(rank)
    loss = policy(batch).loss
    loss.backward()
    torch.manual_seed(rank)
    ref_loss = ref(batch).loss
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss)
    ref_grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    for name, p in policy.named_parameters():
        if name in ref_grads:
            full = p.grad.full_tensor()  # FSDP averages the ranks' gradients
            mean = ref_grads[name].clone()
            dist.all_reduce(mean)
            torch.testing.assert_close(full, mean / world, rtol=1e-4, atol=1e-6, msg=name)
    policy.eval(), ref.eval()
    noise = torch.randn(2, 8, 3, generator=g)
    torch.testing.assert_close(policy.predict_action_chunk(batch, noise=noise), ref.predict_action_chunk(batch, noise=noise))
    dist.destroy_process_group()


if __name__ == "__main__":
    init = f"file://{tempfile.mktemp(prefix='pi0_fsdp_')}"
    mp.spawn(run, args=(2, init, sys.argv[1]), nprocs=2, join=True)
    print("fsdp ok")
