"""Adapter strength by step, sampled by ComfyUI's KSampler on a tiny Z-Image (euler/simple, 8 steps)."""
from __future__ import annotations

import pytest
import torch

from sdatest import registry, tiny_models
from sdatest.adapter_files import write_sda_lokr
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

LOKR = "sched_sda.safetensors"


@pytest.fixture(scope="module")
def lokr(comfy):
    shapes = tiny_models.tiny_zimage_shapes()
    write_sda_lokr(comfy.folder("loras") / LOKR, shapes, factor=8, seed=11, scale=0.05)
    return LOKR


def _inputs(g: Graph, shared: bool = False):
    model = g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=shared)
    positive = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    negative = g.add("SDATest_TinyConditioning", seed=5, tokens=8)
    latent = g.add("EmptySD3LatentImage", width=128, height=128, batch_size=1)
    return model, positive, negative, latent


def _ksampler(g, model, positive, negative, latent, key, cfg=1.0, seed=3):
    out = g.add("KSampler", model=model, seed=seed, steps=8, cfg=cfg, sampler_name="euler", scheduler="simple",
                positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=out, key=key)


def _scheduled(g, model, steps="", start=0.0, end=1.0, strength=0.9):
    return g.add("SDAScheduledAdapter", model=model, lora_name=LOKR, strength=strength, step_strengths=steps,
                 start_percent=start, end_percent=end)


def _take(key):
    return registry.take(key)["samples"].float()


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_all_ones_equals_the_loader_and_all_zeros_the_base(comfy, lokr, cfg):
    g = Graph()
    model, pos, neg, latent = _inputs(g)
    _ksampler(g, _scheduled(g, model, "1,1,1,1,1,1,1,1"), pos, neg, latent, "ones", cfg)
    _ksampler(g, g.add("SDALoKrLoader", model=model, lokr_name=LOKR, strength=0.9), pos, neg, latent, "loader", cfg)
    _ksampler(g, _scheduled(g, model, "0"), pos, neg, latent, "zeros", cfg)
    _ksampler(g, model, pos, neg, latent, "base", cfg)
    comfy.run(g.prompt())
    ones, loader, zeros, base = _take("ones"), _take("loader"), _take("zeros"), _take("base")
    assert (loader - base).abs().max() > 1e-3, "the adapter changes nothing: the test could not tell"
    torch.testing.assert_close(ones, loader, rtol=0, atol=1e-5)
    assert torch.equal(zeros, base)


def test_first_two_steps_equal_two_chained_advanced_samplers(comfy, lokr):
    g = Graph()
    model, pos, neg, latent = _inputs(g)
    _ksampler(g, _scheduled(g, model, "1,1,0,0,0,0,0,0"), pos, neg, latent, "scheduled")
    _ksampler(g, _scheduled(g, model, "", start=0.0, end=0.25), pos, neg, latent, "window")
    adapted = g.add("SDALoKrLoader", model=model, lokr_name=LOKR, strength=0.9)
    first = g.add("KSamplerAdvanced", model=adapted, add_noise="enable", noise_seed=3, steps=8, cfg=1.0,
                  sampler_name="euler", scheduler="simple", positive=pos, negative=neg, latent_image=latent,
                  start_at_step=0, end_at_step=2, return_with_leftover_noise="enable")
    second = g.add("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=3, steps=8, cfg=1.0,
                   sampler_name="euler", scheduler="simple", positive=pos, negative=neg, latent_image=first,
                   start_at_step=2, end_at_step=10000, return_with_leftover_noise="disable")
    g.add("SDATest_Capture", value=second, key="chained")
    _ksampler(g, model, pos, neg, latent, "base")
    comfy.run(g.prompt())
    scheduled, window, chained, base = _take("scheduled"), _take("window"), _take("chained"), _take("base")
    assert (chained - base).abs().max() > 1e-3
    torch.testing.assert_close(scheduled, chained, rtol=0, atol=1e-5)
    assert torch.equal(scheduled, window)


def test_next_prompt_on_the_base_model_sees_no_leftover_weights(comfy, lokr):
    def base_prompt():
        g = Graph()
        model, pos, neg, latent = _inputs(g, shared=True)
        _ksampler(g, model, pos, neg, latent, "base")
        return g.prompt()

    comfy.run(base_prompt())
    fresh = _take("base")
    g = Graph()
    model, pos, neg, latent = _inputs(g, shared=True)
    _ksampler(g, _scheduled(g, model, "1,1,0"), pos, neg, latent, "scheduled")
    comfy.run(g.prompt())
    scheduled = _take("scheduled")
    comfy.run(base_prompt())
    after = _take("base")
    assert (scheduled - fresh).abs().max() > 1e-3
    assert torch.equal(after, fresh)


def test_report_shows_the_resolved_schedule(comfy, lokr):
    g = Graph()
    model = g.add("SDATest_TinyZImage", seed=0, dtype="fp32")
    g.add("SDATest_Capture", value=_scheduled(g, model, "1,0.5", strength=0.8)[1], key="report")
    comfy.run(g.prompt())
    report = registry.take("report")
    assert "0: 0.8, 1: 0.4, 2: 0.4" in report
    assert "hold the last value 0.5" in report


@pytest.mark.parametrize("steps, start, end, fragment", [
    ("1,,a", 0.0, 1.0, "item 2 is empty"),
    ("1,x", 0.0, 1.0, "item 2 ('x') is not a number"),
    ("", 0.7, 0.2, "start_percent (0.7) is after end_percent (0.2)"),
])
def test_invalid_schedules_are_clear_errors(comfy, lokr, steps, start, end, fragment):
    g = Graph()
    model, pos, neg, latent = _inputs(g)
    _ksampler(g, _scheduled(g, model, steps, start, end), pos, neg, latent, "x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert fragment in info.value.message
