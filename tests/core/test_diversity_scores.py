"""Scores: each equals an independent reference (numpy, the vendi-score package, the SDA card)."""
import warnings

import lpips
import numpy as np
import pytest
import torch

from sda_core.diversity.lpips_pairs import PairwiseLPIPS, avg_pairwise
from sda_core.diversity.scores import (
    DEFINITIONS,
    DiversityScores,
    definitions_markdown,
    lpips_kernel,
    jackknife_se,
    pixel_std,
    recovery,
    score_batch,
    sharpness,
    vendi_score,
)


def numpy_sharpness(images: np.ndarray) -> float:
    """Reference written independently: explicit shifted slices instead of a convolution."""
    out = []
    for img in images.astype(np.float64):
        g = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
        out.append(lap.var())
    return float(np.mean(out))


def test_pixel_std_equals_numpy_population_std():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 20, 30, 3, generator=g)
    images[1] = 0.5  # flat image: std 0
    expected = np.mean([np.std(im) for im in images.double().numpy()])  # numpy default ddof=0
    assert pixel_std(images) == pytest.approx(expected, abs=1e-12)
    assert pixel_std(torch.full((2, 8, 8, 3), 0.3)) == pytest.approx(0.0, abs=1e-12)
    half = torch.zeros(1, 4, 4, 3)
    half[:, :2] = 1.0
    assert pixel_std(half) == pytest.approx(0.5)  # half black, half white


def test_sharpness_equals_numpy_reference():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(4, 17, 23, 3, generator=g)
    images[2] = images[2].mean(dim=(0, 1), keepdim=True)  # flat: Laplacian 0
    assert sharpness(images) == pytest.approx(numpy_sharpness(images.numpy()), rel=1e-10)
    assert sharpness(images[2:3]) == pytest.approx(0.0, abs=1e-15)


def test_sharpness_drops_when_blurred():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 32, 32, 3, generator=g)
    blurred = torch.nn.functional.avg_pool2d(images.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    assert sharpness(blurred) < 0.2 * sharpness(images)


def test_sharpness_uses_rec601_luma():
    red = torch.zeros(1, 5, 5, 3)
    red[0, 2, 2, 0] = 1.0  # single red dot: Laplacian centre -4 * 0.299
    lap = np.zeros((3, 3))
    lap[1, 1] = -4 * 0.299
    lap[0, 1] = lap[1, 0] = lap[1, 2] = lap[2, 1] = 0.299
    assert sharpness(red) == pytest.approx(lap.var())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy.sparse.csr inside vendi-score
def test_vendi_equals_vendi_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    g = torch.Generator().manual_seed(3)
    for n in (2, 5, 16):
        d = torch.rand(n, n, generator=g, dtype=torch.float64)
        d = (d + d.T) / 2
        d.fill_diagonal_(0)
        feats = torch.randn(n, 4, generator=g, dtype=torch.float64)
        for k in (lpips_kernel(d, 0.5), torch.exp(-torch.cdist(feats, feats) ** 2)):
            assert vendi_score(k) == pytest.approx(float(vendi.score_K(k.numpy())), abs=1e-6)


def test_vendi_limits():
    n = 6
    assert vendi_score(torch.ones(n, n)) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(torch.eye(n)) == pytest.approx(float(n), abs=1e-9)
    far = torch.full((n, n), 100.0)
    far.fill_diagonal_(0)
    assert vendi_score(lpips_kernel(far)) == pytest.approx(float(n), abs=1e-6)
    with pytest.raises(ValueError):
        vendi_score(torch.ones(2, 3))


def test_lpips_kernel():
    d = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
    k = lpips_kernel(d, tau=0.5)
    assert torch.allclose(k, torch.tensor([[1.0, np.exp(-1)], [np.exp(-1), 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        lpips_kernel(d, tau=0)


def test_recovery_on_the_sda_card():
    card = recovery(0.564, 0.691, 0.745, baseline_se=0.01, teacher_se=0.01)
    assert card.value == pytest.approx(0.7017, abs=5e-5) and card.text() == "70.2 %"
    assert recovery(0.5, 0.4, 0.7, 0.01, 0.01).value == pytest.approx(-0.5)  # a candidate below the baseline


@pytest.mark.parametrize("baseline, teacher, se, reason", [
    (0.5, 0.4, 0.001, "the teacher (0.400) is not more diverse than the baseline (0.500)"),  # would read 50 %
    (0.5, 0.5, 0.001, "not more diverse"),
    (0.5, 0.5 + 1e-9, 0.0, "within the scores' noise (threshold 0.01)"),  # floor: would read 1e10 %
    (0.5, 0.55, 0.02, "within the scores' noise (threshold 0.0566)"),  # 2 x hypot(0.02, 0.02)
    (0.5, 0.7, None, "2 images"),
])
def test_recovery_is_na_with_the_reason_when_the_gap_is_not_above_the_noise(baseline, teacher, se, reason):
    result = recovery(baseline, 0.45, teacher, baseline_se=se, teacher_se=se)
    assert result.value is None and reason in result.reason
    assert result.text().startswith("n/a (") and "%" not in result.text()


def test_jackknife_se_equals_leave_one_image_out_by_hand():
    rng = np.random.default_rng(3)
    d = rng.uniform(0.2, 0.8, (6, 6))
    d = np.triu(d, 1) + np.triu(d, 1).T
    n = 6
    loo = []
    for left in range(n):
        keep = [k for k in range(n) if k != left]
        loo.append(np.mean([d[i, j] for a, i in enumerate(keep) for j in keep[a + 1:]]))
    reference = np.sqrt((n - 1) / n * np.sum((np.array(loo) - np.mean(loo)) ** 2))
    assert jackknife_se(torch.from_numpy(d)) == pytest.approx(reference, rel=1e-12)
    assert jackknife_se(torch.tensor([[0.0, 0.3], [0.3, 0.0]])) is None
    assert jackknife_se(torch.full((4, 4), 0.5).fill_diagonal_(0)) == pytest.approx(0.0, abs=1e-15)


def test_bad_inputs_raise():
    nan = torch.rand(2, 8, 8, 3)
    nan[0, 0, 0, 0] = float("nan")
    for fn in (pixel_std, sharpness):
        with pytest.raises(ValueError, match="1 pixel value"):
            fn(nan)
        with pytest.raises(ValueError, match="4 channels"):
            fn(torch.rand(2, 8, 8, 4))
        with pytest.raises(ValueError, match="N, H, W, C"):
            fn(torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match="3x3"):
        sharpness(torch.rand(1, 2, 8, 3))


@pytest.fixture(scope="module")
def pairwise():
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PairwiseLPIPS(lpips.LPIPS(net="squeeze", pretrained=True, pnet_rand=True, verbose=False))


def test_score_batch(pairwise):
    g = torch.Generator().manual_seed(4)
    images = torch.rand(5, 48, 64, 3, generator=g)
    scores, matrix = score_batch(images, pairwise, resize_short_side=64, tau=0.5)
    assert isinstance(scores, DiversityScores)
    assert matrix.shape == (5, 5)
    off = matrix[np.triu_indices(5, 1)]
    assert scores.avg_lpips == pytest.approx(avg_pairwise(matrix)) == pytest.approx(float(off.mean()))
    assert scores.lpips_mean == pytest.approx(scores.avg_lpips)
    assert (scores.lpips_min, scores.lpips_max) == (pytest.approx(float(off.min())), pytest.approx(float(off.max())))
    assert scores.lpips_std == pytest.approx(float(np.std(off.numpy())))
    assert scores.pixel_std == pytest.approx(pixel_std(images))
    assert scores.sharpness == pytest.approx(sharpness(images))
    assert scores.vendi == pytest.approx(vendi_score(lpips_kernel(matrix, 0.5)))
    assert 1.0 <= scores.vendi <= 5.0
    d = scores.to_dict()
    assert d["n_images"] == 5 and d["net"] == "squeeze" and d["resize"] == 64 and d["tau"] == 0.5
    with pytest.raises(ValueError, match="at least 2 images"):
        score_batch(images[:1], pairwise)


def test_definitions_cover_every_score():
    assert {"avg_lpips", "pixel_std", "sharpness", "vendi", "recovery"} <= set(DEFINITIONS)
    text = definitions_markdown()
    for phrase in ("ddof = 0", "0.299", "[[0,1,0],[1,-4,1],[0,1,0]]", "exp(-LPIPS_ij / tau)", "i < j"):
        assert phrase in text
