"""Every trainer's key format lands on the model's own parameters (to_q/to_k/to_v on row slices of the fused qkv),
from tiny files written in those formats."""
from __future__ import annotations

import pytest
import torch

from sda_core.adapters import AdapterError, LoadedAdapter, ModelLayout, Target, apply_deltas, load_adapter, module_targets
from sda_core.adapters.layout import SWAP_HALVES
from sdatest.adapter_files import (diffusers_lora_metadata, write_loha, write_lora, write_sda_lokr,
                                   zimage_layout)

SHAPES = zimage_layout()  # dim 256: qkv 768×256, feed_forward hidden 768
LAYOUT = ModelLayout(SHAPES)
QKV = "layers.0.attention.qkv.weight"
N_MODULES = 2 * 7  # two main layers × (to_q, to_k, to_v, to_out.0, w1, w2, w3)
N_PARAMS = 2 * 5  # qkv, out, w1, w2, w3 per layer


def by_name(loaded: LoadedAdapter) -> dict[str, Target]:
    return {module.name: target for target, module in loaded.placements}


# (writer, kwargs, a key it must write, expected format, algorithm)
CASES = {
    "lycoris-lokr": (write_sda_lokr, dict(style="lycoris"), "lycoris_layers_0_attention_to_q.lokr_w1",
                     "lycoris", "lokr"),
    "ai-toolkit-lora": (write_lora, dict(prefix="diffusion_model."),
                        "diffusion_model.layers.0.attention.to_q.lora_A.weight", "ai-toolkit/comfyui", "lora"),
    "diffusers-lora": (write_lora, dict(prefix="transformer."), "transformer.layers.0.attention.to_q.lora_A.weight",
                       "diffusers", "lora"),
    "kohya-lora": (write_lora, dict(style="kohya", alpha=2.0), "lora_unet_layers_0_attention_to_q.lora_down.weight",
                   "kohya", "lora"),
    "peft-lora": (write_lora, dict(prefix="base_model.model."),
                  "base_model.model.layers.0.attention.to_q.lora_A.weight", "peft", "lora"),
    "peft-lokr": (write_sda_lokr, dict(prefix="base_model.model."), "base_model.model.layers.0.attention.to_q.lokr_w1",
                  "peft", "lokr"),
    "diffsynth-lora": (write_lora, dict(prefix=""), "layers.0.attention.to_q.lora_A.weight", "diffsynth", "lora"),
    "diffusers-lokr": (write_sda_lokr, dict(prefix="transformer."), "transformer.layers.0.attention.to_q.lokr_w2",
                       "diffusers", "lokr"),
    "kohya-lokr": (write_sda_lokr, dict(style="kohya", alpha=4.0), "lora_unet_layers_1_feed_forward_w3.lokr_w1",
                   "kohya", "lokr"),
    "lycoris-loha": (write_loha, dict(style="lycoris", alpha=2.0), "lycoris_layers_0_attention_to_out_0.hada_w1_a",
                     "lycoris", "loha"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_format_parses_and_places_every_module(tmp_path, case):
    writer, kwargs, example_key, fmt, algo = CASES[case]
    path = tmp_path / f"{case}.safetensors"
    keys = writer(path, SHAPES, seed=3, **kwargs)
    assert example_key in keys
    loaded = load_adapter(path, LAYOUT)
    assert loaded.label == f"{case}.safetensors"
    assert loaded.format == fmt
    assert loaded.unplaced == []
    assert len(loaded.placements) == N_MODULES and len(loaded.patched_params) == N_PARAMS
    assert {m.algo for _, m in loaded.placements} == {algo}
    targets = by_name(loaded)
    assert targets["layers.0.attention.to_q"] == Target(QKV, (0, 256), (256, 256))
    assert targets["layers.0.attention.to_k"] == Target(QKV, (256, 256), (256, 256))
    assert targets["layers.0.attention.to_v"] == Target(QKV, (512, 256), (256, 256))
    assert targets["layers.1.attention.to_out.0"] == Target("layers.1.attention.out.weight", None, (256, 256))
    assert targets["layers.1.feed_forward.w2"] == Target("layers.1.feed_forward.w2.weight", None, (256, 768))
    for target, module in loaded.placements:
        delta = module.delta(target.shape)
        assert delta.shape == target.shape and delta.abs().max() > 1e-4


def test_same_factors_in_every_format_give_the_same_deltas(tmp_path):
    reference = None
    for style, prefix in [("diffusers", "diffusion_model."), ("diffusers", "transformer."), ("lycoris", ""),
                          ("kohya", ""), ("diffusers", "base_model.model."), ("diffusers", "")]:
        path = tmp_path / f"{style}-{prefix or 'bare'}.safetensors"
        write_lora(path, SHAPES, rank=4, alpha=2.0, style=style, prefix=prefix, seed=11)
        loaded = load_adapter(path, LAYOUT)
        deltas = {(t.param, t.rows): m.delta(t.shape) for t, m in loaded.placements}
        if reference is None:
            reference = deltas
        else:
            assert deltas.keys() == reference.keys()
            for k in deltas:
                assert torch.equal(deltas[k], reference[k]), (style, prefix, k)


def test_comfyui_native_fused_qkv_names(tmp_path):
    path = tmp_path / "native.safetensors"
    keys = write_lora(path, SHAPES, targets=("attention.qkv", "attention.out"), prefix="diffusion_model.")
    assert "diffusion_model.layers.0.attention.qkv.lora_A.weight" in keys
    loaded = load_adapter(path, LAYOUT)
    assert by_name(loaded)["layers.0.attention.qkv"] == Target(QKV, None, (768, 256))
    assert by_name(loaded)["layers.0.attention.out"] == Target("layers.0.attention.out.weight", None, (256, 256))


def test_qkv_rows_from_layout_for_grouped_kv_heads():
    shapes = {k: ((512, 256) if k.endswith("attention.qkv.weight") else v) for k, v in SHAPES.items()}
    # 4 query heads and 2 kv heads of 64
    layout = ModelLayout(shapes, qkv_rows=(256, 128, 128))
    sd = {f"transformer.layers.0.attention.{n}.lora_{ab}.weight": t
          for n, rows in [("to_q", 256), ("to_k", 128), ("to_v", 128)]
          for ab, t in [("A", torch.ones(2, 256)), ("B", torch.ones(rows, 2))]}
    loaded = load_adapter(sd, layout)
    rows = {m.name: t.rows for t, m in loaded.placements}
    assert rows == {"layers.0.attention.to_q": (0, 256), "layers.0.attention.to_k": (256, 128),
                    "layers.0.attention.to_v": (384, 128)}
    with pytest.raises(ValueError, match="qkv_rows"):
        module_targets(ModelLayout(shapes, qkv_rows=(256, 256, 256)))


def test_diffusers_metadata_alpha_and_alpha_pattern(tmp_path):
    """diffusers keeps alpha only in `lora_adapter_metadata`; ComfyUI ignores it, we use it."""
    plain = tmp_path / "plain.safetensors"
    write_lora(plain, SHAPES, rank=4, prefix="transformer.")
    assert {m.scale for _, m in load_adapter(plain, LAYOUT).placements} == {1.0}

    path = tmp_path / "meta.safetensors"
    meta = diffusers_lora_metadata(8, 4, alpha_pattern={"layers.0.attention.to_q": 2},
                                   rank_pattern={"layers.0.attention.to_q": 4})
    write_lora(path, SHAPES, rank=4, prefix="transformer.", metadata=meta)
    loaded = load_adapter(path, LAYOUT)
    scales = {m.name: m.scale for _, m in loaded.placements}
    assert scales["layers.0.attention.to_q"] == pytest.approx(0.5)
    assert scales["layers.1.attention.to_q"] == pytest.approx(2.0)
    assert scales["layers.0.feed_forward.w1"] == pytest.approx(2.0)
    assert "lora_adapter_metadata" in loaded.report() and "alpha 8" in loaded.report()
    # and the deltas follow: the metadata file is the plain one times its scale
    plain_deltas = {m.name: m.delta(t.shape) for t, m in load_adapter(plain, LAYOUT).placements}
    for t, m in loaded.placements:
        torch.testing.assert_close(m.delta(t.shape), scales[m.name] * plain_deltas[m.name], rtol=0, atol=1e-7)


def test_alpha_tensor_wins_over_metadata_and_rslora(tmp_path):
    path = tmp_path / "both.safetensors"
    write_lora(path, SHAPES, rank=4, alpha=1.0, prefix="transformer.", metadata=diffusers_lora_metadata(8, 4))
    assert {m.scale for _, m in load_adapter(path, LAYOUT).placements} == {0.25}
    rs = tmp_path / "rs.safetensors"
    write_lora(rs, SHAPES, rank=4, prefix="transformer.", metadata=diffusers_lora_metadata(8, 4, use_rslora=True))
    assert {m.scale for _, m in load_adapter(rs, LAYOUT).placements} == {4.0}  # 8 / sqrt(4)


def test_aliases_of_embedders_final_layer_refiners_and_modulation():
    one = lambda rows, cols: {"lora_down.weight": torch.ones(2, cols), "lora_up.weight": torch.ones(rows, 2)}  # noqa: E731
    names = {
        "lora_unet_all_final_layer_2-1_linear": ("final_layer.linear.weight", one(64, 256)),
        "lora_unet_all_x_embedder_2-1": ("x_embedder.weight", one(256, 64)),
        "lora_unet_layers_0_adaLN_modulation_0": ("layers.0.adaLN_modulation.0.weight", one(1024, 256)),
        "lycoris_noise_refiner_0_attention_to_k": (("noise_refiner.0.attention.qkv.weight", (256, 256)),
                                                   one(256, 256)),
        "lycoris_context_refiner_0_feed_forward_w1": ("context_refiner.0.feed_forward.w1.weight", one(768, 256)),
        "diffusion_model.t_embedder.mlp.0": ("t_embedder.mlp.0.weight", one(256, 256)),
        "diffusion_model.cap_embedder.1": ("cap_embedder.1.weight", one(256, 32)),
        "diffusion_model.final_layer.adaLN_modulation.1": ("final_layer.adaLN_modulation.1.weight", one(256, 256)),
    }
    sd = {f"{base}.{suffix}": t for base, (_, factors) in names.items() for suffix, t in factors.items()}
    loaded = load_adapter(sd, LAYOUT, label="aliases")
    assert loaded.unplaced == []
    got = {t.param: t.rows for t, _ in loaded.placements}
    for base, (where, _) in names.items():
        if isinstance(where, tuple):
            assert got[where[0]] == where[1]
        else:
            assert got[where] is None
    assert "kohya" in loaded.format and "lycoris" in loaded.format and "ai-toolkit/comfyui" in loaded.format


def test_unplaced_modules_reported_with_reasons():
    good = {"diffusion_model.layers.0.attention.qkv.lora_A.weight": torch.ones(2, 256),
            "diffusion_model.layers.0.attention.qkv.lora_B.weight": torch.ones(768, 2)}
    dora = {"diffusion_model.layers.1.attention.out.lora_A.weight": torch.ones(2, 256),
            "diffusion_model.layers.1.attention.out.lora_B.weight": torch.ones(256, 2),
            "diffusion_model.layers.1.attention.out.dora_scale": torch.ones(1, 256)}
    other = {"diffusion_model.layers.7.attention.qkv.lora_A.weight": torch.ones(2, 256),  # no layer 7
             "diffusion_model.layers.7.attention.qkv.lora_B.weight": torch.ones(768, 2),
             "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 8),
             "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.ones(8, 2),
             "diffusion_model.layers.0.attention.qkv.weird_factor": torch.ones(3)}
    loaded = load_adapter({**good, **dora, **other}, LAYOUT, label="mixed.safetensors")
    assert [t.param for t, _ in loaded.placements] == [QKV]
    assert set(loaded.unplaced) == {"diffusion_model.layers.1.attention.out", "diffusion_model.layers.7.attention.qkv",
                                    "lora_te1_text_model_encoder_layers_0_mlp_fc1",
                                    "diffusion_model.layers.0.attention.qkv.weird_factor"}
    reasons = loaded.unplaced_reasons
    assert "DoRA" in reasons["diffusion_model.layers.1.attention.out"]
    assert "no such layer" in reasons["diffusion_model.layers.7.attention.qkv"]
    assert "text encoder" in reasons["lora_te1_text_model_encoder_layers_0_mlp_fc1"]
    assert "unknown" in reasons["diffusion_model.layers.0.attention.qkv.weird_factor"]
    report = loaded.report()
    assert "4 keys not placed" in report and "DoRA" in report and "weird_factor" in report


def test_report_names_format_algorithm_parameters_and_counts(tmp_path):
    path = tmp_path / "sda.safetensors"
    write_sda_lokr(path, SHAPES, style="lycoris", alpha=1.0)
    report = load_adapter(path, LAYOUT).report()
    assert report.startswith("sda.safetensors: LyCORIS format")
    assert "LoKr ×14" in report
    assert "factor 8×8" in report and "full rank" in report
    assert "alpha 1 ignored" in report
    assert f"patches {N_PARAMS} layers of Z-Image" in report
    assert "6 modules land on q/k/v row slices" in report
    assert "every key placed" in report

    lora = tmp_path / "style.safetensors"
    write_lora(lora, SHAPES, rank=4, alpha=2.0, style="kohya", layers=[0])
    report = load_adapter(lora, LAYOUT).report()
    assert "kohya" in report and "LoRA ×7" in report and "rank 4, alpha 2, scale 0.5" in report
    assert "patches 5 layers" in report


def test_report_lists_first_ten_unplaced_and_a_count():
    sd = {"layers.0.attention.qkv.lora_A.weight": torch.ones(2, 256),
          "layers.0.attention.qkv.lora_B.weight": torch.ones(768, 2)}
    for i in range(13):
        sd[f"layers.{40 + i}.attention.qkv.lora_A.weight"] = torch.ones(2, 256)
        sd[f"layers.{40 + i}.attention.qkv.lora_B.weight"] = torch.ones(768, 2)
    report = load_adapter(sd, LAYOUT).report()
    assert "13 keys not placed" in report and "and 3 more" in report
    assert "layers.40.attention.qkv" in report and "layers.52.attention.qkv" not in report


def test_lokr_decomposed_alpha_is_used_and_described(tmp_path):
    sd = {"lycoris_layers_0_attention_to_q.lokr_w1": torch.ones(8, 8),
          "lycoris_layers_0_attention_to_q.lokr_w2_a": torch.ones(32, 4),
          "lycoris_layers_0_attention_to_q.lokr_w2_b": torch.ones(4, 32),
          "lycoris_layers_0_attention_to_q.alpha": torch.tensor(2.0)}
    loaded = load_adapter(sd, LAYOUT)
    (target, module), = loaded.placements
    assert target.rows == (0, 256) and module.scale == 0.5 and not module.alpha_ignored
    assert "rank 4" in loaded.report() and "scale 0.5" in loaded.report()


@pytest.mark.parametrize("down,up,fmt", [
    ("transformer.layers.0.attention.to_v.lora.down.weight", "transformer.layers.0.attention.to_v.lora.up.weight",
     "diffusers"),
    ("unet.layers.0.attention.to_v_lora.down.weight", "unet.layers.0.attention.to_v_lora.up.weight", "diffusers"),
    ("base_model.model.layers.0.attention.to_v.lora_A.default.weight",
     "base_model.model.layers.0.attention.to_v.lora_B.default.weight", "peft"),
    ("layers.0.attention.to_v.lora_linear_layer.down.weight", "layers.0.attention.to_v.lora_linear_layer.up.weight",
     "diffsynth"),
    ("diffusion_model.layers.0.attention.to_v.lora_A", "diffusion_model.layers.0.attention.to_v.lora_B",
     "ai-toolkit/comfyui"),
    ("lora_transformer_layers_0_attention_to_v.lora_down.weight",
     "lora_transformer_layers_0_attention_to_v.lora_up.weight", "onetrainer"),
    ("model.diffusion_model.layers.0.attention.to_v.lora_down.weight",
     "model.diffusion_model.layers.0.attention.to_v.lora_up.weight", "ai-toolkit/comfyui"),
    ("base_model.model.transformer.layers.0.attention.to_v.lora_A.weight",
     "base_model.model.transformer.layers.0.attention.to_v.lora_B.weight", "peft"),
])
def test_suffix_and_prefix_variants(down, up, fmt):
    loaded = load_adapter({down: torch.ones(2, 256), up: torch.ones(256, 2)}, LAYOUT)
    (target, module), = loaded.placements
    assert target == Target(QKV, (512, 256), (256, 256))
    assert module.name == "layers.0.attention.to_v" and module.algo == "lora" and loaded.format == fmt


def test_host_key_map_places_names_and_row_slices_as_given():
    """Other architectures: the nodes hand over ComfyUI's key map as a plain dict; names land exactly there."""
    shapes = {"blocks.0.qkv.weight": (12, 4), "blocks.0.proj.weight": (4, 4), "blocks.0.norm.weight": (4,),
              "final.mod.weight": (8, 4)}
    key_map = {"transformer.blocks.0.attn.to_q": ("blocks.0.qkv.weight", (0, 4)),
               "transformer.blocks.0.attn.to_v": ("blocks.0.qkv.weight", (8, 4)),
               "lora_unet_blocks_0_proj": ("blocks.0.proj.weight", None),
               "transformer.blocks.0.norm": ("blocks.0.norm.weight", None)}
    layout = ModelLayout(shapes, key_map=key_map, key_map_skipped={"transformer.norm_out.linear": "swapped halves"},
                         arch="TinyDiT", family="Tiny")
    sd = {f"{name}.{ab}": t for name, (out, inp) in [("transformer.blocks.0.attn.to_q", (4, 4)),
                                                      ("transformer.blocks.0.attn.to_v", (4, 4)),
                                                      ("lora_unet_blocks_0_proj", (4, 4)),
                                                      ("transformer.norm_out.linear", (8, 4)),
                                                      ("transformer.blocks.0.ff", (4, 4))]
          for ab, t in [("lora_A.weight", torch.ones(2, inp)), ("lora_B.weight", torch.ones(out, 2))]}
    loaded = load_adapter(sd, layout, label="tiny.safetensors")
    where = {m.name: (t.param, t.rows) for t, m in loaded.placements}
    assert where == {"blocks.0.attn.to_q": ("blocks.0.qkv.weight", (0, 4)),
                     "blocks.0.attn.to_v": ("blocks.0.qkv.weight", (8, 4)),
                     "blocks_0_proj": ("blocks.0.proj.weight", None)}
    assert loaded.unplaced_reasons == {"transformer.norm_out.linear": "swapped halves",
                                       "transformer.blocks.0.ff": "not a name ComfyUI maps for TinyDiT"}
    assert "patches 2 layers of TinyDiT" in loaded.report()


def test_host_key_map_target_with_swapped_halves_lands_the_delta_halves_swapped():
    """Flux's and SD3's final modulation: ComfyUI swaps the scale and shift halves of the change (diffusers orders
    them the other way); the key map names that change as data, and the delta lands swapped."""
    import numpy as np

    shapes = {"final.mod.weight": (8, 4)}
    layout = ModelLayout(shapes, key_map={"transformer.norm_out.linear": ("final.mod.weight", None, SWAP_HALVES)},
                         arch="TinyDiT", family="Tiny")
    gen = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, 4, generator=gen), torch.randn(8, 2, generator=gen)
    loaded = load_adapter({"transformer.norm_out.linear.lora_A.weight": down,
                           "transformer.norm_out.linear.lora_B.weight": up}, layout, label="mod.safetensors")
    (target, module), = loaded.placements
    assert (target.param, target.rows, target.transform) == ("final.mod.weight", None, SWAP_HALVES)
    plain = up.double().numpy() @ down.double().numpy()
    expected = np.concatenate([plain[4:], plain[:4]])
    np.testing.assert_allclose(module.delta((8, 4)).double().numpy(), expected, rtol=1e-6, atol=1e-6)
    weight = torch.zeros(8, 4)
    np.testing.assert_allclose(apply_deltas(weight, [(module, 0.5)]).double().numpy(), 0.5 * expected,
                               rtol=1e-6, atol=1e-6)
    assert "1 × modulation (e.g. norm_out.linear): scale and shift halves swapped on landing" in loaded.report()
    with pytest.raises(ValueError, match="unknown delta transform|transform 'mirror'"):
        load_adapter({"transformer.norm_out.linear.lora_A.weight": down,
                      "transformer.norm_out.linear.lora_B.weight": up},
                     ModelLayout(shapes, key_map={"transformer.norm_out.linear": ("final.mod.weight", None, "mirror")}),
                     label="mod.safetensors")


def test_zero_matches_on_the_adapters_own_architecture_says_the_names_are_unread():
    layout = ModelLayout({"double_blocks.0.img_attn.qkv.weight": (12, 4)}, key_map={}, arch="FluxSchnell", family="Flux")
    sd = {"model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.ones(2, 4),
          "model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.ones(12, 2)}
    with pytest.raises(AdapterError) as info:
        load_adapter(sd, layout, label="flux.safetensors")
    message = str(info.value)
    assert "its names look like Flux, which FluxSchnell is, but none of them is a name ComfyUI's key map places" in message
    assert "not for FluxSchnell" not in message
    other = ModelLayout({"input_blocks.0.0.weight": (4, 4, 3, 3)}, key_map={}, arch="SDXL", family="SDXL")
    with pytest.raises(AdapterError, match="it looks like an adapter for Flux, not for SDXL"):
        load_adapter(sd, other, label="flux.safetensors")
