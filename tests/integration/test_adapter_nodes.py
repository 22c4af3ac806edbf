"""The adapter nodes inside ComfyUI's executor, on a tiny random-weight Z-Image of the real architecture."""
from __future__ import annotations

import json

import pytest
import torch

from sdatest import registry, tiny_models
from sdatest.adapter_files import write_lora, write_sda_lokr, write_sdxl_lora
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph


@pytest.fixture(scope="module")
def shapes(comfy):
    return tiny_models.tiny_zimage_shapes()


@pytest.fixture(scope="module")
def adapter_files(comfy, shapes):
    loras = comfy.folder("loras")
    write_sda_lokr(loras / "sda_test.safetensors", shapes, factor=8, seed=1, scale=0.05)
    write_sda_lokr(loras / "sda_test_transformer.safetensors", shapes, factor=8, seed=1, scale=0.05,
                   prefix="transformer.")
    write_lora(loras / "style_test.safetensors", shapes, rank=4, alpha=2.0, seed=2)
    write_lora(loras / "assistant_test.safetensors", shapes, rank=8, seed=3)
    write_sdxl_lora(loras / "sdxl_style.safetensors")
    return loras


def _base(g: Graph):
    return g.add("SDATest_TinyZImage", seed=0, dtype="fp32"), g.add("SDATest_TinyConditioning", seed=0, tokens=8)


def _denoise(g, model, cond, key):
    g.add("SDATest_Denoise", model=model, conditioning=cond, key=key, seed=7, sigma=0.7, size=16)


def test_loader_equals_comfyui_lora_loader(comfy, adapter_files):
    g = Graph()
    model, cond = _base(g)
    ours = g.add("SDALoKrLoader", model=model, lokr_name="sda_test.safetensors", strength=0.8)
    theirs = g.add("LoraLoaderModelOnly", model=model, lora_name="sda_test.safetensors", strength_model=0.8)
    _denoise(g, ours, cond, "ours")
    _denoise(g, theirs, cond, "theirs")
    _denoise(g, model, cond, "base")
    comfy.run(g.prompt())
    ours, theirs, base = registry.take("ours"), registry.take("theirs"), registry.take("base")
    assert (ours - base).abs().max() > 1e-3, "the LoKr changed nothing: the test could not tell"
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_transformer_prefix_loads_like_diffusion_model_prefix(comfy, adapter_files):
    """ComfyUI 0.3.75 ignores `transformer.` keys silently; our loader maps them itself."""
    g = Graph()
    model, cond = _base(g)
    _denoise(g, g.add("SDALoKrLoader", model=model, lokr_name="sda_test.safetensors", strength=1.0), cond, "a")
    _denoise(g, g.add("SDALoKrLoader", model=model, lokr_name="sda_test_transformer.safetensors", strength=1.0),
             cond, "b")
    comfy.run(g.prompt())
    assert torch.equal(registry.take("a"), registry.take("b"))


def test_strength_zero_is_the_base_model_and_input_is_untouched(comfy, adapter_files):
    g = Graph()
    model, cond = _base(g)
    zero = g.add("SDALoKrLoader", model=model, lokr_name="sda_test.safetensors", strength=0.0)
    one = g.add("SDALoKrLoader", model=model, lokr_name="sda_test.safetensors", strength=1.0)
    _denoise(g, zero, cond, "zero")
    _denoise(g, one, cond, "one")
    _denoise(g, model, cond, "base")
    g.add("SDATest_Capture", value=model, key="input_model")
    g.add("SDATest_Capture", value=one, key="patched_model")
    g.add("SDATest_Capture", value=one[1], key="report")
    comfy.run(g.prompt())
    assert torch.equal(registry.take("zero"), registry.take("base"))
    assert registry.take("input_model").patches == {}
    patched = registry.take("patched_model")
    # 2 layers x (q, k, v slices of qkv + out + w1 + w2 + w3) patches on 2 x 5 distinct weights
    assert sum(len(v) for v in patched.patches.values()) == 14
    assert len(patched.patches) == 10
    report = registry.take("report")
    assert "lokr" in report.lower() and "sda_test.safetensors" in report
    assert "10" in report  # layers patched


def test_stack_equals_loaders_one_after_the_other(comfy, adapter_files):
    g = Graph()
    model, cond = _base(g)
    stack = g.add("SDAAdapterStack", model=model,
                  enabled_1=True, lora_1="sda_test.safetensors", strength_1=0.6,
                  enabled_2=True, lora_2="style_test.safetensors", strength_2=1.0,
                  enabled_3=False, lora_3="assistant_test.safetensors", strength_3=1.0,
                  enabled_4=True, lora_4="None", strength_4=1.0)
    chained = g.add("SDALoKrLoader", model=g.add("SDALoKrLoader", model=model, lokr_name="sda_test.safetensors",
                                                 strength=0.6),
                    lokr_name="style_test.safetensors", strength=1.0)
    _denoise(g, stack, cond, "stack")
    _denoise(g, chained, cond, "chained")
    g.add("SDATest_Capture", value=stack[1], key="lora_stack")
    g.add("SDATest_Capture", value=stack[2], key="report")
    comfy.run(g.prompt())
    assert torch.equal(registry.take("stack"), registry.take("chained"))
    assert registry.take("lora_stack") == [("sda_test.safetensors", 0.6, 0.6), ("style_test.safetensors", 1.0, 1.0)]
    report = registry.take("report")
    assert "sda_test.safetensors" in report and "style_test.safetensors" in report
    assert "assistant_test.safetensors" not in report  # switched off


def test_stack_accepts_lora_stack_from_other_packs(comfy, adapter_files):
    """Comfyroll/Efficiency stacks: 3- or 4-item tuples (trigger word), applied before the node's own rows."""
    g = Graph()
    model, cond = _base(g)
    incoming = g.add("SDATest_LoraStack", stack_json=json.dumps([["style_test.safetensors", 0.5, 1.0, "trigger"]]))
    stack = g.add("SDAAdapterStack", model=model, lora_stack=incoming,
                  enabled_1=True, lora_1="sda_test.safetensors", strength_1=0.7,
                  enabled_2=True, lora_2="None", strength_2=1.0, enabled_3=True, lora_3="None", strength_3=1.0,
                  enabled_4=True, lora_4="None", strength_4=1.0)
    chained = g.add("SDALoKrLoader", model=g.add("SDALoKrLoader", model=model, lokr_name="style_test.safetensors",
                                                 strength=0.5),
                    lokr_name="sda_test.safetensors", strength=0.7)
    _denoise(g, stack, cond, "stack")
    _denoise(g, chained, cond, "chained")
    g.add("SDATest_Capture", value=stack[1], key="lora_stack")
    comfy.run(g.prompt())
    assert torch.equal(registry.take("stack"), registry.take("chained"))
    assert registry.take("lora_stack") == [("style_test.safetensors", 0.5, 1.0), ("sda_test.safetensors", 0.7, 0.7)]


def test_invert_after_plus_one_is_the_base_model(comfy, adapter_files):
    g = Graph()
    model, cond = _base(g)
    merged = g.add("SDALoKrLoader", model=model, lokr_name="assistant_test.safetensors", strength=1.0)
    inverted = g.add("SDAInvertTrainingAdapter", model=merged, adapter_name="assistant_test.safetensors",
                     strength=1.0, verify=True)
    _denoise(g, merged, cond, "merged")
    _denoise(g, inverted, cond, "inverted")
    _denoise(g, model, cond, "base")
    g.add("SDATest_Capture", value=inverted[1], key="report")
    comfy.run(g.prompt())
    base, merged, inverted = registry.take("base"), registry.take("merged"), registry.take("inverted")
    assert (merged - base).abs().max() > 1e-3
    torch.testing.assert_close(inverted, base, rtol=0, atol=1e-5)
    report = registry.take("report")
    assert "-1" in report and "verify" in report
    deviation = float(report.split("to within ")[1].split(" ")[0])
    assert 0.0 <= deviation < 1e-6


def test_zero_matching_file_is_an_error_naming_file_and_architecture(comfy, adapter_files):
    g = Graph()
    model, cond = _base(g)
    _denoise(g, g.add("SDALoKrLoader", model=model, lokr_name="sdxl_style.safetensors", strength=1.0), cond, "x")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    message = info.value.message
    assert "sdxl_style.safetensors" in message and "SDXL" in message


def test_file_outside_the_loras_folder_is_refused(comfy, adapter_files):
    """0.8.0's validation refuses a value not in the combo; 0.3.75 does not check V3 combos, so the node must."""
    from sdatest.comfy_host import PromptInvalid

    outside = comfy.root / "models" / "secrets.safetensors"
    outside.write_bytes((adapter_files / "style_test.safetensors").read_bytes())
    g = Graph()
    model, cond = _base(g)
    _denoise(g, g.add("SDALoKrLoader", model=model, lokr_name="../secrets.safetensors", strength=1.0), cond, "x")
    with pytest.raises((PromptInvalid, PromptFailed)) as info:
        comfy.run(g.prompt())
    if isinstance(info.value, PromptFailed):
        assert "lokr_name" in info.value.message and "outside" in info.value.message
