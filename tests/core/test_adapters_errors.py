"""Every way an adapter would silently do nothing (or the wrong thing) in ComfyUI is an AdapterError here,
naming the file and what was wrong."""
from __future__ import annotations

import pytest
import torch

from sda_core.adapters import AdapterError, ModelLayout, guess_architecture, load_adapter
from sdatest.adapter_files import write_flux_lora, write_lora, write_sda_lokr, write_sdxl_lora, zimage_layout

SHAPES = zimage_layout()
LAYOUT = ModelLayout(SHAPES)


def error_of(source, **kwargs) -> str:
    with pytest.raises(AdapterError) as info:
        load_adapter(source, LAYOUT, **kwargs)
    return str(info.value)


def test_sdxl_lora_on_zimage_names_sdxl(tmp_path):
    path = tmp_path / "sdxl_style.safetensors"
    write_sdxl_lora(path)
    message = error_of(path)
    assert message.startswith("sdxl_style.safetensors: ")
    assert "none of its 5 modules" in message and "SDXL" in message and "Z-Image" in message


@pytest.mark.parametrize("style", ["diffusers", "kohya"])
def test_flux_lora_on_zimage_names_flux(tmp_path, style):
    path = tmp_path / f"flux_{style}.safetensors"
    write_flux_lora(path, style=style)
    message = error_of(path)
    assert message.startswith(f"flux_{style}.safetensors: ") and "Flux" in message and "patch nothing" in message


def test_unknown_architecture_shows_sample_names():
    message = error_of({"foo.bar.lora_A.weight": torch.ones(2, 2), "foo.bar.lora_B.weight": torch.ones(2, 2)},
                       label="odd.safetensors")
    assert message.startswith("odd.safetensors: ") and "foo.bar" in message


@pytest.mark.parametrize("keys,arch", [
    (["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"], "SD1.x/SDXL"),
    (["transformer.transformer_blocks.0.img_mlp.net.0.proj.lora_A.weight"], "Qwen-Image"),
    (["diffusion_model.blocks.0.self_attn.q.lora_A.weight"], "Wan"),
    (["transformer.joint_blocks.0.x_block.attn.qkv.lora_A.weight"], "SD3"),
    (["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], "text encoder"),
])
def test_architecture_guesses(keys, arch):
    assert arch in guess_architecture(keys)


def test_sd1_vs_sdxl_from_cross_attention_width():
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert guess_architecture([key], {key: torch.ones(4, 768)}) == "SD1.x (UNet)"
    assert guess_architecture([key], {key: torch.ones(4, 2048)}) == "SDXL (UNet)"


def test_shape_mismatch_names_key_expected_and_got(tmp_path):
    path = tmp_path / "other_size.safetensors"
    big = zimage_layout(dim=512, n_heads=8)  # a LoKr for a wider Z-Image
    write_sda_lokr(path, big, style="lycoris", layers=[0], targets=("attention.to_q",))
    message = error_of(path)
    assert message.startswith("other_size.safetensors: lycoris_layers_0_attention_to_q.lokr_w1: ")
    assert "512×512" in message and "256×256" in message
    assert "layers.0.attention.qkv.weight rows 0:256" in message


def test_shape_mismatch_counts_the_others(tmp_path):
    path = tmp_path / "other_size.safetensors"
    write_lora(path, zimage_layout(dim=512, n_heads=8), prefix="transformer.")
    message = error_of(path)
    assert "13 more modules do not fit" in message


def test_shape_mismatch_even_when_some_modules_fit():
    sd = {"layers.0.attention.out.lora_A.weight": torch.ones(2, 256),
          "layers.0.attention.out.lora_B.weight": torch.ones(256, 2),
          "layers.0.feed_forward.w1.lokr_w1": torch.ones(4, 4),
          "layers.0.feed_forward.w1.lokr_w2": torch.ones(100, 64)}
    message = error_of(sd, label="half.safetensors")
    assert message.startswith("half.safetensors: layers.0.feed_forward.w1.lokr_w1")
    assert "400×256" in message and "768×256" in message


def test_no_tensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "hollow.safetensors"
    save_file({}, str(path))
    assert "hollow.safetensors: the file holds no tensors" in error_of(path)


def test_incomplete_and_inconsistent_factors():
    message = error_of({"layers.0.attention.out.lora_B.weight": torch.ones(256, 2)}, label="half.safetensors")
    assert message.startswith("half.safetensors: layers.0.attention.out") and "missing lora_down" in message
    message = error_of({"layers.0.attention.out.lora_A.weight": torch.ones(3, 256),
                        "layers.0.attention.out.lora_B.weight": torch.ones(256, 2)}, label="ranks.safetensors")
    assert "ranks.safetensors: layers.0.attention.out.lora_B.weight has shape 256×2" in message
    message = error_of({"layers.0.attention.out.lora_A.weight": torch.ones(2, 256),
                        "layers.0.attention.out.lora_B.weight": torch.ones(256, 2),
                        "layers.0.attention.out.lokr_w1": torch.ones(2, 2)}, label="mixed.safetensors")
    assert message.startswith("mixed.safetensors: ") and "mixes lora and lokr" in message
    message = error_of({"layers.0.attention.out.lora_A.weight": torch.ones(2, 256),
                        "layers.0.attention.out.lora_B.weight": torch.ones(256, 2),
                        "layers.0.attention.out.alpha": torch.ones(2)}, label="alpha.safetensors")
    assert message.startswith("alpha.safetensors: layers.0.attention.out.alpha") and "single number" in message


def test_only_unsupported_modules_is_zero_placements():
    sd = {"layers.0.attention.out.lora_A.weight": torch.ones(2, 256),
          "layers.0.attention.out.lora_B.weight": torch.ones(256, 2),
          "layers.0.attention.out.dora_scale": torch.ones(1, 256)}
    message = error_of(sd, label="dora.safetensors")
    assert message.startswith("dora.safetensors: none of its 1 modules") and "DoRA" in message
