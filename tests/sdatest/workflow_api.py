"""UI-format workflows (what the frontend saves) to API-format prompts (what it POSTs to /prompt).

The frontend stores a node's widget values positionally (`widgets_values`), in the order it created the
widgets: the node's widget inputs in definition order (required, then optional), plus one extra value
("fixed", "randomize", ...) right after every INT widget that carries a control_after_generate widget.
`widget_slots` states that rule once; `to_api` applies it like the frontend's graphToPrompt: Note nodes,
muted and bypassed nodes are left out, links through a bypassed node go to its matching input.

Node definitions are ComfyUI's own (`node_info`, the shape of GET /object_info), so a workflow whose
values do not line up with the real inputs fails here instead of in a user's browser.
"""
from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

CONTROL = "control_after_generate"
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote"})  # frontend-only nodes: never sent to the server
MODE_MUTED, MODE_BYPASSED = 2, 4
# The core ComfyUI node types the shipped workflows may use: checked in, so the always-tier can tell a
# core type from a typo; the integration tier checks each exists in ComfyUI, the browser tier in the UI.
CORE_TYPES = frozenset({
    "UNETLoader", "CLIPLoader", "VAELoader", "CLIPTextEncode", "ConditioningZeroOut", "EmptySD3LatentImage",
    "ModelSamplingAuraFlow", "KSampler", "VAEDecode", "SaveImage", "PreviewAny", "MarkdownNote", "Note",
})
LEGACY_SEED_NAMES = ("seed", "noise_seed")  # the frontend adds a control widget to these without being asked


REPO = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO / "workflows"


def load_builder() -> ModuleType:
    """scripts/build_workflows.py as a module (its workflow descriptions and `build`)."""
    if "build_workflows" in sys.modules:
        return sys.modules["build_workflows"]
    spec = importlib.util.spec_from_file_location("build_workflows", REPO / "scripts" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


class WorkflowError(ValueError):
    """The workflow does not match the node definitions (wrong widget count, unknown type, dangling link)."""


def node_info(class_type: str) -> dict[str, Any]:
    """The definition GET /object_info serves for one node type (needs ComfyUI's `nodes` imported)."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 node (comfy_api io.ComfyNode)
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {section: list(specs) for section, specs in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
    }


def node_defs(types: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {t: node_info(t) for t in sorted(set(types)) if t not in VIRTUAL_TYPES}


def input_specs(node_def: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, type, options) of every non-hidden input, required then optional, in definition order."""
    out = []
    for section in ("required", "optional"):
        specs = node_def.get("input", {}).get(section, {})
        order = node_def.get("input_order", {}).get(section, list(specs))
        for name in order:
            spec = specs[name]
            kind = "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, options))
    return out


def combo_options(node_def: dict[str, Any], name: str) -> list:
    """The choices of a combo input (V1 lists them first; V3 "COMBO" in options["options"])."""
    for section in ("required", "optional"):
        spec = node_def.get("input", {}).get(section, {}).get(name)
        if spec is not None:
            return list(spec[0]) if isinstance(spec[0], (list, tuple)) else list(spec[1].get("options", []))
    raise KeyError(name)


def is_widget(kind: str, options: dict[str, Any]) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput", False)


def has_control(name: str, kind: str, options: dict[str, Any]) -> bool:
    """Whether the frontend adds a control_after_generate widget (value saved right after this one)."""
    if kind == "INT":
        return bool(options.get(CONTROL, name in LEGACY_SEED_NAMES))
    if kind == "COMBO" and options.get(CONTROL):
        raise NotImplementedError("combo with control_after_generate (the frontend adds two extra widgets)")
    return False


def widget_slots(node_def: dict[str, Any]) -> list[str]:
    """Names of the `widgets_values` positions; a control value shows as CONTROL after its widget."""
    slots = []
    for name, kind, options in input_specs(node_def):
        if is_widget(kind, options):
            slots.append(name)
            if has_control(name, kind, options):
                slots.append(CONTROL)
    return slots


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

# real loader -> test-only node of the same output type, and the widget values it gets
TINY_LOADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "UNETLoader": ("SDATest_TinyZImage", {"seed": 0, "dtype": "fp32"}),
    "VAELoader": ("SDATest_TinyVAE", {"seed": 0}),
    "CLIPTextEncode": ("SDATest_TinyConditioning", {"seed": 0, "tokens": 8}),
}
TINY_DROPPED = ("CLIPLoader",)  # only fed the text encoder the tiny conditioning replaces
TINY_WIDGETS = {"width": 64, "height": 64, "num_seeds": 4}


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


def tiny_variant(workflow: dict[str, Any], node_defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of a UI-format workflow with tiny test-only loaders and 64 px images (node ids kept).

    `node_defs` must hold the test-only node types too (they are loaded by the test hosts only).
    """
    wf = copy.deepcopy(workflow)
    for node in list(wf["nodes"]):
        if node["type"] in TINY_LOADERS:
            tiny_type, values = TINY_LOADERS[node["type"]]
            for inp in node.get("inputs", []):
                if inp.get("link") is not None:
                    _unlink(wf, inp["link"])
            node.update(type=tiny_type, inputs=[], properties={"Node name for S&R": tiny_type},
                        widgets_values=_widget_list(node_defs[tiny_type], values))
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
    from .adapter_files import write_lora, write_sda_lokr, zimage_layout

    b = load_builder()
    placeholders = {b.Z_IMAGE: "diffusion_models", b.TEACHER: "diffusion_models", b.QWEN: "text_encoders",
                    b.AE: "vae"}
    written: dict[str, Path] = {}
    for name, folder in placeholders.items():
        path = models_dir / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        written[name] = path
    shapes = zimage_layout()
    loras = models_dir / "loras"
    written[b.SDA_LOKR] = loras / b.SDA_LOKR
    write_sda_lokr(written[b.SDA_LOKR], shapes, factor=8, seed=11, scale=0.05)
    for seed, name in enumerate((b.STYLE_LORA, b.DISTILL_PATCH, b.TRAINING_ADAPTER, b.DIFFERENTIAL_LORA), start=12):
        written[name] = loras / name
        write_lora(written[name], shapes, rank=4, seed=seed)
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
