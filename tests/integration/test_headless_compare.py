"""The headless comparison: the prompts it builds pass ComfyUI's validation, and a run writes the tables."""
from __future__ import annotations

import json
import zlib

import pytest

from headless import compare
from sdatest import tiny_models
from sdatest.adapter_files import write_sda_lokr


@pytest.fixture(scope="module")
def files(comfy):
    for folder, name in (("diffusion_models", "z_image_turbo_bf16.safetensors"),
                         ("diffusion_models", "z_image_bf16.safetensors"),
                         ("text_encoders", "qwen_3_4b.safetensors"), ("vae", "ae.safetensors")):
        (comfy.folder(folder) / name).touch()
    shapes = tiny_models.tiny_zimage_shapes()
    write_sda_lokr(comfy.folder("loras") / "cli_sda.safetensors", shapes, factor=8, seed=9, scale=0.2)
    tiny_models.write_lpips_backbone(comfy.folder("lpips"))


MODELS = ["turbo", "sda:lora=cli_sda.safetensors@1.0", "teacher:unet=z_image_bf16.safetensors,steps=6,cfg=1"]


def test_model_specs_parse_and_refuse_garbage():
    spec = compare.parse_model("sda:lora=a.safetensors@0.6+b.safetensors,steps=50,cfg=4,sampler=heun", "u.st")
    assert (spec.label, spec.unet, spec.loras, spec.steps, spec.cfg, spec.sampler) == \
        ("sda", "u.st", [("a.safetensors", 0.6), ("b.safetensors", 1.0)], 50, 4.0, "heun")
    with pytest.raises(ValueError, match="not one of"):
        compare.parse_model("x:bogus=1", "u")


def test_built_prompt_passes_comfyui_validation(comfy, files):
    models = [compare.parse_model(m, "z_image_turbo_bf16.safetensors") for m in MODELS]
    prompt, grids, compare_id = compare.build_prompt(
        "a cat", "", models, clip="qwen_3_4b.safetensors", vae="ae.safetensors", clip_type="lumina2", seeds="",
        num_seeds=16, seed=0, width=1024, height=1024, batch_size=4, baseline=1, teacher=3, prefix="p01")
    outputs = comfy.validate(prompt)
    assert set(grids) == {"turbo", "sda", "teacher"} and compare_id in prompt
    assert len(outputs) >= 4  # three grid saves + compare save (grids are output nodes too)


class _TinyRuntime:
    """The comfy host with ComfyUI's loaders swapped for the tiny test models (no real weights here)."""

    def __init__(self, comfy):
        self.comfy = comfy

    def run(self, prompt: dict) -> dict:
        for node in prompt.values():
            kind, inputs = node["class_type"], node["inputs"]
            if kind == "UNETLoader":
                node.update(class_type="SDATest_TinyZImage",
                            inputs={"seed": 0 if inputs["unet_name"].startswith("z_image_turbo") else 1, "dtype": "fp32"})
            elif kind == "VAELoader":
                node.update(class_type="SDATest_TinyVAE", inputs={"seed": 0})
            elif kind == "CLIPTextEncode":
                node.update(class_type="SDATest_TinyConditioning",
                            inputs={"seed": zlib.crc32(inputs["text"].encode()) % 1000, "tokens": 8})
        prompt = {k: v for k, v in prompt.items() if v["class_type"] != "CLIPLoader"}
        return self.comfy.run(prompt)


def test_run_writes_tables_with_means_and_recovery(comfy, files, tmp_path):
    out = tmp_path / "table"
    out.mkdir()
    (out / "table.md").write_text("an earlier run's table")
    args = ["--prompt", "a red car", "--prompt", "a portrait", "--seed-list", "1,2,3", "--width", "64",
            "--height", "64", "--baseline", "turbo", "--teacher", "teacher", "--out", str(out)]
    for m in MODELS:
        args += ["--model", m]
    summary = compare.main(args, runtime=_TinyRuntime(comfy))
    assert summary["prompts"] == 2
    for label in ("turbo", "sda", "teacher"):
        values = [p[label]["avg_lpips"] for p in summary["per_prompt"]]
        assert summary["means"][label]["avg_lpips"] == pytest.approx(sum(values) / 2)
    m = summary["means"]
    expected = (m["sda"]["avg_lpips"] - m["turbo"]["avg_lpips"]) / (m["teacher"]["avg_lpips"] - m["turbo"]["avg_lpips"])
    assert summary["recovery"]["sda"] == pytest.approx(expected)
    assert summary["files"] == [str(out / "table_1.md"), str(out / "table_1.json")]
    assert (out / "table.md").read_text() == "an earlier run's table"  # never overwritten
    table = (out / "table_1.md").read_text()
    assert "| sda |" in table and f"Recovery of sda = {expected * 100:.1f} %" in table
    assert json.loads((out / "table_1.json").read_text())["means"]["teacher"]["pixel_std"] > 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("table", ".sda-"))) == \
        ["table.md", "table_1.json", "table_1.md"]  # no temp file left
