"""resnet_spatial_softmax: token layout, crops, GroupNorm, SpatialSoftmax, weights file, contract."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from vla_backbones.resnet_spatial_softmax import (
    SpatialSoftmax,
    SpatialSoftmaxBackbone,
    center_crop,
    random_crop,
)
from vla_core import ConfigError, FeatureType, PolicyFeature, build_backbone, save_safetensors
from vla_core.testing import check_backbone, random_batch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than a contended pool (and makes timings stable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(cams=1, steps=1, shape=(3, 40, 40), **kw) -> SpatialSoftmaxBackbone:
    spec = {
        "type": "resnet_spatial_softmax",
        "image_keys": [f"observation.images.c{i}" for i in range(cams)],
        "image_shape": list(shape),
        "n_obs_steps": steps,
        "num_keypoints": 4,
        **kw,
    }
    return build_backbone(spec)


def images(backbone, batch_size=2, seed=0):
    c = backbone.config
    feats = {k: PolicyFeature(FeatureType.VISUAL, tuple(c.image_shape)) for k in c.image_keys}
    return random_batch(
        feats, batch_size=batch_size, n_obs_steps=c.n_obs_steps, generator=torch.Generator().manual_seed(seed)
    )


def test_contract_suite():
    torch.manual_seed(0)
    backbone = make(cams=2, steps=2, crop_shape=[32, 32])
    context = check_backbone(backbone, images(backbone))
    assert context.features.shape == (2, 4, 8)
    assert context.attention_mask.all()


@settings(max_examples=4, deadline=None)
@given(cams=st.integers(1, 2), steps=st.integers(1, 3), batch=st.integers(1, 2), separate=st.booleans())
def test_one_token_per_camera_and_step(cams, steps, batch, separate):
    torch.manual_seed(0)
    backbone = make(cams, steps, shape=(3, 24, 24), separate_encoder_per_camera=separate).eval()
    data = images(backbone, batch)
    with torch.no_grad():
        out = backbone(data).features
    assert out.shape == (batch, steps * cams, 8)
    # token s * cams + c is camera c at step s, encoded on its own
    for s in range(steps):
        for c in range(cams):
            enc = backbone.encoders[c if separate else 0]
            with torch.no_grad():
                want = enc(
                    data[f"observation.images.c{c}"][:, s] if steps > 1 else data[f"observation.images.c{c}"]
                )
            torch.testing.assert_close(out[:, s * cams + c], want, atol=1e-5, rtol=1e-5)
    assert len(backbone.encoders) == (cams if separate else 1)


def test_group_norm_replaces_every_batch_norm():
    with_gn, with_bn = make(use_group_norm=True), make(use_group_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in with_gn.modules())
    norms = [m for m in with_gn.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 20
    assert all(m.num_groups == m.num_channels // 16 for m in norms)


def test_crop_random_in_training_center_in_eval():
    backbone = make(shape=(3, 40, 40), crop_shape=[32, 32])
    x = torch.rand(16, 3, 40, 40)
    backbone.eval()
    torch.testing.assert_close(backbone.preprocess(x), x[..., 4:36, 4:36])
    backbone.train()
    torch.manual_seed(0)
    crops = backbone.preprocess(x)
    assert crops.shape == (16, 3, 32, 32)
    offsets = set()
    for i in range(16):  # every crop is a window of its own image, not all at the same place
        found = [
            (t, c)
            for t in range(9)
            for c in range(9)
            if torch.equal(crops[i], x[i, :, t : t + 32, c : c + 32])
        ]
        assert found
        offsets.add(found[0])
    assert len(offsets) > 1
    fixed = make(shape=(3, 40, 40), crop_shape=[32, 32], crop_is_random=False).train()
    torch.testing.assert_close(fixed.preprocess(x), x[..., 4:36, 4:36])


def test_center_crop_rounds_like_torchvision():
    x = torch.rand(2, 3, 41, 38)
    torch.testing.assert_close(center_crop(x, (30, 31)), torchvision.transforms.CenterCrop((30, 31))(x))
    assert random_crop(x, (41, 38)).equal(x)


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(channels=1, height=5, width=7, num_keypoints=1)
    with torch.no_grad():
        pool.conv.weight.fill_(1.0)
        pool.conv.bias.zero_()
    maps = torch.full((1, 1, 5, 7), -1e4)
    maps[0, 0, 4, 0] = 0.0  # bottom-left: x = -1, y = +1
    torch.testing.assert_close(pool(maps), torch.tensor([[[-1.0, 1.0]]]))
    assert pool.pos_grid.shape == (35, 2) and "pos_grid" in pool.state_dict()


def test_pretrained_weights_from_a_local_state_dict(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.safetensors"
    save_safetensors(reference.state_dict(), path)
    backbone = make(use_group_norm=False, pretrained_weights=str(path))
    torch.testing.assert_close(backbone.encoders[0].backbone[0].weight, reference.conv1.weight)
    torch.testing.assert_close(
        backbone.encoders[0].backbone[7][1].bn2.running_var, reference.layer4[1].bn2.running_var
    )
    with pytest.raises(ConfigError, match="use_group_norm"):
        make(use_group_norm=True, pretrained_weights=str(path))


def test_resize_then_crop():
    backbone = make(shape=(3, 48, 64), resize_shape=[24, 32], crop_shape=[20, 28]).eval()
    assert backbone.preprocess(torch.rand(1, 3, 48, 64)).shape == (1, 3, 20, 28)
    assert backbone.encoders[0].pool.pos_grid.shape == (1, 2)  # 20x28 -> 1x1 after layer4


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="crop_shape"):
        make(shape=(3, 32, 32), crop_shape=[40, 40])
    with pytest.raises(ConfigError, match="vision_backbone"):
        make(vision_backbone="vit")
    with pytest.raises(ConfigError, match="image_keys"):
        build_backbone({"type": "resnet_spatial_softmax", "image_shape": [3, 8, 8]})


def test_spatial_softmax_keeps_low_precision_features_with_an_fp32_grid():
    """FSDP's mixed precision casts parameters, not buffers: the fp32 position grid follows the features."""
    pool = SpatialSoftmax(channels=4, height=3, width=3, num_keypoints=2)
    pool.conv.to(torch.bfloat16)
    out = pool(torch.randn(2, 4, 3, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2, 2)
    assert pool.pos_grid.dtype == torch.float32


def test_tiny_config_fits_the_contract_cameras(tmp_path):
    fields = SpatialSoftmaxBackbone.tiny_config(tmp_path)
    assert fields["use_group_norm"] and "image_keys" not in fields and "image_shape" not in fields
    backbone = build_backbone(
        {
            "type": "resnet_spatial_softmax",
            "image_keys": ["observation.images.top", "observation.images.wrist"],
            "image_shape": [3, 32, 32],
            **fields,
        }
    )
    torch.manual_seed(0)
    context = check_backbone(backbone, images(backbone))
    assert context.features.shape == (2, 2, 2 * fields["num_keypoints"])
