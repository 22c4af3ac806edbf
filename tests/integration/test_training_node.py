"""SDA Train LoKr inside ComfyUI's executor: tiny random-weight Z-Image student (seed 0) and teacher (seed 1).

The node's LoKr must be what a user gets by loading the saved file with ComfyUI's own loader; an interrupted
and resumed run must be the uninterrupted one bit for bit; the input MODELs must come out untouched.
"""
from __future__ import annotations

import json
import math
import random
import sys
import threading
import time

import pytest
import torch
from safetensors import safe_open

from sda_core.training import load_checkpoint
from sda_core.training.plot import EVAL
from sdatest import registry, tiny_models
from sdatest.adapter_files import write_lora
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

SETTINGS = dict(prompts="", width=64, height=64, steps=20, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08,
                pool_kernel=8, div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, save_name="sda_test", checkpoint_every=0, resume=False)
MAIN = ["attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
        "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapters(comfy):
    """A 'de-distill' LoRA for a teacher that shares the student's weights, and an assistant adapter."""
    shapes = tiny_models.tiny_zimage_shapes(0)
    loras = comfy.folder("loras")
    write_lora(loras / "train_dedistill.safetensors", shapes, rank=4, seed=11)
    write_lora(loras / "train_assistant.safetensors", shapes, rank=4, seed=12)
    return loras


@pytest.fixture
def progress(monkeypatch, comfy):
    """Every progress-bar update as (value, total), the way the server's hook sees them."""
    import comfy.utils as comfy_utils

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None, **kw: calls.append((value, total)))
    return calls


def _models(g: Graph, shared: bool = False):
    student = g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=shared)
    teacher = g.add("SDATest_TinyZImage", seed=1, dtype="fp32", shared=shared)
    return student, teacher


def _prompts(g: Graph, tokens: tuple[int, int] = (8, 8)):
    """Two prompts as one CONDITIONING with two entries."""
    return g.add("ConditioningCombine", conditioning_1=g.add("SDATest_TinyConditioning", seed=0, tokens=tokens[0]),
                 conditioning_2=g.add("SDATest_TinyConditioning", seed=2, tokens=tokens[1]))


def _train(g: Graph, student, teacher, conditioning=None, **overrides):
    settings = dict(SETTINGS, **overrides)
    if conditioning is not None:
        settings["conditioning"] = conditioning
    return g.add("SDATrainLoKr", student=student, teacher=teacher, **settings)


def _denoise(g: Graph, model, cond, key: str):
    g.add("SDATest_Denoise", model=model, conditioning=cond, key=key, seed=7, sigma=0.7, size=16)


def _report(outputs: dict, node) -> str:
    return outputs[node.id]["text"][0]


def _file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _checkpoint(comfy, name: str):
    return load_checkpoint(str(comfy.output_dir / "sda_checkpoints" / f"{name}.ckpt.safetensors"))


def test_trains_saves_and_the_file_reloads_through_comfyuis_lora_loader(comfy, progress):
    g = Graph()
    student, _ = _models(g, shared=True)
    _denoise(g, student, g.add("SDATest_TinyConditioning", seed=0, tokens=8), "base_before")
    comfy.run(g.prompt())

    g = Graph()
    student, teacher = _models(g, shared=True)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    node = _train(g, student, teacher, _prompts(g), save_name="sda_run", grad_clip=0.5)
    _denoise(g, node[0], cond, "trained")
    g.add("SDATest_Capture", value=node[1], key="path")
    g.add("SDATest_Capture", value=node[2], key="image")
    outputs = comfy.run(g.prompt())
    path = registry.take("path")
    assert path == str(comfy.folder("loras") / "sda_run.safetensors")
    report = _report(outputs, node)
    assert "20 of 20 steps done" in report and "prompts: 2 from the conditioning input" in report
    assert "grad_clip 0.5," in report
    stop_sigma = _comfyui_sigmas(8)[7]  # ComfyUI's own simple schedule for the tiny Z-Image (shift 3)
    assert f"it stops at σ {stop_sigma:.3f} (step 7 of 8, shift 3)" in report and f"{stop_sigma:.3f}" == "0.300"
    assert outputs[node.id]["images"], "the loss curves are shown on the node"
    image = registry.take("image")
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert progress[-1] == (20, 20)

    # the losses: finite, the anchor starts at 0 (the LoKr starts as a zero delta; only the rounding of a
    # batch-1 baseline against the batch-2 anchor+diversity forward remains) and stays small
    history = _checkpoint(comfy, "sda_run").history
    assert len(history) == 20 and not any(h["skipped"] for h in history)
    assert all(math.isfinite(h["total"]) for h in history)
    assert history[0]["anchor"] < 1e-12
    assert max(h["anchor"] for h in history) < 1e-3
    for h in history:  # time segmentation: the last schedule step is pure anchor
        assert (h["diversity"] is None) == (h["k"] == 7)
        assert h["diversity"] is None or 0.0 < h["diversity"] <= 2.0

    tensors, meta = _file(path)
    expected = {f"diffusion_model.layers.{i}.{m}.{r}" for i in (0, 1) for m in MAIN for r in ("lokr_w1", "lokr_w2", "alpha")}
    assert set(tensors) == expected
    _assert_lycoris_loads(tensors)
    assert meta["sda_steps"] == "20" and meta["sda_base_model"] == "ZImage" and meta["sda_prompt_count"] == "2"
    config = json.loads(meta["sda_config"])
    assert config["steps"] == 20 and config["factor"] == 8 and config["rank"] is None and config["shift"] == 3.0
    assert config["grad_clip"] == 0.5 and config["rollout_with_assistant"] is False
    assert json.loads(meta["ss_network_args"])["algo"] == "lokr"

    g = Graph()
    student, _ = _models(g, shared=True)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    _denoise(g, g.add("LoraLoaderModelOnly", model=student, lora_name="sda_run.safetensors", strength_model=1.0),
             cond, "comfyui_loader")
    _denoise(g, student, cond, "base_after")
    comfy.run(g.prompt())
    trained, theirs = registry.take("trained"), registry.take("comfyui_loader")
    base_before, base_after = registry.take("base_before"), registry.take("base_after")
    assert (trained - base_before).abs().max() > 1e-4, "the LoKr changed nothing: the test could not tell"
    torch.testing.assert_close(trained, theirs, rtol=0, atol=1e-6)
    assert torch.equal(base_after, base_before), "the input student was modified by training"


def _comfyui_sigmas(steps: int) -> list[float]:
    import comfy.samplers

    sampling = tiny_models.tiny_zimage(0).get_model_object("model_sampling")
    return comfy.samplers.calculate_sigmas(sampling, "simple", steps).tolist()


def _assert_lycoris_loads(tensors):
    """LyCORIS, on linears named as in diffusers' Z-Image, loads every LoKr of the file (under its own names)
    and merges exactly kron(w1, w2) into each."""
    from lycoris import create_lycoris_from_weights

    from sda_core.training import lycoris_state_dict

    root, names = torch.nn.Module(), sorted({k.rsplit(".", 1)[0][len("diffusion_model."):] for k in tensors})
    for name in names:
        w1, w2 = (tensors[f"diffusion_model.{name}.lokr_w{i}"] for i in (1, 2))
        parent = root
        for part in name.split(".")[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, torch.nn.Module())
            parent = getattr(parent, part)
        parent.add_module(name.rsplit(".", 1)[1], torch.nn.Linear(w1.shape[1] * w2.shape[1], w1.shape[0] * w2.shape[0],
                                                                  bias=False))
    before = {n: p.detach().clone() for n, p in root.named_parameters()}
    network, _ = create_lycoris_from_weights(1.0, None, root, weights_sd=lycoris_state_dict(tensors))
    assert len(network.loras) == len(names)
    network.merge_to(1.0)
    after = dict(root.named_parameters())
    for name in names:
        kron = torch.kron(tensors[f"diffusion_model.{name}.lokr_w1"], tensors[f"diffusion_model.{name}.lokr_w2"])
        torch.testing.assert_close(after[f"{name}.weight"] - before[f"{name}.weight"], kron, rtol=0, atol=1e-6)


INTERRUPT_STEPS, STOP_AFTER = 12, 5

def test_out_of_memory_mid_run_saves_the_last_complete_step_and_resume_reproduces_the_uninterrupted_run(
        comfy, monkeypatch, uninterrupted):
    """The device runs out of memory inside step 6's backward: the node fails naming the saved files, and nothing
    is lost."""
    import nodes as comfy_nodes

    root = comfy_nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.rsplit(".", 3)[0]
    loop = sys.modules[root + ".sda_core.training.loop"]
    real, calls = loop.sda_loss, []

    def loss_then_oom(*args, **kwargs):
        calls.append(1)
        terms = real(*args, **kwargs)  # the forwards and the backward ran; the update has not
        if len(calls) == STOP_AFTER + 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return terms

    name = "oom"
    with monkeypatch.context() as m:
        m.setattr(loop, "sda_loss", loss_then_oom)
        g = Graph()
        _train(g, *_models(g), _prompts(g), steps=INTERRUPT_STEPS, save_name=name)
        with pytest.raises(PromptFailed) as failed:
            comfy.run(g.prompt())
    message = failed.value.message
    part = comfy.folder("loras") / f"{name}.safetensors"
    checkpoint = comfy.output_dir / "sda_checkpoints" / f"{name}.ckpt.safetensors"
    assert (f"SDA Train LoKr stopped: OutOfMemoryError during step {STOP_AFTER + 1}: CUDA out of memory" in message
            and f"Nothing is lost: the LoKr of step {STOP_AFTER} was saved as {part} and its checkpoint as "
                f"{checkpoint}; turn resume on to continue from there" in message
            and "turn gradient_checkpointing on" in message), message
    _, meta = _file(part)
    assert meta["sda_steps"] == str(STOP_AFTER) and "OutOfMemoryError" in meta["sda_error"]
    assert _checkpoint(comfy, name).step == STOP_AFTER

    g = Graph()
    node = _train(g, *_models(g), _prompts(g), steps=INTERRUPT_STEPS, save_name=name, resume=True)
    g.add("SDATest_Capture", value=node[1], key="path")
    comfy.run(g.prompt())
    history, full = uninterrupted
    assert _checkpoint(comfy, name).history == history
    again, _ = _file(registry.take("path"))
    assert full.keys() == again.keys() and all(torch.equal(full[k], again[k]) for k in full)



@pytest.fixture(scope="module")
def uninterrupted(comfy):
    g = Graph()
    _train(g, *_models(g), _prompts(g), steps=INTERRUPT_STEPS, save_name="full")
    comfy.run(g.prompt())
    return _checkpoint(comfy, "full").history, _file(comfy.folder("loras") / "full.safetensors")[0]


@pytest.mark.parametrize("how", ["polled", "server_hook"])
def test_interrupt_then_resume_reproduces_the_uninterrupted_run(comfy, progress, monkeypatch, uninterrupted, how):
    """polled: ComfyUI's interrupt flag read through processing_interrupted between steps. server_hook: the
    server's progress hook raises the interrupt from inside the progress update (as main.py's hook does)."""
    import comfy.model_management as mm
    import comfy.utils as comfy_utils

    name = f"part_{how}"
    with monkeypatch.context() as m:
        if how == "polled":  # the user presses cancel once the bar shows step 5
            m.setattr(mm, "processing_interrupted", lambda: bool(progress) and progress[-1][0] >= STOP_AFTER)
        else:
            def hook(value, total, preview, node_id=None, **kw):
                if total == INTERRUPT_STEPS and value >= STOP_AFTER:
                    mm.interrupt_current_processing(True)
                mm.throw_exception_if_processing_interrupted()

            m.setattr(comfy_utils, "PROGRESS_BAR_HOOK", hook)
        g = Graph()
        node = _train(g, *_models(g), _prompts(g), steps=INTERRUPT_STEPS, save_name=name)
        try:
            outputs = comfy.run(g.prompt())
        finally:
            mm.interrupt_current_processing(False)
    assert f"interrupted at step {STOP_AFTER} of {INTERRUPT_STEPS}" in _report(outputs, node)
    part = comfy.folder("loras") / f"{name}.safetensors"
    part_bytes = part.read_bytes()
    _, meta = _file(part)
    assert meta["sda_steps"] == str(STOP_AFTER) and meta["sda_interrupted"] == "true"
    assert _checkpoint(comfy, name).step == STOP_AFTER

    g = Graph()
    node = _train(g, *_models(g), _prompts(g), steps=INTERRUPT_STEPS, save_name=name, resume=True)
    g.add("SDATest_Capture", value=node[1], key="path")
    outputs = comfy.run(g.prompt())
    assert f"resumed from step {STOP_AFTER}" in _report(outputs, node)
    resumed = registry.take("path")
    assert resumed.endswith(f"{name}_1.safetensors"), "an existing LoKr file must never be overwritten"
    assert part.read_bytes() == part_bytes

    history, full = uninterrupted
    assert _checkpoint(comfy, name).history == history
    again, meta = _file(resumed)
    assert meta["sda_steps"] == str(INTERRUPT_STEPS) and full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key


def test_memory_short_loads_the_teacher_only_for_its_forwards_and_trains_the_same(comfy, monkeypatch):
    import nodes as comfy_nodes

    node_module = comfy_nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__
    session = sys.modules[node_module.rsplit(".", 1)[0] + ".session"]  # the pack's nodes/training/session.py
    reports = {}
    for name, fits in (("fit_both", True), ("fit_short", False)):
        with monkeypatch.context() as m:
            m.setattr(session.Residency, "_both_fit", lambda self, fits=fits: fits)
            g = Graph()
            node = _train(g, *_models(g), _prompts(g), steps=3, save_name=name)
            reports[name] = _report(comfy.run(g.prompt()), node)
    assert "student and teacher both loaded" in reports["fit_both"]
    assert "teacher loaded only for its forwards (memory is short for both)" in reports["fit_short"]
    assert _checkpoint(comfy, "fit_both").history == _checkpoint(comfy, "fit_short").history
    a, _ = _file(comfy.folder("loras") / "fit_both.safetensors")
    b, _ = _file(comfy.folder("loras") / "fit_short.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case, message", [
    ("edm_student", "student: SDA training reads x0 from a flow, eps or v-prediction model; this student is "
                    "Z-Image (Lumina2, model type EDM)"),
    ("edm_teacher", "teacher: SDA training reads x0 from a flow, eps or v-prediction model"),
    ("channels", "student and teacher do not match: input channels 16 (student) vs 4 (teacher)"),
    ("no_prompts", "prompts: no prompt"),
    ("no_clip", "clip: connect a CLIP"),
    ("width", "width 72: must be a multiple of 8 × pool_kernel = 64 px"),
    ("escape", "save_name: refusing to write"),
    ("div_skip", "div_skip must lie in 0..8"),
    ("no_vae", "eval_every: connect a vae"),
    ("long_name", "(300 characters): it is 300 bytes long; with the '_diverged_9999.safetensors' added to it, the "
                  "file name would be 326 bytes, over the 255 this file system allows; shorten it to at most 229"),
    ("windows_name", "save_name: 'x:y*?<>|': the characters '*' ':' '<' '>' '?' '|' are not allowed in file names"),
    ("text_width", "text feature input (cap_embedder): the student's weight is [256, 32] (width 256), the teacher's "
                   "[512, 64] (width 512): both must read the same 32-wide conditioning"),
    ("garbage_checkpoint", "is not a readable SDA training checkpoint (SafetensorError"),
])
def test_refuses_what_it_cannot_train_with_a_clear_error_before_any_step(comfy, progress, case, message):
    g = Graph()
    student, teacher = _models(g)
    if case == "edm_student":
        student = g.add("SDATest_TinyZImageVariant", seed=0, model_type="EDM", in_channels=16)
    if case == "edm_teacher":
        teacher = g.add("SDATest_TinyZImageVariant", seed=1, model_type="EDM", in_channels=16)
    if case == "channels":
        teacher = g.add("SDATest_TinyZImageVariant", seed=1, model_type="FLOW", in_channels=4)
    overrides = {"width": 72} if case == "width" else {"save_name": "../outside"} if case == "escape" else {}
    if case == "div_skip":
        overrides = {"div_skip": 9}
    if case == "no_vae":
        overrides = {"eval_every": 2}
    if case == "no_clip":
        overrides = {"prompts": "a cat\na dog"}
    if case == "long_name":
        overrides = {"save_name": "n" * 300}
    if case == "windows_name":
        overrides = {"save_name": "x:y*?<>|"}
    if case == "text_width":
        teacher = g.add("SDATest_TinyZImageVariant", seed=1, model_type="FLOW", in_channels=16, dim=512, cap_feat_dim=64)
    if case == "garbage_checkpoint":
        garbage = comfy.output_dir / "sda_checkpoints" / "garbage.ckpt.safetensors"
        garbage.parent.mkdir(exist_ok=True)
        garbage.write_bytes(b"not a safetensors file")
        overrides = {"save_name": "garbage", "resume": True}
        message = f"resume: {garbage} {message}"
    conditioning = None if case in ("no_prompts", "no_clip") else _prompts(g)
    _train(g, student, teacher, conditioning, steps=2, **overrides)
    with pytest.raises(PromptFailed) as failed:
        comfy.run(g.prompt())
    assert failed.value.node_type == "SDATrainLoKr"
    assert message in failed.value.message
    assert not [total for _, total in progress if total == 2], "refused only after training had started"
    if case == "garbage_checkpoint":
        assert "Delete or move that file" in failed.value.message


def test_assistant_adapter_shared_teacher_cfg_refiners_rank_and_checkpointing(comfy, adapters):
    """The teacher is the student plus a LoRA (one set of weights in ComfyUI: the teacher runs on the student's
    loaded weights); gradient checkpointing must train exactly like no checkpointing, the assistant's OFF-then-ON
    included; both input MODELs come out untouched."""
    def base_graph():
        g = Graph()
        student = g.add("SDATest_TinyZImage", seed=3, dtype="fp32", shared=True)
        teacher = g.add("SDALoKrLoader", model=student, lokr_name="train_dedistill.safetensors", strength=1.0)
        return g, student, teacher, g.add("SDATest_TinyConditioning", seed=0, tokens=8)

    g, student, teacher, cond = base_graph()
    _denoise(g, student, cond, "student_before")
    _denoise(g, teacher, cond, "teacher_before")
    comfy.run(g.prompt())

    g, student, teacher, cond = base_graph()
    options = dict(steps=4, teacher_cfg=2.0, assistant_adapter="train_assistant.safetensors", include_refiners=True,
                   lokr_rank=4, seed=5)
    prompts = _prompts(g, tokens=(8, 12))  # prompt 2 and the negative (zeroed prompt 1) cannot share a batch
    plain = _train(g, student, teacher, prompts, save_name="assist_plain", **options)
    ckpt = _train(g, student, teacher, prompts, save_name="assist_ckpt", gradient_checkpointing=True, **options)
    outputs = comfy.run(g.prompt())
    report = _report(outputs, plain)
    assert "teacher runs on the student's loaded weights" in report
    assert "assistant adapter: train_assistant.safetensors" in report and "teacher cfg 2" in report
    assert "gradient checkpointing" not in report and "gradient checkpointing" in _report(outputs, ckpt)

    a, meta = _file(comfy.folder("loras") / "assist_plain.safetensors")
    b, _ = _file(comfy.folder("loras") / "assist_ckpt.safetensors")
    assert any(k.startswith("diffusion_model.noise_refiner.0.") for k in a)
    assert any(k.startswith("diffusion_model.context_refiner.0.") for k in a)
    assert {k.rsplit(".", 1)[1] for k in a} == {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}
    assert json.loads(meta["sda_config"])["teacher_cfg"] == 2.0
    assert all(torch.isfinite(t).all() for t in a.values())
    assert any(t.abs().max() > 0 for k, t in a.items() if k.endswith("lokr_w2_b")), "nothing trained"
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert _checkpoint(comfy, "assist_plain").history == _checkpoint(comfy, "assist_ckpt").history

    g, student, teacher, cond = base_graph()
    _denoise(g, student, cond, "student_after")
    _denoise(g, teacher, cond, "teacher_after")
    comfy.run(g.prompt())
    assert torch.equal(registry.take("student_after"), registry.take("student_before"))
    assert torch.equal(registry.take("teacher_after"), registry.take("teacher_before"))


def _eval_steps(report: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith("eval avg LPIPS: "))
    return [part.split(":")[0] for part in line[len("eval avg LPIPS: "):].split(", ")]


def test_eval_renders_fixed_seeds_plots_lpips_and_keeps_the_best_across_a_resume(comfy, lpips_weights):
    def run(steps: int, resume: bool):
        g = Graph()
        node = _train(g, *_models(g), _prompts(g), steps=steps, save_name="evalrun", resume=resume,
                      vae=g.add("SDATest_TinyVAE", seed=0), eval_every=2, eval_seeds=2)
        g.add("SDATest_Capture", value=node[2], key="image")
        return _report(comfy.run(g.prompt()), node)

    report = run(4, resume=False)
    assert _eval_steps(report) == ["step 0", "step 2", "step 4"]
    best = comfy.folder("loras") / "evalrun_best.safetensors"
    tensors, meta = _file(best)
    best_step = json.loads(meta["sda_eval"])["step"]
    assert best_step in (2, 4) and f"best by diversity: {best}" in report
    assert tensors.keys() == _file(comfy.folder("loras") / "evalrun.safetensors")[0].keys()
    assert _checkpoint(comfy, "evalrun").extra["best"]["step"] == best_step
    pixels = (registry.take("image")[0] * 255).round()
    assert (pixels - torch.tensor(EVAL[1])).abs().amax(-1).le(2).sum() > 50, "no eval LPIPS curve in the image"

    report = run(6, resume=True)  # the eval history and the best so far carry over
    assert _eval_steps(report) == ["step 0", "step 2", "step 4", "step 6"]
    assert "was not found" not in report
    registry.take("image")
    again, meta_again = _file(comfy.folder("loras") / "evalrun_best_1.safetensors")
    best_again = json.loads(meta_again["sda_eval"])
    if best_again["step"] == best_step:  # step 6 did not beat it: the same LoKr as before the resume
        assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    else:
        assert best_again["step"] == 6 and best_again["avg_lpips"] > json.loads(meta["sda_eval"])["avg_lpips"]


def _pack_module(suffix: str):
    """A module of the pack as ComfyUI loaded it (a custom-node package), e.g. 'sda_core.training.checkpoint'."""
    import nodes as comfy_nodes

    root = comfy_nodes.NODE_CLASS_MAPPINGS["SDATrainLoKr"].__module__.split(".")[0]
    return sys.modules[f"{root}.{suffix}"]


class CancelAt:
    """A test-only injection point: ComfyUI's Cancel (`interrupt_current_processing(True)`) at the n-th forward,
    backward, checkpoint write or eval forward while the progress bar shows `step` completed steps.

    A forward sets the flag and lets ComfyUI's own per-op check raise inside the model; a backward raises from a
    gradient hook on the model output, as an op re-run in backward would; a checkpoint write sets the flag and
    completes (nothing checks it there); an eval forward is a sampler forward of the eval render.
    """

    def __init__(self, monkeypatch, total: int) -> None:
        import comfy.model_base
        import comfy.model_management as mm
        import comfy.utils as comfy_utils

        self.mm, self.total, self.step, self.point, self.seen, self.in_eval = mm, total, 0, None, 0, False
        original = comfy.model_base.BaseModel.apply_model

        def apply_model(model, *args, **kwargs):
            self._event("eval" if self.in_eval else "forward")
            out = original(model, *args, **kwargs)
            if out.requires_grad:
                out.register_hook(lambda grad: self._event("backward", throw=True))
            return out

        def progress(value, total, preview, node_id=None, **kw):
            if total == self.total:
                self.step = value

        evaluator = _pack_module("nodes.training.progress").Evaluator
        render = evaluator.__call__

        def eval_call(evaluator_self, step):
            self.in_eval = True
            try:
                return render(evaluator_self, step)
            finally:
                self.in_eval = False

        checkpoint = _pack_module("sda_core.training.checkpoint")
        write = checkpoint.atomic_save_safetensors

        def checkpoint_write(*args, **kwargs):
            self._event("checkpoint")
            return write(*args, **kwargs)

        monkeypatch.setattr(comfy.model_base.BaseModel, "apply_model", apply_model)
        monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK", progress)
        monkeypatch.setattr(evaluator, "__call__", eval_call)
        monkeypatch.setattr(checkpoint, "atomic_save_safetensors", checkpoint_write)

    def arm(self, kind: str, step: int, nth: int) -> None:
        self.point, self.seen = (kind, step, nth), 0

    def _event(self, kind: str, throw: bool = False) -> None:
        if self.point is None or self.point[:2] != (kind, self.step):
            return
        self.seen += 1
        if self.seen == self.point[2]:
            self.point = None
            self.mm.interrupt_current_processing(True)
            if throw:
                self.mm.throw_exception_if_processing_interrupted()


def _cancel_points(seed: int, steps: int, eval_every: int) -> list[tuple[str, int, int]]:
    """Ten (kind, completed steps, n-th event) points, one per run of a chain of resumes, in step order."""
    rng = random.Random(seed)
    points = []
    for step in sorted(rng.sample(range(steps - 1), 10)):
        kinds = ["forward", "backward"] + (["checkpoint"] if step > 0 else []) + (
            ["eval"] if step % eval_every == 0 else [])
        kind = rng.choice(kinds)
        nth = {"forward": rng.randint(1, 3), "backward": 1, "checkpoint": 1, "eval": rng.randint(1, 8)}[kind]
        points.append((kind, step, nth))
    return points


def _lokr_matches_checkpoint(lokr_file, ckpt) -> None:
    """The LoKr file holds the checkpoint's factors: the state after the last complete step."""
    tensors, meta = _file(lokr_file)
    assert meta["sda_steps"] == str(ckpt.step)
    by_module = {k[len("diffusion_model."):]: v for k, v in tensors.items() if not k.endswith(".alpha")}
    assert len(by_module) == len(ckpt.lokr)
    for name, value in ckpt.lokr.items():
        module, factor = name.rsplit(".", 1)
        assert torch.equal(by_module[f"{module}.lokr_{factor}"], value), name


def test_cancel_at_any_moment_saves_the_last_complete_step_and_resume_continues_the_curve(
        comfy, monkeypatch, uninterrupted, lpips_weights):
    """Ten Cancels, each in another run of one chain of resumes: inside a student or teacher forward, a backward,
    a checkpoint write or an eval render. Each run returns normally, saying where it stopped, with a LoKr file
    and a checkpoint of the last complete step; the chain ends on the uninterrupted run's curve and LoKr."""
    import comfy.model_management as mm

    history, full = uninterrupted
    cancel = CancelAt(monkeypatch, INTERRUPT_STEPS)
    points = _cancel_points(seed=11, steps=INTERRUPT_STEPS, eval_every=3)
    assert {kind for kind, _, _ in points} == {"forward", "backward", "checkpoint", "eval"}
    settings = dict(steps=INTERRUPT_STEPS, save_name="chain", checkpoint_every=1, eval_every=3, eval_seeds=2)
    for run, (kind, step, nth) in enumerate(points):
        cancel.arm(kind, step, nth)
        g = Graph()
        node = _train(g, *_models(g, shared=True), _prompts(g), resume=run > 0,
                      vae=g.add("SDATest_TinyVAE", seed=0), **settings)
        outputs = comfy.run(g.prompt())
        assert cancel.point is None, f"run {run}: the cancel point {kind, step, nth} was never reached"
        assert not mm.processing_interrupted(), "the Cancel must be consumed by the node that stopped"
        report = _report(outputs, node)
        assert f"interrupted at step {step} of {INTERRUPT_STEPS}" in report, (kind, step, report)
        ckpt = _checkpoint(comfy, "chain")
        assert ckpt.step == step and ckpt.history == history[:step], (kind, step)
        _lokr_matches_checkpoint(comfy.folder("loras") / ("chain.safetensors" if run == 0 else
                                                          f"chain_{run}.safetensors"), ckpt)

    g = Graph()
    node = _train(g, *_models(g, shared=True), _prompts(g), resume=True, vae=g.add("SDATest_TinyVAE", seed=0),
                  **settings)
    assert f"{INTERRUPT_STEPS} of {INTERRUPT_STEPS} steps done" in _report(comfy.run(g.prompt()), node)
    assert _checkpoint(comfy, "chain").history == history
    again, _ = _file(comfy.folder("loras") / f"chain_{len(points)}.safetensors")
    assert again.keys() == full.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key


def test_cancel_from_another_thread_saves_and_resumes_to_the_same_curve(comfy, monkeypatch, uninterrupted):
    """A real second thread presses Cancel at a random moment after step 1; the progress hook holds step 4 until
    it has, so the Cancel lands somewhere in steps 1-4 whatever the machine's speed."""
    import comfy.model_management as mm
    import comfy.utils as comfy_utils

    history, full = uninterrupted
    started, fired = threading.Event(), threading.Event()
    delay = random.Random(5).uniform(0.0, 0.2)

    def press_cancel():
        started.wait(60)
        time.sleep(delay)
        mm.interrupt_current_processing(True)
        fired.set()

    def hook(value, total, preview, node_id=None, **kw):
        if total == INTERRUPT_STEPS and value >= 1:
            started.set()
            if value >= 4:
                assert fired.wait(60), "the cancelling thread never ran"

    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK", hook)
    thread = threading.Thread(target=press_cancel, daemon=True)
    thread.start()
    g = Graph()
    node = _train(g, *_models(g, shared=True), _prompts(g), steps=INTERRUPT_STEPS, save_name="threaded")
    report = _report(comfy.run(g.prompt()), node)
    thread.join(60)
    ckpt = _checkpoint(comfy, "threaded")
    assert 1 <= ckpt.step <= 4 and f"interrupted at step {ckpt.step} of {INTERRUPT_STEPS}" in report
    assert ckpt.history == history[:ckpt.step]
    _lokr_matches_checkpoint(comfy.folder("loras") / "threaded.safetensors", ckpt)

    g = Graph()
    _train(g, *_models(g, shared=True), _prompts(g), steps=INTERRUPT_STEPS, save_name="threaded", resume=True)
    comfy.run(g.prompt())
    assert _checkpoint(comfy, "threaded").history == history
    again, _ = _file(comfy.folder("loras") / "threaded_1.safetensors")
    assert all(torch.equal(full[key], again[key]) for key in full)


def test_a_teacher_with_nan_weights_stops_the_run_naming_the_teacher_and_saves_no_lokr(comfy):
    g = Graph()
    student = g.add("SDATest_TinyZImage", seed=0, dtype="fp32", shared=True)
    teacher = g.add("SDATest_TinyZImageVariant", seed=1, model_type="FLOW", in_channels=16, nan_weights=True)
    _train(g, student, teacher, _prompts(g), steps=12, save_name="nan_teacher")
    with pytest.raises(PromptFailed) as failed:
        comfy.run(g.prompt())
    assert failed.value.node_type == "SDATrainLoKr"
    assert "teacher: ZImage: the teacher's predictions were non-finite" in failed.value.message
    assert "No LoKr was saved" in failed.value.message
    assert not list(comfy.folder("loras").glob("nan_teacher*")), "a LoKr trained against NaN targets was saved"
