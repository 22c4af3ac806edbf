"""The headless comparison: the prompts it builds pass ComfyUI's validation, and a run writes the tables."""
from __future__ import annotations

import json
import math
import shlex
import zlib
from pathlib import Path

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


PACK = Path(__file__).resolve().parents[2]
MODELS = ["turbo", "sda:lora=cli_sda.safetensors@1.0", "teacher:unet=z_image_bf16.safetensors,steps=6,cfg=1"]


def test_model_specs_parse_and_refuse_garbage():
    spec = compare.parse_model("sda:lora=a.safetensors@0.6+b.safetensors,steps=50,cfg=4,sampler=heun", "u.st")
    assert (spec.label, spec.unet, spec.loras, spec.steps, spec.cfg, spec.sampler) == \
        ("sda", "u.st", [("a.safetensors", 0.6), ("b.safetensors", 1.0)], 50, 4.0, "heun")
    with pytest.raises(compare.UsageError, match="not one of"):
        compare.parse_model("x:bogus=1", "u")


def test_the_diversity_methods_are_model_spec_keys_and_their_prompt_validates(comfy, files):
    texts = ["turbo", "noise:noise=0.3", "cads:cads=0.25", "early:early=z_image_bf16.safetensors,early_cfg=3,early_end=0.25",
             "all:lora=cli_sda.safetensors@0.5,noise=0.1,cads=0.1,early=z_image_bf16.safetensors"]
    models = [compare.parse_model(t, "z_image_turbo_bf16.safetensors") for t in texts]
    assert (models[1].noise, models[2].cads, models[3].early, models[3].early_cfg, models[3].early_end) == \
        (0.3, 0.25, "z_image_bf16.safetensors", 3.0, 0.25)
    prompt, _, _ = compare.build_prompt(
        "a cat", "", models, clip="qwen_3_4b.safetensors", vae="ae.safetensors", clip_type="lumina2", seeds="1,2,3",
        num_seeds=3, seed=0, width=64, height=64, batch_size=4, baseline=1, teacher=None, prefix="m")
    comfy.validate(prompt)
    kinds = [node["class_type"] for node in prompt.values()]
    assert kinds.count("SDAModelByStep") == 2 and kinds.count("SDAConditioningNoise") == 2
    assert kinds.count("SDAConditionAnnealing") == 2 and kinds.count("UNETLoader") == 2  # one loader per file
    with pytest.raises(compare.UsageError, match="noise=9 is outside 0.0…4.0"):
        compare.parse_model("x:noise=9", "u")


def test_the_summary_averages_prompts_and_gives_the_recovery_of_the_means():
    per_prompt = [{"turbo": {"avg_lpips": 0.50, "lpips_se": 0.006}, "sda": {"avg_lpips": 0.60, "lpips_se": 0.006},
                   "teacher": {"avg_lpips": 0.70, "lpips_se": 0.008}},
                  {"turbo": {"avg_lpips": 0.54, "lpips_se": 0.008}, "sda": {"avg_lpips": 0.68, "lpips_se": 0.006},
                   "teacher": {"avg_lpips": 0.74, "lpips_se": 0.006}}]
    for prompt in per_prompt:
        for scores in prompt.values():
            scores.update(pixel_std=0.2, sharpness=0.01, vendi=3.0)
    summary = compare.aggregate(per_prompt, ["turbo", "sda", "teacher"], "turbo", "teacher",
                                {label: {"seeds": [1, 2, 3], "size": (64, 64)} for label in ("turbo", "sda", "teacher")})
    assert summary["means"]["sda"]["avg_lpips"] == pytest.approx(0.64)
    assert summary["recovery"] == {"sda": pytest.approx((0.64 - 0.52) / (0.72 - 0.52))}
    assert summary["warnings"] == []
    table = compare.markdown(summary)
    assert table.startswith("Mean over 2 prompt(s).") and "= 60.0 %" in table
    summary = compare.aggregate(per_prompt, ["turbo", "sda", "teacher"], "turbo", "teacher",
                                {"turbo": {"seeds": [1, 2, 3]}, "sda": {"seeds": [1, 2]}, "teacher": {"seeds": [1, 2, 3]}})
    assert summary["warnings"][0].startswith("rows differ in seed count (turbo: 3; sda: 2; teacher: 3)")


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
    gap = m["teacher"]["avg_lpips"] - m["turbo"]["avg_lpips"]
    se = {label: math.sqrt(sum(p[label]["lpips_se"] ** 2 for p in summary["per_prompt"])) / 2
          for label in ("turbo", "teacher")}
    threshold = max(0.01, 2 * math.hypot(se["turbo"], se["teacher"]))
    assert abs(gap) < threshold  # tiny random models: two seeds of one architecture are equally diverse
    reason = "not more diverse than the baseline" if gap <= 0 else "within the scores' noise"
    assert summary["recovery"]["sda"] is None and reason in summary["recovery_reasons"]["sda"]
    assert summary["files"] == [str(out / "table_1.md"), str(out / "table_1.json")]
    assert (out / "table.md").read_text() == "an earlier run's table"  # never overwritten
    table = (out / "table_1.md").read_text()
    assert "| sda | candidate |" in table and "Recovery of sda = (sda − baseline)/(teacher − baseline) = n/a (" in table
    assert "%" not in table.split("## Prompt 1")[0]
    assert all(p[label]["seconds_per_image"] > 0 for p in summary["per_prompt"] for label in m)
    assert json.loads((out / "table_1.json").read_text())["means"]["teacher"]["pixel_std"] > 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("table", ".sda-"))) == \
        ["table.md", "table_1.json", "table_1.md"]  # no temp file left


class _NotStarted:
    """A runtime that must never be reached: every bad argument stops before ComfyUI runs anything."""

    def run(self, prompt):
        raise AssertionError("ComfyUI was reached with a bad argument")


def _argv(*extra, models=("a", "b")):
    argv = ["--prompt", "a cat", *extra]
    for m in models:
        argv += ["--model", m]
    return argv


@pytest.mark.parametrize("argv, message", [
    (_argv(models=("turbo", "turbo:lora=x.safetensors")), "--model labels must be unique; 'turbo' is given more than once"),
    (_argv(models=("a:steps=abc", "b")), "--model 'a:steps=abc': steps='abc' is not a whole number"),
    (_argv(models=("a:cfg=lots", "b")), "--model 'a:cfg=lots': cfg='lots' is not a number"),
    (_argv("--prompts", "/nonexistent/prompts.txt"), "--prompts '/nonexistent/prompts.txt': no such file"),
    (_argv(models=("a",)), "--model given 1 time(s); Diversity Compare takes 2 to"),
    (_argv(models=[f"m{k}" for k in range(compare.limits.MAX_ROWS + 1)]),
     f"--model given {compare.limits.MAX_ROWS + 1} time(s); Diversity Compare takes 2 to {compare.limits.MAX_ROWS}"),
    (_argv("--seed", "x"), "argument --seed: invalid int value: 'x'"),
    (_argv("--baseline", "a", "--teacher", "a"), "--baseline and --teacher are both 'a'"),
    (_argv("--width", "8"), "--width 8 is outside 64…4096"),
])
def test_every_bad_argument_is_a_one_line_error_before_comfyui_starts(argv, message):
    with pytest.raises(SystemExit) as info:
        compare.main(argv, runtime=_NotStarted())
    text = str(info.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text


@pytest.mark.parametrize("form", [["--comfy-args", "--lowvram"], ["--comfy-args=--lowvram"]])
def test_comfy_args_take_the_readme_form(form):
    args, _, _ = compare.check_args(_argv(*form))
    assert args.comfy_args == ("--lowvram",)
    args, _, _ = compare.check_args(_argv("--comfy-args", "--lowvram --reserve-vram 2"))
    assert args.comfy_args == ("--lowvram", "--reserve-vram", "2")


def test_the_readme_command_line_parses():
    readme = (PACK / "README.md").read_text(encoding="utf-8")
    assert '--comfy-args "--lowvram"' in readme
    args, models, _ = compare.check_args(shlex.split(
        '--prompt cat --model turbo --model "sda:lora=sda_lokr.safetensors@1.0" --comfy-args "--lowvram"'))
    assert args.comfy_args == ("--lowvram",) and models[1].loras == [("sda_lokr.safetensors", 1.0)]


def test_a_missing_model_file_is_one_line_before_any_node_loads(comfy, tmp_path, monkeypatch):
    """main hands runtime.start a check that runs once ComfyUI's folders are known and before any node loads."""
    import folder_paths

    from headless import runtime

    def start(path, argv, before_nodes=None, **_):
        before_nodes(folder_paths)
        raise AssertionError("ComfyUI went on loading nodes with a missing model file")

    monkeypatch.setattr(runtime, "start", start)
    argv = _argv("--out", str(tmp_path / "out"), models=("turbo:unet=no_such_unet.safetensors", "b"))
    with pytest.raises(SystemExit) as info:
        compare.main(argv)
    text = str(info.value.code)
    assert text.startswith("error: ") and "\n" not in text
    assert "--model turbo: unet 'no_such_unet.safetensors' is not in models/diffusion_models" in text
    assert not (tmp_path / "out").exists()
