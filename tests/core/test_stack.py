"""Stacks: LORA_STACK from other packs, how much stacked adapters overlap, how well an inversion cancels."""
from __future__ import annotations

import math

import pytest
import torch

from sda_core.adapters import ModelLayout, apply_deltas, load_adapter
from sda_core.stack import inversion_deviation, normalize_lora_stack, overlap_report
from sdatest.adapter_files import write_lora, write_sda_lokr, zimage_layout

SHAPES = zimage_layout()
LAYOUT = ModelLayout(SHAPES)


def test_none_is_an_empty_stack():
    assert normalize_lora_stack(None) == []
    assert normalize_lora_stack([]) == []


def test_three_and_four_item_entries():
    stack = [("style.safetensors", 0.5, 1), ["sda.safetensors", 1, 0.25, "trigger words"], ("x", -1.5, 0.0, "", "more")]
    assert normalize_lora_stack(stack) == [("style.safetensors", 0.5, 1.0), ("sda.safetensors", 1.0, 0.25),
                                           ("x", -1.5, 0.0)]
    assert all(isinstance(v, float) for _, a, b in normalize_lora_stack(stack) for v in (a, b))
    assert normalize_lora_stack((("a", torch.tensor(0.5), 1.0),)) == [("a", 0.5, 1.0)]


@pytest.mark.parametrize("stack,words", [
    ("style.safetensors", ["lora_stack", "str"]),
    ({"a": 1}, ["lora_stack", "dict"]),
    ([("a.safetensors", 1.0)], ["item 1", "a.safetensors", "(lora_name, model_strength, clip_strength"]),
    ([("ok", 1, 1), "garbage"], ["item 2", "garbage"]),
    ([("a.safetensors", "strong", 1.0)], ["item 1", "'strong'", "finite numbers"]),
    ([("a.safetensors", math.nan, 1.0)], ["item 1", "finite numbers"]),
    ([("a.safetensors", True, 1.0)], ["item 1", "finite numbers"]),
    ([(None, 1.0, 1.0)], ["item 1", "file name"]),
    ([("", 1.0, 1.0)], ["item 1", "file name"]),
])
def test_garbage_is_refused_naming_the_item(stack, words):
    with pytest.raises(ValueError) as info:
        normalize_lora_stack(stack)
    for word in words:
        assert word in str(info.value)


@pytest.fixture(scope="module")
def stack_entries(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack")
    write_sda_lokr(d / "sda.safetensors", SHAPES)  # both layers: 10 params
    write_lora(d / "style.safetensors", SHAPES, layers=[0],
               targets=("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0"))  # 2 params
    write_lora(d / "distill.safetensors", SHAPES, layers=[1], targets=("feed_forward.w1", "feed_forward.w3"))  # 2
    embed = {"diffusion_model.x_embedder.lora_A.weight": torch.ones(2, 64),
             "diffusion_model.x_embedder.lora_B.weight": torch.ones(256, 2)}
    return {
        "sda": load_adapter(d / "sda.safetensors", LAYOUT),
        "style": load_adapter(d / "style.safetensors", LAYOUT),
        "distill": load_adapter(d / "distill.safetensors", LAYOUT),
        "embed": load_adapter(embed, LAYOUT, label="embed.safetensors"),
    }


def test_overlap_counts_shared_layers(stack_entries):
    e = stack_entries
    assert len(e["sda"].patched_params) == 10 and len(e["style"].patched_params) == 2
    report = overlap_report([("sda.safetensors", e["sda"], 0.6), ("style.safetensors", e["style"], 1.0),
                             ("distill.safetensors", e["distill"], 1.0)])
    lines = report.splitlines()
    assert lines[0].startswith("stack of 3 adapters")
    assert "sda.safetensors at 0.6: patches 10 layers, shares 4 with style.safetensors, distill.safetensors" in lines[1]
    assert "style.safetensors at 1: patches 2 layers, shares 2 with sda.safetensors" in lines[2]
    assert "distill.safetensors at 1: patches 2 layers, shares 2 with sda.safetensors" in lines[3]
    assert "balance the strengths" in report and "0.5–0.7" in report


def test_no_overlap_no_hint(stack_entries):
    e = stack_entries
    report = overlap_report([("style.safetensors", e["style"], 1.0), ("distill.safetensors", e["distill"], 1.0),
                             ("embed.safetensors", e["embed"], 0.5)])
    assert report.count("shares none with the others") == 3
    assert "balance" not in report
    assert overlap_report([]) == "empty stack"


def test_single_adapter_shares_nothing(stack_entries):
    report = overlap_report([("sda.safetensors", stack_entries["sda"], 1.0)])
    assert "patches 10 layers, shares none" in report and "balance" not in report


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inversion_deviation_is_rounding_only(stack_entries, dtype):
    target, module = next((t, m) for t, m in stack_entries["sda"].placements if m.name == "layers.0.attention.to_q")
    assert target.rows == (0, 256)
    weight = (torch.randn(SHAPES[target.param], generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    deviation = inversion_deviation(weight, module, target.rows, 1.0)
    merged = apply_deltas(weight, [(module, 1.0)], target.rows)
    restored = apply_deltas(merged, [(module, -1.0)], target.rows)
    assert deviation == float((restored.double() - weight.double()).abs().max())
    eps = torch.finfo(dtype).eps
    assert deviation <= eps * float(merged.double().abs().max())  # within an ulp of the largest merged value
    if dtype == torch.float32:
        assert deviation < 1e-6
    # a module that does not cancel (another adapter's delta) shows up far above rounding
    _, other = stack_entries["style"].placements[0]
    not_inverted = apply_deltas(merged, [(other, -1.0)], target.rows)
    assert float((not_inverted.double() - weight.double()).abs().max()) > 100 * max(deviation, eps * 1e-3)


@pytest.mark.parametrize("strength", [2.5, -3.0, 1e6])
def test_stack_strength_beyond_the_widget_range_is_refused_naming_the_entry(strength):
    stack = [("ok.safetensors", 1.0, 1.0), ("far.safetensors", strength, 1.0)]
    with pytest.raises(ValueError) as info:
        normalize_lora_stack(stack)
    message = str(info.value)
    assert message.startswith("lora_stack item 2 (") and "far.safetensors" in message
    assert f"strength {strength:g} is outside −2…2" in message
    assert normalize_lora_stack([("edge.safetensors", -2.0, 5.0)]) == [("edge.safetensors", -2.0, 5.0)]
