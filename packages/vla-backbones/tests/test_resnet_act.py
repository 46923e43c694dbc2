"""resnet_act: token and position shapes, cameras (mixed resolutions too), torchvision's forward, FSDP units,
pretrained weights, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from vla_backbones.resnet_act import ResNetACTBackbone, ResNetACTConfig, feature_map_size, sine_pos_embed_2d
from vla_core import BACKBONES, CheckpointError, ConfigError, PolicyFeature
from vla_core.testing import check_backbone, random_batch

CAMS = ("observation.images.top", "observation.images.left", "observation.images.right")


def backbone(n_cams=1, **kw) -> ResNetACTBackbone:
    torch.manual_seed(0)
    return BACKBONES.build({"type": "resnet_act", "image_keys": list(CAMS[:n_cams]), "dim_model": 32, **kw})


def images(n_cams, bsz=2, hw=(64, 96), seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(bsz, 3, *hw, generator=g) for k in CAMS[:n_cams]}


def randomize_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in module.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("weight"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)


@pytest.mark.parametrize("n_cams", [1, 3])
def test_contract_and_shapes(n_cams):
    b = backbone(n_cams)
    feats = {k: PolicyFeature("VISUAL", (3, 64, 96)) for k in CAMS[:n_cams]}
    out = check_backbone(b, random_batch(feats, batch_size=2))
    # 64x96 -> 2x3 feature map per camera
    assert out.features.shape == (2, n_cams * 6, 32)
    assert out.pos_embed.shape == (1, n_cams * 6, 32)
    assert out.attention_mask.all()
    # every camera gets the same position map
    pos = out.pos_embed[0].reshape(n_cams, 6, 32)
    assert torch.equal(pos, pos[:1].expand_as(pos))


def test_cameras_are_concatenated_in_key_order():
    b3 = backbone(3).eval()
    imgs = images(3)
    out = b3(imgs).features
    for i, key in enumerate(CAMS):
        alone = b3.feature_map(imgs[key]).flatten(2).transpose(1, 2)  # (B, h*w, D) row-major
        torch.testing.assert_close(out[:, 6 * i : 6 * (i + 1)], alone)


def test_pos_embed_matches_detr_sine_formula():
    h, w, d = 3, 4, 16
    pos = sine_pos_embed_2d(h, w, d).reshape(h, w, d)
    half = d // 2
    two_pi = 2 * torch.pi
    y = torch.arange(1, h + 1) / (h + 1e-6) * two_pi
    x = torch.arange(1, w + 1) / (w + 1e-6) * two_pi
    for i in range(half):
        freq = 10000 ** (2 * (i // 2) / half)
        fn = torch.sin if i % 2 == 0 else torch.cos
        torch.testing.assert_close(pos[:, 0, i], fn(y / freq), atol=1e-6, rtol=0)
        torch.testing.assert_close(pos[0, :, half + i], fn(x / freq), atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["resnet18", "resnet50"])
def test_feature_map_is_torchvision_layer4_then_proj(variant):
    """torchvision's own modules up to layer4 (as LeRobot's IntermediateLayerGetter runs them, all
    on NCHW memory), then the 1x1 projection: same features and same gradients for the images and
    every weight. In float64: the channels-last stem convolution sums in another order."""
    from torchvision.models._utils import IntermediateLayerGetter

    b = backbone(1, variant=variant).train().double()
    randomize_bn(b.resnet)
    x = images(1, hw=(48, 64))[CAMS[0]].double().requires_grad_()
    got = b.feature_map(x)
    seed = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    got_grads = torch.autograd.grad((got * seed).sum(), [x, *b.parameters()])
    x_ref = x.detach().clone().requires_grad_()
    ref = b.proj(IntermediateLayerGetter(b.resnet, {"layer4": "out"})(x_ref)["out"])
    ref_grads = torch.autograd.grad((ref * seed).sum(), [x_ref, *b.parameters()])
    torch.testing.assert_close(got, ref)
    for name, g, g_ref in zip(["images", *(n for n, _ in b.named_parameters())], got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g, g_ref, msg=name)


@pytest.mark.parametrize("variant", ["resnet18", "resnet50"])
def test_every_fsdp_unit_runs_as_a_module(variant):
    """Each block of ``fsdp_units()`` is called (its forward hooks fire once per image batch): FSDP2
    gathers a unit's weights and activation checkpointing wraps its forward only through that call."""
    b = backbone(2, variant=variant)
    units = [m for m in b.modules() if isinstance(m, tuple(b.fsdp_units()))]
    assert len(units) == (8 if variant == "resnet18" else 16)
    calls = []
    for unit in units:
        unit.register_forward_hook(lambda module, args, out: calls.append(module))
    b(images(2))
    assert calls == units  # every block once, in order (the cameras run as one batch)


def test_tiny_config_builds_fast_for_two_small_cameras():
    import time

    fields = ResNetACTBackbone.tiny_config(Path("."))
    assert "type" not in fields and "image_keys" not in fields
    t0 = time.perf_counter()
    b = BACKBONES.build({"type": "resnet_act", "image_keys": list(CAMS[:2]), "image_shape": [3, 32, 32], **fields})
    assert time.perf_counter() - t0 < 1.0
    out = b(images(2, hw=(32, 32)))
    assert out.features.shape == (2, 2, fields["dim_model"])  # 32x32 -> one token per camera


def test_trainable_batchnorm_and_dilation():
    with pytest.raises(ConfigError, match="dilation"):
        backbone(1, replace_final_stride_with_dilation=True)
    b = backbone(1, variant="resnet50", frozen_bn=False, replace_final_stride_with_dilation=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())
    out = b(images(1))
    assert out.features.shape == (2, 4 * 6, 32)  # stride 16: 64x96 -> 4x6


def test_pretrained_weights_safetensors_and_pth(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    randomize_bn(ref, seed=3)
    state = ref.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    for name in ("r18.safetensors", "r18.pth"):
        b = backbone(1, pretrained_weights=str(tmp_path / name))
        for key, value in b.resnet.state_dict().items():
            assert torch.equal(value, state[key]), key
    with pytest.raises(CheckpointError, match="not found"):
        backbone(1, pretrained_weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="not a torchvision ResNet"):
        backbone(1, variant="resnet34", pretrained_weights=str(tmp_path / "r18.safetensors"))


def test_bad_inputs_raise_clear_errors():
    b = backbone(2)
    imgs = images(2)
    with pytest.raises(ValueError, match="missing batch key 'observation.images.left'"):
        b({CAMS[0]: imgs[CAMS[0]]})
    with pytest.raises(ValueError, match=r"expected an image of shape \(B, 3, H, W\)"):
        b({CAMS[0]: imgs[CAMS[0]], CAMS[1]: torch.rand(2, 1, 64, 96)})
    with pytest.raises(ConfigError, match="variant"):
        ResNetACTConfig(image_keys=CAMS[:1], variant="vgg16")
    with pytest.raises(ConfigError, match="image_keys"):
        ResNetACTConfig()
    with pytest.raises(ConfigError, match="image_shape"):
        ResNetACTConfig(image_keys=CAMS[:1], image_shape=(1, 64, 64))


@settings(max_examples=6, deadline=None)
@given(h=st.integers(32, 100), w=st.integers(32, 100), n_cams=st.integers(1, 2), dim=st.sampled_from([8, 16, 24]))
def test_token_count_follows_feature_map(h, w, n_cams, dim):
    b = BACKBONES.build({"type": "resnet_act", "image_keys": list(CAMS[:n_cams]), "dim_model": dim})
    with torch.no_grad():
        out = b(images(n_cams, bsz=1, hw=(h, w)))
    fh, fw = -(-h // 32), -(-w // 32)
    assert out.features.shape == (1, n_cams * fh * fw, dim)
    assert out.pos_embed.shape == (1, n_cams * fh * fw, dim)


# ----------------------------------------------------------------------------- cameras of different sizes
MIXED = ((3, 64, 96), (3, 48, 64), (3, 64, 96))  # top and right share a shape, left is smaller


def mixed_images(shapes, bsz=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand(bsz, *s, generator=g) for k, s in zip(CAMS, shapes)}


def test_mixed_resolutions_each_camera_gets_its_own_map_and_positions():
    """Per camera: the tokens of that camera run alone and the sine positions of its own map size, in
    camera order (as LeRobot's ACT loops over its cameras)."""
    b = backbone(3, image_shapes=[list(s) for s in MIXED]).eval()
    randomize_bn(b.resnet)
    imgs = mixed_images(MIXED)
    out = check_backbone(b, imgs)
    with torch.no_grad():
        sizes = [(2, 3), (2, 2), (2, 3)]  # 64x96 -> 2x3, 48x64 -> 2x2
        assert out.features.shape == (2, 6 + 4 + 6, 32) and out.pos_embed.shape == (1, 16, 32)
        start = 0
        for key, (h, w) in zip(CAMS, sizes):
            alone = b.feature_map(imgs[key])
            assert alone.shape[2:] == (h, w)
            n = h * w
            torch.testing.assert_close(out.features[:, start : start + n], alone.flatten(2).transpose(1, 2))
            torch.testing.assert_close(out.pos_embed[0, start : start + n], sine_pos_embed_2d(h, w, 32))
            start += n
    assert b.context_spec().num_tokens == 16


def test_cameras_of_one_shape_share_a_resnet_pass():
    """Grouped by shape: each block runs once per distinct camera shape (not once per camera)."""
    b = backbone(3, image_shapes=[list(s) for s in MIXED])
    calls = []
    b.resnet.layer1[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    b(mixed_images(MIXED, bsz=2))
    assert calls == [4, 2]  # top + right as one batch of 2 x 2, then left
    calls.clear()
    b(mixed_images(((3, 64, 96),) * 3, bsz=2))
    assert calls == [6]


@settings(max_examples=8, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.just(3), st.integers(20, 90), st.integers(20, 90)), min_size=1, max_size=3),
    dilation=st.booleans(),
)
def test_context_spec_counts_the_tokens_of_every_camera(shapes, dilation):
    """num_tokens = sum over cameras of the layer4 map cells, exact for odd sizes and with dilation;
    check_backbone compares it with the forward's token count."""
    variant = "resnet50" if dilation else "resnet18"
    b = backbone(len(shapes), variant=variant, image_shapes=[list(s) for s in shapes],
                 replace_final_stride_with_dilation=dilation)
    with torch.no_grad():
        out = b(mixed_images(shapes, bsz=1))
    expected = 0
    for _, h, w in shapes:
        fh, fw = feature_map_size(h, w, dilation)
        k = 16 if dilation else 32
        assert (fh, fw) == (-(-h // k), -(-w // k))
        expected += fh * fw
    assert out.features.shape[1] == b.context_spec().num_tokens == expected
    check_backbone(b, mixed_images(shapes, bsz=1))


def test_image_shape_and_image_shapes():
    keys = list(CAMS[:2])
    old = ResNetACTConfig(image_keys=keys, image_shape=(3, 64, 96))  # a config from before image_shapes
    assert old.camera_shapes() == ((3, 64, 96), (3, 64, 96))
    assert ResNetACTBackbone(old).context_spec().num_tokens == 12
    new = ResNetACTConfig.from_dict({"image_keys": keys, "image_shape": [3, 64, 96],
                                     "image_shapes": [[3, 64, 96], [3, 48, 64]]})
    assert new.camera_shapes() == ((3, 64, 96), (3, 48, 64))
    assert ResNetACTConfig.from_json(new.to_json()) == new
    assert ResNetACTConfig(image_keys=keys).camera_shapes() is None
    assert ResNetACTBackbone(ResNetACTConfig(image_keys=keys)).context_spec().num_tokens is None
    with pytest.raises(ConfigError, match=r"image_shapes: expected one \(C, H, W\) per camera"):
        ResNetACTConfig(image_keys=keys, image_shapes=((3, 64, 96),))
    with pytest.raises(ConfigError, match="image_shapes: a ResNet takes 3-channel images"):
        ResNetACTConfig(image_keys=keys, image_shapes=((3, 64, 96), (1, 64, 96)))
    with pytest.raises(ConfigError, match="image_shape: is the first camera's shape"):
        ResNetACTConfig(image_keys=keys, image_shape=(3, 48, 64), image_shapes=((3, 64, 96), (3, 48, 64)))
