"""Backbone weights: found in the given folders or torch's hub cache, else a clear error."""
import functools
import hashlib
import http.server
import os
import pickle
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from sda_core.diversity import weights
from sda_core.diversity.weights import BACKBONES, LPIPSWeightsError, find_backbone_file, load_lpips


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty torch hub cache, downloads blocked (but to this machine's loopback), no cached models between tests."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    attempts = []
    real_urlopen = urllib.request.urlopen

    def blocked(url, *args, **kwargs):
        if url.startswith("http://127.0.0.1:"):
            return real_urlopen(url, *args, **kwargs)
        attempts.append(url)
        raise urllib.error.URLError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(urllib.request, "urlopen", blocked)
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
    assert offline == [bb.url]  # the download was tried
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


# --- the download itself, against servers on this machine's loopback ----------------------------------

@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base url)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve_pth(www, state, name_hash=None):
    torch.save(state, www / "x.pth")
    digest = hashlib.sha256((www / "x.pth").read_bytes()).hexdigest()
    name = f"alexnet-owt-{name_hash or digest[:8]}.pth"
    os.replace(www / "x.pth", www / name)
    return name


SMALL = {"features.0.weight": torch.arange(12.0).reshape(4, 3)}  # what is served; the loader checks shapes later


def test_download_lands_hash_checked_in_the_hub_cache(tmp_path, served):
    www, base = served
    name = _serve_pth(www, SMALL)
    state = weights.download_state_dict("alex", url=f"{base}/{name}", timeout=10)
    assert torch.equal(state["features.0.weight"], SMALL["features.0.weight"])
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert sorted(p.name for p in cache.iterdir()) == [name]  # no temp file left
    assert oct((cache / name).stat().st_mode & 0o777) == "0o644"


def test_download_with_the_wrong_hash_is_refused_and_leaves_nothing(tmp_path, served):
    www, base = served
    name = _serve_pth(www, SMALL, name_hash="00000000")
    with pytest.raises(LPIPSWeightsError, match="sha256 .* does not match the 00000000"):
        weights.download_state_dict("alex", url=f"{base}/{name}", timeout=10)
    assert list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir()) == []


def test_a_stalled_download_times_out_with_instructions(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers: a firewall that drops the reply
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/alexnet-owt-7be5be79.pth"
        start = time.monotonic()
        with pytest.raises(LPIPSWeightsError, match="timed out") as err:
            weights.download_state_dict("alex", [tmp_path], url=url, timeout=0.5)
        assert time.monotonic() - start < 10
        assert "alexnet.safetensors" in str(err.value) and str(tmp_path) in str(err.value)
    finally:
        listener.close()
