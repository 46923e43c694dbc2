"""Parity with LeRobot 0.6.1's DiffusionPolicy: LeRobot writes tiny random checkpoints with its own
``save_pretrained``, ``vla convert lerobot`` converts them, and the converted policy reproduces
LeRobot's chunks from the same initial noise (DDIM; and DDPM with the same per-step RNG draws) and
its UNet output at every checked diffusion step."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vla_core import VLAPolicy
from vla_train.convert import convert_lerobot

pytestmark = [pytest.mark.peer, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[1] / "peer_scripts" / "lerobot_diffusion_reference.py"
CASES = ("pusht_ddim", "two_cam_ddpm")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than a contended pool (and makes timings stable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(lerobot_061_python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lerobot_diffusion")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(lerobot_061_python), str(SCRIPT), str(out)], check=False, capture_output=True, text=True, env=env
    )
    if proc.returncode:
        pytest.fail(f"the LeRobot peer script failed:\n{proc.stderr[-4000:]}")
    return out


def _load(reference: Path, case: str, tmp_path: Path) -> tuple[VLAPolicy, dict[str, torch.Tensor]]:
    dst = convert_lerobot(reference / case / "policy", tmp_path / case)
    policy = VLAPolicy.from_pretrained(dst).eval()
    return policy, load_file(str(reference / case / "reference.safetensors"))


def _raw_batch(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("obs."): v for k, v in ref.items() if k.startswith("obs.")}


@pytest.mark.parametrize("case", CASES)
def test_converted_config_reads_the_checkpoint(reference, case, tmp_path):
    policy, _ = _load(reference, case, tmp_path)
    lerobot = json.loads((reference / case / "policy" / "config.json").read_text())
    head, backbone = policy.head.config, policy.backbone.config
    assert list(head.down_dims) == lerobot["down_dims"]
    assert head.noise_scheduler_type == lerobot["noise_scheduler_type"]
    assert backbone.use_group_norm == lerobot["use_group_norm"]
    assert backbone.separate_encoder_per_camera == lerobot["use_separate_rgb_encoder_per_camera"]
    assert backbone.num_keypoints == lerobot["spatial_softmax_num_keypoints"]
    assert policy.config.action_start == lerobot["n_obs_steps"] - 1
    if not backbone.use_group_norm:
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in policy.backbone.modules())


@pytest.mark.parametrize("case", CASES)
def test_global_conditioning_and_denoiser_match(reference, case, tmp_path):
    policy, ref = _load(reference, case, tmp_path)
    batch = policy.normalizer.normalize_batch(_raw_batch(ref))
    with torch.no_grad():
        global_cond = policy.head.global_conditioning(policy.encode(batch), batch)
        torch.testing.assert_close(global_cond, ref["global_cond"], atol=1e-5, rtol=1e-5)
        steps = sorted(int(k.split(".")[1]) for k in ref if k.startswith("denoise_out."))
        assert len(steps) == 4
        x = ref["denoise_x"]
        table = policy.head.unet.film_table(torch.tensor(steps), ref["global_cond"])
        for i, t in enumerate(steps):
            want = ref[f"denoise_out.{t}"]
            # the training path (per-step FiLM) and the sampling path (FiLM table) both match
            got = policy.head.unet(x, torch.full((x.shape[0],), t), ref["global_cond"])
            assert (got - want).abs().max() <= 1e-4
            fast = policy.head.unet(x, films=table.at(i))
            assert (fast - want).abs().max() <= 1e-4


@pytest.mark.parametrize("case", CASES)
def test_action_chunk_matches(reference, case, tmp_path):
    policy, ref = _load(reference, case, tmp_path)
    raw = _raw_batch(ref)
    # the whole normalized horizon, per-step noise (DDPM) from the same explicit generator
    batch = policy.normalizer.normalize_batch(raw)
    sample = policy.head.predict_action(
        policy.encode(batch), batch, noise=ref["noise"], generator=torch.Generator().manual_seed(99)
    )
    assert (sample - ref["sample"]).abs().max() <= 1e-4
    # LeRobot's predict_action_chunk (robot units, its executed window); DDPM draws its per-step noise
    # from the global RNG there, which the peer seeded right before sampling
    torch.manual_seed(1234)
    chunk = policy.predict_action_chunk(raw, noise=ref["noise"], generator=torch.default_generator)
    start, n = policy.config.action_start, policy.n_action_steps
    assert (chunk[:, start : start + n] - ref["chunk"]).abs().max() <= 1e-4


def test_select_action_executes_lerobots_window(reference, tmp_path):
    policy, ref = _load(reference, "pusht_ddim", tmp_path)
    raw = _raw_batch(ref)
    torch.manual_seed(0)
    first = policy.select_action({k: v[:, -1] for k, v in raw.items()})
    chunk_window = {k: v[:, -1:].expand_as(v).contiguous() for k, v in raw.items()}
    torch.manual_seed(0)
    chunk = policy.predict_action_chunk(chunk_window)
    torch.testing.assert_close(first, chunk[:, policy.config.action_start])
