"""A teacher that is the student plus its own adapters runs on the student's loaded weights: it predicts what the
teacher MODEL predicts on its own, and training makes no model loads, frees, patches or unpatches per step.
Counted inside ComfyUI's executor on the tiny Z-Image.
"""
from __future__ import annotations

import sys

import pytest
import torch

from sda_core.training import load_checkpoint
from sdatest import registry, tiny_models
from sdatest.adapter_files import write_lora, write_sda_lokr
from sdatest.comfy_calls import COUNTED, count_model_calls
from sdatest.graph import Graph

SETTINGS = dict(prompts="", width=64, height=64, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08, pool_kernel=8,
                div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, checkpoint_every=0, resume=False)
SHARED = "teacher runs on the student's loaded weights"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(comfy):
    shapes = tiny_models.tiny_zimage_shapes(0)
    loras = comfy.folder("loras")
    write_lora(loras / "teacher_dedistill.safetensors", shapes, rank=4, seed=21)
    write_lora(loras / "teacher_extra.safetensors", shapes, rank=4, seed=22)
    write_lora(loras / "teacher_assistant.safetensors", shapes, rank=4, seed=23)
    write_sda_lokr(loras / "teacher_strong_lokr.safetensors", shapes, scale=0.02, seed=24)
    return loras


def _base_and_plus(g: Graph):
    """A tiny Z-Image, and it plus a LoRA (ComfyUI's loader) and a second adapter (the pack's)."""
    base = g.add("SDATest_TinyZImage", seed=3, dtype="fp32", shared=True)
    plus = g.add("LoraLoaderModelOnly", model=base, lora_name="teacher_dedistill.safetensors", strength_model=0.8)
    return base, g.add("SDALoKrLoader", model=plus, lokr_name="teacher_extra.safetensors", strength=0.5)


def _student_and_teacher(g: Graph):
    """The teacher: the student plus a de-distill LoRA and a second adapter."""
    return _base_and_plus(g)


def _teacher_and_student(g: Graph):
    """The mirror case: the student is the teacher plus distillation adapters (Qwen-Image + Lightning, SDXL + DMD2)."""
    student, teacher = _base_and_plus(g)[::-1]
    return student, teacher


OWN = "teacher runs on the student's loaded weights (its own patches switched on for its forwards)"
MIRROR = "teacher runs on the student's loaded weights (the student's own patches switched off for its forwards)"


@pytest.mark.parametrize("models, residency", [(_student_and_teacher, OWN), (_teacher_and_student, MIRROR)],
                         ids=["teacher is student plus adapters", "student is teacher plus adapters"])
def test_the_shared_teacher_predicts_what_the_teacher_model_predicts_alone(comfy, files, models, residency):
    g = Graph()
    student, teacher = models(g)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    g.add("SDATest_TrainingForward", model=student, teacher=teacher, conditioning=cond, key="shared", seed=7,
          sigma=0.7, size=16, output="teacher", lokr_name="teacher_strong_lokr.safetensors",
          assistant_name="teacher_assistant.safetensors")
    g.add("SDATest_Denoise", model=teacher, conditioning=cond, key="alone", seed=7, sigma=0.7, size=16)
    g.add("SDATest_Denoise", model=student, conditioning=cond, key="student", seed=7, sigma=0.7, size=16)
    comfy.run(g.prompt())
    assert registry.take("shared_residency") == residency
    shared, alone, student_x0 = registry.take("shared"), registry.take("alone"), registry.take("student")
    assert (alone - student_x0).abs().max() > 1e-2, "the adapters changed nothing: the test could not tell"
    torch.testing.assert_close(shared, alone, rtol=0, atol=1e-5)


@pytest.fixture
def counts(monkeypatch, comfy):
    return count_model_calls(monkeypatch)


def _per_step(comfy, counts, name: str, models=_student_and_teacher) -> dict[str, float]:
    """Calls per training step: a 2-step and an 8-step run differ only by the 6 steps between."""
    seen = []
    for steps in (2, 8):
        g = Graph()
        student, teacher = models(g)
        cond = g.add("ConditioningCombine", conditioning_1=g.add("SDATest_TinyConditioning", seed=0, tokens=8),
                     conditioning_2=g.add("SDATest_TinyConditioning", seed=2, tokens=8))
        node = g.add("SDATrainLoKr", student=student, teacher=teacher, conditioning=cond, steps=steps,
                     save_name=f"{name}_{steps}", **SETTINGS)
        for key in counts:
            counts[key] = 0
        outputs = comfy.run(g.prompt())
        seen.append(dict(counts))
        report = outputs[node.id]["text"][0]
    return {k: (seen[1][k] - seen[0][k]) / 6 for k in counts}, report


@pytest.mark.parametrize("models, sharing, residency", [(_student_and_teacher, "teacher_additions", OWN),
                                                       (_teacher_and_student, "student_additions", MIRROR)],
                         ids=["teacher is student plus adapters", "student is teacher plus adapters"])
def test_a_shared_teacher_makes_no_model_loads_frees_patches_or_unpatches_per_step(comfy, files, counts, monkeypatch,
                                                                                 models, sharing, residency):
    name = models.__name__.strip("_")
    shared, report = _per_step(comfy, counts, f"{name}_shared", models)
    assert residency in report
    print("per step with the shared teacher:", shared)
    assert shared == dict.fromkeys(COUNTED, 0.0)

    import nodes as comfy_nodes

    package = comfy_nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.rsplit(".", 1)[0]
    monkeypatch.setattr(sys.modules[package + ".session"], sharing, lambda student, teacher: None)
    swapped, report = _per_step(comfy, counts, f"{name}_swapped", models)  # the counter counts: the swap costs calls
    assert "teacher loaded only for its forwards (they share one model's weights)" in report
    print("per step with the teacher swapped in:", swapped)
    assert swapped["load_models_gpu"] >= 1 and swapped["unpatch_model"] >= 1
    history = [load_checkpoint(str(comfy.output_dir / "sda_checkpoints" / f"{name}_{mode}_8.ckpt.safetensors")).history
               for mode in ("shared", "swapped")]
    for a, b in zip(*history):  # both teachers predict the same: the runs agree up to float rounding
        assert a["k"] == b["k"]
        assert a["total"] == pytest.approx(b["total"], rel=1e-4, abs=1e-7)


def test_the_train_step_bench_compares_the_shared_teacher_with_a_separate_resident_one(comfy):
    import os
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    args = ["--teachers", "--steps", "2", "--warmup", "0", "--threads", "1", "--size", "16"]
    done = subprocess.run([sys.executable, str(root / "bench" / "train_step.py"), *args], capture_output=True,
                          text=True, timeout=900, cwd=root, env={**os.environ, "COMFYUI_PATH": str(comfy.comfy_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"shared teacher: {SHARED}" in done.stdout
    assert "separate teacher: student and teacher both loaded" in done.stdout
    assert re.search(r"ratio: shared / separate = [\d.]+x\s+\[target <= 1\.1x", done.stdout)


def test_the_student_with_its_own_adapters_as_switched_wrappers_is_the_student_model(comfy, files):
    g = Graph()
    student, teacher = _teacher_and_student(g)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    g.add("SDATest_TrainingForward", model=student, teacher=teacher, conditioning=cond, key="session", seed=7,
          sigma=0.7, size=16, output="student")
    g.add("SDATest_Denoise", model=student, conditioning=cond, key="alone", seed=7, sigma=0.7, size=16)
    comfy.run(g.prompt())
    torch.testing.assert_close(registry.take("session"), registry.take("alone"), rtol=0, atol=1e-5)
