"""unet_diffusion: the UNet equals Diffusion Policy's functional formulation, the FiLM table, conditioning,
schedulers, loss, EMA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from vla_core import BackboneOutput, ConfigError, FeatureType, PolicyFeature, build_head
from vla_core.testing import check_head, random_batch
from vla_heads.unet_diffusion import ConditionalUnet1d, UNetDiffusionHead
from vla_heads.unet_diffusion.layers import ResidualBlock1d

TINY = {"down_dims": [8, 16, 32], "diffusion_step_embed_dim": 8, "n_groups": 4, "kernel_size": 3}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than a contended pool (and makes timings stable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_head(**kw) -> UNetDiffusionHead:
    spec = {
        "type": "unet_diffusion",
        "action_dim": 2,
        "horizon": 8,
        "context_dim": 6,
        "state_dim": 3,
        "n_obs_steps": 2,
        "image_keys": ["observation.images.top"],
        "num_train_timesteps": 20,
        **TINY,
        **kw,
    }
    return build_head(spec)


def inputs(head: UNetDiffusionHead, batch_size: int = 2, seed: int = 0):
    c = head.config
    g = torch.Generator().manual_seed(seed)
    feats = {"action": PolicyFeature(FeatureType.ACTION, (c.action_dim,))}
    if c.state_dim:
        feats["observation.state"] = PolicyFeature(FeatureType.STATE, (c.state_dim,))
    if c.env_state_dim:
        feats["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (c.env_state_dim,))
    batch = random_batch(
        feats, batch_size=batch_size, horizon=c.horizon, n_obs_steps=c.n_obs_steps, generator=g
    )
    tokens = c.tokens_per_sample or 3
    context = BackboneOutput(
        features=torch.randn(batch_size, tokens, c.context_dim, generator=g),
        attention_mask=torch.ones(batch_size, tokens, dtype=torch.bool),
    )
    return context, batch


# ----------------------------------------------------------------------------- reference formulation
def reference_unet(unet: ConditionalUnet1d, x, timestep, global_cond):
    """The same parameters through functional conv1d / conv_transpose1d / group_norm (Diffusion Policy's
    math written out), x (B, H, A)."""

    def conv_block(block, h):
        h = F.conv1d(h, block.conv.weight, block.conv.bias, padding=block.conv.padding)
        return F.mish(
            F.group_norm(h, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
        )

    def res(block, h, cond):
        out = conv_block(block.conv1, h)
        film = F.linear(F.mish(cond), block.film.weight, block.film.bias).unsqueeze(-1)
        c = block.out_channels
        out = film[:, :c] * out + film[:, c:] if block.scale_modulation else out + film
        out = conv_block(block.conv2, out)
        skip = h if block.residual is None else F.conv1d(h, block.residual.weight, block.residual.bias)
        return out + skip

    cond = torch.cat([unet.step_encoder(timestep), global_cond], dim=-1)
    h, skips = x.transpose(1, 2), []
    for level in unet.encoder:
        h = res(level.res2, res(level.res1, h, cond), cond)
        skips.append(h)
        if level.downsample is not None:
            h = F.conv1d(h, level.downsample.weight, level.downsample.bias, stride=2, padding=1)
    for block in unet.mid:
        h = res(block, h, cond)
    for level in unet.decoder:
        h = torch.cat([h, skips.pop()], dim=1)
        h = res(level.res2, res(level.res1, h, cond), cond)
        h = F.conv_transpose1d(h, level.upsample.weight, level.upsample.bias, stride=2, padding=1)
    h = conv_block(unet.final_block, h)
    return F.conv1d(h, unet.final_proj.weight, unet.final_proj.bias).transpose(1, 2)


@pytest.mark.parametrize("scale", [True, False])
def test_unet_equals_the_functional_reference(scale):
    torch.manual_seed(0)
    unet = ConditionalUnet1d(
        3, 10, down_dims=(8, 16, 32), kernel_size=5, n_groups=4, step_embed_dim=8, scale_modulation=scale
    )
    x, t, g = torch.randn(4, 16, 3), torch.tensor([0, 3, 50, 99]), torch.randn(4, 10)
    want = reference_unet(unet, x, t, g)
    torch.testing.assert_close(unet(x, t, g), want, atol=1e-5, rtol=1e-4)
    table = unet.film_table(torch.tensor([99, 3]), g)  # the sampling path: FiLM precomputed per step
    torch.testing.assert_close(
        unet(x, films=table.at(1)), reference_unet(unet, x, torch.full((4,), 3), g), atol=1e-5, rtol=1e-4
    )
    grads = torch.autograd.grad(unet(x, t, g).square().mean(), list(unet.parameters()))
    assert all(gr.abs().sum() > 0 for gr in grads)  # the loss reaches every parameter


def test_unet_is_torch_conv_modules_with_lerobot_names():
    unet = ConditionalUnet1d(2, 6, down_dims=(8, 16), kernel_size=3, n_groups=2, step_embed_dim=8)
    assert isinstance(unet.encoder[0].downsample, torch.nn.Conv1d)
    assert isinstance(unet.decoder[0].upsample, torch.nn.ConvTranspose1d)
    assert isinstance(unet.encoder[0].res1.conv1.norm, torch.nn.GroupNorm)
    assert (
        isinstance(unet.encoder[0].res1.residual, torch.nn.Conv1d) and unet.encoder[0].res2.residual is None
    )
    names = set(unet.state_dict())
    for key in (  # the names vla_train.convert.lerobot_diffusion.KEY_RENAMES maps LeRobot's keys to
        "step_encoder.1.weight",
        "encoder.0.res1.conv1.conv.weight",
        "encoder.0.res1.conv1.norm.bias",
        "encoder.0.res1.film.weight",
        "encoder.0.res1.residual.weight",
        "encoder.0.downsample.weight",
        "mid.1.conv2.conv.bias",
        "decoder.0.upsample.weight",
        "final_block.conv.weight",
        "final_proj.bias",
    ):
        assert key in names


@settings(max_examples=6, deadline=None)
@given(
    scale=st.booleans(),
    c_in=st.sampled_from([2, 4, 8]),
    c_out=st.sampled_from([4, 8]),
    steps=st.integers(1, 5),
    bsz=st.integers(1, 3),
)
def test_block_film_table_equals_its_film_projection(scale, c_in, c_out, steps, bsz):
    """FiLM from the table (step part + global part) gives the block's own forward on ``cond``."""
    torch.manual_seed(steps * 10 + bsz)
    block = ResidualBlock1d(c_in, c_out, 5 + 3, kernel_size=3, n_groups=2, scale_modulation=scale)
    x, step_emb, glob = torch.randn(bsz, c_in, 4), torch.randn(steps, 5), torch.randn(bsz, 3)
    step_part, global_part = block.film_table(F.mish(step_emb), F.mish(glob))
    assert step_part.shape == (steps, block.film.out_features) and global_part.shape == (
        bsz,
        step_part.shape[1],
    )
    for i in range(steps):
        cond = torch.cat([step_emb[i].expand(bsz, -1), glob], dim=-1)
        want = block(x, cond)
        torch.testing.assert_close(block(x, film=step_part[i] + global_part), want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="cond"):
        block(x)


# ----------------------------------------------------------------------------- head
def test_contract_suite():
    torch.manual_seed(0)
    head = make_head(noise_scheduler_type="DDIM", num_inference_steps=5)  # deterministic from noise alone
    context, batch = inputs(head)
    check_head(head, context, batch)
    assert head.training_defaults == {"ema": True}


@settings(max_examples=6, deadline=None)
@given(
    horizon=st.sampled_from([4, 8, 12]),
    steps=st.integers(1, 3),
    cams=st.integers(1, 3),
    bsz=st.integers(1, 3),
    env=st.sampled_from([None, 2]),
)
def test_shapes_and_global_conditioning(horizon, steps, cams, bsz, env):
    torch.manual_seed(0)
    head = make_head(
        horizon=horizon, n_obs_steps=steps, image_keys=[f"c{i}" for i in range(cams)], env_state_dim=env
    )
    context, batch = inputs(head, bsz)
    assert context.features.shape[1] == steps * cams
    cond = head.global_conditioning(context, batch)
    assert cond.shape == (bsz, head.config.global_cond_dim) == (bsz, steps * (3 + cams * 6 + (env or 0)))
    # per step: [state, that step's tokens, env state], steps flattened (LeRobot's layout)
    width = 3 + cams * 6 + (env or 0)
    for s in range(steps):
        part = cond[:, s * width : (s + 1) * width]
        state = batch["observation.state"]
        torch.testing.assert_close(part[:, :3], state[:, s] if steps > 1 else state)
        torch.testing.assert_close(
            part[:, 3 : 3 + cams * 6], context.features[:, s * cams : (s + 1) * cams].flatten(1)
        )
    head.eval()
    assert head.predict_action(context, batch).shape == (bsz, horizon, 2)
    head.train()
    assert head(context, batch).loss.dim() == 0


def test_mean_pooling_takes_any_number_of_tokens_and_ignores_padding():
    torch.manual_seed(0)
    head = make_head(context_pooling="mean", image_keys=[]).eval()
    context, batch = inputs(head, 2)
    longer = BackboneOutput(
        features=torch.cat([context.features, torch.randn(2, 4, 6)], dim=1),
        attention_mask=torch.cat([context.attention_mask, torch.zeros(2, 4, dtype=torch.bool)], 1),
    )
    torch.testing.assert_close(
        head.global_conditioning(longer, batch), head.global_conditioning(context, batch)
    )
    assert head.config.global_cond_dim == 2 * 3 + 6
    with pytest.raises(ValueError, match="flatten pooling expects 2 tokens"):
        make_head().global_conditioning(longer, batch)


def test_ddim_is_deterministic_given_noise_and_ddpm_draws_from_the_generator_or_global_rng():
    torch.manual_seed(0)
    head = make_head(noise_scheduler_type="DDIM", num_inference_steps=5).eval()
    context, batch = inputs(head)
    noise = torch.randn(2, 8, 2)
    a = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(1))
    b = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not a.is_inference() and a.abs().max() <= 1.0 + 1e-6  # clip_sample keeps x0 in [-1, 1]
    head.use_scheduler("DDPM")
    c = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(1))
    d = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(1))
    e = head.predict_action(context, batch, noise=noise, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(c, d)
    assert not torch.allclose(c, e) and not torch.allclose(a, c)
    assert head.num_inference_steps == 20 and len(head.noise_scheduler.timesteps) == 20
    # without a generator, DDPM's per-step noise comes from the global RNG (diffusers / LeRobot)
    torch.manual_seed(7)
    f = head.predict_action(context, batch, noise=noise)
    torch.manual_seed(7)
    torch.testing.assert_close(head.predict_action(context, batch, noise=noise), f)
    torch.manual_seed(7)
    torch.testing.assert_close(
        head.predict_action(context, batch, noise=noise, generator=torch.default_generator), f
    )
    assert not torch.allclose(head.predict_action(context, batch, noise=noise), f)  # the RNG moved on


def test_scheduler_switch_matches_a_head_built_with_the_other_type():
    torch.manual_seed(0)
    ddpm = make_head(noise_scheduler_type="DDPM").eval()
    ddim = make_head(noise_scheduler_type="DDIM", num_inference_steps=4).eval()
    ddim.load_state_dict(ddpm.state_dict())  # the scheduler holds no weights
    context, batch = inputs(ddpm)
    noise = torch.randn(2, 8, 2)
    ddpm.use_scheduler("DDIM", 4)
    torch.testing.assert_close(
        ddpm.predict_action(context, batch, noise=noise), ddim.predict_action(context, batch, noise=noise)
    )
    assert type(ddpm.noise_scheduler).__name__ == "DDIMScheduler"


def test_sampling_loop_equals_plain_scheduler_loop():
    """The FiLM table + inference-mode loop gives what a plain per-step UNet call (training path) gives."""
    torch.manual_seed(0)
    head = make_head(noise_scheduler_type="DDIM", num_inference_steps=6, clip_sample=False).eval()
    context, batch = inputs(head)
    noise = torch.randn(2, 8, 2)
    got = head.predict_action(context, batch, noise=noise)
    sched = copy.deepcopy(head.noise_scheduler)
    sched.set_timesteps(6)
    x, cond = noise, head.global_conditioning(context, batch)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(head.unet(x, t.expand(2), cond), t, x).prev_sample
    torch.testing.assert_close(got, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_loss_target_and_padding_mask(prediction_type):
    torch.manual_seed(0)
    head = make_head(prediction_type=prediction_type, do_mask_loss_for_padding=True)
    context, batch = inputs(head)
    batch["action_is_pad"][:, 5:] = True
    torch.manual_seed(1)
    base = head(context, batch).loss
    # the loss is the MSE of the prediction against the target over the unpadded steps only
    torch.manual_seed(1)
    noise = torch.randn_like(batch["action"])
    t = torch.randint(0, 20, (2,))
    pred = head.unet(
        head.noise_scheduler.add_noise(batch["action"], noise, t), t, head.global_conditioning(context, batch)
    )
    target = noise if prediction_type == "epsilon" else batch["action"]
    torch.testing.assert_close(base, (pred - target)[:, :5].square().mean())
    unmasked = make_head(prediction_type=prediction_type)
    unmasked.load_state_dict(head.state_dict())
    torch.manual_seed(1)
    torch.testing.assert_close(unmasked(context, batch).loss, (pred - target).square().mean())


def test_ema_copies_are_usable_heads():
    torch.manual_seed(0)
    head = make_head(noise_scheduler_type="DDIM", num_inference_steps=3)
    context, batch = inputs(head)
    ema = AveragedModel(head, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    twin = copy.deepcopy(head)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for _ in range(2):
        head(context, batch).loss.backward()
        opt.step()
        opt.zero_grad()
        ema.update_parameters(head)
    noise = torch.randn(2, 8, 2)
    for copy_ in (ema.module.eval(), twin.eval()):
        out = copy_.predict_action(context, batch, noise=noise)
        assert out.shape == (2, 8, 2) and torch.isfinite(out).all()
    moved = [(p - q).abs().max() for p, q in zip(ema.module.parameters(), twin.parameters())]
    assert max(moved) > 0  # the EMA followed the training, the deep copy did not


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="horizon"):
        make_head(horizon=6)
    with pytest.raises(ConfigError, match="down_dims"):
        make_head(down_dims=[6, 12])
    with pytest.raises(ConfigError, match="noise_scheduler_type"):
        make_head(noise_scheduler_type="Euler")
    with pytest.raises(ConfigError, match="num_context_tokens"):
        make_head(image_keys=[], num_context_tokens=None, context_pooling="flatten")
    assert make_head(image_keys=[], num_context_tokens=None).config.pooling == "mean"  # unset: what fits
    with pytest.raises(ConfigError, match="num_inference_steps"):
        make_head(num_inference_steps=50)


def test_final_block_groups_default_to_n_groups_and_can_differ():
    """LeRobot's final Conv-GroupNorm-Mish block has 8 groups whatever ``n_groups``: ``final_n_groups``."""
    assert make_head().unet.final_block.norm.num_groups == 4  # n_groups of TINY
    head = make_head(final_n_groups=8)
    assert head.unet.final_block.norm.num_groups == 8
    assert {b.conv1.norm.num_groups for b in head.unet.blocks()} == {4}
    with pytest.raises(ConfigError, match="final_n_groups"):
        make_head(final_n_groups=3)
    with pytest.raises(ConfigError, match="sigmoid"):
        make_head(beta_schedule="sigmoid", noise_scheduler_type="DDIM")
    assert make_head(beta_schedule="sigmoid").noise_scheduler.config.beta_schedule == "sigmoid"


def test_tiny_config_builds_a_small_working_head(tmp_path):
    fields = UNetDiffusionHead.tiny_config(tmp_path)
    assert "type" not in fields and "action_dim" not in fields and "context_dim" not in fields
    head = build_head({"type": "unet_diffusion", "action_dim": 3, "context_dim": 6, "state_dim": 4, **fields})
    assert sum(p.numel() for p in head.parameters()) < 50_000
    assert head.config.pooling == "mean" and head.num_inference_steps == 4  # no image_keys: a varying count
    torch.manual_seed(0)
    context, batch = inputs(head)  # three tokens: mean pooling takes any count
    head.use_scheduler("DDIM", 4)
    check_head(head, context, batch)
