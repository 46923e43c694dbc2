"""resnet_onednn: the cached oneDNN inference plan equals the eager forward and never goes stale."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vla_backbones import resnet_onednn
from vla_backbones.resnet_act import ResNetACTBackbone
from vla_core import BACKBONES

pytestmark = pytest.mark.skipif(not resnet_onednn.available(), reason="this PyTorch build has no oneDNN")
CAM = "observation.images.top"


def backbone(**kw) -> ResNetACTBackbone:
    torch.manual_seed(0)
    b = BACKBONES.build({"type": "resnet_act", "image_keys": [CAM], "dim_model": 32, **kw}).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding is exercised
        for name, buf in b.named_buffers():
            if name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
    return b


def eager(b: ResNetACTBackbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return b._eager_feature_map(x)


def plan(b: ResNetACTBackbone, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = b.feature_map(x)
    assert b._onednn_plans._plan is not None, "the oneDNN plan was not used"
    return out


def close(got: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("kw", [
    {},
    {"variant": "resnet50", "replace_final_stride_with_dilation": True},
    {"variant": "resnext50_32x4d"},
    {"frozen_bn": False},  # nn.BatchNorm2d in eval mode folds like the frozen one
])
def test_plan_equals_eager_forward(kw):
    b = backbone(**kw)
    x = torch.rand(2, 3, 64, 96)
    got = plan(b, x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    close(got, eager(b, x))


@settings(max_examples=8, deadline=None)
@given(bsz=st.integers(1, 3), h=st.integers(33, 100), w=st.integers(33, 100))
def test_plan_equals_eager_for_any_image_size(bsz, h, w):
    b = backbone()
    x = torch.rand(bsz, 3, h, w)
    close(plan(b, x), eager(b, x))


def test_weight_changes_and_new_shapes_rebuild_the_plan():
    b = backbone()
    x = torch.rand(1, 3, 64, 64)
    first = plan(b, x)
    with torch.no_grad():
        b.resnet.layer2[0].conv1.weight.mul_(-2.0)  # an in-place update, as an optimizer step
    changed = plan(b, x)
    assert not torch.allclose(changed, first, rtol=1e-3, atol=1e-3)
    close(changed, eager(b, x))
    state = {k: v.clone() for k, v in backbone().state_dict().items()}
    b.load_state_dict(state)
    close(plan(b, x), first)
    bigger = torch.rand(2, 3, 96, 64)
    close(plan(b, bigger), eager(b, bigger))


def test_autograd_and_training_batchnorm_use_the_eager_path():
    b = backbone()
    x = torch.rand(2, 3, 64, 64)
    out = b.feature_map(x)  # gradients recorded: eager, differentiable
    assert out.requires_grad and b._onednn_plans._plan is None
    out.sum().backward()
    assert b.resnet.conv1.weight.grad is not None
    trainable = backbone(frozen_bn=False).train()  # batch statistics: cannot be folded
    assert not resnet_onednn.applies(trainable.resnet, x)
    with torch.no_grad():
        trainable.feature_map(x)
    assert trainable._onednn_plans._plan is None
    assert not resnet_onednn.applies(b.resnet, x.double())


def test_copies_and_pickles_start_without_a_plan():
    b = backbone()
    x = torch.rand(1, 3, 64, 64)
    ref = plan(b, x)
    clone = copy.deepcopy(b)
    assert clone._onednn_plans._plan is None
    close(plan(clone, x), ref)
    restored = pickle.loads(pickle.dumps(b))
    close(plan(restored, x), ref)
