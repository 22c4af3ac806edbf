"""UI-format workflows (what the frontend saves) to API-format prompts (what it POSTs to /prompt).

The widget-order rule (`widget_slots`) is the compiler's (scripts/workflow_compiler.py); `to_api` reads by it
like the frontend's graphToPrompt: Note nodes, muted and bypassed nodes are left out, links through a
bypassed node go to its matching input.

Node definitions are ComfyUI's own (`workflow_compiler.node_defs`, the shape of GET /object_info), so a
workflow whose values do not line up with the real inputs fails here instead of in a user's browser.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import workflow_flows as flows
from workflow_compiler import CONTROL, VIRTUAL_TYPES, input_specs, widget_slots

MODE_MUTED, MODE_BYPASSED = 2, 4
# The core ComfyUI node types the shipped workflows may use: checked in, so the always-tier can tell a
# core type from a typo; the integration tier checks each exists in ComfyUI, the browser tier in the UI.
CORE_TYPES = frozenset({
    "UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "ConditioningZeroOut", "EmptySD3LatentImage",
    "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage", "PreviewAny", "MarkdownNote", "Note",
    "CheckpointLoaderSimple", "DualCLIPLoader", "TripleCLIPLoader", "LoraLoaderModelOnly", "EmptyLatentImage",
})

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO / "workflows"
# The workflows as shipped in 0.1.0, before issue 12 renamed display names and nodes gained inputs: users
# hold copies of these, so they must keep loading (tests/integration/test_workflows.py, tests/e2e/).
SAVED_WORKFLOWS_DIR = REPO / "tests" / "fixtures" / "workflows_0.1.0"


class WorkflowError(ValueError):
    """The workflow does not match the node definitions (wrong widget count, unknown type, dangling link)."""


def combo_options(node_def: dict[str, Any], name: str) -> list:
    """The choices of a combo input (V1 lists them first; V3 "COMBO" in options["options"])."""
    for section in ("required", "optional"):
        spec = node_def.get("input", {}).get(section, {}).get(name)
        if spec is not None:
            return list(spec[0]) if isinstance(spec[0], (list, tuple)) else list(spec[1].get("options", []))
    raise KeyError(name)


def widget_values(node: dict[str, Any], node_def: dict[str, Any]) -> dict[str, Any]:
    """A saved node's widget values by input name (control values dropped), or WorkflowError."""
    values = node.get("widgets_values") or []
    slots = widget_slots(node_def)
    if not isinstance(values, list) or len(values) != len(slots):
        raise WorkflowError(f"node {node['id']} ({node['type']}): widgets_values {values!r} do not match "
                            f"the widgets {slots}")
    return {name: value for name, value in zip(slots, values) if name != CONTROL}


def control_values(node: dict[str, Any], node_def: dict[str, Any]) -> dict[str, str]:
    """The control_after_generate value saved for each widget that has one."""
    slots = widget_slots(node_def)
    values = node.get("widgets_values") or []
    return {slots[i - 1]: values[i] for i, name in enumerate(slots) if name == CONTROL}


def as_loaded(workflow: dict[str, Any], node_defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A saved workflow as the frontend loads it into today's nodes: saved widget values fill the widgets in
    order and widgets added since keep their defaults (a control widget "fixed"); more values than widgets
    is a WorkflowError, since the frontend would drop some. Node ids, links and inputs stay as saved."""
    wf = copy.deepcopy(workflow)
    for node in wf["nodes"]:
        if node["type"] in VIRTUAL_TYPES:
            continue
        node_def = node_defs[node["type"]]
        saved, slots = list(node.get("widgets_values") or []), widget_slots(node_def)
        if len(saved) > len(slots):
            raise WorkflowError(f"node {node['id']} ({node['type']}): {len(saved)} saved widget values for "
                                f"{len(slots)} widgets {slots}")
        node["widgets_values"] = saved + _widget_list(node_def, {})[len(saved):]
    return wf


def _is_sent(node: dict[str, Any]) -> bool:
    return node["type"] not in VIRTUAL_TYPES and node.get("mode", 0) not in (MODE_MUTED, MODE_BYPASSED)


def to_api(workflow: dict[str, Any], node_defs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The API-format prompt the frontend would queue for `workflow`."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id: int) -> list | None:
        _, origin_id, origin_slot, _, _, kind = links[link_id]
        origin = nodes[origin_id]
        if origin.get("mode", 0) == MODE_BYPASSED:
            # The frontend passes a bypassed node's input of the same type through (same slot first).
            candidates = list(origin.get("inputs", []))
            if origin_slot < len(candidates):
                candidates.insert(0, candidates[origin_slot])
            for inp in candidates:
                if inp.get("link") is not None and inp["type"] == kind:
                    return source(inp["link"])
            return None
        return [str(origin_id), origin_slot] if _is_sent(origin) else None

    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if not _is_sent(node):
            continue
        if node["type"] not in node_defs:
            raise WorkflowError(f"node {node['id']}: unknown node type {node['type']!r}")
        node_def = node_defs[node["type"]]
        inputs: dict[str, Any] = widget_values(node, node_def)
        for inp in node.get("inputs", []):
            if inp.get("link") is not None:
                if inp["link"] not in links:
                    raise WorkflowError(f"node {node['id']}: input {inp['name']} has unknown link {inp['link']}")
                linked = source(inp["link"])
                if linked is not None:
                    inputs[inp["name"]] = linked
                else:
                    inputs.pop(inp["name"], None)
        title = node.get("title") or node_def.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


# --- tiny-model variants: the shipped workflows, runnable on a CPU in seconds ---------------------------

# real loader -> test-only node of the same output type, and the widget values it gets (Z-Image workflows)
TINY_LOADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "UNETLoader": ("SDATest_TinyZImage", {"seed": 0, "dtype": "fp32"}),
    "VAELoader": ("SDATest_TinyVAE", {"seed": 0}),
    "CLIPTextEncode": ("SDATest_TinyConditioning", {"seed": 0, "tokens": 8}),
}
TINY_DROPPED = ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader")  # only feed the text encoders replaced
TINY_WIDGETS = {"width": 64, "height": 64, "num_seeds": 4}
# The other families' seed-grid workflows and the tiny architecture (tests/sdatest/tiny_archs.py) each runs on.
FAMILY_ARCHS = {"seed_grid_sdxl": ("sdxl", "sdxl_v"), "seed_grid_flux": ("flux_schnell",),
                "seed_grid_sd35": ("sd35",), "seed_grid_qwen_image": ("qwen_image",)}
TINY_ARCH_TYPES = ("SDATest_TinyArch", "SDATest_TinyArchVAE", "SDATest_TinyArchConditioning")


def _tiny_sources(arch: str | None) -> dict[str, dict[str, tuple[str, dict[str, Any]]]]:
    """real node type -> {output type it feeds on: the test-only node that makes it instead}."""
    if arch is None:
        return {real: {"MODEL" if real == "UNETLoader" else "VAE" if real == "VAELoader" else "CONDITIONING": tiny}
                for real, tiny in TINY_LOADERS.items()}
    model = ("SDATest_TinyArch", {"arch": arch, "seed": 0})
    vae = ("SDATest_TinyArchVAE", {"arch": arch, "seed": 0})
    conditioning = ("SDATest_TinyArchConditioning", {"arch": arch, "seed": 0, "tokens": 8})
    return {"UNETLoader": {"MODEL": model}, "VAELoader": {"VAE": vae}, "CLIPTextEncode": {"CONDITIONING": conditioning},
            "CheckpointLoaderSimple": {"MODEL": model, "VAE": vae}}


def _widget_list(node_def: dict[str, Any], values: dict[str, Any]) -> list[Any]:
    """widgets_values for `values` by name; other widgets at their defaults, control widgets "fixed"."""
    defaults = {name: options.get("default") for name, _, options in input_specs(node_def)}
    return ["fixed" if name == CONTROL else values.get(name, defaults[name]) for name in widget_slots(node_def)]


def set_widget(node: dict[str, Any], node_def: dict[str, Any], name: str, value: Any) -> None:
    slots = widget_slots(node_def)
    node["widgets_values"][slots.index(name)] = value


def _unlink(workflow: dict[str, Any], link_id: int) -> None:
    link = next(link for link in workflow["links"] if link[0] == link_id)
    workflow["links"].remove(link)
    for node in workflow["nodes"]:
        for out in node.get("outputs", []):
            if out.get("links") and link_id in out["links"]:
                out["links"].remove(link_id)
        for inp in node.get("inputs", []):
            if inp.get("link") == link_id:
                inp["link"] = None


def _replace_outputs(wf: dict[str, Any], node: dict[str, Any], sources: dict[str, tuple[str, dict[str, Any]]],
                     node_defs: dict[str, dict[str, Any]]) -> None:
    """Put test-only nodes in place of `node`: the first replaced output keeps its node id, each further one
    (a checkpoint's VAE) becomes a new node its links move to; outputs with no replacement are unlinked."""
    for inp in node.get("inputs", []):
        if inp.get("link") is not None:
            _unlink(wf, inp["link"])
    outputs = node.get("outputs", [])
    replaced = [o for o in outputs if o["type"] in sources and o.get("links")] or \
        [o for o in outputs if o["type"] in sources][:1]  # an unconnected loader still becomes its tiny node
    made: list[dict[str, Any]] = []
    for out in outputs:
        links = list(out.get("links") or [])
        if out not in replaced:
            for link_id in links:
                _unlink(wf, link_id)
            continue
        tiny_type, values = sources[out["type"]]
        tiny = {"id": node["id"] if not made else wf["last_node_id"] + 1, "type": tiny_type, "pos": list(node["pos"]),
                "size": list(node["size"]), "flags": {}, "order": node["order"], "mode": node["mode"], "inputs": [],
                "outputs": [{"name": out["name"], "type": out["type"], "links": links, "slot_index": 0}],
                "properties": {"Node name for S&R": tiny_type},
                "widgets_values": _widget_list(node_defs[tiny_type], values)}
        if "title" in node:
            tiny["title"] = node["title"]
        if made:
            wf["last_node_id"] = tiny["id"]
            tiny["pos"][1] += 60 * len(made)
        for link in wf["links"]:
            if link[0] in links:
                link[1], link[2] = tiny["id"], 0
        made.append(tiny)
    at = wf["nodes"].index(node)
    wf["nodes"][at:at + 1] = made


def tiny_variant(workflow: dict[str, Any], node_defs: dict[str, dict[str, Any]], arch: str | None = None) -> dict[str, Any]:
    """A copy of a UI-format workflow with tiny test-only models and 64 px images (node ids kept).

    `arch` None: a Z-Image workflow (tiny Z-Image); else the tiny model of that architecture (tiny_archs.ARCHS)
    in place of the file loaders, a checkpoint's MODEL and VAE each by its own test-only node.
    `node_defs` must hold the test-only node types too (they are loaded by the test hosts only).
    """
    wf = copy.deepcopy(workflow)
    sources = _tiny_sources(arch)
    for node in list(wf["nodes"]):
        if node["type"] in sources:
            _replace_outputs(wf, node, sources[node["type"]], node_defs)
        elif node["type"] in TINY_DROPPED:
            for out in node.get("outputs", []):
                for link_id in list(out.get("links") or []):
                    _unlink(wf, link_id)
            wf["nodes"].remove(node)
        elif node["type"] not in VIRTUAL_TYPES:
            defn = node_defs[node["type"]]
            for name, value in TINY_WIDGETS.items():
                if name in widget_slots(defn):
                    set_widget(node, defn, name, value)
    return wf


def write_tiny_model_files(models_dir: Path) -> dict[str, Path]:
    """Every file the shipped workflows name, under `models_dir` (ComfyUI's models/ layout):
    empty placeholders for the big models (validation only checks names; the tiny variants do not load
    them), real tiny adapters shaped for the tiny Z-Image, and a random-weight AlexNet for LPIPS (never
    downloaded; its scores mean nothing, which is fine for a smoke run)."""
    from .adapter_files import write_lora, write_named_adapter, write_sda_lokr, zimage_layout

    placeholders = {flows.Z_IMAGE: "diffusion_models", flows.TEACHER: "diffusion_models",
                    flows.QWEN: "text_encoders", flows.AE: "vae"}
    placeholders.update({f.name: f.folder for files in (*flows.FAMILY_FILES.values(), flows.SDXL_TRAINING_FILES)
                         for f in files if f.folder != "loras"})
    written: dict[str, Path] = {}
    for name, folder in placeholders.items():
        path = models_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        written[name] = path
    shapes = zimage_layout()
    loras = models_dir / "loras"
    written[flows.SDA_LOKR] = loras / flows.SDA_LOKR
    write_sda_lokr(written[flows.SDA_LOKR], shapes, factor=8, seed=11, scale=0.05)
    for seed, name in enumerate((flows.STYLE_LORA, flows.DISTILL_PATCH, flows.TRAINING_ADAPTER,
                                 flows.DIFFERENTIAL_LORA), start=12):
        written[name] = loras / name
        write_lora(written[name], shapes, rank=4, seed=seed)
    lightning = next(f.name for f in flows.FAMILY_FILES["qwen_image"] if f.folder == "loras")
    written[lightning] = loras / lightning  # a LoRA for the tiny Qwen-Image (tiny_archs), bare diffusers names
    write_named_adapter(written[lightning], {f"transformer_blocks.{i}.attn.{m}": (64, 64) for i in range(2)
                                             for m in ("to_q", "to_k", "to_v", "to_out.0")},
                        suffixes=("lora_down.weight", "lora_up.weight"), rank=4, seed=17)
    sdxl_lora = next(f.name for f in flows.SDXL_TRAINING_FILES if f.folder == "loras")
    written[sdxl_lora] = loras / sdxl_lora  # a kohya LoRA for the tiny SDXL (tiny_archs): its self-attention q, v
    write_named_adapter(written[sdxl_lora], {f"lora_unet_{block}_transformer_blocks_0_attn1_to_{m}": (128, 128)
                                             for block in ("input_blocks_3_1", "middle_block_1", "output_blocks_0_1",
                                                           "output_blocks_1_1") for m in ("q", "v")},
                        suffixes=("lora_down.weight", "lora_up.weight"), rank=4, seed=18)
    written["lpips"] = models_dir / "lpips" / "alexnet.safetensors"
    _write_random_alexnet(written["lpips"])
    return written


def _write_random_alexnet(path: Path) -> None:
    """torchvision's AlexNet `features.*` keys and shapes with seeded random weights."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # seeded, without touching the caller's random state
        torch.manual_seed(0)
        state = torchvision.models.alexnet(weights=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items() if k.startswith("features.")}, str(path))
