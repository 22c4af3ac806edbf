"""SDA Train LoKr on low-precision base weights, inside ComfyUI's executor: the LoKr's contribution is never
rounded into bf16 weights or activations, fp16 and fp8 weights train, and what is saved and returned is exactly
what ComfyUI's own loader gives.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sda_core.training import load_checkpoint
from sdatest import registry, tiny_models
from sdatest.adapter_files import write_sda_lokr
from sdatest.graph import Graph

SETTINGS = dict(prompts="", width=64, height=64, steps=30, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08,
                pool_kernel=8, div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, checkpoint_every=0, resume=False)
WEIGHT_STD = 0.02  # tiny_models initialises every weight matrix N(0, 0.02)


pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(g: Graph):
    return g.add("ConditioningCombine", conditioning_1=g.add("SDATest_TinyConditioning", seed=0, tokens=8),
                 conditioning_2=g.add("SDATest_TinyConditioning", seed=2, tokens=8))


def _history(comfy, name: str) -> list[dict]:
    return load_checkpoint(str(comfy.output_dir / "sda_checkpoints" / f"{name}.ckpt.safetensors")).history


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.fixture(scope="module")
def tiny_lokr(comfy) -> str:
    """A LoKr on every attention/feed-forward layer whose ΔW is 1e-5 of the weights' scale (RMS)."""
    name = "precision_tiny.safetensors"
    path = comfy.folder("loras") / name
    write_sda_lokr(path, tiny_models.tiny_zimage_shapes(0), scale=1e-5 * WEIGHT_STD, seed=4)
    with safe_open(str(path), framework="pt") as f:
        keys = sorted(k for k in f.keys() if k.endswith("lokr_w1"))
        deltas = [torch.kron(f.get_tensor(k), f.get_tensor(k[:-1] + "2")) for k in keys]
    ratio = float(torch.cat([d.flatten() for d in deltas]).square().mean().sqrt()) / WEIGHT_STD
    assert 0.5e-5 < ratio < 2e-5, ratio
    return name


def test_a_lokr_at_1e_5_of_the_weights_moves_a_bf16_students_output_as_in_fp32(comfy, tiny_lokr):
    """The reference is independent: ComfyUI's own LoRA loader merging the file into the fp32 model."""
    g = Graph()
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    probe = dict(conditioning=cond, lokr_name=tiny_lokr, seed=7, sigma=0.7, size=16)
    for dtype in ("bf16", "fp16"):
        g.add("SDATest_TrainingForward", model=g.add("SDATest_TinyZImage", seed=0, dtype=dtype), key=dtype, **probe)
    for dtype in ("bf16", "fp16"):  # the fp32 model of the same weights, the file merged by ComfyUI's loader
        fp32 = g.add("SDATest_TinyZImage", seed=0, dtype=f"fp32 ({dtype} values)")
        loaded = g.add("LoraLoaderModelOnly", model=fp32, lora_name=tiny_lokr, strength_model=1.0)
        for key, model in (("on", loaded), ("off", fp32)):
            g.add("SDATest_Denoise", model=model, conditioning=cond, key=f"{dtype}_{key}", seed=7, sigma=0.7, size=16)
    comfy.run(g.prompt())
    for dtype in ("bf16", "fp16"):
        reference = registry.take(f"{dtype}_on") - registry.take(f"{dtype}_off")
        assert float(reference.norm()) > 0, "the reference saw no delta: the test could not tell"
        delta = registry.take(dtype)
        assert _cos(delta, reference) >= 0.99, dtype
        torch.testing.assert_close(delta.norm(), reference.norm(), rtol=0.05, atol=0)


@pytest.fixture(scope="module")
def fp32_run(comfy) -> list[dict]:
    g = Graph()
    g.add("SDATrainLoKr", student=g.add("SDATest_TinyZImage", seed=0, dtype="fp32"),
          teacher=g.add("SDATest_TinyZImage", seed=1, dtype="fp32"), conditioning=_prompts(g), save_name="prec_fp32",
          **SETTINGS)
    comfy.run(g.prompt())
    return _history(comfy, "prec_fp32")


def test_a_30_step_bf16_run_follows_the_fp32_loss_curve_and_returns_what_comfyuis_loader_gives(comfy, fp32_run):
    g = Graph()
    student = g.add("SDATest_TinyZImage", seed=0, dtype="bf16", shared=True)
    node = g.add("SDATrainLoKr", student=student, teacher=g.add("SDATest_TinyZImage", seed=1, dtype="bf16"),
                 conditioning=_prompts(g), save_name="prec_bf16", **SETTINGS)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    g.add("SDATest_Denoise", model=node[0], conditioning=cond, key="returned", seed=7, sigma=0.7, size=16)
    comfy.run(g.prompt())

    bf16 = _history(comfy, "prec_bf16")
    assert len(bf16) == len(fp32_run) == 30 and not any(h["skipped"] for h in bf16)
    deviation = max(abs(a["total"] - b["total"]) / abs(b["total"]) for a, b in zip(bf16, fp32_run))
    print(f"bf16 vs fp32 loss curve: largest relative deviation {deviation:.2%}")
    assert deviation <= 0.05, f"the bf16 loss curve deviates {deviation:.1%} from the fp32 run's"

    with safe_open(str(comfy.folder("loras") / "prec_bf16.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
        assert json.loads(f.metadata()["sda_config"])["steps"] == 30
    g = Graph()
    student = g.add("SDATest_TinyZImage", seed=0, dtype="bf16", shared=True)
    cond = g.add("SDATest_TinyConditioning", seed=0, tokens=8)
    g.add("SDATest_Denoise", model=g.add("LoraLoaderModelOnly", model=student, lora_name="prec_bf16.safetensors",
                                         strength_model=1.0), conditioning=cond, key="loader", seed=7, sigma=0.7,
          size=16)
    comfy.run(g.prompt())
    assert torch.equal(registry.take("returned"), registry.take("loader"))


@pytest.mark.parametrize("dtype", ["fp16", "fp8_e4m3fn"])
def test_fp16_and_fp8_base_weights_train(comfy, dtype):
    g = Graph()
    name = f"prec_{dtype}"
    g.add("SDATrainLoKr", student=g.add("SDATest_TinyZImage", seed=0, dtype=dtype),
          teacher=g.add("SDATest_TinyZImage", seed=1, dtype=dtype), conditioning=_prompts(g), save_name=name,
          **dict(SETTINGS, steps=3))
    comfy.run(g.prompt())
    history = _history(comfy, name)
    assert len(history) == 3 and not any(h["skipped"] for h in history)
    with safe_open(str(comfy.folder("loras") / f"{name}.safetensors"), framework="pt") as f:
        w2 = [f.get_tensor(k) for k in f.keys() if k.endswith("lokr_w2")]
    assert w2 and all(torch.isfinite(t).all() for t in w2)
    assert any(t.abs().max() > 0 for t in w2), "nothing trained"
