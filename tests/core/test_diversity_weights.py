"""Backbone weights: found in the given folders or torch's hub cache, else a clear error."""
import pickle
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from sda_core.diversity import weights
from sda_core.diversity.weights import BACKBONES, LPIPSWeightsError, find_backbone_file, load_lpips


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty torch hub cache, downloads blocked, no cached models between tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []

    def blocked(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", blocked)
    weights.clear_cache()
    yield attempts
    weights.clear_cache()


@pytest.fixture(scope="module")
def alexnet_state():
    torch.manual_seed(99)
    return torchvision.models.alexnet(weights=None).state_dict()


def assert_backbone_equals(model, state):
    net = model.net.state_dict()
    assert len(net) == 10  # 5 conv layers, weight + bias
    for key, value in net.items():
        assert torch.equal(value, state["features." + key.split(".", 1)[1]]), key


def test_pth_in_search_dir_is_loaded(tmp_path, alexnet_state, offline):
    folder = tmp_path / "models" / "lpips"
    folder.mkdir(parents=True)
    torch.save(alexnet_state, folder / "alexnet-owt-7be5be79.pth")
    model = load_lpips("alex", [str(tmp_path / "nothing_here"), str(folder)])
    assert_backbone_equals(model, alexnet_state)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert offline == []  # no download attempted
    assert load_lpips("alex", [str(folder)]) is model  # cached in-process


def test_safetensors_in_search_dir_is_loaded(tmp_path, alexnet_state):
    save_file({k: v.contiguous() for k, v in alexnet_state.items()}, str(tmp_path / "alexnet.safetensors"))
    assert find_backbone_file("alex", [tmp_path]) == tmp_path / "alexnet.safetensors"
    assert_backbone_equals(load_lpips("alex", [tmp_path]), alexnet_state)


def test_heads_come_from_the_package(tmp_path, alexnet_state):
    torch.save(alexnet_state, tmp_path / "alexnet-owt-7be5be79.pth")
    model = load_lpips("alex", [tmp_path])
    heads = torch.load(weights.lpips.__path__[0] + "/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, heads["lin0.model.1.weight"])


def test_torch_hub_cache_is_used(tmp_path, alexnet_state, offline):
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(alexnet_state, cache / "alexnet-owt-7be5be79.pth")
    assert_backbone_equals(load_lpips("alex"), alexnet_state)
    assert offline == []


@pytest.mark.parametrize("net", ["alex", "vgg", "squeeze"])
def test_missing_file_and_no_network_raise_with_instructions(tmp_path, net, offline):
    search = tmp_path / "comfy_models_lpips"
    search.mkdir()
    with pytest.raises(LPIPSWeightsError) as err:
        load_lpips(net, [str(search)])
    message = str(err.value)
    bb = BACKBONES[net]
    assert bb.pth in message and bb.safetensors in message
    assert str(search) in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    assert f"https://download.pytorch.org/models/{bb.pth}" in message
    assert "offline" in message
    assert offline == [bb.url]  # the download was tried, through torch's hub loader
    assert isinstance(err.value, RuntimeError)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pth_with_pickled_code_is_refused(tmp_path):
    with open(tmp_path / "alexnet-owt-7be5be79.pth", "wb") as f:
        pickle.dump({"features.0.weight": Payload()}, f, protocol=2)
    with pytest.raises(LPIPSWeightsError, match="cannot read"):
        load_lpips("alex", [tmp_path])


def test_wrong_network_in_file_is_refused(tmp_path):
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), tmp_path / "alexnet-owt-7be5be79.pth")
    with pytest.raises(LPIPSWeightsError, match="does not look like torchvision's alex"):
        load_lpips("alex", [tmp_path])


def test_unknown_net():
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        load_lpips("resnet")


def test_one_folder_given_bare(tmp_path, alexnet_state):
    torch.save(alexnet_state, tmp_path / "alexnet-owt-7be5be79.pth")
    assert find_backbone_file("alex", str(tmp_path)) == tmp_path / "alexnet-owt-7be5be79.pth"


def test_downloads_off(tmp_path, offline):
    with pytest.raises(LPIPSWeightsError, match="downloads are off.*squeezenet1_1-b8a52dc0.pth"):
        load_lpips("squeeze", [tmp_path], allow_download=False)
    assert offline == []
