"""The shipped workflows inside ComfyUI: their node types exist, their widget values line up with the real
inputs and fit them, ComfyUI's own validation accepts them, and — with tiny random-weight models in place of
the real loaders — the basic, comparison and inversion workflows and every family's seed grid (SDXL eps and v,
FLUX.1-schnell, SD3.5, Qwen-Image) run end to end on the CPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import workflow_flows as flows
from sdatest.workflow_api import (CORE_TYPES, FAMILY_ARCHS, SAVED_WORKFLOWS_DIR, TINY_ARCH_TYPES, TINY_LOADERS,
                                  WORKFLOWS_DIR, as_loaded, combo_options, control_values, tiny_variant, to_api,
                                  widget_values, write_tiny_model_files)
from workflow_compiler import CONTROL, VIRTUAL_TYPES, Out, input_specs, node_defs, node_ids, workflow_text

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
SAVED_WORKFLOWS = sorted(SAVED_WORKFLOWS_DIR.glob("*.json"))
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
TINY_SIDE = 64


def _load(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def defs(comfy) -> dict[str, dict[str, Any]]:
    """ComfyUI's definitions of every node type the workflows (and their tiny variants) use."""
    types = {n["type"] for p in WORKFLOWS + SAVED_WORKFLOWS for n in json.loads(p.read_text())["nodes"]}
    types |= {tiny for tiny, _ in TINY_LOADERS.values()} | set(TINY_ARCH_TYPES)
    import nodes

    missing = sorted(t for t in types - VIRTUAL_TYPES if t not in nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"node types unknown to ComfyUI {comfy.version} with the pack loaded: {missing}"
    return node_defs(types)


@pytest.fixture(scope="module")
def model_files(comfy) -> dict[str, Path]:
    """Every file the workflows name, in the session's models folders (see write_tiny_model_files)."""
    return write_tiny_model_files(comfy.root / "models")


def test_core_types_exist(comfy):
    import nodes

    missing = sorted(t for t in CORE_TYPES - VIRTUAL_TYPES if t not in nodes.NODE_CLASS_MAPPINGS)
    assert not missing, f"not core node types in ComfyUI {comfy.version}: {missing}"


def test_files_match_their_descriptions(comfy):
    """workflows/*.json are what scripts/build_workflows.py makes from the by-name descriptions with this
    ComfyUI's definitions: a value in the wrong widget position, or a stale file, fails here."""
    described = flows.all_flows()
    assert described
    for flow in described:
        path = WORKFLOWS_DIR / f"{flow.name}.json"
        assert path.exists(), f"{path.name} missing: run scripts/build_workflows.py"
        built = workflow_text(flow)
        assert path.read_text(encoding="utf-8") == built, f"{path.name} is stale: run scripts/build_workflows.py"


def test_converted_values_are_the_described_ones(shipped, defs):
    """to_api reads each widget back under the name the description gave it, links to the described node."""
    name, workflow = shipped
    flow = next(flow for flow in flows.all_flows() if flow.name == name)
    ids = node_ids(flow)
    prompt = to_api(workflow, defs)
    for spec in flow.nodes:
        if spec.type in VIRTUAL_TYPES:  # Notes stay in the UI
            assert str(ids[spec.key]) not in prompt
            continue
        node = prompt.get(str(ids[spec.key]))
        if node is None:
            assert spec.mode in (2, 4), f"{spec.key} is not muted or bypassed but was not sent"
            continue
        assert node["class_type"] == spec.type
        for input_name, value in spec.values.items():
            if isinstance(value, Out):
                if str(ids[value.key]) in prompt:
                    assert node["inputs"][input_name][0] == str(ids[value.key]), f"{spec.key}.{input_name}"
            else:
                got = node["inputs"][input_name]
                assert got == value, f"{spec.key} {spec.type}.{input_name}: {got!r} != {value!r}"


def _check_value(where: str, kind: str, options: dict[str, Any], value: Any, choices: list) -> None:
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an int"
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"
    elif kind == "COMBO":
        user_file = isinstance(value, str) and value.endswith(".safetensors")  # depends on the user's files
        assert user_file or value in choices, f"{where}: {value!r} not among {choices[:8]}"
    if kind in ("INT", "FLOAT"):
        assert options.get("min", value) <= value <= options.get("max", value), f"{where}: {value} out of range"


def _assert_widgets_fit(workflow: dict[str, Any], defs) -> None:
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_TYPES:
            continue
        defn = defs[node["type"]]
        values = widget_values(node, defn)  # raises when the count does not match the widgets
        for name, kind, options in input_specs(defn):
            if name in values:
                choices = combo_options(defn, name) if kind == "COMBO" else []
                _check_value(f"node {node['id']} {node['type']}.{name}", kind, options, values[name], choices)
        for name, value in control_values(node, defn).items():
            assert value in CONTROL_VALUES, f"node {node['id']} {name} {CONTROL}: {value!r}"


def test_widget_values_fit_their_inputs(workflow, defs):
    _assert_widgets_fit(workflow, defs)


def test_comfyui_validates_the_converted_workflow(comfy, workflow, defs, model_files):
    prompt = to_api(workflow, defs)
    outputs = comfy.validate(prompt)
    saves = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert saves and set(saves) <= set(outputs), f"SaveImage nodes {saves} not among the outputs {outputs}"
    muted = [str(n["id"]) for n in workflow["nodes"] if n["mode"] == 2]
    assert not set(muted) & set(prompt), "muted nodes must not be sent"
    linked = {tuple(v) for n in prompt.values() for v in n["inputs"].values() if isinstance(v, list)}
    assert not {origin for origin, _ in linked} - set(prompt), "a link points at a node that is not sent"


@pytest.mark.parametrize("path", SAVED_WORKFLOWS, ids=[p.stem for p in SAVED_WORKFLOWS])
def test_workflows_saved_with_0_1_0_still_load_and_validate(comfy, defs, model_files, path):
    """Node ids and input names are a public contract: a workflow saved before display names changed and
    nodes gained inputs loads with its values in the same widgets, and ComfyUI accepts the prompt."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    loaded = as_loaded(saved, defs)
    _assert_widgets_fit(loaded, defs)
    prompt = to_api(loaded, defs)
    outputs = comfy.validate(prompt)
    assert {i for i, n in prompt.items() if n["class_type"] == "SaveImage"} <= set(outputs)
    today = {n["id"]: n for n in json.loads((WORKFLOWS_DIR / path.name).read_text(encoding="utf-8"))["nodes"]}
    for node in loaded["nodes"]:  # a widget inserted before older ones would shift the saved values
        current = today.get(node["id"])
        if node["type"] in VIRTUAL_TYPES or current is None or current["type"] != node["type"]:
            continue
        defn = defs[node["type"]]
        assert widget_values(node, defn) == widget_values(current, defn), (
            f"{path.name} node {node['id']} ({node['type']}): saved values land in other widgets than in today's "
            "workflow; add new widgets after the old ones (or, if the shipped value changed on purpose, say so here)")


def _saved_images(comfy, prompt: dict, outputs: dict) -> list[Image.Image]:
    """What the SaveImage nodes wrote into the session's output folder."""
    images = []
    for node_id, node in prompt.items():
        if node["class_type"] == "SaveImage":
            for item in outputs[node_id]["images"]:
                assert item["type"] == "output"
                with Image.open(comfy.output_dir / item["subfolder"] / item["filename"]) as img:
                    images.append(img.copy())
    return images


def _texts(prompt: dict, outputs: dict, class_type: str) -> list[str]:
    return [t for i, n in prompt.items() if n["class_type"] == class_type for t in outputs[i]["text"]]


def _run_tiny(comfy, name: str, defs) -> tuple[dict, dict]:
    tiny = tiny_variant(_load(name), defs)
    _assert_widgets_fit(tiny, defs)
    prompt = to_api(tiny, defs)
    assert not {n["class_type"] for n in prompt.values()} & {"UNETLoader", "CLIPLoader", "VAELoader"}
    return prompt, comfy.run(prompt)


def test_tiny_basic_workflow_executes(comfy, defs, model_files):
    prompt, outputs = _run_tiny(comfy, "sda_lokr_basic", defs)
    (image,) = _saved_images(comfy, prompt, outputs)
    assert image.size == (TINY_SIDE, TINY_SIDE)
    (report,) = _texts(prompt, outputs, "SDALoKrLoader")
    assert flows.SDA_LOKR in report and "LoKr" in report, report


def test_tiny_inversion_workflow_executes(comfy, defs, model_files):
    prompt, outputs = _run_tiny(comfy, "training_adapter_inversion", defs)
    (image,) = _saved_images(comfy, prompt, outputs)
    assert image.size == (TINY_SIDE, TINY_SIDE)
    (report,) = _texts(prompt, outputs, "SDAInvertTrainingAdapter")
    assert "verify:" in report and flows.TRAINING_ADAPTER in report, report
    deviation = float(report.split("within ")[1].split(" ")[0])
    assert deviation < 1e-4, report


def test_tiny_comparison_workflow_executes(comfy, defs, model_files):
    prompt, outputs = _run_tiny(comfy, "seed_grid_diversity_comparison", defs)
    grids = [i for i, n in prompt.items() if n["class_type"] == "SDASeedDiversityGrid"]
    assert len(grids) == 2, "baseline and SDA grids (the teacher grid is muted)"
    grid_areas = []
    for node_id in grids:
        assert prompt[node_id]["inputs"]["num_seeds"] == 4
        (grid,) = _ui_images(outputs[node_id]["images"])
        assert grid.width * grid.height >= 4 * TINY_SIDE ** 2, f"grid {grid.size} cannot hold 4 images"
        grid_areas.append(grid.width * grid.height)
    (image,) = _saved_images(comfy, prompt, outputs)
    assert image.width * image.height >= sum(grid_areas), f"comparison {image.size} smaller than its grids"
    (table,) = _texts(prompt, outputs, "PreviewAny")
    assert "Turbo 8 steps" in table and "Turbo + SDA" in table and "LPIPS" in table, table


def test_tiny_early_steps_workflow_executes(comfy, defs, model_files):
    """Issue 7's workflow: four grids (baseline, SDA on all steps, on the first 2 and the first 4 steps) into
    one comparison, whose table has a row per grid."""
    prompt, outputs = _run_tiny(comfy, "sda_early_steps", defs)
    grids = [i for i, n in prompt.items() if n["class_type"] == "SDASeedDiversityGrid"]
    assert len(grids) == 4
    (schedule_a, schedule_b) = _texts(prompt, outputs, "SDAScheduledAdapter")
    (image,) = _saved_images(comfy, prompt, outputs)
    assert image.width * image.height >= 4 * 4 * TINY_SIDE ** 2, f"comparison {image.size} cannot hold 4 grids"
    (table,) = _texts(prompt, outputs, "PreviewAny")
    for label in ("Turbo 8 steps", "SDA all 8 steps", "SDA steps 1-2", "SDA steps 1-4"):
        assert label in table, table


def _ui_images(items: list[dict[str, str]]) -> list[Image.Image]:
    """The images a node shows (ComfyUI's output/temp folders by the item's type)."""
    import folder_paths

    images = []
    for item in items:
        with Image.open(Path(folder_paths.get_directory_by_type(item["type"])) / item["subfolder"] / item["filename"]) as img:
            images.append(img.copy())
    return images


FILE_LOADERS = {"UNETLoader", "CheckpointLoaderSimple", "CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader", "VAELoader"}
FAMILY_RUNS = [(name, arch) for name, archs in FAMILY_ARCHS.items() for arch in archs]


@pytest.mark.parametrize("name, arch", FAMILY_RUNS, ids=[f"{name}-{arch}" for name, arch in FAMILY_RUNS])
def test_tiny_family_seed_grid_runs_and_its_first_image_is_the_ksamplers(comfy, defs, model_files, name, arch):
    """Each family's seed-grid workflow on that family's tiny model (SDXL's on eps and v-prediction): a 2 x 2
    grid of 64 px tiles, a JSON report on the canvas, and the grid's image for seed 0 is the workflow's own
    KSampler image (Qwen-Image's with 5-D latents and the Lightning LoRA through LoraLoaderModelOnly)."""
    tiny = tiny_variant(_load(name), defs, arch=arch)
    _assert_widgets_fit(tiny, defs)
    prompt = to_api(tiny, defs)
    assert not {n["class_type"] for n in prompt.values()} & FILE_LOADERS
    (grid_id,) = [i for i, n in prompt.items() if n["class_type"] == "SDASeedDiversityGrid"]
    (sampler_id,) = [i for i, n in prompt.items() if n["class_type"] == "KSampler"]
    (save_id,) = [i for i, n in prompt.items() if n["class_type"] == "SaveImage" and n["inputs"]["images"][0] != grid_id]
    prompt["grid_images"] = {"class_type": "SaveImage",  # test-only: the grid's images, to compare with KSampler's
                             "inputs": {"images": [grid_id, 1], "filename_prefix": f"test_{name}_{arch}/images"}}
    outputs = comfy.run(prompt)

    (grid,) = _ui_images(outputs[grid_id]["images"])
    assert 2 * TINY_SIDE < grid.width < 3 * TINY_SIDE and grid.height > 2 * TINY_SIDE, f"grid {grid.size}: not 2 x 2 tiles"
    (saved_grid,) = _ui_images(outputs[next(i for i, n in prompt.items() if n["class_type"] == "SaveImage"
                                            and n["inputs"]["images"] == [grid_id, 0])]["images"])
    assert saved_grid.size == grid.size
    (report,) = _texts(prompt, outputs, "PreviewAny")
    settings, sampler = json.loads(report)["settings"], prompt[sampler_id]["inputs"]
    assert (settings["steps"], settings["cfg"], settings["sampler"], settings["scheduler"]) == (
        sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"]), report
    assert json.loads(report)["seeds"] == [0, 1, 2, 3] and (settings["width"], settings["height"]) == (TINY_SIDE,) * 2
    first, *rest = _ui_images(outputs["grid_images"]["images"])
    assert len(rest) == 3 and first.size == (TINY_SIDE, TINY_SIDE)
    (single,) = _ui_images(outputs[save_id]["images"])
    first, single = np.asarray(first, dtype=np.int16), np.asarray(single, dtype=np.int16)
    # equal up to 8-bit rounding (another seed changes 28-87 % of the values here, by up to 255)
    assert np.abs(first - single).max() <= 1 and (first != single).mean() < 0.01, "grid image 0 is not KSampler's seed 0"
    assert single.std() > 0, "a flat image"


def test_tiny_sdxl_training_workflow_trains_the_lightning_student_on_the_teachers_weights(comfy, defs, model_files):
    """The SDXL training workflow on the tiny SDXL: the student is the teacher plus the Lightning LoRA, so the
    teacher shares its weights; the loss follows the 4-step sgm_uniform schedule with the teacher at cfg 6."""
    tiny = tiny_variant(_load("sda_training_sdxl"), defs, arch="sdxl")
    _assert_widgets_fit(tiny, defs)
    prompt = to_api(tiny, defs)
    assert not {n["class_type"] for n in prompt.values()} & FILE_LOADERS
    (train_id,) = [i for i, n in prompt.items() if n["class_type"] == "SDATrainLoKr"]
    (positive_id,) = [i for i, n in prompt.items() if n["class_type"] == "SDATest_TinyArchConditioning"]
    inputs = prompt[train_id]["inputs"]
    assert (inputs["student_steps"], inputs["div_skip"], inputs["scheduler"], inputs["teacher_cfg"]) == (
        4, 3, "sgm_uniform", 6.0)
    # a smoke run: the tiny variant loads no text encoder (the checkpoint's CLIP is unlinked), so the prompt comes
    # as conditioning and the negative is zeroed
    assert "clip" not in inputs
    inputs.update(conditioning=[positive_id, 0], negative_prompt="", steps=2, eval_every=0, checkpoint_every=0)
    outputs = comfy.run(prompt)
    report = outputs[train_id]["text"][0]
    assert "2 of 2 steps done" in report, report
    assert "teacher runs on the student's loaded weights (the student's own patches switched off" in report
    assert "4-step sgm_uniform schedule" in report and "teacher cfg 6, negative: zeroed conditioning" in report
    images = _saved_images(comfy, prompt, outputs)
    assert any(image.size == (TINY_SIDE, TINY_SIDE) for image in images), [i.size for i in images]
