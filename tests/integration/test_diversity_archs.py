"""Seed Diversity Grid and LPIPS Score on every architecture ComfyUI samples (tiny random-weight models of SDXL
eps and v, FLUX.1-schnell, SD3.5 and Qwen-Image, whose latents are 5-D): image k is KSampler's image for seed k,
and batch 1 gives the images batch 4 gives."""
from __future__ import annotations

import json

import pytest
import torch

from sdatest import registry, tiny_archs, tiny_models
from sdatest.graph import Graph

SEEDS = [3, 40, 977]
SIZE = 64


@pytest.fixture(scope="module")
def lpips_weights(comfy):
    return tiny_models.write_lpips_backbone(comfy.folder("lpips"))


def _grid(g, arch_nodes, batch_size, key):
    model, pos, neg, vae = arch_nodes
    node = g.add("SDASeedDiversityGrid", model=model, positive=pos, negative=neg, vae=vae, width=SIZE, height=SIZE,
                 seed=0, num_seeds=len(SEEDS), seed_list=",".join(map(str, SEEDS)), steps=3, cfg=1.0,
                 sampler_name="euler", scheduler="simple", batch_size=batch_size, label=key, lpips_net="alex",
                 lpips_size="short side 256")
    g.add("SDATest_Capture", value=node[1], key=f"{key}_images")
    g.add("SDATest_Capture", value=node[4], key=f"{key}_report")
    return node


@pytest.mark.parametrize("arch", tiny_archs.ARCHS)
def test_grid_images_are_ksampler_images_per_seed_on_every_architecture(comfy, lpips_weights, arch):
    g = Graph()
    nodes = (g.add("SDATest_TinyArch", arch=arch, seed=0), g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8),
             g.add("SDATest_TinyArchConditioning", arch=arch, seed=2, tokens=8), g.add("SDATest_TinyArchVAE", arch=arch, seed=0))
    model, pos, neg, vae = nodes
    grid4 = _grid(g, nodes, 4, "b4")
    _grid(g, nodes, 1, "b1")
    score = g.add("SDALPIPSScore", images=grid4[1], lpips_net="alex", lpips_size="short side 256")
    g.add("SDATest_Capture", value=score[0], key="score_avg")
    # the empty latent a user of this family takes: EmptyLatentImage for SDXL, EmptySD3LatentImage otherwise
    empty = "EmptyLatentImage" if arch.startswith("sdxl") else "EmptySD3LatentImage"
    latent = g.add(empty, width=SIZE, height=SIZE, batch_size=1)
    for seed in SEEDS:
        sampled = g.add("KSampler", model=model, seed=seed, steps=3, cfg=1.0, sampler_name="euler",
                        scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key=f"ks_{seed}")
    comfy.run(g.prompt())

    images4, images1 = registry.take("b4_images"), registry.take("b1_images")
    assert images4.shape == images1.shape == (len(SEEDS), SIZE, SIZE, 3)
    assert torch.isfinite(images4).all()
    for k, seed in enumerate(SEEDS):
        reference = registry.take(f"ks_{seed}")
        reference = reference.reshape(-1, *reference.shape[-3:])  # a video VAE's [1, frames, H, W, 3]
        assert reference.shape == (1, SIZE, SIZE, 3)
        torch.testing.assert_close(images1[k], reference[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(images4[k], reference[0], rtol=0, atol=2e-4)
    flat = images4.flatten(1)
    spread = min((flat[i] - flat[j]).abs().max().item() for i in range(3) for j in range(i + 1, 3))
    assert spread > 1e-3, f"{arch}: seeds gave the same image"
    report = json.loads(registry.take("b4_report"))
    assert (report["settings"]["width"], report["settings"]["height"]) == (SIZE, SIZE)
    assert report["scores"]["avg_lpips"] == pytest.approx(registry.take("score_avg"), abs=1e-9)
    registry.take("b1_report")
