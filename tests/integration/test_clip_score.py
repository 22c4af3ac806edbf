"""The CLIP score of the Seed Diversity Grid and LPIPS Score nodes inside ComfyUI's executor, on tiny random
CLIP towers built from ComfyUI's own classes (sdatest.tiny_clip), checked against the formula computed
directly from the towers: the text tower run on the tokenizer's ids with the pooling and projection done here,
the image tower run on pixels normalised here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdatest import registry
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

PROMPT = "a red fox in fresh snow, golden hour"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EOS = 49407


def _towers(g, text_width=32, kind="clip_l", projection_dim=32, dtype="fp32"):
    # seed 4: some cosines < 0, some > 0
    clip = g.add("SDATest_TinyCLIPText", seed=4, width=text_width, kind=kind, dtype=dtype)
    vision = g.add("SDATest_TinyCLIPVision", seed=4, projection_dim=projection_dim, dtype=dtype)
    return clip, vision


def _score_node(g, images, clip=None, vision=None, prompt=PROMPT):
    inputs = {"images": images, "lpips_net": "alex", "lpips_size": "native", "clip_score_prompt": prompt}
    if clip is not None:
        inputs["clip_score_clip"] = clip
    if vision is not None:
        inputs["clip_vision"] = vision
    return g.add("SDALPIPSScore", **inputs)


def _text_embedding(clip, prompt: str) -> np.ndarray:
    """clip_l's text_projection applied at the first end-of-text token, from the tokenizer's own ids."""
    tower = clip.cond_stage_model.clip_l
    ids = clip.tokenizer.clip_l.tokenizer(prompt)["input_ids"]  # transformers' CLIPTokenizer: [BOS, …, EOS]
    assert ids[-1] == EOS and len(ids) < 77
    tokens = torch.tensor([ids + [EOS] * (77 - len(ids))])
    with torch.no_grad():
        hidden = tower.transformer.text_model(input_tokens=tokens)[0]
    pooled = hidden[0, ids.index(EOS)].double()
    return (pooled @ tower.transformer.text_projection.weight.detach().double().T).numpy()


def _image_embeddings(clip_vision, images: torch.Tensor) -> np.ndarray:
    """The vision tower on pixels at its own size, normalised with CLIP's mean/std; visual_projection here."""
    assert images.shape[1] == images.shape[2] == clip_vision.image_size
    pixels = (images.movedim(-1, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    with torch.no_grad():
        pooled = clip_vision.model.vision_model(pixels.float())[2].double()
    return (pooled @ clip_vision.model.visual_projection.weight.detach().double().T).numpy()


def _formula(image_embeds: np.ndarray, text_embed: np.ndarray) -> np.ndarray:
    cos = image_embeds @ text_embed / (np.linalg.norm(image_embeds, axis=1) * np.linalg.norm(text_embed))
    return 100.0 * np.maximum(cos, 0.0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_lpips_score_node_clip_score_equals_the_formula_on_the_towers_outputs(comfy, lpips_weights, dtype):
    g = Graph()
    images = g.add("SDATest_RandomImages", seed=5, count=6, size=32)
    clip, vision = _towers(g, dtype=dtype)
    score = _score_node(g, images, clip, vision)
    weighted = _score_node(g, images, clip, vision, prompt=PROMPT.replace("golden hour", "(golden hour:1.3)"))
    for key, node in (("images", images[0]), ("clip", clip[0]), ("vision", vision[0]), ("report", score[3]),
                      ("weighted", weighted[3])):
        g.add("SDATest_Capture", value=node, key=f"cs_{key}")
    comfy.run(g.prompt())

    report = json.loads(registry.take("cs_report"))["clip_score"]
    clip_obj, vision_obj = registry.take("cs_clip"), registry.take("cs_vision")
    stored = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    assert clip_obj.cond_stage_model.clip_l.transformer.text_projection.weight.dtype == stored
    assert vision_obj.model.visual_projection.weight.dtype == stored
    expected = _formula(_image_embeddings(vision_obj, registry.take("cs_images")), _text_embedding(clip_obj, PROMPT))
    assert (expected > 0).sum() >= 2 and (expected == 0).any(), f"the towers should test both sides of the clamp: {expected}"
    np.testing.assert_allclose(report["per_image"], expected, rtol=0, atol=1e-3)
    assert report["mean"] == pytest.approx(expected.mean(), abs=1e-3)
    assert report["std"] == pytest.approx(expected.std(ddof=0), abs=1e-3)
    assert report["n_images"] == 6 and report["prompt"] == PROMPT
    assert "32-dim embedding" in report["text_tower"] and "32-dim embedding" in report["vision_tower"]
    # ComfyUI's emphasis syntax is parsed away: the pooled text embedding sees the plain words.
    weighted = json.loads(registry.take("cs_weighted"))["clip_score"]
    assert weighted["per_image"] == pytest.approx(report["per_image"], abs=1e-4)  # encoded beside an empty row


def test_grid_reports_the_clip_score_of_its_own_images(comfy, lpips_weights):
    g = Graph()
    model, pos = g.add("SDATest_TinyZImage", seed=0, dtype="fp32"), g.add("SDATest_TinyConditioning", seed=1, tokens=8)
    neg, vae = g.add("SDATest_TinyConditioning", seed=2, tokens=8), g.add("SDATest_TinyVAE", seed=0)
    clip, vision = _towers(g)
    grid = g.add("SDASeedDiversityGrid", model=model, positive=pos, negative=neg, vae=vae, width=64, height=64, seed=0,
                 num_seeds=3, seed_list="", steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", batch_size=3,
                 label="base", lpips_net="alex", lpips_size="native", clip_score_clip=clip, clip_vision=vision,
                 clip_score_prompt=PROMPT)
    score = _score_node(g, grid[1], clip, vision)
    plain = g.add("SDASeedDiversityGrid", **{**g.nodes[grid.id]["inputs"], "label": "plain", "clip_score_prompt": ""})
    for name in ("clip_score_clip", "clip_vision"):
        g.nodes[plain.id]["inputs"].pop(name)
    compare = g.add("SDADiversityCompare", result_1=grid[5], result_2=plain[5], baseline="1", teacher="none")
    for key, node in (("images", grid[1]), ("report", grid[4]), ("result", grid[5]), ("score", score[3]),
                      ("vision", vision[0]), ("clip", clip[0]), ("table", compare[1])):
        g.add("SDATest_Capture", value=node, key=f"grid_{key}")
    comfy.run(g.prompt())

    report = json.loads(registry.take("grid_report"))
    images, clip_obj, vision_obj = registry.take("grid_images"), registry.take("grid_clip"), registry.take("grid_vision")
    with torch.inference_mode():
        embeds = vision_obj.encode_image(images)["image_embeds"].double().numpy()  # 64 px → resized to 32 by CLIP
    expected = _formula(embeds, _text_embedding(clip_obj, PROMPT))
    np.testing.assert_allclose(report["clip_score"]["per_image"], expected, rtol=0, atol=1e-3)
    assert report["clip_score"]["std"] == pytest.approx(expected.std(ddof=0), abs=1e-3)
    assert "clip_score" in report["definitions"]
    result = registry.take("grid_result")
    assert result.clip_score.mean == pytest.approx(report["clip_score"]["mean"])
    assert json.loads(registry.take("grid_score"))["clip_score"]["per_image"] == pytest.approx(
        report["clip_score"]["per_image"], abs=1e-9)
    table = registry.take("grid_table")
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    column = [c.strip() for c in header.split("|")].index("CLIP score (prompt fidelity)")
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("|")] for line in table.splitlines()
                                          if line.startswith("| base") or line.startswith("| plain"))}
    assert rows["base"][column] == f"{expected.mean():.1f}" and rows["plain"][column] == "—"  # not measured


@pytest.mark.parametrize("towers, message", [
    (dict(text_width=48), "the towers do not match: the text tower is an unknown CLIP text tower (width 48, 3 layers, "
                          "48-dim embedding), the image tower is an unknown CLIP vision tower (width 48, 2 layers, "
                          "32-dim embedding)"),
    (dict(kind="clip_g"), "clip_score_clip: this CLIP holds clip_g (SDXLRefinerClipModel), not clip_l"),
])
def test_towers_that_do_not_match_are_a_clear_error_before_sampling(comfy, lpips_weights, towers, message):
    g = Graph()
    images = g.add("SDATest_RandomImages", seed=5, count=2, size=32)
    clip, vision = _towers(g, **towers)
    g.add("SDATest_Capture", value=_score_node(g, images, clip, vision)[0], key="x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert message in info.value.message and "clip_l in a Load CLIP node (type stable_diffusion) with CLIP ViT-L/14" in info.value.message


def test_half_connected_towers_or_an_empty_prompt_are_clear_errors(comfy, lpips_weights):
    for connect, prompt, message in (("clip", PROMPT, "clip_score_clip is connected but clip_vision is not"),
                                     ("vision", PROMPT, "clip_vision is connected but clip_score_clip is not"),
                                     ("both", "  ", "clip_score_prompt is empty")):
        g = Graph()
        images = g.add("SDATest_RandomImages", seed=5, count=2, size=32)
        clip, vision = _towers(g)
        node = _score_node(g, images, clip if connect in ("clip", "both") else None,
                           vision if connect in ("vision", "both") else None, prompt=prompt)
        g.add("SDATest_Capture", value=node[0], key="x")
        with pytest.raises(PromptFailed) as info:
            comfy.run(g.prompt())
        assert message in info.value.message


def test_without_towers_the_report_has_no_clip_score(comfy, lpips_weights):
    g = Graph()
    score = _score_node(g, g.add("SDATest_RandomImages", seed=5, count=2, size=32), prompt="")
    g.add("SDATest_Capture", value=score[3], key="plain_report")
    comfy.run(g.prompt())
    assert "clip_score" not in json.loads(registry.take("plain_report"))
