"""The memory plan against what a training step really allocates, and the node refusing a run that does not fit.

Measured: the peak of torch's CPU allocations during real SDA steps (the longest rollouts, after a first step
so AdamW's state exists) of ComfyUI's Z-Image wired by the training node's own session, plus what was resident
before the step (the weights, the LoKr with its gradients, AdamW state and last-good copy). The estimate comes
from the node's own glue (`nodes.training.memory.gather`) before anything is loaded.
"""
from __future__ import annotations

import importlib
import re
import sys

import pytest
import torch

from sdatest import tiny_models
from sdatest.graph import Graph
from sdatest.comfy_host import PromptFailed
from sdatest.measure import peak_cpu_allocation

TOLERANCE = 0.25


pytestmark = pytest.mark.usefixtures("one_thread")


def _pack(comfy):
    import nodes

    training = sys.modules[nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__]
    return training, importlib.import_module(training.__package__ + ".memory")


def _zimage(seed: int, dim: int, layers: int, dtype: torch.dtype):
    return tiny_models.tiny_zimage(seed, dtype, dim=dim, n_heads=dim // 64, n_kv_heads=dim // 64, n_layers=layers)


@pytest.mark.parametrize("dim, layers, latent, checkpointing, dtype", [(256, 2, 32, False, torch.float32),
                                                                        (512, 3, 32, True, torch.bfloat16)])
def test_the_estimate_is_within_25_percent_of_the_measured_peak_of_real_training_steps(comfy, dim, layers, latent,
                                                                                     checkpointing, dtype):
    from sda_core.training.loop import draw_step, make_optimizer, train_step
    from sda_core.training.memory_plan import estimate
    from sda_core.training.trajectory import flow_sigmas

    training, memory = _pack(comfy)
    student, teacher = _zimage(0, dim, layers, dtype), _zimage(1, dim, layers, dtype)
    config = training.SDAConfig(steps=100, lr=1e-4, latent_shape=(16, latent, latent), shift=3.0)
    prompts = [tiny_models.tiny_conditioning(0), tiny_models.tiny_conditioning(2)]
    targets = training.lokr_targets(student, False)[1]
    plan = estimate(memory.gather(student, teacher, config, targets, prompts, False, checkpointing))
    assert plan.facts.teacher == "resident" and plan.facts.tokens == (latent // 2) ** 2 + 8

    with torch.inference_mode(False), torch.enable_grad():
        session = training.Session.open(student, teacher, config, targets, prompts, None, None, checkpointing)
        try:
            session.start()
            params = list(session.lokr.parameters())
            for p in params:
                p.requires_grad_(True)
            optimizer = make_optimizer(params, config)
            sigmas = flow_sigmas(config.student_steps, config.shift)
            train_step(session.models, config, draw_step(config, 0, 2), sigmas, optimizer, params)  # AdamW state
            peaks = []
            for k in (0, config.div_skip - 1, config.student_steps - 1):  # longest rollout with/without diversity
                draw = draw_step(config, 1 + k, 2)
                draw.k = k
                peaks.append(peak_cpu_allocation(lambda: train_step(session.models, config, draw, sigmas, optimizer,
                                                                   params)))
        finally:
            session.close()
    weights = sum(t.numel() * t.element_size() for m in (student, teacher) for t in m.model.state_dict().values())
    lokr = sum(p.numel() for p in params)
    assert plan.student_weights + plan.teacher_weights == weights
    resident = weights + 20 * lokr  # factors, gradients, AdamW's two moments, the last good copy: 4 bytes each
    # (the training clone computes in fp32: bf16 weights are cast as each layer runs, the casts kept for backward)
    measured_step, estimated_step = max(peaks), plan.peak - resident
    print(f"{dtype} dim {dim}, {layers} layers, {plan.facts.tokens} tokens, checkpointing {checkpointing}: step peak "
          f"estimated {estimated_step / 2**20:.1f} MiB, measured {measured_step / 2**20:.1f} MiB; total estimated "
          f"{plan.peak / 2**20:.1f} MiB, measured {(resident + measured_step) / 2**20:.1f} MiB")
    assert abs(estimated_step / measured_step - 1) <= TOLERANCE  # the activations alone, not hidden by the weights
    assert abs(plan.peak / (resident + measured_step) - 1) <= TOLERANCE


def _train(g: Graph, **settings):
    student = g.add("SDATest_TinyZImage", seed=0, dtype="fp32")
    teacher = g.add("SDATest_TinyZImage", seed=1, dtype="fp32")
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    base = dict(prompts="", width=256, height=256, steps=1, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08,
                pool_kernel=8, div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, save_name="sda_plan", checkpoint_every=0, resume=False)
    return g.add("SDATrainLoKr", student=student, teacher=teacher, conditioning=cond, **dict(base, **settings))


def test_the_report_prints_the_plan(comfy):
    g = Graph()
    node = _train(g, width=64, height=64)
    report = comfy.run(g.prompt())[node.id]["text"][0]
    assert re.search(r"memory plan: peak [\d.]+ MiB on cpu, at the grad forward and backward", report)
    assert "weights: student" in report and "teacher" in report and "(CPU: not checked" in report


def test_a_run_that_does_not_fit_the_device_is_refused_before_loading_with_the_options_that_fit(comfy, monkeypatch):
    import comfy.model_management as mm
    from sda_core.training.memory_plan import estimate

    training, memory = _pack(comfy)
    student, teacher = tiny_models.tiny_zimage(0), tiny_models.tiny_zimage(1)
    config = training.SDAConfig(steps=1, latent_shape=(16, 32, 32), shift=3.0)
    facts = memory.gather(student, teacher, config, training.lokr_targets(student, False)[1],
                          [tiny_models.tiny_conditioning(0)], False, False)
    swapped = estimate(facts.__class__(**{**facts.__dict__, "teacher": "swapped"}))
    budget = swapped.peak - 2**20  # a device 1 MiB short even with the teacher swapped in for its forwards
    loads = []
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    monkeypatch.setattr(mm, "get_total_memory", lambda device=None, torch_total_too=False: budget)
    monkeypatch.setattr(mm, "get_free_memory", lambda device=None, torch_free_too=False: budget)
    monkeypatch.setattr(mm, "load_models_gpu", lambda *a, **k: loads.append(a))
    g = Graph()
    _train(g)
    with pytest.raises(PromptFailed) as err:
        comfy.run(g.prompt())
    message = err.value.message
    assert not loads, "the run was refused after loading"
    assert f"needs about {swapped.peak / 2**20:.1f} MiB on cpu" in message
    assert f"{budget / 2**20:.1f} MiB is available" in message
    offered = dict(re.findall(r"\(\d\) ([^:]+): ([\d.]+) MiB\.", message))
    assert "gradient_checkpointing on" in offered and any(w.startswith("a smaller size, ") for w in offered)
    assert all(float(v) * 2**20 <= budget for v in offered.values())
