"""The CLIP score's maths against numpy, and the tower check's messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sda_core.diversity.clip_score import ClipTowerMismatch, Tower, check_towers, clip_score, cosine, per_image_scores
from sda_core.diversity.scores import DEFINITIONS, definitions_markdown


def _numpy_clip_scores(images: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Hessel et al. / torchmetrics: normalise both embeddings, 100 * max(cos, 0)."""
    img = images / np.linalg.norm(images, axis=1, keepdims=True)
    txt = text / np.linalg.norm(text)
    return 100.0 * np.maximum(img @ txt, 0.0)


def test_per_image_scores_are_100_times_the_clamped_cosine_as_numpy_computes_it():
    gen = torch.Generator().manual_seed(0)
    images, text = torch.randn(9, 16, generator=gen), torch.randn(16, generator=gen)
    expected = _numpy_clip_scores(images.double().numpy(), text.double().numpy())
    np.testing.assert_allclose(per_image_scores(images, text).numpy(), expected, rtol=0, atol=1e-10)
    assert (expected == 0).any() and (expected > 0).any(), "the test covers the clamp at 0 and positive scores"


def test_mean_and_spread_are_numpy_mean_and_population_std_of_the_per_image_scores():
    gen = torch.Generator().manual_seed(1)
    images, text = torch.randn(6, 8, generator=gen, dtype=torch.float64), torch.randn(1, 8, generator=gen)
    images[:, 0] += 3 * text[0, 0]  # mostly positive cosines
    expected = _numpy_clip_scores(images.numpy(), text[0].double().numpy())
    score = clip_score(images, text, "a cat", text_tower="t", vision_tower="v")
    assert score.per_image == pytest.approx(list(expected), abs=1e-10)
    assert score.mean == pytest.approx(expected.mean(), abs=1e-10)
    assert score.std == pytest.approx(expected.std(ddof=0), abs=1e-10)
    assert (score.min, score.max) == (pytest.approx(expected.min()), pytest.approx(expected.max()))
    report = score.to_dict()
    assert report["n_images"] == 6 and report["prompt"] == "a cat" and report["scale"] == 100.0
    assert report["text_tower"] == "t" and report["vision_tower"] == "v"
    assert f"{expected.mean():.2f}" in score.line()


def test_scores_do_not_depend_on_embedding_length_or_dtype():
    gen = torch.Generator().manual_seed(2)
    images, text = torch.randn(4, 12, generator=gen), torch.randn(12, generator=gen)
    reference = per_image_scores(images, text)
    scaled = per_image_scores((images * torch.tensor([[3.0], [0.1], [7.0], [1.0]])).half(), 5 * text)
    torch.testing.assert_close(scaled, reference, rtol=0, atol=0.1)  # half precision
    identical = per_image_scores(text.repeat(2, 1), text)
    torch.testing.assert_close(identical, torch.full((2,), 100.0, dtype=torch.float64))


def test_embeddings_of_different_sizes_or_without_direction_are_clear_errors():
    with pytest.raises(ClipTowerMismatch, match=r"\[N, D\].*\(3, 8\) and \(16,\)"):
        cosine(torch.randn(3, 8), torch.randn(16))
    with pytest.raises(ValueError, match="text embedding is all zeros.*text_projection"):
        cosine(torch.randn(3, 8), torch.zeros(8))
    with pytest.raises(ValueError, match="image embedding has NaN/Inf"):
        cosine(torch.full((2, 8), float("nan")), torch.randn(8))


def test_mismatched_towers_name_what_was_found_and_what_is_expected():
    clip_g = Tower("text", hidden=1280, dim=1280, layers=32)
    vit_l = Tower("vision", hidden=1024, dim=768, layers=24)
    with pytest.raises(ClipTowerMismatch) as info:
        check_towers(clip_g, vit_l)
    message = str(info.value)
    assert "clip_g (OpenCLIP ViT-bigG/14 text) (width 1280, 32 layers, 1280-dim embedding)" in message
    assert "CLIP ViT-L/14 (width 1024, 24 layers, 768-dim embedding)" in message
    assert "Expected clip_l" in message and "Load CLIP Vision" in message
    check_towers(Tower("text", hidden=768, dim=768, layers=12), vit_l)  # clip_l with ViT-L/14: no error
    unknown = Tower("text", hidden=32, dim=32, layers=2)
    assert unknown.name == "an unknown CLIP text tower (width 32, 2 layers, 32-dim embedding)"


def test_the_clip_score_is_defined_with_the_other_scores():
    text = DEFINITIONS["clip_score"]
    assert "100 x max(cos(E_image, E_text), 0)" in text and "2.5" in text and "ddof = 0" in text
    assert "clip_l" in text and "ViT-L/14" in text and text in definitions_markdown()
