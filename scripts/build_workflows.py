"""Generate workflows/*.json (ComfyUI's UI format, for drag-in and the template browser). Dev tool.

Each workflow is described below by node, with widget values BY NAME and links by (node key, output).
The positional `widgets_values` the frontend expects are derived from ComfyUI's own node definitions
(tests/sdatest/workflow_api.py states the ordering rule), so this script boots ComfyUI in-process:

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py          # write workflows/
    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py --check  # exit 1 if any file is stale

A workflow whose node types are not registered (yet) is skipped with a message. The tests rebuild every
workflow and compare it with the file (tests/integration/test_workflows.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS_DIR = REPO / "workflows"
sys.path.insert(0, str(REPO / "tests"))  # sdatest (the widget-order rule and the in-process ComfyUI host)
sys.path.append(str(REPO))  # headless.runtime, which the host builds on (last: the repo's `nodes` must not shadow ComfyUI's)

from sdatest.workflow_api import CONTROL, VIRTUAL_TYPES, input_specs, is_widget, widget_slots  # noqa: E402

# Model files, named as in ComfyUI's own Z-Image-Turbo example.
Z_IMAGE = "z_image_turbo_bf16.safetensors"
QWEN = "qwen_3_4b.safetensors"
AE = "ae.safetensors"
# Adapters in models/loras. The SDA LoKr and the training adapter are named plausibly: rename to your file.
SDA_LOKR = "z_image_turbo_sda_lokr.safetensors"
STYLE_LORA = "pixel_art_style_z_image_turbo.safetensors"  # the style LoRA of ComfyUI's Z-Image LoRA example
DISTILL_PATCH = "z_image_turbo_distill_patch_lora_bf16.safetensors"
TRAINING_ADAPTER = "zimage_turbo_training_adapter_v2.safetensors"
DIFFERENTIAL_LORA = "my_differential_lora.safetensors"
TEACHER = "z_image_bf16.safetensors"  # the many-step (non-distilled) Z-Image, in models/diffusion_models

HF = "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files"
MODEL_LINKS = {  # the frontend offers these downloads when the files are missing (node property "models")
    Z_IMAGE: {"name": Z_IMAGE, "url": f"{HF}/diffusion_models/{Z_IMAGE}", "directory": "diffusion_models"},
    QWEN: {"name": QWEN, "url": f"{HF}/text_encoders/{QWEN}", "directory": "text_encoders"},
    AE: {"name": AE, "url": f"{HF}/vae/{AE}", "directory": "vae"},
}
PROMPT = ("A street musician playing a violin in a rainy city square at dusk, reflections on wet "
          "cobblestones, warm shop lights, cinematic photo.")
SAMPLING = {"steps": 8, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"}

MODELS_NOTE = f"""## Model files

Download these (ComfyUI's own Z-Image-Turbo example uses the same names) and put them here:

```
ComfyUI/models/
├── diffusion_models/{Z_IMAGE}
├── text_encoders/{QWEN}
├── vae/{AE}
└── loras/   (the adapters below)
```

- [{Z_IMAGE}]({HF}/diffusion_models/{Z_IMAGE})
- [{QWEN}]({HF}/text_encoders/{QWEN})
- [{AE}]({HF}/vae/{AE})
"""


@dataclass(frozen=True)
class Out:
    """A link source: output `slot` (index or output name) of the node described under `key`."""

    key: str
    slot: int | str = 0


@dataclass
class NodeSpec:
    key: str
    type: str
    values: dict[str, Any]
    title: str | None = None
    mode: int = 0
    controls: dict[str, str] = field(default_factory=dict)  # widget name -> its control_after_generate value


@dataclass
class Flow:
    """One workflow as written by hand: nodes in reading order, the Note first."""

    name: str
    note: str
    nodes: list[NodeSpec] = field(default_factory=list)

    def add(self, key: str, node_type: str, /, *, title: str | None = None, mode: int = 0,
            controls: dict[str, str] | None = None, **values: Any) -> Out:
        """Describe a node: widget values and links (Out) by input name. `title`, `mode` and `controls`
        are the node's own settings (build() refuses a node type with inputs of those names)."""
        if any(n.key == key for n in self.nodes):
            raise ValueError(f"{self.name}: duplicate node key {key!r}")
        self.nodes.append(NodeSpec(key, node_type, values, title, mode, dict(controls or {})))
        return Out(key)

    @property
    def types(self) -> set[str]:
        return {n.type for n in self.nodes} | {"MarkdownNote"}


# --- the workflows -------------------------------------------------------------------------------------

def _loaders_and_prompt(f: Flow) -> None:
    """Z-Image-Turbo as ComfyUI's own example loads it; the negative is zeroed (cfg 1 ignores it)."""
    f.add("unet", "UNETLoader", unet_name=Z_IMAGE, weight_dtype="default")
    f.add("clip", "CLIPLoader", clip_name=QWEN, type="lumina2", device="default")
    f.add("vae", "VAELoader", vae_name=AE)
    f.add("positive", "CLIPTextEncode", clip=Out("clip"), text=PROMPT)
    f.add("negative", "ConditioningZeroOut", conditioning=Out("positive"))


def _sample_and_save(f: Flow, model: Out, prefix: str) -> None:
    """Shift 3 as in ComfyUI's example, then the SDA card's sampling: 8 steps, cfg 1, euler, simple."""
    f.add("latent", "EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    f.add("shift", "ModelSamplingAuraFlow", model=model, shift=3.0)
    f.add("sampler", "KSampler", model=Out("shift"), positive=Out("positive"), negative=Out("negative"),
          latent_image=Out("latent"), seed=0, denoise=1.0, controls={"seed": "randomize"}, **SAMPLING)
    f.add("decode", "VAEDecode", samples=Out("sampler"), vae=Out("vae"))
    f.add("save", "SaveImage", images=Out("decode"), filename_prefix=prefix)


def sda_lokr_basic() -> Flow:
    f = Flow("sda_lokr_basic", MODELS_NOTE + f"""
Adapter, in `models/loras/`: the SDA LoKr, here `{SDA_LOKR}` (rename to match your file).

## Use
Z-Image-Turbo at 8 steps, cfg 1, with the SDA LoKr: change the seed and the pose, layout and camera
change too. **strength** 0 gives the plain Turbo model back; the report shows what it patched.
""")
    _loaders_and_prompt(f)
    f.add("lokr", "SDALoKrLoader", model=Out("unet"), lokr_name=SDA_LOKR, strength=1.0)
    f.add("report", "PreviewAny", title="LoKr report", source=Out("lokr", "report"))
    _sample_and_save(f, Out("lokr"), "sda_lokr")
    return f


def sda_style_stack() -> Flow:
    f = Flow("sda_style_stack", MODELS_NOTE + f"""
Adapters, in `models/loras/`:
- the SDA LoKr, here `{SDA_LOKR}` (rename to match your file);
- a style LoRA for Z-Image-Turbo, here `{STYLE_LORA}` (any style LoRA works);
- DiffSynth's DistillPatch, `{DISTILL_PATCH}`.

## Use
The stack applies its rows in order; its report lists the layers each adapter shares with the others,
where strengths need balancing. With style LoRAs the SDA card suggests SDA at 0.5–0.7.
""")
    _loaders_and_prompt(f)
    f.add("stack", "SDAAdapterStack", model=Out("unet"),
          enabled_1=True, lora_1=SDA_LOKR, strength_1=0.6,
          enabled_2=True, lora_2=STYLE_LORA, strength_2=1.0,
          enabled_3=True, lora_3=DISTILL_PATCH, strength_3=1.0,
          enabled_4=False, lora_4="None", strength_4=1.0)
    f.add("report", "PreviewAny", title="Stack report: shared layers", source=Out("stack", "report"))
    _sample_and_save(f, Out("stack"), "sda_style_stack")
    return f


def training_adapter_inversion() -> Flow:
    f = Flow("training_adapter_inversion", MODELS_NOTE + f"""
Adapters, in `models/loras/`:
- the training adapter your LoRA was trained on, here `{TRAINING_ADAPTER}` (ostris's Z-Image-Turbo
  de-distill adapter; rename to match your file);
- your differential LoRA, trained on Turbo + that adapter, here `{DIFFERENTIAL_LORA}`.

## Use
For a model that carries the training adapter **merged in**: *Invert Training Adapter* applies it at
−strength, so `base + adapter + yours − adapter = base + yours`, and with **verify** on it reports how
exactly the weights come back. Here the first loader (adapter at +1) **stands in for such a model**:
with a checkpoint that has the adapter merged, load that instead and delete the stand-in.
On the plain Turbo model (no adapter merged) use your LoRA alone, without the inversion.
""")
    _loaders_and_prompt(f)
    f.add("merged", "SDALoKrLoader", title="Stand-in: model with the training adapter merged (+1)",
          model=Out("unet"), lokr_name=TRAINING_ADAPTER, strength=1.0)
    f.add("yours", "SDALoKrLoader", title="Your differential LoRA", model=Out("merged"),
          lokr_name=DIFFERENTIAL_LORA, strength=1.0)
    f.add("invert", "SDAInvertTrainingAdapter", model=Out("yours"), adapter_name=TRAINING_ADAPTER,
          strength=1.0, verify=True)
    f.add("report", "PreviewAny", title="Inversion report", source=Out("invert", "report"))
    _sample_and_save(f, Out("invert"), "training_adapter_inversion")
    return f


def seed_grid_diversity_comparison() -> Flow:
    f = Flow("seed_grid_diversity_comparison", MODELS_NOTE + f"""
Adapter, in `models/loras/`: the SDA LoKr, here `{SDA_LOKR}` (rename to match your file).
LPIPS needs torchvision's AlexNet weights: downloaded on first use, or put `alexnet-owt-7be5be79.pth`
into `models/lpips/` on an offline machine.

## Use
The same prompt and seeds through the plain Turbo model and through Turbo + SDA: each grid scores its
images (average pairwise LPIPS = diversity, pixel std = contrast); *Diversity Compare* lays them out
row by row. The SDA card measured 0.564 (Turbo) → 0.691 (+SDA) against 0.745 for the 50-step teacher.
A teacher row is optional: the muted third grid (50 steps, cfg 4) takes the plain Turbo model as it
stands; connect your many-step teacher model to its *model* input instead, unmute it (Ctrl+M) and set
*teacher* to 3 for the recovery figure, (SDA − Turbo) / (teacher − Turbo).
""")
    _loaders_and_prompt(f)
    f.add("shift", "ModelSamplingAuraFlow", model=Out("unet"), shift=3.0)
    f.add("lokr", "SDALoKrLoader", model=Out("shift"), lokr_name=SDA_LOKR, strength=1.0)
    grid = dict(positive=Out("positive"), negative=Out("negative"), vae=Out("vae"), width=1024, height=1024,
                seed=0, num_seeds=16, seed_list="", batch_size=4, lpips_net="alex", lpips_size="short side 256")
    f.add("grid_base", "SDASeedDiversityGrid", title="Baseline: Z-Image-Turbo", model=Out("shift"),
          label="Turbo 8 steps", **SAMPLING, **grid)
    f.add("grid_sda", "SDASeedDiversityGrid", title="Z-Image-Turbo + SDA LoKr", model=Out("lokr"),
          label="Turbo + SDA", **SAMPLING, **grid)
    f.add("grid_teacher", "SDASeedDiversityGrid", title="Teacher (optional, muted)", mode=2, model=Out("shift"),
          label="teacher 50 steps", **dict(SAMPLING, steps=50, cfg=4.0), **grid)
    f.add("compare", "SDADiversityCompare", result_1=Out("grid_base", "result"), result_2=Out("grid_sda", "result"),
          result_3=Out("grid_teacher", "result"), baseline="1", teacher="none")
    f.add("table", "PreviewAny", title="LPIPS table", source=Out("compare", "table"))
    f.add("save", "SaveImage", images=Out("compare", "image"), filename_prefix="sda_diversity")
    return f


def sda_early_steps() -> Flow:
    f = Flow("sda_early_steps", MODELS_NOTE + f"""
Adapter, in `models/loras/`: the SDA LoKr, here `{SDA_LOKR}` (rename to match your file).
LPIPS needs torchvision's AlexNet weights: downloaded on first use, or put `alexnet-owt-7be5be79.pth`
into `models/lpips/` on an offline machine.

## Use
The same prompt and seeds four times: the plain Turbo model, Turbo + SDA on all 8 steps, and Turbo + SDA on
the first 2 and the first 4 steps only (*Adapter Strength by Step*). *Diversity Compare* puts the four
grids side by side with avg LPIPS, pixel std and sharpness relative to the baseline (row 1).
""")
    _loaders_and_prompt(f)
    f.add("explain", "Note", title="What this shows: diversity is made early", text="""\
A distilled model fixes pose, layout and camera in its first, high-noise steps; the later steps only
sharpen. So the SDA LoKr may only be needed where the composition is decided.

Compare the rows:
- avg LPIPS: how much of the all-steps SDA diversity the 2-step and 4-step rows keep over the baseline;
- sharpness (relative to the baseline): whether leaving the late steps to the plain Turbo model keeps the
  detail that a LoKr on every step may soften.

If "first 2 steps" already reaches most of the all-steps LPIPS at baseline sharpness, that is the trade-off
to take; edit step_strengths (one multiplier per step, e.g. 1,1,1,0.5,0,0,0,0) to try others.
""")
    f.add("shift", "ModelSamplingAuraFlow", model=Out("unet"), shift=3.0)
    f.add("lokr", "SDALoKrLoader", title="SDA on all 8 steps", model=Out("shift"), lokr_name=SDA_LOKR, strength=1.0)
    f.add("early2", "SDAScheduledAdapter", title="SDA on the first 2 steps", model=Out("shift"),
          lora_name=SDA_LOKR, strength=1.0, step_strengths="1,1,0,0,0,0,0,0")
    f.add("early4", "SDAScheduledAdapter", title="SDA on the first 4 steps", model=Out("shift"),
          lora_name=SDA_LOKR, strength=1.0, step_strengths="1,1,1,1,0,0,0,0")
    grid = dict(positive=Out("positive"), negative=Out("negative"), vae=Out("vae"), width=1024, height=1024,
                seed=0, num_seeds=16, seed_list="", batch_size=4, lpips_net="alex", lpips_size="short side 256",
                **SAMPLING)
    f.add("grid_base", "SDASeedDiversityGrid", title="Baseline: Z-Image-Turbo", model=Out("shift"),
          label="Turbo 8 steps", **grid)
    f.add("grid_all", "SDASeedDiversityGrid", title="SDA on all steps", model=Out("lokr"),
          label="SDA all 8 steps", **grid)
    f.add("grid_2", "SDASeedDiversityGrid", title="SDA on the first 2 steps", model=Out("early2"),
          label="SDA steps 1-2", **grid)
    f.add("grid_4", "SDASeedDiversityGrid", title="SDA on the first 4 steps", model=Out("early4"),
          label="SDA steps 1-4", **grid)
    f.add("compare", "SDADiversityCompare", result_1=Out("grid_base", "result"), result_2=Out("grid_all", "result"),
          result_3=Out("grid_2", "result"), result_4=Out("grid_4", "result"), baseline="1", teacher="none")
    f.add("table", "PreviewAny", title="LPIPS table", source=Out("compare", "table"))
    f.add("save", "SaveImage", images=Out("compare", "image"), filename_prefix="sda_early_steps")
    return f


TRAINING_PROMPTS = "\n".join([
    "A street musician playing a violin in a rainy city square at dusk, cinematic photo.",
    "A red fox crossing a snowy forest clearing, morning light, wildlife photography.",
    "An old fisherman mending nets on a wooden pier, overcast sky, documentary photo.",
    "A cyclist riding through a market street in a hillside town, summer afternoon.",
])


def sda_training() -> Flow:
    f = Flow("sda_training", MODELS_NOTE + f"""
The teacher, in `models/diffusion_models/`: the many-step Z-Image (not the Turbo), here `{TEACHER}`
(rename to match your file). Optional, in `models/loras/`: a de-distill training adapter for
*assistant_adapter* (e.g. `{TRAINING_ADAPTER}`).

## Use
*SDA Train LoKr* trains the student (Turbo, shift 3) so that its seed-to-seed changes follow the
teacher's, one prompt per line. The LoKr is saved in `models/loras/` as *save_name*; a checkpoint every
*checkpoint_every* steps lets you stop and continue with *resume*. The node shows the loss curves (also
saved), and its MODEL output is the student with the new LoKr, sampled here at 8 steps, cfg 1.
With the VAE connected and *eval_every* > 0 it renders fixed seeds and keeps the most diverse LoKr.
""")
    _loaders_and_prompt(f)
    f.add("teacher", "UNETLoader", title="Teacher: many-step Z-Image", unet_name=TEACHER, weight_dtype="default")
    f.add("student", "ModelSamplingAuraFlow", title="Student: Z-Image-Turbo, shift 3", model=Out("unet"), shift=3.0)
    f.add("train", "SDATrainLoKr", student=Out("student"), teacher=Out("teacher"), clip=Out("clip"), vae=Out("vae"),
          prompts=TRAINING_PROMPTS, negative_prompt="", teacher_cfg=1.0, assistant_adapter="None",
          width=512, height=512, steps=2500, save_name="sda_lokr_z_image_turbo", checkpoint_every=100,
          resume=False, eval_every=250, eval_seeds=4)
    f.add("curves", "SaveImage", title="Save loss curves", images=Out("train", "loss_curves"),
          filename_prefix="sda_training/loss_curves")
    f.add("path", "PreviewAny", title="Saved LoKr", source=Out("train", "lokr_path"))
    f.add("latent", "EmptySD3LatentImage", width=1024, height=1024, batch_size=1)
    f.add("sampler", "KSampler", model=Out("train", "MODEL"), positive=Out("positive"), negative=Out("negative"),
          latent_image=Out("latent"), seed=0, denoise=1.0, controls={"seed": "randomize"}, **SAMPLING)
    f.add("decode", "VAEDecode", samples=Out("sampler"), vae=Out("vae"))
    f.add("save", "SaveImage", images=Out("decode"), filename_prefix="sda_training/sample")
    return f


FLOWS: list[Callable[[], Flow]] = [sda_lokr_basic, sda_style_stack, seed_grid_diversity_comparison, sda_training,
                                   training_adapter_inversion, sda_early_steps]


# --- UI-format JSON ------------------------------------------------------------------------------------

def _output_index(defn: dict[str, Any], slot: int | str) -> int:
    if isinstance(slot, int):
        return slot
    return list(defn["output_name"]).index(slot)


def _value(spec: NodeSpec, name: str, options: dict[str, Any]) -> Any:
    if name in spec.values:
        return spec.values[name]
    if "default" in options:
        return options["default"]
    raise ValueError(f"{spec.key} ({spec.type}): no value for widget {name!r} and no default")


def _depths(flow: Flow) -> dict[str, int]:
    """Column of each node: one right of its furthest input (left-to-right reading order)."""
    depth: dict[str, int] = {}
    for n in flow.nodes:  # nodes are described after their inputs
        sources = [v.key for v in n.values.values() if isinstance(v, Out)]
        missing = [s for s in sources if s not in depth]
        if missing:
            raise ValueError(f"{flow.name}: {n.key} uses {missing} before they are described")
        depth[n.key] = 1 + max((depth[s] for s in sources), default=-1)
    return depth


def _size(n: NodeSpec, defn: dict[str, Any]) -> list[int]:
    specs = input_specs(defn)
    sockets = sum(1 for name, kind, opt in specs if not is_widget(kind, opt))
    widgets = len(widget_slots(defn))
    height = 46 + 22 * max(sockets, len(defn["output"])) + 26 * widgets
    if any(kind == "STRING" and opt.get("multiline") for _, kind, opt in specs):
        height += 110
    if defn.get("output_node"):
        height += 240
    width = 360 if n.type.startswith("SDA") else 320
    return [width, height]


def node_ids(flow: Flow) -> dict[str, int]:
    """Node id of each described node: in description order after the Note (id 1)."""
    return {n.key: i for i, n in enumerate(flow.nodes, start=2)}


def build(flow: Flow, defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The UI-format workflow for `flow`, widget values ordered by ComfyUI's definitions in `defs`."""
    ids = node_ids(flow)
    depth = _depths(flow)
    links: list[list] = []
    nodes: dict[str, dict[str, Any]] = {}
    for order, n in enumerate(flow.nodes, start=1):
        if n.type in VIRTUAL_TYPES:  # a frontend-only Note: its one widget is its text
            if set(n.values) != {"text"} or n.type != "Note":
                raise ValueError(f"{flow.name}: {n.key}: only a Note with text=... is supported here")
            nodes[n.key] = {"id": ids[n.key], "type": n.type, "pos": [0, 0], "size": [440, 300], "flags": {},
                            "order": order, "mode": n.mode, "inputs": [], "outputs": [],
                            "title": n.title or "Note", "properties": {},
                            "widgets_values": [n.values["text"].strip() + "\n"], "color": "#432", "bgcolor": "#653"}
            continue
        defn = defs[n.type]
        widget_names = {name for name, kind, opt in input_specs(defn) if is_widget(kind, opt)}
        names = {name for name, _, _ in input_specs(defn)}
        if names & {"title", "mode", "controls"}:
            raise ValueError(f"{n.type} has an input named like a Flow.add setting: {names & {'title', 'mode', 'controls'}}")
        unknown = set(n.values) - names
        if unknown:
            raise ValueError(f"{flow.name}: {n.key} ({n.type}) has no inputs {sorted(unknown)}")
        inputs = []
        for name, kind, options in input_specs(defn):
            if name in widget_names:
                continue
            source = n.values.get(name)
            link_id = None
            if source is not None:
                origin = defs[nodes[source.key]["type"]]
                slot = _output_index(origin, source.slot)
                out_type = origin["output"][slot]
                if kind not in ("*", out_type):
                    raise ValueError(f"{flow.name}: {source.key}[{slot}] is {out_type}, {n.key}.{name} wants {kind}")
                link_id = len(links) + 1
                links.append([link_id, ids[source.key], slot, ids[n.key], len(inputs), out_type])
                nodes[source.key]["outputs"][slot]["links"].append(link_id)
            inputs.append({"name": name, "type": kind, "link": link_id})
        values: list[Any] = []
        slots = widget_slots(defn)
        controlled = {slots[i - 1] for i, name in enumerate(slots) if name == CONTROL}
        if set(n.controls) - controlled:
            raise ValueError(f"{flow.name}: {n.key} ({n.type}) has no control widget on {sorted(set(n.controls) - controlled)}")
        for i, name in enumerate(slots):
            if name == CONTROL:  # the value of the control widget of the widget before it
                values.append(n.controls.get(slots[i - 1], "fixed"))
            else:
                options = next(opt for nm, _, opt in input_specs(defn) if nm == name)
                values.append(_value(n, name, options))
        properties: dict[str, Any] = {"Node name for S&R": n.type}
        models = [MODEL_LINKS[v] for v in values if isinstance(v, str) and v in MODEL_LINKS]
        if models:
            properties["models"] = models
        node: dict[str, Any] = {
            "id": ids[n.key], "type": n.type, "pos": [0, 0], "size": _size(n, defn), "flags": {},
            "order": order, "mode": n.mode, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(zip(defn["output_name"], defn["output"]))],
            "properties": properties, "widgets_values": values,
        }
        if n.title:
            node["title"] = n.title
        nodes[n.key] = node
    note = {"id": 1, "type": "MarkdownNote", "pos": [0, 0], "size": [440, 560], "flags": {}, "order": 0,
            "mode": 0, "inputs": [], "outputs": [], "title": "Read me: model files",
            "properties": {}, "widgets_values": [flow.note.strip() + "\n"], "color": "#432", "bgcolor": "#653"}
    _layout(note, [(nodes[n.key], depth[n.key]) for n in flow.nodes])
    all_nodes = [note, *nodes.values()]
    return {
        "last_node_id": len(flow.nodes) + 1, "last_link_id": len(links),
        "nodes": all_nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": _view(all_nodes)}, "version": 0.4,
    }


def _view(nodes: list[dict[str, Any]], screen: tuple[int, int] = (1500, 780),
          margin: tuple[int, int] = (70, 120), readable: float = 0.6) -> dict[str, Any]:
    """The canvas view saved with the workflow: as much as fits on a laptop screen below the toolbars, the
    Note top left, but never below the zoom where the frontend stops drawing text (0.6 in 0.8.0's).
    The frontend draws canvas point p at screen (p + offset) * scale."""
    width = max(n["pos"][0] + n["size"][0] for n in nodes)
    height = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = round(max(readable, min(1.0, screen[0] / width, screen[1] / height)), 2)
    return {"scale": scale, "offset": [round(margin[0] / scale), round(margin[1] / scale)]}


def _layout(note: dict[str, Any], placed: list[tuple[dict[str, Any], int]], gap: int = 50) -> None:
    """Columns left to right by depth, nodes stacked top-down in description order; the Note leftmost."""
    note["pos"] = [0, 0]
    columns: dict[int, list[dict[str, Any]]] = {}
    for node, col in placed:
        columns.setdefault(col, []).append(node)
    x = note["size"][0] + gap
    for col in sorted(columns):
        y = 0
        for node in columns[col]:
            node["pos"] = [x, y]
            y += node["size"][1] + gap
        x += max(node["size"][0] for node in columns[col]) + gap


def _json(value: Any, indent: str = "") -> str:
    """JSON with one key per line, but short lists of scalars (pos, size, links, widget values) inline."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def dump(workflow: dict[str, Any]) -> str:
    return _json(workflow) + "\n"


def buildable(defs_available: set[str]) -> tuple[list[Flow], list[tuple[str, list[str]]]]:
    """The flows whose node types all exist, and (name, missing types) of the others."""
    ready, waiting = [], []
    for make in FLOWS:
        flow = make()
        missing = sorted(t for t in flow.types - VIRTUAL_TYPES if t not in defs_available)
        (waiting.append((flow.name, missing)) if missing else ready.append(flow))
    return ready, waiting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with workflows/ instead of writing")
    args = parser.parse_args(argv)
    if not os.environ.get("COMFYUI_PATH"):
        parser.error("set COMFYUI_PATH to a ComfyUI checkout (node definitions come from ComfyUI itself)")
    from sdatest import comfy_host
    from sdatest.workflow_api import node_defs

    logging.disable(logging.WARNING)  # ComfyUI's start-up chatter (optional nodes it cannot import)
    comfy_host.boot(Path(os.environ["COMFYUI_PATH"]).resolve())
    logging.disable(logging.NOTSET)
    import nodes

    ready, waiting = buildable(set(nodes.NODE_CLASS_MAPPINGS))
    stale = []
    for flow in ready:
        text = dump(build(flow, node_defs(flow.types)))
        path = WORKFLOWS_DIR / f"{flow.name}.json"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            WORKFLOWS_DIR.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    for name, missing in waiting:
        print(f"skipped {name}: node types not registered: {', '.join(missing)}")
    if stale:
        print(f"stale (run scripts/build_workflows.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    if args.check:
        print(f"{len(ready)} workflows up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
