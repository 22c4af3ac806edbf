"""The loss and loop on models other than Z-Image: a host's own sigmas and noise scale, eps and v-prediction
anchors, latents with a time axis, and each architecture's table of trained layers."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from sda_core.adapters.layout import Target
from sda_core.training import loss as L
from sda_core.training import train
from sda_core.training.config import SDAConfig
from sda_core.training.step import sda_loss
from sda_core.training.targets import TABLES, select_targets, table_for
from sda_core.training.trajectory import rollout
from sdatest.toy_training import toy_problem

SDXL_SIGMAS = (14.6146, 4.0817, 1.6129, 0.6932, 0.0)  # an eps model's 4-step schedule (illustrative numbers)


def v_coefficients(sigma: torch.Tensor):
    """v-prediction with sigma_data 1: x0 = x/(σ²+1) − v·σ/√(σ²+1)."""
    return 1 / (sigma ** 2 + 1), sigma / torch.sqrt(sigma ** 2 + 1)


# --- schedule and noise ---------------------------------------------------------------------------------

def test_a_given_schedule_replaces_the_flow_one_and_is_checked():
    config = SDAConfig(student_steps=4, div_skip=3, sigmas=SDXL_SIGMAS, shift=None,
                       noise_scale=math.sqrt(1 + 14.6146 ** 2))
    assert config.schedule().tolist() == pytest.approx(list(SDXL_SIGMAS))
    assert config.to_dict()["sigmas"] == pytest.approx(list(SDXL_SIGMAS))
    with pytest.raises(ValueError, match="student_steps \\+ 1 = 5 values, got 4"):
        SDAConfig(student_steps=4, div_skip=3, sigmas=SDXL_SIGMAS[:4])
    with pytest.raises(ValueError, match="strictly decreasing"):
        SDAConfig(student_steps=4, div_skip=3, sigmas=(1.0, 0.5, 0.5, 0.2, 0.0))
    with pytest.raises(ValueError, match="needs sigmas or a flow shift"):
        SDAConfig(shift=None)
    with pytest.raises(ValueError, match="noise_scale"):
        SDAConfig(noise_scale=0.0)


def test_rollout_starts_from_noise_times_the_hosts_noise_scale():
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor(SDXL_SIGMAS)
    (x,) = rollout(lambda x, s, c: x, [z], sigmas, 0, [None, None], noise_scale=3.0)
    assert torch.equal(x, z * 3.0)
    (x,) = rollout(lambda x, s, c: x, [z], sigmas, 0, [None, None])  # a flow model's: sigma_0
    assert torch.equal(x, z * SDXL_SIGMAS[0])


# --- what the anchor compares ---------------------------------------------------------------------------

def test_v_prediction_from_x0_is_salimans_v():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.3, 2.0, 14.6])
    s = sigma.view(-1, 1, 1, 1)
    x_t = x0 + s * eps  # k-diffusion's x at sigma
    want = (eps - s * x0) / torch.sqrt(1 + s ** 2)  # v = alpha·eps − sigma_vp·x0
    c_skip, c_out = v_coefficients(sigma)
    v = L.prediction_from_x0(x_t, x0, c_skip, c_out)
    torch.testing.assert_close(v, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(L.x0_from_prediction(x_t, v, c_skip, c_out), x0, rtol=1e-5, atol=1e-5)


def test_eps_coefficients_give_the_flow_velocity_formula_exactly():
    g = torch.Generator().manual_seed(2)
    x_t, x0 = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.7, 0.2])
    assert torch.equal(L.prediction_from_x0(x_t, x0, torch.ones(2), sigma), L.velocity_from_x0(x_t, x0, sigma))


def test_the_anchor_compares_the_models_own_prediction():
    tp = toy_problem()
    with torch.no_grad():
        tp.models.lokr["mix"].w2.normal_(0, 0.05, generator=torch.Generator().manual_seed(9))
    models = dataclasses.replace(tp.models, parameterization=v_coefficients)
    g = torch.Generator().manual_seed(3)
    x1, x2 = (torch.randn(1, *tp.config.latent_shape, generator=g) for _ in range(2))
    sigma, conds = 2.0, [tp.models.conds[0]]
    terms = sda_loss(models, tp.config, x1, x2, sigma, 7, conds)  # k 7: a pure-anchor step
    with torch.no_grad():
        with tp.models.lokr.disabled():
            base = tp.student(x1, torch.tensor([sigma]), conds[0])
        pol = tp.student(x1, torch.tensor([sigma]), conds[0])
    c_skip, c_out = v_coefficients(torch.tensor(sigma))
    want = F.huber_loss((c_skip * x1 - pol) / c_out, (c_skip * x1 - base) / c_out, delta=0.08)
    torch.testing.assert_close(terms.anchor, want)
    flow = sda_loss(tp.models, tp.config, x1, x2, sigma, 7, conds)  # velocity units: another number
    assert not torch.allclose(flow.anchor, terms.anchor)


def test_a_v_prediction_student_with_its_own_schedule_trains_and_resumes_the_same_curve(tmp_path):
    settings = dict(steps=6, student_steps=4, sigmas=SDXL_SIGMAS, shift=None, div_skip=3,
                    noise_scale=math.sqrt(1 + SDXL_SIGMAS[0] ** 2))
    tp = toy_problem(**settings)
    tp.models = dataclasses.replace(tp.models, parameterization=v_coefficients)
    before = {k: v.detach().clone() for k, v in tp.models.lokr.named_tensors().items()}
    whole = train(tp.models, tp.config)
    assert all(math.isfinite(h["total"]) for h in whole.history)
    assert all(any(math.isclose(h["sigma"], s, rel_tol=1e-6) for s in SDXL_SIGMAS[:4]) for h in whole.history)
    assert any(not torch.equal(before[k], v) for k, v in tp.models.lokr.named_tensors().items())

    again = toy_problem(**settings)
    again.models = dataclasses.replace(again.models, parameterization=v_coefficients)
    path = str(tmp_path / "run.ckpt.safetensors")
    first = train(again.models, dataclasses.replace(again.config, steps=3), checkpoint_path=path)
    from sda_core.training import load_checkpoint

    rest = train(again.models, again.config, resume=load_checkpoint(path))
    assert [h["total"] for h in first.history + rest.history[3:]] == [h["total"] for h in whole.history]


# --- latents with a time axis ---------------------------------------------------------------------------

def test_lowpass_of_a_5d_latent_pools_each_frame():
    delta = torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    frames = torch.cat([F.avg_pool2d(delta[:, :, t], 8).reshape(2, 4, 1, 2, 2) for t in range(3)], dim=2)
    torch.testing.assert_close(L.lowpass(delta, 8), frames.flatten(1))
    assert torch.equal(L.lowpass(delta[:, :, 0], 8), L.lowpass(delta[:, :, :1], 8))  # one frame == 4-D


def test_a_model_with_5d_latents_trains():
    tp = toy_problem(steps=3, latent_shape=(16, 1, 16, 16))

    def five_d(model):
        return lambda x, sigma, cond: model(x.squeeze(2), sigma, cond).unsqueeze(2)

    models = dataclasses.replace(tp.models, student=five_d(tp.student), teacher=five_d(tp.teacher))
    result = train(models, tp.config)
    assert result.steps == 3 and all(math.isfinite(h["total"]) for h in result.history)


# --- which layers train ---------------------------------------------------------------------------------

def _names(*names):
    return {n: Target(n, None, (8, 8)) for n in names}


def test_each_architecture_trains_attention_and_feed_forward_only():
    flux = _names(*(f"transformer.{n}" for n in (
        "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.attn.to_add_out", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff_context.net.2",
        "single_transformer_blocks.3.attn.to_v", "single_transformer_blocks.3.proj_mlp", "single_transformer_blocks.3.proj_out",
        "transformer_blocks.0.norm1.linear", "single_transformer_blocks.3.norm.linear", "transformer_blocks.0.attn.norm_q",
        "x_embedder", "norm_out.linear", "proj_out")), "diffusion_model.double_blocks.0.img_attn.proj")
    chosen = select_targets(TABLES["flux"], flux)
    assert sorted(chosen) == sorted([
        "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.attn.to_out.0",
        "transformer_blocks.0.attn.to_add_out", "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff_context.net.2",
        "single_transformer_blocks.3.attn.to_v", "single_transformer_blocks.3.proj_mlp",
        "single_transformer_blocks.3.proj_out"])
    sd3 = select_targets(TABLES["sd3"], _names("transformer.transformer_blocks.1.attn2.to_k",
                                               "transformer.transformer_blocks.1.norm1.linear",
                                               "transformer.transformer_blocks.1.ff.net.2"))
    assert sorted(sd3) == ["transformer_blocks.1.attn2.to_k", "transformer_blocks.1.ff.net.2"]
    qwen = select_targets(TABLES["qwen_image"], _names("transformer.transformer_blocks.0.img_mlp.net.0.proj",
                                                       "transformer.transformer_blocks.0.img_mod.1",
                                                       "transformer_blocks.0.attn.to_q"))  # no prefix: another format
    assert sorted(qwen) == ["transformer_blocks.0.img_mlp.net.0.proj"]
    sdxl = select_targets(TABLES["sdxl"], _names("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                                                 "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
                                                 "lora_unet_output_blocks_2_1_transformer_blocks_1_ff_net_0_proj",
                                                 "lora_unet_input_blocks_4_1_proj_in",
                                                 "lora_unet_input_blocks_4_0_in_layers_2",
                                                 "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"))
    assert sorted(sdxl) == ["input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                            "middle_block_1_transformer_blocks_0_attn2_to_out_0",
                            "output_blocks_2_1_transformer_blocks_1_ff_net_0_proj"]
    assert TABLES["sdxl"].file_key("input_blocks_4_1_transformer_blocks_0_attn1_to_q") == (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q")


def test_zimage_refiners_only_when_asked():
    names = _names("diffusion_model.layers.0.attention.to_q", "diffusion_model.noise_refiner.0.feed_forward.w1",
                   "diffusion_model.context_refiner.1.attention.to_out.0", "diffusion_model.layers.0.adaLN_modulation.0")
    assert sorted(select_targets(TABLES["zimage"], names)) == ["layers.0.attention.to_q"]
    assert len(select_targets(TABLES["zimage"], names, include_refiners=True)) == 3


def test_the_table_follows_the_hosts_model_class():
    assert table_for("Flux", zimage=False).family == "FLUX.1"
    assert table_for("Lumina2", zimage=True).family == "Z-Image"
    assert table_for("Lumina2", zimage=False) is None  # Lumina 2 itself: no table
    assert table_for("SD15", zimage=False) is None
