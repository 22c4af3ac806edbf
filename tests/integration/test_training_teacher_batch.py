"""teacher_batch inside ComfyUI's executor: with a teacher loaded only for its forwards, K = 4 swaps it in once per
4 steps (counted), says so in the report and the file's metadata, and resumes inside a batch on the same curve;
where nothing is swapped it is not used and the run is the K = 1 run."""
from __future__ import annotations

import sys

import pytest
import torch
from safetensors import safe_open

from sda_core.training import load_checkpoint
from sda_core.training.loss import uses_diversity
from sdatest.comfy_calls import count_model_calls
from sdatest.graph import Graph

SETTINGS = dict(prompts="", width=64, height=64, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08, pool_kernel=8,
                div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, checkpoint_every=0, resume=False)
K, STEPS, STOP_AFTER = 4, 12, 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _session_module():
    import nodes as comfy_nodes

    return sys.modules[comfy_nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.rsplit(".", 1)[0] + ".session"]


@pytest.fixture
def swapped(monkeypatch, comfy):
    """Memory short for both: the (separate) teacher is loaded for its forwards only."""
    monkeypatch.setattr(_session_module().Residency, "_both_fit", lambda self: False)


def _run(comfy, name: str, steps: int, **overrides) -> str:
    g = Graph()
    cond = g.add("ConditioningCombine", conditioning_1=g.add("SDATest_TinyConditioning", seed=0, tokens=8),
                 conditioning_2=g.add("SDATest_TinyConditioning", seed=2, tokens=8))
    node = g.add("SDATrainLoKr", student=g.add("SDATest_TinyZImage", seed=0, dtype="fp32"),
                 teacher=g.add("SDATest_TinyZImage", seed=1, dtype="fp32"), conditioning=cond, steps=steps,
                 save_name=name, **dict(SETTINGS, **overrides))
    return comfy.run(g.prompt())[node.id]["text"][0]


def _checkpoint(comfy, name: str):
    return load_checkpoint(str(comfy.output_dir / "sda_checkpoints" / f"{name}.ckpt.safetensors"))


def test_k_4_swaps_the_teacher_in_once_per_4_steps_and_resumes_inside_a_batch(comfy, swapped, monkeypatch):
    import comfy.model_management as mm

    counts = count_model_calls(monkeypatch)
    loads = []
    for steps in (K, STEPS):
        counts["load_models_gpu"] = 0
        report = _run(comfy, f"kbatch_{steps}", steps, teacher_batch=K)
        loads.append(counts["load_models_gpu"])
    assert "teacher loaded only for its forwards (memory is short for both)" in report
    assert f"teacher_batch {K}: the teacher runs once per {K} steps" in report
    history = _checkpoint(comfy, f"kbatch_{STEPS}").history
    batches = [history[b:b + K] for b in range(K, STEPS, K)]
    swaps = sum(any(uses_diversity(h["k"], SETTINGS["div_skip"]) for h in batch) for batch in batches)
    assert swaps >= 1
    print(f"load_models_gpu over steps {K + 1}-{STEPS}: {loads[1] - loads[0]} for {swaps} teacher batches")
    assert loads[1] - loads[0] == swaps  # the teacher loaded once per batch that uses it (the CPU keeps the student)
    with safe_open(str(comfy.folder("loras") / f"kbatch_{STEPS}.safetensors"), framework="pt") as f:
        assert f.metadata()["sda_teacher_batch"] == (f"{K}: the teacher ran once per {K} steps; x_t and teacher "
                                                     f"targets were up to {K - 1} updates old")

    progress: list[int] = []
    with monkeypatch.context() as m:  # Cancel once step 5 is done: inside the batch of steps 5-8
        import comfy.utils as comfy_utils

        m.setattr(comfy_utils, "PROGRESS_BAR_HOOK",
                  lambda value, total, preview, node_id=None, **kw: progress.append(value))
        m.setattr(mm, "processing_interrupted", lambda: bool(progress) and progress[-1] >= STOP_AFTER)
        report = _run(comfy, "kbatch_part", STEPS, teacher_batch=K)
    assert f"interrupted at step {STOP_AFTER} of {STEPS}" in report
    assert {key.split(".")[0] for key in _checkpoint(comfy, "kbatch_part").pending} == {"5", "6", "7"}
    _run(comfy, "kbatch_part", STEPS, teacher_batch=K, resume=True)
    assert _checkpoint(comfy, "kbatch_part").history == history


def test_k_is_not_used_where_the_teacher_is_not_swapped_and_k_1_is_the_per_step_run(comfy, swapped, monkeypatch):
    _run(comfy, "kbatch_one", 6)  # the widget left out: today's per-step run, teacher swapped
    _run(comfy, "kbatch_one_set", 6, teacher_batch=1)
    assert _checkpoint(comfy, "kbatch_one_set").history == _checkpoint(comfy, "kbatch_one").history

    monkeypatch.setattr(_session_module().Residency, "_both_fit", lambda self: True)
    report = _run(comfy, "kbatch_resident", 6, teacher_batch=K)
    assert f"teacher_batch {K} not used: the student and teacher both loaded" in report
    assert _checkpoint(comfy, "kbatch_resident").history == _checkpoint(comfy, "kbatch_one").history
    with safe_open(str(comfy.folder("loras") / "kbatch_resident.safetensors"), framework="pt") as f:
        assert "sda_teacher_batch" not in f.metadata()
