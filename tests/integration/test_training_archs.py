"""SDA Train LoKr on the other architectures ComfyUI runs (tiny SDXL eps and v, FLUX.1-schnell, SD3.5, Qwen-Image
from ComfyUI's own config classes): the LoKr moves, the saved file (in the names that architecture's tools read)
loads through ComfyUI's LoraLoaderModelOnly to exactly the MODEL the node returns, and a resumed run ends on the
uninterrupted one's LoKr bit for bit.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sda_core.training import load_checkpoint
from sdatest import registry
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(prompts="", width=64, height=64, steps=4, learning_rate=1e-2, lambda_div=1.0, huber_delta=0.08,
                pool_kernel=4, div_skip=3, student_steps=4, lokr_factor=4, lokr_rank=0, include_refiners=False,
                gradient_checkpointing=False, seed=0, checkpoint_every=0, resume=False)
# what each architecture's file is called by its tools, and one trained layer of each kind it must hold
EXPECTED = {
    "sdxl": ("SDXL", ["lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q",
                      "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_out_0",
                      "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj"]),
    "sdxl_v": ("SDXL", ["lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"]),
    "flux_schnell": ("FLUX.1", ["transformer.transformer_blocks.0.attn.to_q",
                                "transformer.transformer_blocks.0.attn.add_v_proj",
                                "transformer.transformer_blocks.0.ff_context.net.2",
                                "transformer.single_transformer_blocks.0.attn.to_k",
                                "transformer.single_transformer_blocks.0.proj_mlp",
                                "transformer.single_transformer_blocks.0.proj_out"]),
    "sd35": ("SD3", ["transformer.transformer_blocks.0.attn.to_v", "transformer.transformer_blocks.0.attn.to_add_out",
                     "transformer.transformer_blocks.0.ff.net.0.proj"]),
    "qwen_image": ("Qwen-Image", ["transformer.transformer_blocks.0.attn.to_q",
                                  "transformer.transformer_blocks.1.attn.add_k_proj",
                                  "transformer.transformer_blocks.0.txt_mlp.net.2"]),
}
ARCHS = list(EXPECTED)
# Layers whose output never reaches the image: the last joint block's text queries (SD3.5's last context block
# is pre-only) and, in Qwen-Image, that block's whole text stream after attention. They stay zero, as in any trainer.
STILL = {"sd35": ["transformer.transformer_blocks.1.attn.add_q_proj"],
         "qwen_image": ["transformer.transformer_blocks.1.attn.add_q_proj", "transformer.transformer_blocks.1.attn.to_add_out",
                        "transformer.transformer_blocks.1.txt_mlp.net.0.proj",
                        "transformer.transformer_blocks.1.txt_mlp.net.2"]}


def _train(g: Graph, arch: str, save_name: str, dtype: str = "fp32", **overrides):
    student = g.add("SDATest_TinyArch", arch=arch, seed=0, dtype=dtype)
    teacher = g.add("SDATest_TinyArch", arch=arch, seed=1, dtype=dtype)
    cond = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
    node = g.add("SDATrainLoKr", student=student, teacher=teacher, conditioning=cond, save_name=save_name,
                 **dict(SETTINGS, **overrides))
    return student, node


def _sample(g: Graph, arch: str, model, key: str) -> None:
    positive = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
    latent = g.add("SDATest_TinyArchLatent", arch=arch, batch=1, side=64)
    out = g.add("KSampler", model=model, seed=3, steps=4, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=positive, negative=positive, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=out, key=key)


def _take(key: str) -> torch.Tensor:
    return registry.take(key)["samples"].float()


def _file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_and_the_saved_file_reloads_to_the_returned_model(comfy, arch):
    family, must_hold = EXPECTED[arch]
    g = Graph()
    student, node = _train(g, arch, f"{arch}_sda")
    _sample(g, arch, node[0], "trained")
    _sample(g, arch, student, "base")
    outputs = comfy.run(g.prompt())
    report = outputs[node.id]["text"][0]
    assert "4 of 4 steps done" in report and "memory plan: not made for " + family in report

    path = comfy.folder("loras") / f"{arch}_sda.safetensors"
    tensors, meta = _file(path)
    modules = {k.rsplit(".", 1)[0] for k in tensors}
    assert set(must_hold) <= modules, sorted(modules)[:8]
    assert meta["sda_architecture"] == family
    flow = arch not in ("sdxl", "sdxl_v")
    assert meta["sda_x0_projection"].startswith("x_t - sigma*v" if flow else "x0 = c_skip*x_t - c_out*p"), meta
    assert flow or ("model type " + ("EPS" if arch == "sdxl" else "V_PREDICTION")) in meta["sda_x0_projection"]
    config = json.loads(meta["sda_config"])
    assert len(config["sigmas"]) == 5 and config["sigmas"][-1] == 0.0 and config["scheduler"] == "simple"
    still = sorted(m for m in modules if not tensors[m + ".lokr_w2"].abs().max() > 0)
    assert still == STILL.get(arch, []), "every LoKr's w2 left its zero init but those no gradient reaches"

    g = Graph()
    model = g.add("SDATest_TinyArch", arch=arch, seed=0)
    _sample(g, arch, g.add("LoraLoaderModelOnly", model=model, lora_name=path.name, strength_model=1.0), "comfyui")
    _sample(g, arch, g.add("SDALoKrLoader", model=model, lokr_name=path.name, strength=1.0)[0], "ours")
    comfy.run(g.prompt())
    trained, base, theirs, ours = _take("trained"), _take("base"), _take("comfyui"), _take("ours")
    assert torch.isfinite(trained).all()
    assert (trained - base).abs().max() > 1e-4, "the LoKr changed nothing: the test could not tell"
    torch.testing.assert_close(trained, theirs, rtol=0, atol=2e-5)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def whole_runs(comfy):
    """arch -> (loss history, LoKr tensors) of an uninterrupted 4-step run, trained on first use."""
    runs = {}

    def run(arch: str):
        if arch not in runs:
            g = Graph()
            _train(g, arch, f"{arch}_whole")
            comfy.run(g.prompt())
            runs[arch] = (_checkpoint(comfy, f"{arch}_whole").history,
                          _file(comfy.folder("loras") / f"{arch}_whole.safetensors")[0])
        return runs[arch]

    return run


def _checkpoint(comfy, name: str):
    return load_checkpoint(str(comfy.output_dir / "sda_checkpoints" / f"{name}.ckpt.safetensors"))


def _same_lokr(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_resumed_run_ends_on_the_uninterrupted_runs_lokr(comfy, whole_runs, arch):
    history, lokr = whole_runs(arch)
    g = Graph()
    _train(g, arch, f"{arch}_parts", steps=2)
    comfy.run(g.prompt())
    g = Graph()
    _, node = _train(g, arch, f"{arch}_parts", resume=True)
    outputs = comfy.run(g.prompt())
    assert "resumed from step 2" in outputs[node.id]["text"][0]
    assert [h["total"] for h in _checkpoint(comfy, f"{arch}_parts").history] == [h["total"] for h in history]
    # the 2-step file keeps its name; the resumed run's is numbered
    assert _same_lokr(_file(comfy.folder("loras") / f"{arch}_parts_1.safetensors")[0], lokr)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_checkpointing_trains_the_same_lokr(comfy, whole_runs, arch):
    history, lokr = whole_runs(arch)
    g = Graph()
    _train(g, arch, f"{arch}_checkpointed", gradient_checkpointing=True)
    comfy.run(g.prompt())
    got = _checkpoint(comfy, f"{arch}_checkpointed").history
    assert [h["total"] for h in got] == pytest.approx([h["total"] for h in history], rel=1e-5, abs=1e-7)
    tensors = _file(comfy.folder("loras") / f"{arch}_checkpointed.safetensors")[0]
    assert tensors.keys() == lokr.keys()
    for key in lokr:
        torch.testing.assert_close(tensors[key], lokr[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch, mirror", [("flux_schnell", False), ("qwen_image", True)])
def test_shared_weight_teacher_assistant_and_eval_renders(comfy, whole_runs, lpips_weights, arch, mirror):
    """A teacher that is the student plus an adapter (FLUX.1), or a student that is the teacher plus one (Qwen-Image
    + a Lightning LoRA; here a trained LoKr stands in), runs on the student's weights; the assistant adapter and
    the eval renders (Qwen-Image: 5-D latents through its Wan VAE) work on these models too."""
    whole_runs(arch)
    adapter = f"{arch}_whole.safetensors"
    g = Graph()
    base = g.add("SDATest_TinyArch", arch=arch, seed=0)
    plus = g.add("LoraLoaderModelOnly", model=base, lora_name=adapter, strength_model=1.0)
    student, teacher = (plus, base) if mirror else (base, plus)
    cond = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
    node = g.add("SDATrainLoKr", student=student, teacher=teacher, conditioning=cond, save_name=f"{arch}_shared",
                 assistant_adapter=adapter, vae=g.add("SDATest_TinyArchVAE", arch=arch, seed=0), eval_every=2,
                 eval_seeds=2, **SETTINGS)
    report = comfy.run(g.prompt())[node.id]["text"][0]
    how = "the student's own patches switched off" if mirror else "its own patches switched on"
    assert f"teacher runs on the student's loaded weights ({how} for its forwards)" in report
    assert "eval avg LPIPS: step 0: " in report and ", step 4: " in report
    history = _checkpoint(comfy, f"{arch}_shared").history
    assert len(history) == 4 and not any(h["skipped"] for h in history)


@pytest.mark.parametrize("arch", ["sdxl", "flux_schnell"])
def test_bf16_weights_train_and_reload_to_the_returned_model(comfy, arch):
    """Users' weights are bf16: the training clone computes in fp32 on them, the file loads like any LoRA."""
    g = Graph()
    student, node = _train(g, arch, f"{arch}_bf16", dtype="bf16")
    _sample(g, arch, node[0], "trained")
    _sample(g, arch, student, "base")
    comfy.run(g.prompt())
    g = Graph()
    model = g.add("SDATest_TinyArch", arch=arch, seed=0, dtype="bf16")
    _sample(g, arch, g.add("LoraLoaderModelOnly", model=model, lora_name=f"{arch}_bf16.safetensors",
                           strength_model=1.0), "comfyui")
    comfy.run(g.prompt())
    trained, base, theirs = _take("trained"), _take("base"), _take("comfyui")
    history = _checkpoint(comfy, f"{arch}_bf16").history
    assert len(history) == 4 and not any(h["skipped"] for h in history)
    assert torch.isfinite(trained).all() and (trained - base).abs().max() > 1e-3
    torch.testing.assert_close(trained, theirs, rtol=0, atol=0)


def test_div_skip_beyond_a_short_schedule_is_refused_with_the_value_to_use(comfy):
    g = Graph()
    _train(g, "sd35", "too_far", div_skip=7)
    with pytest.raises(PromptFailed, match=r"div_skip 7: div_skip must lie in 0\.\.4 \(student_steps\); 3 keeps"):
        comfy.run(g.prompt())


@pytest.mark.parametrize("arch, scheduler", [("sdxl", "sgm_uniform"), ("sdxl_v", "simple"), ("flux_schnell", "simple"),
                                             ("sd35", "simple"), ("qwen_image", "simple")])
def test_the_trainers_x_t_is_ksamplers_latent_at_that_step(comfy, arch, scheduler):
    """The loss sees the latents KSampler visits: same sigmas, same noise scaling, same Euler steps."""
    g = Graph()
    model = g.add("SDATest_TinyArch", arch=arch, seed=0)
    cond = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
    g.add("SDATest_TrainingRollout", model=model, conditioning=cond, key="ours", seed=5, steps=4, k=2,
          scheduler=scheduler, size=64)
    latent = g.add("SDATest_TinyArchLatent", arch=arch, batch=1, side=64)
    out = g.add("KSamplerAdvanced", model=model, add_noise="enable", noise_seed=5, steps=4, cfg=1.0,
                sampler_name="euler", scheduler=scheduler, positive=cond, negative=cond, latent_image=latent,
                start_at_step=0, end_at_step=2, return_with_leftover_noise="enable")
    g.add("SDATest_Capture", value=out, key="theirs")
    comfy.run(g.prompt())
    ours, theirs = registry.take("ours"), _take("theirs")
    assert ours.shape == theirs.shape
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_a_teacher_of_another_architecture_is_refused_naming_both(comfy):
    g = Graph()
    student = g.add("SDATest_TinyArch", arch="flux_schnell", seed=0)
    teacher = g.add("SDATest_TinyArch", arch="sd35", seed=1)
    cond = g.add("SDATest_TinyArchConditioning", arch="flux_schnell", seed=1, tokens=8)
    g.add("SDATrainLoKr", student=student, teacher=teacher, conditioning=cond, save_name="mixed", **SETTINGS)
    with pytest.raises(PromptFailed, match=r"model class Flux \(student\) vs SD3 \(teacher\)"):
        comfy.run(g.prompt())
