"""Seed Diversity Grid, Diversity Compare and LPIPS Diversity Score inside ComfyUI's executor, tiny models."""
from __future__ import annotations

import json
import math

import pytest
import torch

from sdatest import registry, tiny_models
from sdatest.adapter_files import write_sda_lokr
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

SEEDS = [3, 40, 41, 977]
SIZE = 64


@pytest.fixture(scope="module")
def lokr(comfy):
    shapes = tiny_models.tiny_zimage_shapes()
    write_sda_lokr(comfy.folder("loras") / "div_sda.safetensors", shapes, factor=8, seed=4, scale=0.2)
    return "div_sda.safetensors"


def _grid(g, model, pos, neg, vae, seeds=SEEDS, batch_size=4, label="base", **extra):
    settings = dict(width=SIZE, height=SIZE, seed=0, num_seeds=len(seeds), seed_list=",".join(map(str, seeds)),
                    steps=4, cfg=1.0, sampler_name="euler", scheduler="simple", batch_size=batch_size, label=label,
                    lpips_net="alex", lpips_size="short side 256")
    settings.update(extra)
    return g.add("SDASeedDiversityGrid", model=model, positive=pos, negative=neg, vae=vae, **settings)


def _base(g):
    return (g.add("SDATest_TinyZImage", seed=0, dtype="fp32"), g.add("SDATest_TinyConditioning", seed=1, tokens=8),
            g.add("SDATest_TinyConditioning", seed=2, tokens=8), g.add("SDATest_TinyVAE", seed=0))


def _capture_grid(g, node, prefix):
    for index, name in enumerate(["grid", "images", "avg_lpips", "pixel_std", "report", "result"]):
        g.add("SDATest_Capture", value=node[index], key=f"{prefix}_{name}")


def test_grid_images_are_ksampler_images_per_seed(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    _capture_grid(g, _grid(g, model, pos, neg, vae, batch_size=4), "b4")
    _capture_grid(g, _grid(g, model, pos, neg, vae, batch_size=1), "b1")
    latent = g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    for seed in SEEDS:
        sampled = g.add("KSampler", model=model, seed=seed, steps=4, cfg=1.0, sampler_name="euler",
                        scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key=f"ks_{seed}")
    outputs = comfy.run(g.prompt())

    images4, images1 = registry.take("b4_images"), registry.take("b1_images")
    assert images4.shape == (len(SEEDS), SIZE, SIZE, 3)
    for k, seed in enumerate(SEEDS):
        reference = registry.take(f"ks_{seed}")[0]
        torch.testing.assert_close(images1[k], reference, rtol=0, atol=1e-5)  # VAE decodes the batch at once
        torch.testing.assert_close(images4[k], reference, rtol=0, atol=2e-4)
    flat = images4.flatten(1)
    assert all((flat[i] - flat[j]).abs().max() > 1e-3 for i in range(4) for j in range(i + 1, 4)), "seeds collapsed"

    report = json.loads(registry.take("b4_report"))
    assert report["seeds"] == SEEDS and report["settings"]["steps"] == 4
    assert report["scores"]["avg_lpips"] == pytest.approx(registry.take("b4_avg_lpips"))
    assert report["scores"]["pixel_std"] == pytest.approx(registry.take("b4_pixel_std"))
    assert report["pairwise_lpips"]["pairs"] == 6 and "avg_lpips" in report["definitions"]
    expected_std = images4.double().flatten(1).std(dim=1, correction=0).mean().item()
    assert report["scores"]["pixel_std"] == pytest.approx(expected_std, abs=1e-9)
    grid = registry.take("b4_grid")
    assert grid.shape[0] == 1 and grid.shape[1] > 2 * SIZE and grid.shape[2] >= 2 * SIZE
    previews = [o for o in outputs.values() if "images" in o]
    assert previews, "the grid node shows its grid in the UI"


def test_compare_rows_in_order_with_recovery(comfy, lpips_weights, lokr):
    g = Graph()
    model, pos, neg, vae = _base(g)
    half = g.add("SDALoKrLoader", model=model, lokr_name=lokr, strength=1.0)
    full = g.add("SDALoKrLoader", model=model, lokr_name=lokr, strength=2.0)
    grids = [_grid(g, m, pos, neg, vae, label=label) for m, label in ((model, "turbo"), (half, "sda"), (full, "teacher"))]
    for k, node in enumerate(grids):
        g.add("SDATest_Capture", value=node[4], key=f"report_{k}")
    compare = g.add("SDADiversityCompare", result_1=grids[0][5], result_2=grids[1][5], result_3=grids[2][5],
                    baseline="1", teacher="3")
    g.add("SDATest_Capture", value=compare[0], key="image")
    g.add("SDATest_Capture", value=compare[1], key="table")
    comfy.run(g.prompt())
    base, sda, teacher = (json.loads(registry.take(f"report_{k}"))["scores"] for k in range(3))
    table = registry.take("table")
    body = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[1].strip() for line in body] == ["turbo", "sda", "teacher"]
    assert [line.split("|")[2].strip() for line in body] == ["baseline", "candidate", "teacher"]
    gap = teacher["avg_lpips"] - base["avg_lpips"]
    threshold = max(0.01, 2 * math.hypot(base["lpips_se"], teacher["lpips_se"]))
    line = next(line for line in table.splitlines() if line.startswith("Recovery of sda = "))
    if gap > threshold:
        assert line.endswith(f"= {(sda['avg_lpips'] - base['avg_lpips']) / gap * 100:.1f} %")
    elif gap <= 0:
        assert "= n/a (the teacher (" in line and "is not more diverse than the baseline" in line
    else:  # tiny random models: the LoKr barely changes diversity
        assert f"= n/a (teacher - baseline = {gap:.3g} is within the scores' noise (threshold {threshold:.3g}))" in line
    image = registry.take("image")
    assert image.shape[0] == 1 and image.shape[1] > 3 * SIZE


def test_lpips_score_node_matches_the_grid(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    grid = _grid(g, model, pos, neg, vae)
    score = g.add("SDALPIPSScore", images=grid[1], lpips_net="alex", lpips_size="short side 256")
    g.add("SDATest_Capture", value=grid[2], key="grid_lpips")
    for index, name in enumerate(["avg", "std", "heatmap", "report"]):
        g.add("SDATest_Capture", value=score[index], key=f"score_{name}")
    comfy.run(g.prompt())
    assert registry.take("score_avg") == pytest.approx(registry.take("grid_lpips"), abs=1e-9)
    heatmap = registry.take("score_heatmap")
    assert heatmap.dim() == 4 and heatmap.shape[-1] == 3
    assert "vendi" in json.loads(registry.take("score_report"))["scores"]


def test_bad_inputs_are_clear_errors(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    g.add("SDATest_Capture", value=_grid(g, model, pos, neg, vae, seeds=[5, 5, 6])[2], key="x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert "seed_list repeats seed(s) [5]" in info.value.message

    g = Graph()
    model, pos, neg, vae = _base(g)
    g.add("SDATest_Capture", value=_grid(g, model, pos, neg, vae, lpips_net="squeeze")[2], key="x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert "squeezenet1_1-b8a52dc0.pth" in info.value.message and "lpips" in info.value.message


def test_stochastic_sampler_runs_seed_by_seed_and_still_equals_ksampler(comfy, lpips_weights):
    """euler_ancestral draws noise while sampling from one seed per batch: the grid must not batch it."""
    seeds = [7, 8, 9]
    g = Graph()
    model, pos, neg, vae = _base(g)
    _capture_grid(g, _grid(g, model, pos, neg, vae, seeds=seeds, batch_size=4, sampler_name="euler_ancestral"), "anc")
    latent = g.add("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)
    for seed in seeds:
        sampled = g.add("KSampler", model=model, seed=seed, steps=4, cfg=1.0, sampler_name="euler_ancestral",
                        scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key=f"anc_ks_{seed}")
    comfy.run(g.prompt())
    images = registry.take("anc_images")
    for k, seed in enumerate(seeds):
        torch.testing.assert_close(images[k], registry.take(f"anc_ks_{seed}")[0], rtol=0, atol=1e-5)
    report = json.loads(registry.take("anc_report"))
    assert report["settings"]["batch_size"] == 1 and "one at a time" in report["settings"]["note"]


def test_a_grid_of_65_by_70_reports_the_64_by_64_it_renders_and_equals_ksampler(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    _capture_grid(g, _grid(g, model, pos, neg, vae, seeds=[5, 6, 7], width=65, height=70), "odd")
    latent = g.add("EmptySD3LatentImage", width=65, height=70, batch_size=1)
    sampled = g.add("KSampler", model=model, seed=6, steps=4, cfg=1.0, sampler_name="euler",
                    scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=g.add("VAEDecode", samples=sampled, vae=vae), key="odd_ks")
    comfy.run(g.prompt())
    images, reference = registry.take("odd_images"), registry.take("odd_ks")
    assert images.shape == (3, 64, 64, 3) and reference.shape == (1, 64, 64, 3)
    torch.testing.assert_close(images[1], reference[0], rtol=0, atol=2e-4)
    settings = json.loads(registry.take("odd_report"))["settings"]
    assert (settings["width"], settings["height"]) == (64, 64)
    assert "asked 65×70, rendered 64×64" in settings["note"]


def test_compare_warns_when_rows_differ_in_seeds_and_gives_no_recovery_inside_the_noise(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    grids = [_grid(g, model, pos, neg, vae, seeds=seeds, label=label)
             for seeds, label in (([1, 2, 3], "turbo"), ([1, 2, 3], "same"), ([4, 5, 6], "teacher"))]
    compare = g.add("SDADiversityCompare", result_1=grids[0][5], result_2=grids[1][5], result_3=grids[2][5],
                    baseline="1", teacher="3")
    g.add("SDATest_Capture", value=compare[1], key="warned")
    comfy.run(g.prompt())
    table = registry.take("warned")
    assert "Warning: rows use different seeds (turbo: 1, 2, 3; same: 1, 2, 3; teacher: 4, 5, 6)" in table
    recovery_line = next(line for line in table.splitlines() if line.startswith("Recovery of same"))
    assert "n/a (" in recovery_line and "%" not in recovery_line  # one model, two seed sets: noise, not a gap


def test_compare_takes_eight_results_and_a_four_result_workflow_still_runs(comfy, lpips_weights):
    g = Graph()
    model, pos, neg, vae = _base(g)
    grids = [_grid(g, model, pos, neg, vae, seeds=[1, 2, 3], label=label, steps=2) for label in ("a", "b")]
    eight = g.add("SDADiversityCompare", **{f"result_{k}": grids[(k - 1) % 2][5] for k in range(1, 9)},
                  baseline="1", teacher="8")
    four = g.add("SDADiversityCompare", **{f"result_{k}": grids[(k - 1) % 2][5] for k in range(1, 5)},
                 baseline="none", teacher="4")  # as a workflow saved before result_5 … result_8 existed
    g.add("SDATest_Capture", value=eight[1], key="eight")
    g.add("SDATest_Capture", value=four[1], key="four")
    comfy.run(g.prompt())
    for key, n in (("eight", 8), ("four", 4)):
        lines = registry.take(key).splitlines()
        assert lines[0] == ("| model | role | avg pairwise LPIPS (diversity) | Vendi score | pixel std (magnitude) "
                            "| sharpness (rel. to baseline) | recovery | s / image |")
        body = lines[2:2 + n]
        assert [line.split("|")[1].strip() for line in body] == ["a", "b"] * (n // 2)
        assert all(float(line.split("|")[-2]) > 0 for line in body)  # seconds per image, measured by the grid
        assert lines[2 + n] == ""
