"""PairwiseLPIPS must equal the lpips package pair by pair, with one backbone pass per image."""
import math
import warnings

import lpips
import pytest
import torch

from sda_core.diversity.lpips_pairs import PairwiseLPIPS, avg_pairwise, prepare_images, stack_images

TOL = 1e-5


def random_backbone_lpips(net, **kwargs):
    """The package's calibrated heads on a random backbone: no download, deterministic."""
    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False, **kwargs)


@pytest.fixture(scope="module", params=["alex", "vgg", "squeeze"])
def model(request):
    return random_backbone_lpips(request.param)


@pytest.fixture(scope="module")
def alex():
    return random_backbone_lpips("alex")


def batch(n, h=64, w=64, seed=0):
    """Noise, smooth gradients and blocks: inputs far apart and close together."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, h, w, 3, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    for k in range(1, n, 2):
        images[k] = torch.stack([xx, yy, (xx + yy) / 2], -1) * (k / n) + 0.1 * images[k]
    return images


def test_matrix_equals_lpips_package_for_every_pair(model):
    images = batch(4, 64, 80)
    matrix = PairwiseLPIPS(model, batch_size=3)(images, resize_short_side=None)
    x = prepare_images(images, None)
    with torch.no_grad():
        refs = {(i, j): float(model(x[i : i + 1], x[j : j + 1])) for i in range(4) for j in range(i + 1, 4)}
        # our [0, 1] -> [-1, 1] preprocessing is the package's own normalize=True path
        as_nchw = images.permute(0, 3, 1, 2)
        assert float(model(as_nchw[0:1], as_nchw[1:2], normalize=True)) == pytest.approx(refs[0, 1], abs=1e-6)
    worst = max(abs(ref - float(matrix[i, j])) for (i, j), ref in refs.items())
    assert worst < TOL
    assert min(refs.values()) > 1e-3  # a real comparison, not all zeros


def test_many_images_path_equals_package(alex):
    """From 32 images on the Gram is summed in longer runs; it must stay exact too."""
    images = batch(33, 40, 40, seed=3)
    matrix = PairwiseLPIPS(alex, batch_size=16)(images, resize_short_side=None)
    x = prepare_images(images, None)
    with torch.no_grad():
        for i, j in [(0, 1), (0, 32), (5, 17), (30, 31)]:
            assert abs(float(alex(x[i : i + 1], x[j : j + 1])) - float(matrix[i, j])) < TOL


def test_matrix_equals_package_after_resize(alex):
    images = batch(3, 48, 96)
    matrix = PairwiseLPIPS(alex)(images, resize_short_side=64)
    x = prepare_images(images, 64)
    assert x.shape == (3, 3, 64, 128)
    with torch.no_grad():
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            assert abs(float(alex(x[i : i + 1], x[j : j + 1])) - float(matrix[i, j])) < TOL


def test_baseline_lpips_without_heads_matches(alex):
    plain = random_backbone_lpips("alex", lpips=False)
    images = batch(3)
    matrix = PairwiseLPIPS(plain)(images, resize_short_side=None)
    x = prepare_images(images, None)
    with torch.no_grad():
        assert abs(float(plain(x[0:1], x[2:3])) - float(matrix[0, 2])) < TOL


def test_signed_random_heads_match():
    """Heads that were never calibrated can be negative; the Gram form must still be exact."""
    torch.manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signed = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    assert any(bool((lin.model[-1].weight < 0).any()) for lin in signed.lins)
    images = batch(4)
    matrix = PairwiseLPIPS(signed)(images, resize_short_side=None)
    x = prepare_images(images, None)
    with torch.no_grad():
        for i, j in [(0, 1), (1, 3), (2, 3)]:
            assert abs(float(signed(x[i : i + 1], x[j : j + 1])) - float(matrix[i, j])) < TOL


def test_identical_images_score_zero(alex):
    images = batch(4)
    images[2] = images[0]
    matrix = PairwiseLPIPS(alex)(images, resize_short_side=None)
    assert float(matrix[0, 2]) == pytest.approx(0.0, abs=1e-7)
    same = PairwiseLPIPS(alex)(images[:1].repeat(3, 1, 1, 1), resize_short_side=None)
    assert float(same.abs().max()) < 1e-7
    assert avg_pairwise(same) < 1e-7


def test_matrix_symmetric_zero_diagonal_float64(alex):
    matrix = PairwiseLPIPS(alex, batch_size=3)(batch(7), resize_short_side=None)
    assert matrix.shape == (7, 7) and matrix.dtype == torch.float64
    assert torch.equal(matrix, matrix.T)
    assert torch.equal(matrix.diagonal(), torch.zeros(7, dtype=torch.float64))
    assert (matrix >= 0).all()


def test_chunking_does_not_change_the_result(alex):
    images = batch(7)
    a = PairwiseLPIPS(alex, batch_size=1)(images, resize_short_side=None)
    b = PairwiseLPIPS(alex, batch_size=16)(images, resize_short_side=None)
    assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_backbone_runs_once_per_image(alex, batch_size):
    calls, seen = [], []

    def count(module, inputs, output):
        calls.append(1)
        seen.append(inputs[0].shape[0])

    handle = alex.net.register_forward_hook(count)
    try:
        PairwiseLPIPS(alex, batch_size=batch_size)(batch(7), resize_short_side=None)
    finally:
        handle.remove()
    assert sum(seen) == 7  # N images through the backbone, not N^2
    assert len(calls) == math.ceil(7 / batch_size)


def test_avg_pairwise_is_mean_over_i_lt_j():
    m = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    assert avg_pairwise(m) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        avg_pairwise(torch.zeros(1, 1))
    with pytest.raises(ValueError):
        avg_pairwise(torch.zeros(2, 3))


def test_resize_keeps_aspect_and_short_side():
    assert prepare_images(torch.rand(2, 90, 160, 3)).shape == (2, 3, 256, 455)
    assert prepare_images(torch.rand(2, 160, 90, 3)).shape == (2, 3, 455, 256)
    assert prepare_images(torch.rand(2, 40, 50, 3), None).shape == (2, 3, 40, 50)
    x = prepare_images(torch.full((2, 300, 300, 3), 0.25))
    assert x.shape == (2, 3, 256, 256)
    assert torch.allclose(x, torch.full_like(x, -0.5), atol=1e-6)  # [0, 1] -> [-1, 1], no clamping drift


def test_greyscale_is_repeated_to_rgb(alex):
    grey = torch.rand(3, 64, 64, 1)
    assert torch.equal(prepare_images(grey, None), prepare_images(grey.repeat(1, 1, 1, 3), None))


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(1, 64, 64, 3), "at least 2 images"),
        (torch.rand(64, 64, 3), "N, H, W, C"),
        (torch.rand(2, 64, 64, 4), "4 channels"),
        (torch.rand(2, 64, 64, 2), "2 channels"),
        (torch.rand(2, 16, 16, 3), "too small"),
    ],
)
def test_bad_inputs_raise_clearly(images, match):
    with pytest.raises(ValueError, match=match):
        prepare_images(images, None)


def test_nan_and_inf_are_counted():
    images = torch.rand(3, 64, 64, 3)
    images[0, 0, 0, 0] = float("nan")
    images[1, 5, 5, 2] = float("inf")
    images[2, 1, 1, 1] = float("-inf")
    with pytest.raises(ValueError, match="3 pixel value"):
        prepare_images(images)


def test_stack_images_refuses_mixed_sizes():
    a, b = torch.rand(64, 64, 3), torch.rand(2, 64, 64, 3)
    assert stack_images([a, b]).shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="mixed sizes.*64x64x3.*64x96x3"):
        stack_images([a, torch.rand(64, 96, 3)])
    with pytest.raises(ValueError, match="empty"):
        stack_images([])


def test_spatial_lpips_is_refused():
    with pytest.raises(ValueError, match="spatial"):
        PairwiseLPIPS(random_backbone_lpips("squeeze", spatial=True))
