"""The adapter nodes on other architectures (tiny SDXL eps/v, FLUX.1-schnell, SD3.5, Qwen-Image from ComfyUI's
own config classes), sampled by KSampler: every file format ComfyUI's LoraLoaderModelOnly applies is applied
identically, and Stack, Invert and Strength by Step work on each.

The files are written in the formats trainers use (kohya, diffusers, LyCORIS, DiffSynth names); their module
names are the ones ComfyUI's own key map lists for the model (picked by a pattern per format) and their
shapes those of the layer (or row slice of a fused layer) ComfyUI maps them to: ComfyUI is the reference.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from sdatest import registry, tiny_archs
from sdatest.adapter_files import write_flux_lora, write_named_adapter
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph

LORA = ("lora_A.weight", "lora_B.weight")
KOHYA = ("lora_down.weight", "lora_up.weight")
ATTN_PROCESSOR = ("_lora.down.weight", "_lora.up.weight")


@dataclass(frozen=True)
class Case:
    arch: str
    fmt: str
    names: str  # a pattern over ComfyUI's key map names: the modules the file adapts
    algo: str = "lora"
    suffixes: tuple[str, str] = LORA
    alpha: float | None = None

    @property
    def file(self) -> str:
        return f"{self.arch}_{re.sub(r'[^a-z0-9]+', '_', self.fmt.lower())}.safetensors"

    def __str__(self) -> str:
        return f"{self.arch}-{self.fmt}"


CASES = [
    Case("sdxl", "kohya LoRA", r"^lora_unet_(input_blocks|middle_block|output_blocks)_.*_(attn[12]_to_(q|k|v|out_0)|ff_net_2)$",
         suffixes=KOHYA, alpha=2.0),
    Case("sdxl", "diffusers LoRA", r"^unet\..*\.processor\.to_(q|k|v|out)$", suffixes=ATTN_PROCESSOR),
    Case("sdxl", "LyCORIS LoKr", r"^lycoris_.*_(attn[12]_to_(q|k|v)|ff_net_2)$", algo="lokr"),
    Case("sdxl_v", "kohya LoRA", r"^lora_unet_(input_blocks|middle_block|output_blocks)_.*_attn[12]_to_(q|v)$",
         suffixes=KOHYA, alpha=8.0),
    Case("flux_schnell", "diffusers LoRA",
         r"^transformer\.(single_)?transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|add_k_proj|to_out\.0)|proj_mlp|proj_out|ff\.net\.2)$"),
    Case("flux_schnell", "kohya LoRA", r"^lora_unet_(double_blocks_\d+_(img|txt)_attn_(qkv|proj)|single_blocks_\d+_linear[12])$",
         suffixes=KOHYA, alpha=4.0),
    Case("flux_schnell", "ai-toolkit LoKr", r"^transformer\.(single_)?transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v)$",
         algo="lokr_lowrank", alpha=2.0),
    Case("flux_schnell", "LyCORIS LoKr", r"^lycoris_(single_)?transformer_blocks_\d+_(attn_to_(q|v)|proj_mlp)$", algo="lokr"),
    Case("sd35", "diffusers LoRA", r"^transformer\.transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|add_q_proj|to_out\.0)|ff\.net\.2)$"),
    Case("sd35", "LyCORIS LoKr", r"^lycoris_transformer_blocks_\d+_attn_(to_q|to_k|to_v|add_v_proj)$", algo="lokr"),
    Case("qwen_image", "diffusers LoRA",
         r"^transformer\.transformer_blocks\.\d+\.(attn\.(to_q|to_k|add_q_proj|to_out\.0)|img_mlp\.net\.(0\.proj|2))$"),
    Case("qwen_image", "DiffSynth LoRA", r"^transformer_blocks\.\d+\.(attn\.(to_v|add_k_proj)|txt_mlp\.net\.2)$",
         suffixes=KOHYA),
    Case("qwen_image", "LyCORIS LoKr", r"^lycoris_transformer_blocks_\d+_attn_(to_q|to_k)$", algo="lokr_lowrank", alpha=4.0),
    # The final modulation (and SD3's last context modulation), which ComfyUI lands with scale and shift swapped.
    Case("flux_schnell", "diffusers LoRA with norm_out", r"^transformer\.(norm_out\.linear|transformer_blocks\.\d+\.attn\.to_q)$"),
    Case("flux_schnell", "LyCORIS LoKr with norm_out", r"^lycoris_(norm_out_linear|single_transformer_blocks_\d+_proj_mlp)$",
         algo="lokr"),
    Case("sd35", "diffusers LoRA with norm_out",
         r"^transformer\.(norm_out\.linear|transformer_blocks\.1\.norm1_context\.linear|transformer_blocks\.\d+\.attn\.to_k)$"),
]
SLICED = {"flux_schnell", "sd35"}  # archs whose diffusers names land on row slices of fused weights


@pytest.fixture(scope="module")
def files(comfy):
    """Every case's file in models/loras, plus which cases land on row slices."""
    loras = comfy.folder("loras")
    sliced = {}
    maps = {}
    for case in CASES:
        if case.arch not in maps:
            maps[case.arch] = tiny_archs.lora_key_map(case.arch)
        key_map, shapes = maps[case.arch]
        modules = tiny_archs.key_map_modules(case.names, key_map, shapes)
        assert len(modules) >= 2, f"{case}: the pattern selects {len(modules)} modules of ComfyUI's key map"
        sliced[str(case)] = any(not isinstance(key_map[n], str) for n in modules)
        write_named_adapter(loras / case.file, modules, algo=case.algo, suffixes=case.suffixes, alpha=case.alpha,
                            seed=len(sliced))
    return sliced


def _inputs(g: Graph, arch: str):
    model = g.add("SDATest_TinyArch", arch=arch, seed=0)
    positive = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
    negative = g.add("SDATest_TinyArchConditioning", arch=arch, seed=2, tokens=8)
    latent = g.add("SDATest_TinyArchLatent", arch=arch, batch=1, side=64)
    return model, positive, negative, latent


def _sample(g: Graph, inputs, model, key: str) -> None:
    _, positive, negative, latent = inputs
    out = g.add("KSampler", model=model, seed=3, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    g.add("SDATest_Capture", value=out, key=key)


def _take(key: str) -> torch.Tensor:
    return registry.take(key)["samples"].float()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_loader_equals_comfyui_lora_loader(comfy, files, case):
    g = Graph()
    inputs = _inputs(g, case.arch)
    model = inputs[0]
    ours = g.add("SDALoKrLoader", model=model, lokr_name=case.file, strength=0.8)
    _sample(g, inputs, ours, "ours")
    _sample(g, inputs, g.add("LoraLoaderModelOnly", model=model, lora_name=case.file, strength_model=0.8), "theirs")
    _sample(g, inputs, model, "base")
    g.add("SDATest_Capture", value=ours[1], key="report")
    comfy.run(g.prompt())
    ours, theirs, base = _take("ours"), _take("theirs"), _take("base")
    report = registry.take("report")
    assert torch.isfinite(ours).all() and (theirs - base).abs().max() > 1e-3, "the adapter changed nothing"
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)
    assert "every key placed" in report
    if case.arch in SLICED and files[str(case)]:
        assert "row slices of fused weights" in report
    if "norm_out" in case.fmt:
        assert re.search(r"\b[12] × modulation \(e\.g\. norm_out\.linear\): scale and shift halves swapped on landing", report)


def _pair(name: str) -> tuple[Case, Case]:
    """Two files for an architecture: its first two cases, or ("<arch>-norm_out") those with norm_out first."""
    arch, _, variant = name.partition("-")
    cases = [c for c in CASES if c.arch == arch]
    if variant:
        cases = [c for c in cases if variant in c.fmt] + [c for c in cases if variant not in c.fmt]
    first, second = cases[:2]
    return first, second


@pytest.mark.parametrize("name", ["sdxl", "flux_schnell", "sd35", "qwen_image", "flux_schnell-norm_out", "sd35-norm_out"])
def test_stack_invert_and_strength_by_step(comfy, files, name):
    a, b = _pair(name)
    arch = a.arch
    g = Graph()
    inputs = _inputs(g, arch)
    model = inputs[0]
    stack = g.add("SDAAdapterStack", model=model, enabled_1=True, lora_1=a.file, strength_1=0.5,
                  enabled_2=True, lora_2=b.file, strength_2=-0.7, enabled_3=False, lora_3="None", strength_3=1.0,
                  enabled_4=False, lora_4="None", strength_4=1.0)
    chain = g.add("LoraLoaderModelOnly", model=model, lora_name=a.file, strength_model=0.5)
    chain = g.add("LoraLoaderModelOnly", model=chain, lora_name=b.file, strength_model=-0.7)
    merged = g.add("LoraLoaderModelOnly", model=model, lora_name=a.file, strength_model=1.0)
    inverted = g.add("SDAInvertTrainingAdapter", model=merged, adapter_name=a.file, strength=1.0, verify=True)
    on = g.add("SDAScheduledAdapter", model=model, lora_name=a.file, strength=0.8, step_strengths="1",
               start_percent=0.0, end_percent=1.0)
    off = g.add("SDAScheduledAdapter", model=model, lora_name=a.file, strength=0.8, step_strengths="0",
                start_percent=0.0, end_percent=1.0)
    loader = g.add("LoraLoaderModelOnly", model=model, lora_name=a.file, strength_model=0.8)
    for key, node in [("stack", stack), ("chain", chain), ("inverted", inverted), ("merged", merged), ("on", on),
                      ("off", off), ("loader", loader), ("base", model)]:
        _sample(g, inputs, node, key)
    g.add("SDATest_Capture", value=inverted[1], key="invert_report")
    comfy.run(g.prompt())
    got = {k: _take(k) for k in ("stack", "chain", "inverted", "merged", "on", "off", "loader", "base")}
    base = got["base"]
    assert (got["merged"] - base).abs().max() > 1e-3 and (got["chain"] - base).abs().max() > 1e-3
    torch.testing.assert_close(got["stack"], got["chain"], rtol=0, atol=2e-5)
    torch.testing.assert_close(got["inverted"], base, rtol=0, atol=2e-5)
    torch.testing.assert_close(got["on"], got["loader"], rtol=0, atol=2e-5)
    assert torch.equal(got["off"], base)
    assert "verify: +1 then −1 restores the weights to within" in registry.take("invert_report")


def _error(comfy, arch: str, file: str) -> str:
    g = Graph()
    model = g.add("SDATest_TinyArch", arch=arch, seed=0)
    g.add("SDATest_Capture", value=g.add("SDALoKrLoader", model=model, lokr_name=file, strength=1.0), key="never")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    return str(info.value)


def test_flux_names_comfyui_does_not_map_on_flux_say_so_not_wrong_model(comfy):
    """A Flux file whose names ComfyUI's map lacks is an unread format, not "an adapter for another model"."""
    write_named_adapter(comfy.folder("loras") / "flux_unread.safetensors",
                        {"model.transformer.double_blocks.0.img_attn.qkv": (192, 64),
                         "model.transformer.double_blocks.0.img_attn.proj": (64, 64)})
    message = _error(comfy, "flux_schnell", "flux_unread.safetensors")
    assert "flux_unread.safetensors: none of its 2 modules matches a layer of FluxSchnell" in message
    assert "its names look like Flux, which FluxSchnell is" in message
    assert "not for FluxSchnell" not in message


def test_flux_lora_on_sdxl_names_both_architectures(comfy):
    write_flux_lora(comfy.folder("loras") / "flux_on_sdxl.safetensors")
    message = _error(comfy, "sdxl", "flux_on_sdxl.safetensors")
    assert "flux_on_sdxl.safetensors: none of its 3 modules matches a layer of SDXL" in message
    assert "it looks like an adapter for Flux, not for SDXL" in message


def test_full_size_flux_lora_on_tiny_flux_is_a_size_mismatch(comfy):
    write_flux_lora(comfy.folder("loras") / "flux_full_size.safetensors")
    message = _error(comfy, "flux_schnell", "flux_full_size.safetensors")
    assert re.search(r"flux_full_size\.safetensors: transformer\.\S+\.lora_A\.weight: the adapter's delta has shape "
                     r"3072×3072 but FluxSchnell layer \S+ rows 0:64 expects 64×64", message)
    assert "different model or model size (its names look like Flux)" in message
