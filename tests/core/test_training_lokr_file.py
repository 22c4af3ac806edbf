"""The saved LoKr: ComfyUI-mappable keys, full metadata, atomic, never overwriting, never escaping its folder."""
import json
import os

import pytest
import torch
from safetensors import safe_open

from sda_core.training import SDAConfig, X0_PROJECTION, save_lokr, training_metadata
from sda_core.training import atomic_save
from sda_core.training.lokr import LoKrSet

SHAPES = {
    "layers.0.attention.to_q": (64, 64),
    "layers.0.attention.to_k": (64, 64),
    "layers.0.attention.to_v": (64, 64),
    "layers.0.attention.to_out.0": (64, 64),
    "layers.0.feed_forward.w1": (168, 64),
    "layers.0.feed_forward.w2": (64, 168),
    "layers.0.feed_forward.w3": (168, 64),
}


def _read(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _meta(cfg=None):
    return training_metadata(cfg or SDAConfig(), steps_done=2500, base_model="z_image_turbo_bf16.safetensors")


def test_round_trip_keys_shapes_values_and_metadata(tmp_path):
    lokr = LoKrSet.build(SHAPES, seed=1)
    with torch.no_grad():
        for p in lokr.parameters():
            p.add_(0.01)
    cfg = SDAConfig(steps=2500, lr=2e-4)
    path = save_lokr(str(tmp_path / "sda"), lokr, _meta(cfg))
    assert path == str(tmp_path / "sda.safetensors")
    tensors, meta = _read(path)
    expected = {f"diffusion_model.{n}.{k}" for n in SHAPES for k in ("lokr_w1", "lokr_w2", "alpha")}
    assert set(tensors) == expected
    for n, m in lokr.items():
        assert torch.equal(tensors[f"diffusion_model.{n}.lokr_w1"], m.w1.detach())
        assert torch.equal(tensors[f"diffusion_model.{n}.lokr_w2"], m.w2.detach())
        assert tensors[f"diffusion_model.{n}.alpha"].item() == 1.0  # LyCORIS needs one; full factors: scale 1
    assert tensors["diffusion_model.layers.0.feed_forward.w1.lokr_w1"].shape == (8, 8)
    assert tensors["diffusion_model.layers.0.feed_forward.w1.lokr_w2"].shape == (21, 8)
    assert json.loads(meta["sda_config"]) == cfg.to_dict()
    for key in ("lambda_div", "huber_delta", "pool_kernel", "div_skip", "shift", "factor", "weight_decay"):
        assert key in json.loads(meta["sda_config"])
    assert meta["sda_steps"] == "2500" and meta["sda_base_model"] == "z_image_turbo_bf16.safetensors"
    assert meta["sda_x0_projection"] == X0_PROJECTION
    assert "x_t - sigma*v" in X0_PROJECTION and "z - v" in X0_PROJECTION
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"]) == {"algo": "lokr", "factor": "8", "full_matrix": "true"}
    assert meta["sda_format_version"] == "1"
    assert "ss_network_dim" not in meta  # full matrix: no alpha/dim to misread


def test_low_rank_file_has_w2_factors_and_alpha(tmp_path):
    lokr = LoKrSet.build({"layers.0.attention.to_q": (64, 64)}, rank=4)
    tensors, meta = _read(save_lokr(str(tmp_path / "r.safetensors"), lokr, {"note": "x"}, dtype=torch.bfloat16))
    p = "diffusion_model.layers.0.attention.to_q."
    assert set(tensors) == {p + "lokr_w1", p + "lokr_w2_a", p + "lokr_w2_b", p + "alpha"}
    assert tensors[p + "lokr_w1"].dtype == torch.bfloat16 and tensors[p + "alpha"].item() == 4.0
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4"
    assert json.loads(meta["ss_network_args"])["full_matrix"] == "false" and meta["note"] == "x"


def test_never_overwrites_and_leaves_no_temp_file(tmp_path):
    lokr = LoKrSet.build({"layers.0.attention.to_q": (16, 16)})
    first = save_lokr(str(tmp_path / "a.safetensors"), lokr, _meta())
    before = open(first, "rb").read()
    with torch.no_grad():
        lokr["layers.0.attention.to_q"].w2.fill_(1.0)
    second = save_lokr(str(tmp_path / "a.safetensors"), lokr, _meta())
    third = save_lokr(str(tmp_path / "a"), lokr, _meta())
    assert [os.path.basename(p) for p in (first, second, third)] == ["a.safetensors", "a_1.safetensors", "a_2.safetensors"]
    assert open(first, "rb").read() == before
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors", "a_1.safetensors", "a_2.safetensors"]


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_save, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_lokr(str(tmp_path / "x"), LoKrSet.build({"layers.0.attention.to_q": (16, 16)}), {})
    assert os.listdir(tmp_path) == []


def test_names_may_not_escape_the_folder(tmp_path):
    root = tmp_path / "loras"
    root.mkdir()
    lokr = LoKrSet.build({"layers.0.attention.to_q": (16, 16)})
    for bad in ("../evil", str(tmp_path / "abs"), "sub/../../evil", ""):
        with pytest.raises(ValueError):
            save_lokr(bad, lokr, {}, root=str(root))
    os.symlink(tmp_path, root / "link")
    with pytest.raises(ValueError, match="outside"):
        save_lokr("link/evil", lokr, {}, root=str(root))
    ok = save_lokr("sda/mine", lokr, {}, root=str(root))
    assert ok == str(root / "sda" / "mine.safetensors") and os.path.isfile(ok)
    assert sorted(os.listdir(tmp_path)) == ["loras"]


class _DiffusersZImageBlock(torch.nn.Module):
    """diffusers' Z-Image block names (attention.to_q/to_k/to_v/to_out.0, feed_forward.w1/w2/w3): what LyCORIS wraps."""

    def __init__(self, dim=64, hidden=168):
        super().__init__()
        self.attention = torch.nn.Module()
        for n in ("to_q", "to_k", "to_v"):
            setattr(self.attention, n, torch.nn.Linear(dim, dim, bias=False))
        self.attention.to_out = torch.nn.ModuleList([torch.nn.Linear(dim, dim, bias=False), torch.nn.Dropout(0.0)])
        self.feed_forward = torch.nn.Module()
        self.feed_forward.w1 = torch.nn.Linear(dim, hidden, bias=False)
        self.feed_forward.w2 = torch.nn.Linear(hidden, dim, bias=False)
        self.feed_forward.w3 = torch.nn.Linear(dim, hidden, bias=False)


@pytest.mark.parametrize("rank", [None, 2])  # LyCORIS turns rank >= half of w2's larger side into full
def test_lycoris_loads_the_saved_file_and_merges_our_deltas(tmp_path, rank):
    from lycoris import create_lycoris_from_weights
    from safetensors.torch import load_file

    from sda_core.training import lycoris_state_dict

    lokr = LoKrSet.build(SHAPES, rank=rank, seed=2)
    with torch.no_grad():
        for p in lokr.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    path = save_lokr(str(tmp_path / "sda"), lokr, _meta())
    transformer = torch.nn.Module()
    transformer.layers = torch.nn.ModuleList([_DiffusersZImageBlock()])
    before = {n: p.detach().clone() for n, p in transformer.named_parameters()}

    # the file as saved: LyCORIS matches nothing (it reads only lycoris_ names) — hence the helper
    network, _ = create_lycoris_from_weights(1.0, None, transformer, weights_sd=load_file(path))
    assert len(network.loras) == 0
    network, _ = create_lycoris_from_weights(1.0, None, transformer, weights_sd=lycoris_state_dict(load_file(path)))
    assert len(network.loras) == len(SHAPES)
    network.merge_to(1.0)
    for name, m in lokr.items():
        merged = dict(transformer.named_parameters())[f"{name}.weight"]
        assert torch.allclose(merged - before[f"{name}.weight"], m.delta().detach(), atol=1e-6), name


def test_lycoris_names_refuse_keys_that_are_not_ours():
    from sda_core.training import lycoris_state_dict

    t = torch.zeros(1)
    assert set(lycoris_state_dict({"diffusion_model.layers.0.attention.to_out.0.lokr_w1": t})) == {
        "lycoris_layers_0_attention_to_out_0.lokr_w1"}
    with pytest.raises(ValueError, match="should start with 'diffusion_model.'"):
        lycoris_state_dict({"transformer.layers.0.attention.to_q.lokr_w1": t})
    with pytest.raises(ValueError, match="not an SDA LoKr key"):
        lycoris_state_dict({"diffusion_model.layers.0.attention.to_q.lora_up.weight": t})
