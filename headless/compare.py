"""Reproduce the SDA card's table without the UI: prompts × seeds × models through ComfyUI as a library.

From the pack folder (custom_nodes/comfyui-sda), on a machine with the weights and a GPU:

    python -m headless.compare --comfyui ../.. --prompts prompts.txt --num-seeds 16 \\
        --model turbo --model "sda:lora=sda_lokr.safetensors@1.0" \\
        --model "teacher:unet=z_image_bf16.safetensors,steps=50,cfg=4" \\
        --baseline turbo --teacher teacher --out sda_table

Every prompt runs as one ComfyUI prompt: a Seed Diversity Grid per model and a Diversity Compare, saved as
images; the scores of all prompts are averaged per model into `table.md` and `table.json` (recovery from the
averages, as the card computes it; `table_1.md` … when the folder already holds tables: none is overwritten).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sda_core.atomic import atomic_write_text, claim_new_path

DEFAULTS = {"unet": "z_image_turbo_bf16.safetensors", "clip": "qwen_3_4b.safetensors", "vae": "ae.safetensors",
            "clip_type": "lumina2"}
MODEL_KEYS = {"unet", "lora", "steps", "cfg", "sampler", "scheduler"}


@dataclass
class ModelSpec:
    label: str
    unet: str
    loras: list[tuple[str, float]] = field(default_factory=list)
    steps: int = 8
    cfg: float = 1.0
    sampler: str = "euler"
    scheduler: str = "simple"


def parse_model(text: str, default_unet: str) -> ModelSpec:
    """'label' or 'label:unet=f.safetensors,lora=a.safetensors@0.6+b.safetensors@1,steps=50,cfg=4'."""
    label, _, rest = text.partition(":")
    if not label.strip():
        raise ValueError(f"--model {text!r}: a model needs a label before ':'")
    spec = ModelSpec(label=label.strip(), unet=default_unet)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in MODEL_KEYS:
            raise ValueError(f"--model {text!r}: {item!r} is not one of {sorted(MODEL_KEYS)}=value")
        if key == "lora":
            for entry in value.split("+"):
                name, _, strength = entry.partition("@")
                spec.loras.append((name, float(strength) if strength else 1.0))
        elif key in ("steps",):
            spec.steps = int(value)
        elif key == "cfg":
            spec.cfg = float(value)
        elif key == "unet":
            spec.unet = value
        else:
            setattr(spec, key, value)
    return spec


class _Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id


def build_prompt(text: str, negative: str, models: Sequence[ModelSpec], *, clip: str, vae: str, clip_type: str,
                 seeds: str, num_seeds: int, seed: int, width: int, height: int, batch_size: int,
                 baseline: int | None, teacher: int | None, prefix: str) -> tuple[dict, dict[str, str], str]:
    """The API-format prompt for one text prompt; also the grid node id per model label and the compare node id."""
    if not 2 <= len(models) <= 4:
        raise ValueError(f"Diversity Compare takes 2 to 4 models, got {len(models)}")
    g = _Graph()
    clip_node = g.add("CLIPLoader", clip_name=clip, type=clip_type)
    vae_node = g.add("VAELoader", vae_name=vae)
    positive = g.add("CLIPTextEncode", text=text, clip=[clip_node, 0])
    negative_node = g.add("CLIPTextEncode", text=negative, clip=[clip_node, 0])
    unets: dict[str, str] = {}
    grids: dict[str, str] = {}
    for spec in models:
        if spec.unet not in unets:
            unets[spec.unet] = g.add("UNETLoader", unet_name=spec.unet, weight_dtype="default")
        model = [unets[spec.unet], 0]
        for name, strength in spec.loras:
            model = [g.add("SDALoKrLoader", model=model, lokr_name=name, strength=strength), 0]
        grid = g.add("SDASeedDiversityGrid", model=model, positive=[positive, 0], negative=[negative_node, 0],
                     vae=[vae_node, 0], width=width, height=height, seed=seed, num_seeds=num_seeds, seed_list=seeds,
                     steps=spec.steps, cfg=spec.cfg, sampler_name=spec.sampler, scheduler=spec.scheduler,
                     batch_size=batch_size, label=spec.label, lpips_net="alex", lpips_size="short side 256")
        g.add("SaveImage", images=[grid, 0], filename_prefix=f"{prefix}_{spec.label}")
        grids[spec.label] = grid
    results = {f"result_{k}": [grids[spec.label], 5] for k, spec in enumerate(models, start=1)}
    compare = g.add("SDADiversityCompare", **results, baseline=str(baseline) if baseline else "none",
                    teacher=str(teacher) if teacher else "none")
    g.add("SaveImage", images=[compare, 0], filename_prefix=f"{prefix}_compare")
    return g.nodes, grids, compare


def aggregate(per_prompt: list[dict[str, dict]], labels: Sequence[str], baseline: str | None,
              teacher: str | None) -> dict[str, Any]:
    """Mean of each score over prompts, per model; recovery from the means."""
    keys = ("avg_lpips", "pixel_std", "sharpness", "vendi")
    means = {label: {k: sum(p[label][k] for p in per_prompt) / len(per_prompt) for k in keys} for label in labels}
    recovery = {}
    if baseline and teacher:
        gap = means[teacher]["avg_lpips"] - means[baseline]["avg_lpips"]
        for label in labels:
            if label not in (baseline, teacher):
                recovery[label] = None if gap == 0 else (means[label]["avg_lpips"] - means[baseline]["avg_lpips"]) / gap
    return {"prompts": len(per_prompt), "means": means, "recovery": recovery}


def markdown(summary: dict[str, Any], baseline: str | None) -> str:
    lines = [f"Mean over {summary['prompts']} prompt(s).", "",
             "| model | avg pairwise LPIPS (diversity) | pixel std (magnitude) | sharpness | Vendi |", "|---|---|---|---|---|"]
    base = summary["means"].get(baseline) if baseline else None
    for label, m in summary["means"].items():
        lp = f"{m['avg_lpips']:.3f}"
        if base is not None and label != baseline:
            lp += f" ({m['avg_lpips'] - base['avg_lpips']:+.3f})"
        lines.append(f"| {label} | {lp} | {m['pixel_std']:.3f} | {m['sharpness']:.4g} | {m['vendi']:.2f} |")
    for label, value in summary["recovery"].items():
        lines.append(f"\nRecovery of {label} = {'n/a' if value is None else f'{value * 100:.1f} %'}")
    return "\n".join(lines)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m headless.compare", description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(Path(__file__).resolve().parents[3])),
                   help="ComfyUI checkout (default: $COMFYUI_PATH, else the folder holding custom_nodes/)")
    p.add_argument("--model", action="append", required=True, help="label[:unet=…,lora=file@strength+…,steps=…,cfg=…]")
    p.add_argument("--baseline", help="label of the collapsed baseline")
    p.add_argument("--teacher", help="label of the many-step teacher")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a text file, one prompt per line")
    p.add_argument("--negative", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-seeds", type=int, default=16)
    p.add_argument("--seed-list", default="")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--unet", default=DEFAULTS["unet"])
    p.add_argument("--clip", default=DEFAULTS["clip"])
    p.add_argument("--clip-type", default=DEFAULTS["clip_type"])
    p.add_argument("--vae", default=DEFAULTS["vae"])
    p.add_argument("--out", default="sda_compare", help="folder for images and tables")
    p.add_argument("--comfy-args", default="", help="extra ComfyUI arguments, e.g. '--lowvram'")
    return p.parse_args(argv)


def prompts_of(args: argparse.Namespace) -> list[str]:
    texts = list(args.prompt)
    if args.prompts:
        texts += [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise SystemExit("no prompts: give --prompt or --prompts FILE")
    return texts


def main(argv: Sequence[str] | None = None, runtime=None) -> dict[str, Any]:
    args = _args(argv)
    models = [parse_model(text, args.unet) for text in args.model]
    labels = [m.label for m in models]
    for role in (args.baseline, args.teacher):
        if role and role not in labels:
            raise SystemExit(f"--baseline/--teacher {role!r} is not a model label ({labels})")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if runtime is None:
        from .runtime import start

        runtime = start(args.comfyui, tuple(args.comfy_args.split()),
                        before_nodes=lambda folder_paths: folder_paths.set_output_directory(str(out)))
    per_prompt, tables = [], []
    for k, text in enumerate(prompts_of(args), start=1):
        prompt, grids, compare = build_prompt(
            text, args.negative, models, clip=args.clip, vae=args.vae, clip_type=args.clip_type,
            seeds=args.seed_list, num_seeds=args.num_seeds, seed=args.seed, width=args.width, height=args.height,
            batch_size=args.batch_size, baseline=labels.index(args.baseline) + 1 if args.baseline else None,
            teacher=labels.index(args.teacher) + 1 if args.teacher else None, prefix=f"prompt{k:02d}")
        ui = runtime.run(prompt)
        per_prompt.append({label: json.loads(ui[node]["text"][0])["scores"] for label, node in grids.items()})
        tables.append(f"## Prompt {k}: {text}\n\n{ui[compare]['text'][0]}\n")
        print(f"[{k}] {text}\n{ui[compare]['text'][0]}\n", flush=True)
    summary = aggregate(per_prompt, labels, args.baseline, args.teacher)
    summary["per_prompt"] = per_prompt
    table = markdown(summary, args.baseline)
    with claim_new_path(out / "table.md") as md:  # a second run beside the first never overwrites it
        atomic_write_text(md, table + "\n\n" + "\n".join(tables))
    with claim_new_path(Path(md).with_suffix(".json")) as js:
        atomic_write_text(js, json.dumps(summary, indent=2))
    summary["files"] = [md, js]
    print(f"{table}\n\ntables: {md}, {js}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
