"""Every node the pack registers, on every architecture it is meant for: tiny random-weight SDXL (eps and v),
FLUX.1-schnell, SD3.5, Qwen-Image (5-D latents) and Z-Image, each node in an API-format prompt through
ComfyUI's validation and executor, checked against ComfyUI's own nodes where one does the same thing
(LoraLoaderModelOnly, KSampler, KSamplerAdvanced) and otherwise for shapes, finite values and a real effect.

The node list is read from nodes/registry.py, so a node added later fails here, by name, until it has a
recipe (or a reason to be left out). Every node serves every architecture; what cannot work is a mix of them
(an adapter of another family, an early model of another latent space), and those errors must name both.
"""
from __future__ import annotations

import json
import math
from typing import Callable

import pytest
import torch

from sdatest import registry, tiny_archs
from sdatest.adapter_files import write_named_adapter
from sdatest.comfy_host import PromptFailed
from sdatest.graph import Graph, Node
from sdatest.pack_source import registered_node_ids

pytestmark = pytest.mark.usefixtures("one_thread")

# SDA Train LoKr trains per architecture: its own tests (tests/integration/test_training_*.py) cover it.
LEFT_OUT = {"SDATrainLoKr"}
ARCHS = tiny_archs.EVERY_ARCH
SIZE = 64  # pixels (the grid's least): an 8×8 latent, 4×4 patches for the transformers
STEPS = 2
SEEDS = (3, 40)
CLOSE = dict(rtol=1e-6, atol=2e-5)  # two ways of patching the same weights, sampled: float rounding only
# Modules of each architecture the test adapters change, by ComfyUI's own key names (`diffusion_model.` + the
# parameter), which every loader reads: attention and MLP matrices, fused ones whole.
ADAPTED = {
    "sdxl": r"^diffusion_model\..*transformer_blocks\.\d+\.(attn1\.to_q|attn2\.to_k|ff\.net\.2)$",
    "sdxl_v": r"^diffusion_model\..*transformer_blocks\.\d+\.(attn1\.to_v|attn2\.to_q)$",
    "flux_schnell": r"^diffusion_model\.(double_blocks\.\d+\.(img_attn\.qkv|txt_mlp\.2)|single_blocks\.\d+\.linear2)$",
    "sd35": r"^diffusion_model\.joint_blocks\.\d+\.(x_block\.attn\.qkv|context_block\.mlp\.fc2)$",
    "qwen_image": r"^diffusion_model\.transformer_blocks\.\d+\.(attn\.(to_q|add_k_proj)|img_mlp\.net\.2)$",
    "zimage": r"^diffusion_model\.layers\.\d+\.(attention\.qkv|feed_forward\.w2)$",
}


def _file(arch: str, which: str) -> str:
    return f"every_node_{arch}_{which}.safetensors"


@pytest.fixture(scope="module")
def adapters(comfy):
    """Two adapters per architecture in models/loras: "a" a LoRA, "b" a LoKr, on the modules of ADAPTED."""
    for arch in ARCHS:
        key_map, shapes = tiny_archs.lora_key_map(arch)
        modules = tiny_archs.key_map_modules(ADAPTED[arch], key_map, shapes)
        assert len(modules) >= 2, f"{arch}: ADAPTED selects {sorted(modules)} of ComfyUI's key map"
        write_named_adapter(comfy.folder("loras") / _file(arch, "a"), modules, algo="lora", seed=1)
        write_named_adapter(comfy.folder("loras") / _file(arch, "b"), modules, algo="lokr", seed=2)


class Cell:
    """One node on one architecture: the graph around it, and what to check once it ran."""

    def __init__(self, arch: str):
        self.arch = arch
        self.g = Graph()
        g = self.g
        self.model = g.add("SDATest_TinyArch", arch=arch, seed=0)
        self.positive = g.add("SDATest_TinyArchConditioning", arch=arch, seed=1, tokens=8)
        self.negative = g.add("SDATest_TinyArchConditioning", arch=arch, seed=2, tokens=8)
        self.vae = g.add("SDATest_TinyArchVAE", arch=arch, seed=0)
        self.checks: list[Callable[[], None]] = []

    def latent(self, batch: int = 1) -> Node:
        return self.g.add("SDATest_TinyArchLatent", arch=self.arch, batch=batch, side=SIZE)

    def sample(self, model: Node, key: str | None, *, seed: int = SEEDS[0], batch: int = 1, cfg: float = 1.0) -> Node:
        """KSampler's latent, captured under `key` (None: only wired on)."""
        out = self.g.add("KSampler", model=model, seed=seed, steps=STEPS, cfg=cfg, sampler_name="euler",
                         scheduler="simple", positive=self.positive, negative=self.negative,
                         latent_image=self.latent(batch), denoise=1.0)
        if key is not None:
            self.g.add("SDATest_Capture", value=out, key=key)
        return out

    def capture(self, output: list, key: str) -> None:
        self.g.add("SDATest_Capture", value=output, key=key)

    def grid(self, model: Node, label: str, **extra) -> Node:
        return self.g.add("SDASeedDiversityGrid", model=model, positive=self.positive, negative=self.negative,
                          vae=self.vae, width=SIZE, height=SIZE, seed=0, num_seeds=len(SEEDS),
                          seed_list=",".join(map(str, SEEDS)), steps=STEPS, cfg=1.0, sampler_name="euler",
                          scheduler="simple", batch_size=len(SEEDS), label=label, lpips_net="alex",
                          lpips_size="short side 256", **extra)

    def then(self, check: Callable[[], None]) -> None:
        self.checks.append(check)


def _latent(key: str) -> torch.Tensor:
    return registry.take(key)["samples"].float()


def _differs(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.isfinite(a).all(), f"{what}: not finite"
    assert (a - b).abs().max() > 1e-3, f"{what}: no change"


# -- the recipes: one per node ---------------------------------------------------------------------------------

def loader(c: Cell) -> None:
    ours = c.g.add("SDALoKrLoader", model=c.model, lokr_name=_file(c.arch, "a"), strength=0.8)
    c.capture(ours[1], "report")
    c.sample(ours, "ours")
    c.sample(c.g.add("LoraLoaderModelOnly", model=c.model, lora_name=_file(c.arch, "a"), strength_model=0.8), "theirs")
    c.sample(c.model, "base")

    def check():
        ours, theirs = _latent("ours"), _latent("theirs")
        _differs(theirs, _latent("base"), "LoraLoaderModelOnly")
        torch.testing.assert_close(ours, theirs, **CLOSE)
        assert "every key placed" in registry.take("report")
    c.then(check)


def stack(c: Cell) -> None:
    a, b = _file(c.arch, "a"), _file(c.arch, "b")
    ours = c.g.add("SDAAdapterStack", model=c.model, enabled_1=True, lora_1=a, strength_1=0.5, enabled_2=True,
                   lora_2=b, strength_2=-0.7, enabled_3=False, lora_3="None", strength_3=1.0, enabled_4=False,
                   lora_4="None", strength_4=1.0)
    c.capture(ours[1], "stack")
    chain = c.g.add("LoraLoaderModelOnly", model=c.model, lora_name=a, strength_model=0.5)
    chain = c.g.add("LoraLoaderModelOnly", model=chain, lora_name=b, strength_model=-0.7)
    c.sample(ours, "ours")
    c.sample(chain, "chain")
    c.sample(c.model, "base")

    def check():
        ours, chain = _latent("ours"), _latent("chain")
        _differs(chain, _latent("base"), "two chained LoraLoaderModelOnly")
        torch.testing.assert_close(ours, chain, **CLOSE)
        assert [name for name, *_ in registry.take("stack")] == [a, b]
    c.then(check)


def invert(c: Cell) -> None:
    merged = c.g.add("LoraLoaderModelOnly", model=c.model, lora_name=_file(c.arch, "b"), strength_model=1.0)
    inverted = c.g.add("SDAInvertTrainingAdapter", model=merged, adapter_name=_file(c.arch, "b"), strength=1.0,
                       verify=True)
    c.capture(inverted[1], "report")
    c.sample(merged, "merged")
    c.sample(inverted, "inverted")
    c.sample(c.model, "base")

    def check():
        base = _latent("base")
        _differs(_latent("merged"), base, "the merged adapter")
        torch.testing.assert_close(_latent("inverted"), base, **CLOSE)
        assert "verify: +1 then −1 restores the weights to within" in registry.take("report")
    c.then(check)


def by_step_adapter(c: Cell) -> None:
    def scheduled(steps: str) -> Node:
        return c.g.add("SDAScheduledAdapter", model=c.model, lora_name=_file(c.arch, "a"), strength=0.8,
                       step_strengths=steps, start_percent=0.0, end_percent=1.0)

    c.sample(scheduled("1"), "on")
    c.sample(scheduled("0"), "off")
    c.sample(c.g.add("LoraLoaderModelOnly", model=c.model, lora_name=_file(c.arch, "a"), strength_model=0.8), "loader")
    c.sample(c.model, "base")

    def check():
        base, loader = _latent("base"), _latent("loader")
        _differs(loader, base, "LoraLoaderModelOnly")
        torch.testing.assert_close(_latent("on"), loader, **CLOSE)
        assert torch.equal(_latent("off"), base)
    c.then(check)


def grid(c: Cell) -> None:
    """The grid with the CLIP score's towers connected: image k is KSampler's image for seed k."""
    clip = c.g.add("SDATest_TinyCLIPText", seed=4, width=32, kind="clip_l")
    vision = c.g.add("SDATest_TinyCLIPVision", seed=4, projection_dim=32)
    node = c.grid(c.model, "every arch", clip_score_clip=clip, clip_vision=vision, clip_score_prompt="a red fox")
    for index, name in enumerate(("grid", "images", "avg_lpips", "pixel_std", "report")):
        c.capture(node[index], name)
    c.capture(c.g.add("VAEDecode", samples=c.sample(c.model, None, seed=SEEDS[1]), vae=c.vae), "ks")

    def check():
        images, reference = registry.take("images"), registry.take("ks")
        assert images.shape == (len(SEEDS), SIZE, SIZE, 3) and reference.shape == (1, SIZE, SIZE, 3)
        torch.testing.assert_close(images[1], reference[0], rtol=0, atol=2e-4)
        _differs(images[0], images[1], "two seeds")
        grid = registry.take("grid")
        assert grid.dim() == 4 and grid.shape[0] == 1 and grid.shape[2] >= len(SEEDS) * SIZE and torch.isfinite(grid).all()
        report = json.loads(registry.take("report"))
        assert report["scores"]["avg_lpips"] == pytest.approx(registry.take("avg_lpips"), abs=1e-9)
        assert math.isfinite(report["scores"]["avg_lpips"]) and 0 <= registry.take("pixel_std") <= 0.5
        assert 0 <= report["clip_score"]["mean"] <= 100
    c.then(check)


def compare(c: Cell) -> None:
    adapted = c.g.add("SDALoKrLoader", model=c.model, lokr_name=_file(c.arch, "a"), strength=1.0)
    first, second = c.grid(c.model, "plain"), c.grid(adapted, "adapted")
    out = c.g.add("SDADiversityCompare", result_1=first[5], result_2=second[5], baseline="1", teacher="none")
    c.capture(out[0], "image")
    c.capture(out[1], "table")

    def check():
        image, table = registry.take("image"), registry.take("table")
        assert image.dim() == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and torch.isfinite(image).all()
        assert image.shape[1] >= 2 * SIZE and "plain" in table and "adapted" in table
    c.then(check)


def lpips_score(c: Cell) -> None:
    decoded = c.g.add("VAEDecode", samples=c.sample(c.model, None, batch=2), vae=c.vae)
    score = c.g.add("SDALPIPSScore", images=decoded, lpips_net="alex", lpips_size="short side 256")
    for index, name in enumerate(("avg_lpips", "pixel_std", "heatmap", "report")):
        c.capture(score[index], name)

    def check():
        avg, report = registry.take("avg_lpips"), json.loads(registry.take("report"))
        assert math.isfinite(avg) and avg > 0 and report["scores"]["avg_lpips"] == pytest.approx(avg, abs=1e-9)
        heatmap = registry.take("heatmap")
        assert heatmap.dim() == 4 and heatmap.shape[-1] == 3 and torch.isfinite(heatmap).all()
        assert 0 <= registry.take("pixel_std") <= 0.5
    c.then(check)


def _positive_edit(node_id: str, on: dict, off: dict) -> Callable[[Cell], None]:
    """A method that edits the positive prompt embedding: switched off it gives the base images exactly; on, it
    changes every image of a batch by a real part of what another prompt changes (tiny random models hardly
    listen to their prompt: another prompt moves their latents by 1e-4 to 1e-2 of their size)."""

    def recipe(c: Cell) -> None:
        c.sample(c.g.add(node_id, model=c.model, **on), "on", batch=2, cfg=2.0)
        c.sample(c.g.add(node_id, model=c.model, **off), "off", batch=2, cfg=2.0)
        c.sample(c.model, "base", batch=2, cfg=2.0)
        c.positive = c.g.add("SDATest_TinyArchConditioning", arch=c.arch, seed=7, tokens=8)
        c.sample(c.model, "other prompt", batch=2, cfg=2.0)

        def check():
            base, edited, other = _latent("base"), _latent("on"), _latent("other prompt")
            assert torch.equal(_latent("off"), base), f"{node_id} switched off changed the images"
            assert torch.isfinite(edited).all()
            for row in range(2):
                change, prompt_change = (edited[row] - base[row]).abs().max(), (other[row] - base[row]).abs().max()
                assert change > 0.01 * prompt_change and change > 1e-6 * base[row].abs().max(), (
                    f"{node_id} changed image {row} by {change:.3g} (another prompt: {prompt_change:.3g})")
        c.then(check)

    return recipe


def model_by_step(c: Cell) -> None:
    """The early model on step 1 of 2 equals two chained KSamplerAdvanced."""
    early = c.g.add("SDATest_TinyArch", arch=c.arch, seed=1)
    by_step = c.g.add("SDAModelByStep", model=c.model, model_early=early, cfg_early=1.0, start_percent=0.0,
                      end_percent=0.5)
    c.sample(by_step, "by_step")
    c.sample(c.model, "base")
    common = dict(noise_seed=SEEDS[0], steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=c.positive, negative=c.negative)
    x = c.g.add("KSamplerAdvanced", model=early, add_noise="enable", latent_image=c.latent(), start_at_step=0,
                end_at_step=1, return_with_leftover_noise="enable", **common)
    x = c.g.add("KSamplerAdvanced", model=c.model, add_noise="disable", latent_image=x, start_at_step=1,
                end_at_step=10000, return_with_leftover_noise="disable", **common)
    c.capture(x, "chained")

    def check():
        chained = _latent("chained")
        _differs(chained, _latent("base"), "the early model")
        torch.testing.assert_close(_latent("by_step"), chained, **CLOSE)
    c.then(check)


RECIPES: dict[str, Callable[[Cell], None]] = {
    "SDALoKrLoader": loader,
    "SDAAdapterStack": stack,
    "SDAInvertTrainingAdapter": invert,
    "SDAScheduledAdapter": by_step_adapter,
    "SDASeedDiversityGrid": grid,
    "SDADiversityCompare": compare,
    "SDALPIPSScore": lpips_score,
    "SDAConditioningNoise": _positive_edit("SDAConditioningNoise",
                                           dict(strength=0.8, start_percent=0.0, end_percent=1.0, protect_tokens=0),
                                           dict(strength=0.0, start_percent=0.0, end_percent=1.0, protect_tokens=0)),
    "SDAConditionAnnealing": _positive_edit("SDAConditionAnnealing",
                                            dict(tau1=0.3, tau2=0.9, noise_scale=0.5, psi=1.0),
                                            dict(tau1=0.3, tau2=0.9, noise_scale=0.0, psi=1.0)),
    "SDAModelByStep": model_by_step,
}
NODE_IDS = sorted(registered_node_ids() - LEFT_OUT)


def test_every_registered_node_has_a_recipe_here():
    """A node added to nodes/registry.py fails here until it runs on every architecture (or is left out, why)."""
    missing = [node_id for node_id in NODE_IDS if node_id not in RECIPES]
    assert not missing, f"nodes with no recipe in this module: {missing}"
    assert not set(RECIPES) - set(NODE_IDS), f"recipes for nodes the pack no longer registers: {set(RECIPES) - set(NODE_IDS)}"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("node_id", NODE_IDS)
def test_node_runs_on_architecture(comfy, adapters, lpips_weights, node_id, arch):
    if node_id not in RECIPES:
        pytest.fail(f"{node_id} is registered by the pack but has no recipe in this module")
    cell = Cell(arch)
    RECIPES[node_id](cell)
    registry.CAPTURED.clear()
    comfy.run(cell.g.prompt())
    for check in cell.checks:
        check()
    assert not registry.CAPTURED, f"captured but never checked: {sorted(registry.CAPTURED)}"


# -- the error cells: another architecture's adapter or early model ----------------------------------------------

# How the nodes name each tiny model (ComfyUI's config class; Z-Image by its own name) and what a file of each
# architecture, in ComfyUI's `diffusion_model.` names, looks like to them.
MODEL_NAME = {"sdxl": "SDXL", "sdxl_v": "SDXL", "flux_schnell": "FluxSchnell", "sd35": "SD3",
              "qwen_image": "QwenImage", "zimage": "Z-Image"}
FILE_LOOKS_LIKE = {"sdxl": "SD1.x/SDXL (UNet)", "sdxl_v": "SD1.x/SDXL (UNet)", "flux_schnell": "Flux",
                   "sd35": "SD3", "qwen_image": "Qwen-Image", "zimage": "Lumina 2 / Z-Image"}
ADAPTER_NODES = {
    "SDALoKrLoader": lambda model, file: dict(model=model, lokr_name=file, strength=1.0),
    "SDAAdapterStack": lambda model, file: dict(model=model, enabled_1=True, lora_1=file, strength_1=1.0,
                                                **{f"{k}_{i}": v for i in (2, 3, 4) for k, v in
                                                   (("enabled", False), ("lora", "None"), ("strength", 1.0))}),
    "SDAInvertTrainingAdapter": lambda model, file: dict(model=model, adapter_name=file, strength=1.0, verify=True),
    "SDAScheduledAdapter": lambda model, file: dict(model=model, lora_name=file, strength=1.0, step_strengths="1",
                                                    start_percent=0.0, end_percent=1.0),
}


def _foreign(arch: str) -> str:
    """An architecture of another family than `arch`'s (two along in ARCHS, whose SDXL pair sits together)."""
    return ARCHS[(ARCHS.index(arch) + 2) % len(ARCHS)]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("node_id", sorted(ADAPTER_NODES))
def test_adapter_nodes_refuse_another_architectures_file_naming_both(comfy, adapters, node_id, arch):
    other = _foreign(arch)
    assert tiny_archs.FAMILY[other] != tiny_archs.FAMILY[arch]
    g = Graph()
    model = g.add("SDATest_TinyArch", arch=arch, seed=0)
    g.add("SDATest_Capture", value=g.add(node_id, **ADAPTER_NODES[node_id](model, _file(other, "a")))[0], key="never")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    message = str(info.value)
    assert f"{_file(other, 'a')}: none of its" in message and f"matches a layer of {MODEL_NAME[arch]}" in message
    assert f"it looks like an adapter for {FILE_LOOKS_LIKE[other]}, not for {MODEL_NAME[arch]}" in message
    registry.CAPTURED.clear()


@pytest.mark.parametrize("arch", ARCHS)
def test_model_by_step_refuses_an_early_model_of_another_latent_space_naming_both(comfy, arch):
    other = _foreign(arch)
    g = Graph()
    model, early = g.add("SDATest_TinyArch", arch=arch, seed=0), g.add("SDATest_TinyArch", arch=other, seed=1)
    by_step = g.add("SDAModelByStep", model=model, model_early=early, cfg_early=1.0, start_percent=0.0, end_percent=0.5)
    g.add("SDATest_Capture", value=by_step[0], key="never")
    with pytest.raises(PromptFailed) as info:
        comfy.run(g.prompt())
    assert (f"SDA Model by Step: model_early is {MODEL_NAME[other]} (latent format" in str(info.value)
            and f"but model is {MODEL_NAME[arch]} (" in str(info.value)
            and "the two models must share one latent space" in str(info.value))
    registry.CAPTURED.clear()
