"""Conditioning noise, CADS and Model by Step sampled by ComfyUI's own KSampler and the Seed Diversity Grid,
inside ComfyUI's executor, on a tiny Z-Image (euler/simple)."""
from __future__ import annotations

import pytest
import torch

from sdatest import registry
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

SEEDS = [3, 40, 41, 977]
SIZE = 64
NOISE = dict(strength=0.8, start_percent=0.0, end_percent=0.5, protect_tokens=1)
CADS = dict(tau1=0.3, tau2=0.9, noise_scale=0.5, psi=1.0)
BY_STEP = dict(cfg_early=1.0, start_percent=0.0, end_percent=0.25)


def _base(g):
    return (g.add("SDATest_TinyZImage", seed=0, dtype="fp32"), g.add("SDATest_TinyConditioning", seed=1, tokens=8),
            g.add("SDATest_TinyConditioning", seed=2, tokens=8))


def _method(g, kind, model, **overrides):
    if kind == "noise":
        return g.add("SDAConditioningNoise", model=model, **dict(NOISE, **overrides))
    if kind == "cads":
        return g.add("SDAConditionAnnealing", model=model, **dict(CADS, **overrides))
    early = g.add("SDATest_TinyZImage", seed=1, dtype="fp32")
    return g.add("SDAModelByStep", model=model, model_early=early, **dict(BY_STEP, **overrides))


def _ksampler(g, model, pos, neg, key, seed=3, cfg=1.0, steps=4, batch=1):
    latent = g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=batch)
    out = g.add("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler", scheduler="simple",
                positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=out, key=key)
    return out


def _take(key):
    return registry.take(key)["samples"].float()


OFF = {"noise": [dict(strength=0.0), dict(start_percent=0.5, end_percent=0.5)],
       "cads": [dict(noise_scale=0.0)],  # t = 1 at the first step is always past τ2: no empty window
       "by_step": [dict(start_percent=0.5, end_percent=0.5)]}


@pytest.mark.parametrize("kind", ["noise", "cads", "by_step"])
@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_off_gives_the_base_images_exactly_and_on_changes_them(comfy, kind, cfg):
    g = Graph()
    model, pos, neg = _base(g)
    _ksampler(g, model, pos, neg, "base", cfg=cfg, batch=2)
    _ksampler(g, _method(g, kind, model), pos, neg, "on", cfg=cfg, batch=2)
    for k, overrides in enumerate(OFF[kind]):
        _ksampler(g, _method(g, kind, model, **overrides), pos, neg, f"off_{k}", cfg=cfg, batch=2)
    comfy.run(g.prompt())
    base, on = _take("base"), _take("on")
    for k in range(len(OFF[kind])):
        assert torch.equal(_take(f"off_{k}"), base), f"{kind} switched off by {OFF[kind][k]} changed the images"
    for row in range(2):
        assert (on[row] - base[row]).abs().max() > 1e-3, f"{kind} left image {row} unchanged"


@pytest.mark.parametrize("kind", ["noise", "cads", "by_step"])
def test_each_image_depends_on_its_seed_only_batch_one_equals_batch_four(comfy, kind, lpips_weights):
    g = Graph()
    model, pos, neg = _base(g)
    on = _method(g, kind, model)
    vae = g.add("SDATest_TinyVAE", seed=0)
    for batch in (1, 4):
        grid = g.add("SDASeedDiversityGrid", model=on, positive=pos, negative=neg, vae=vae, width=SIZE, height=SIZE,
                     seed=0, num_seeds=len(SEEDS), seed_list=",".join(map(str, SEEDS)), steps=4, cfg=2.0,
                     sampler_name="euler", scheduler="simple", batch_size=batch, label=kind,
                     lpips_net="alex", lpips_size="short side 256")
        g.add("SDATest_Capture", value=grid[1], key=f"grid_{batch}")
    for seed in SEEDS:
        sampled = _ksampler(g, on, pos, neg, f"latent_{seed}", seed=seed, cfg=2.0)
        g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key=f"ks_{seed}")
        _ksampler(g, model, pos, neg, f"plain_{seed}", seed=seed, cfg=2.0)
    comfy.run(g.prompt())
    grid1, grid4 = registry.take("grid_1"), registry.take("grid_4")
    for k, seed in enumerate(SEEDS):
        reference = registry.take(f"ks_{seed}")[0]
        torch.testing.assert_close(grid1[k], reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(grid4[k], reference, rtol=0, atol=2e-4)
        assert (_take(f"latent_{seed}") - _take(f"plain_{seed}")).abs().max() > 1e-3


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_model_by_step_equals_two_chained_advanced_samplers(comfy, cfg):
    g = Graph()
    model, pos, neg = _base(g)
    early = g.add("SDATest_TinyZImage", seed=1, dtype="fp32")
    by_step = g.add("SDAModelByStep", model=model, model_early=early, cfg_early=cfg, start_percent=0.0,
                    end_percent=0.25)
    _ksampler(g, by_step, pos, neg, "by_step", cfg=cfg, steps=8, batch=2)
    latent = g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=2)
    common = dict(noise_seed=3, steps=8, cfg=cfg, sampler_name="euler", scheduler="simple", positive=pos, negative=neg)
    first = g.add("KSamplerAdvanced", model=early, add_noise="enable", latent_image=latent, start_at_step=0,
                  end_at_step=2, return_with_leftover_noise="enable", **common)
    second = g.add("KSamplerAdvanced", model=model, add_noise="disable", latent_image=first, start_at_step=2,
                   end_at_step=10000, return_with_leftover_noise="disable", **common)
    g.add("SDATest_Capture", value=second, key="chained")
    _ksampler(g, model, pos, neg, "base", cfg=cfg, steps=8, batch=2)
    comfy.run(g.prompt())
    by_step, chained, base = _take("by_step"), _take("chained"), _take("base")
    assert (chained - base).abs().max() > 1e-3
    torch.testing.assert_close(by_step, chained, rtol=0, atol=1e-5)


def test_model_by_step_in_the_middle_uses_its_own_cfg(comfy):
    g = Graph()
    model, pos, neg = _base(g)
    early = g.add("SDATest_TinyZImage", seed=1, dtype="fp32")
    by_step = g.add("SDAModelByStep", model=model, model_early=early, cfg_early=3.0, start_percent=0.25,
                    end_percent=0.5)
    _ksampler(g, by_step, pos, neg, "by_step", cfg=1.0, steps=8)
    latent = g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    common = dict(noise_seed=3, steps=8, sampler_name="euler", scheduler="simple", positive=pos, negative=neg)
    x = g.add("KSamplerAdvanced", model=model, add_noise="enable", cfg=1.0, latent_image=latent, start_at_step=0,
              end_at_step=2, return_with_leftover_noise="enable", **common)
    x = g.add("KSamplerAdvanced", model=early, add_noise="disable", cfg=3.0, latent_image=x, start_at_step=2,
              end_at_step=4, return_with_leftover_noise="enable", **common)
    x = g.add("KSamplerAdvanced", model=model, add_noise="disable", cfg=1.0, latent_image=x, start_at_step=4,
              end_at_step=10000, return_with_leftover_noise="disable", **common)
    g.add("SDATest_Capture", value=x, key="chained")
    comfy.run(g.prompt())
    torch.testing.assert_close(_take("by_step"), _take("chained"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind, overrides, fragment", [
    ("noise", dict(start_percent=0.6, end_percent=0.2), "start_percent (0.6) is after end_percent (0.2)"),
    ("cads", dict(tau1=0.9, tau2=0.5), "tau1 (0.9) is not below tau2 (0.5)"),
    ("by_step", dict(start_percent=0.9, end_percent=0.1), "start_percent (0.9) is after end_percent (0.1)"),
])
def test_bad_settings_are_clear_errors(comfy, kind, overrides, fragment):
    g = Graph()
    model, pos, neg = _base(g)
    _ksampler(g, _method(g, kind, model, **overrides), pos, neg, "x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert fragment in info.value.message
