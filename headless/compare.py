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
import math
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from sda_core.atomic import atomic_write_text, claim_new_path
from sda_core.diversity import limits
from sda_core.diversity.table import comparison_rows, markdown_table, setting_warnings
from sda_core.seeds import SeedError, resolve_seeds

DEFAULTS = {"unet": "z_image_turbo_bf16.safetensors", "clip": "qwen_3_4b.safetensors", "vae": "ae.safetensors",
            "clip_type": "lumina2"}
MODEL_KEYS = {"unet", "lora", "steps", "cfg", "sampler", "scheduler", "noise", "cads", "early", "early_cfg",
              "early_end"}
SCORE_KEYS = ("avg_lpips", "pixel_std", "sharpness", "vendi", "clip_score", "seconds_per_image")


class UsageError(ValueError):
    """A bad command-line argument; main turns it into a one-line error before ComfyUI starts."""


@dataclass
class ModelSpec:
    label: str
    unet: str
    loras: list[tuple[str, float]] = field(default_factory=list)
    steps: int = 8
    cfg: float = 1.0
    sampler: str = "euler"
    scheduler: str = "simple"
    noise: float | None = None  # SDA Conditioning Noise strength (first 25 % of the steps)
    cads: float | None = None  # SDA Condition Annealing noise scale (CADS, tau 0.6 … 0.9, psi 1)
    early: str | None = None  # SDA Model by Step: this diffusion model on the first early_end of the steps
    early_cfg: float = 4.0
    early_end: float = 0.125


def _number(text: str, key: str, value: str, kind: type, bounds: tuple) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"--model {text!r}: {key}={value!r} is not a{' whole' if kind is int else ''} number") from None
    if not (bounds[0] <= number <= bounds[1]) or not math.isfinite(number):
        raise UsageError(f"--model {text!r}: {key}={value} is outside {bounds[0]}…{bounds[1]}")
    return number


def parse_model(text: str, default_unet: str) -> ModelSpec:
    """'label' or 'label:unet=f.safetensors,lora=a.safetensors@0.6+b.safetensors@1,steps=50,cfg=4'."""
    label, _, rest = text.partition(":")
    if not label.strip():
        raise UsageError(f"--model {text!r}: a model needs a label before ':'")
    spec = ModelSpec(label=label.strip(), unet=default_unet)
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in MODEL_KEYS:
            raise UsageError(f"--model {text!r}: {item!r} is not one of {sorted(MODEL_KEYS)}=value")
        if not value:
            raise UsageError(f"--model {text!r}: {key}= needs a value")
        if key == "lora":
            for entry in value.split("+"):
                name, _, strength = entry.partition("@")
                spec.loras.append((name, _number(text, "lora strength", strength, float, (-100.0, 100.0))
                                   if strength else 1.0))
        elif key == "steps":
            spec.steps = _number(text, key, value, int, limits.STEPS)
        elif key in ("cfg", "early_cfg"):
            setattr(spec, key, _number(text, key, value, float, limits.CFG))
        elif key in ("noise", "cads"):
            setattr(spec, key, _number(text, key, value, float, (0.0, 4.0)))
        elif key == "early_end":
            spec.early_end = _number(text, key, value, float, (0.0, 1.0))
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


def output(node_id: str, class_type: str, name: str) -> list:
    """A link to the output called `name` of a node (looked up in ComfyUI's registered node, not by position)."""
    import nodes  # ComfyUI's, once the runtime has started

    names = list(nodes.NODE_CLASS_MAPPINGS[class_type].RETURN_NAMES)
    if name not in names:
        raise RuntimeError(f"{class_type} has no output {name!r} (outputs: {names})")
    return [node_id, names.index(name)]


def build_prompt(text: str, negative: str, models: Sequence[ModelSpec], *, clip: str, vae: str, clip_type: str,
                 seeds: str, num_seeds: int, seed: int, width: int, height: int, batch_size: int,
                 baseline: int | None, teacher: int | None, prefix: str) -> tuple[dict, dict[str, str], str]:
    """The API-format prompt for one text prompt; also the grid node id per model label and the compare node id."""
    check_model_count(models)
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
        if spec.early:
            if spec.early not in unets:
                unets[spec.early] = g.add("UNETLoader", unet_name=spec.early, weight_dtype="default")
            model = [g.add("SDAModelByStep", model=model, model_early=[unets[spec.early], 0], cfg_early=spec.early_cfg,
                           start_percent=0.0, end_percent=spec.early_end), 0]
        if spec.noise is not None:
            model = [g.add("SDAConditioningNoise", model=model, strength=spec.noise, start_percent=0.0,
                           end_percent=0.25, protect_tokens=0), 0]
        if spec.cads is not None:
            model = [g.add("SDAConditionAnnealing", model=model, tau1=0.6, tau2=0.9, noise_scale=spec.cads, psi=1.0), 0]
        grid = g.add("SDASeedDiversityGrid", model=model, positive=[positive, 0], negative=[negative_node, 0],
                     vae=[vae_node, 0], width=width, height=height, seed=seed, num_seeds=num_seeds, seed_list=seeds,
                     steps=spec.steps, cfg=spec.cfg, sampler_name=spec.sampler, scheduler=spec.scheduler,
                     batch_size=batch_size, label=spec.label, lpips_net="alex", lpips_size="short side 256")
        g.add("SaveImage", images=output(grid, "SDASeedDiversityGrid", "grid"), filename_prefix=f"{prefix}_{spec.label}")
        grids[spec.label] = grid
    results = {f"result_{k}": output(grids[spec.label], "SDASeedDiversityGrid", "result")
               for k, spec in enumerate(models, start=1)}
    compare = g.add("SDADiversityCompare", **results, baseline=str(baseline) if baseline else "none",
                    teacher=str(teacher) if teacher else "none")
    g.add("SaveImage", images=output(compare, "SDADiversityCompare", "image"), filename_prefix=f"{prefix}_compare")
    return g.nodes, grids, compare


def check_model_count(models: Sequence) -> None:
    if not limits.MIN_ROWS <= len(models) <= limits.MAX_ROWS:
        raise UsageError(f"--model given {len(models)} time(s); Diversity Compare takes {limits.MIN_ROWS} to "
                         f"{limits.MAX_ROWS} models")


def _mean(values: list) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def aggregate(per_prompt: list[dict[str, dict]], labels: Sequence[str], baseline: str | None,
              teacher: str | None, settings: dict[str, dict] | None = None) -> dict[str, Any]:
    """Mean of each score over prompts, per model; recovery from the means, with the noise of the means.

    `settings` (per label: seeds, size) lets the table warn when rows differ in them.
    """
    means = {label: {k: _mean([p[label].get(k) for p in per_prompt]) for k in SCORE_KEYS} for label in labels}
    entries = []
    for label in labels:
        se = [p[label].get("lpips_se") for p in per_prompt]  # prompts are independent: variances add
        lpips_se = None if any(v is None for v in se) else math.sqrt(sum(v * v for v in se)) / len(se)
        entries.append({"label": label, **means[label], "lpips_se": lpips_se, **(settings or {}).get(label, {})})
    rows = comparison_rows(entries, labels.index(baseline) if baseline else None,
                           labels.index(teacher) if teacher else None)
    recovery = {r["label"]: r["recovery"].value for r in rows if r["recovery"] is not None}
    reasons = {r["label"]: r["recovery"].reason for r in rows if r["recovery"] is not None and r["recovery"].reason}
    return {"prompts": len(per_prompt), "means": means, "recovery": recovery, "recovery_reasons": reasons,
            "warnings": setting_warnings(rows), "rows": rows}


def markdown(summary: dict[str, Any]) -> str:
    return f"Mean over {summary['prompts']} prompt(s).\n\n" + markdown_table(summary["rows"], summary["warnings"])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def _join_option_values(argv: Sequence[str], options: Sequence[str] = ("--comfy-args",)) -> list[str]:
    """`--comfy-args --lowvram` as `--comfy-args=--lowvram`: argparse takes a value starting with '--' for an option."""
    argv, out = list(argv), []
    k = 0
    while k < len(argv):
        if argv[k] in options and k + 1 < len(argv):
            out.append(f"{argv[k]}={argv[k + 1]}")
            k += 2
        else:
            out.append(argv[k])
            k += 1
    return out


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m headless.compare", description=__doc__.splitlines()[0])
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(Path(__file__).resolve().parents[3])),
                   help="ComfyUI checkout (default: $COMFYUI_PATH, else the folder holding custom_nodes/)")
    p.add_argument("--model", action="append", required=True,
                   help="label[:unet=…,lora=file@strength+…,steps=…,cfg=…,sampler=…,scheduler=…,noise=strength,"
                        "cads=noise_scale,early=unet_file,early_cfg=…,early_end=fraction]")
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
    p.add_argument("--comfy-args", default="", help="extra ComfyUI arguments, e.g. --comfy-args \"--lowvram\"")
    return p.parse_args(_join_option_values(sys.argv[1:] if argv is None else argv))


def _check_range(name: str, value: int, bounds: tuple[int, int]) -> None:
    if not bounds[0] <= value <= bounds[1]:
        raise UsageError(f"{name} {value} is outside {bounds[0]}…{bounds[1]}")


def prompts_of(args: argparse.Namespace) -> list[str]:
    texts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {args.prompts!r}: no such file ({path.resolve()})")
        try:
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--prompts {args.prompts!r}: cannot be read as UTF-8 text ({exc})") from None
    if not texts:
        raise UsageError("no prompts: give --prompt TEXT or --prompts FILE (one prompt per line)")
    return texts


def check_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[ModelSpec], list[str]]:
    """Every argument checked that can be without ComfyUI: UsageError with one line saying what to change."""
    args = _args(argv)
    models = [parse_model(text, args.unet) for text in args.model]
    check_model_count(models)
    labels = [m.label for m in models]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UsageError(f"--model labels must be unique; {', '.join(map(repr, repeated))} is given more than once")
    for role in ("baseline", "teacher"):
        label = getattr(args, role)
        if label and label not in labels:
            raise UsageError(f"--{role} {label!r} is not a model label ({', '.join(labels)})")
    if args.baseline and args.baseline == args.teacher:
        raise UsageError(f"--baseline and --teacher are both {args.baseline!r}; mark two different models")
    try:
        resolve_seeds(args.seed, args.num_seeds, args.seed_list)
    except SeedError as exc:
        raise UsageError(str(exc).replace("seed_list", "--seed-list").replace("num_seeds", "--num-seeds")) from None
    for name, value, bounds in (("--width", args.width, limits.SIZE), ("--height", args.height, limits.SIZE),
                                ("--num-seeds", args.num_seeds, limits.NUM_SEEDS),
                                ("--batch-size", args.batch_size, limits.BATCH_SIZE)):
        _check_range(name, value, bounds)
    try:
        args.comfy_args = tuple(shlex.split(args.comfy_args))
    except ValueError as exc:
        raise UsageError(f"--comfy-args {args.comfy_args!r}: {exc}") from None
    return args, models, prompts_of(args)


def missing_files(folder_paths, args: argparse.Namespace, models: Sequence[ModelSpec]) -> list[str]:
    """The model files the prompts need that ComfyUI's folders do not hold, each as 'what: name (folder)'."""
    wanted = [("--clip", "text_encoders", args.clip), ("--vae", "vae", args.vae)]
    for spec in models:
        wanted.append((f"--model {spec.label}: unet", "diffusion_models", spec.unet))
        if spec.early:
            wanted.append((f"--model {spec.label}: early", "diffusion_models", spec.early))
        wanted += [(f"--model {spec.label}: lora", "loras", name) for name, _ in spec.loras]
    missing = []
    for what, folder, name in dict.fromkeys(wanted):
        if folder_paths.get_full_path(folder, name) is None:
            missing.append(f"{what} {name!r} is not in models/{folder} ({', '.join(folder_paths.get_folder_paths(folder))})")
    return missing


def _prepare_folders(out: Path, args: argparse.Namespace, models: Sequence[ModelSpec]):
    def before_nodes(folder_paths) -> None:
        missing = missing_files(folder_paths, args, models)
        if missing:
            raise SystemExit("error: " + "; ".join(missing))
        folder_paths.set_output_directory(str(out))

    return before_nodes


def main(argv: Sequence[str] | None = None, runtime=None) -> dict[str, Any]:
    try:
        args, models, texts = check_args(argv)
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None
    labels = [m.label for m in models]
    out = Path(args.out).resolve()
    if runtime is None:
        from .runtime import start

        runtime = start(args.comfyui, args.comfy_args, before_nodes=_prepare_folders(out, args, models))
    out.mkdir(parents=True, exist_ok=True)
    per_prompt, tables, settings = [], [], {}
    for k, text in enumerate(texts, start=1):
        prompt, grids, compare = build_prompt(
            text, args.negative, models, clip=args.clip, vae=args.vae, clip_type=args.clip_type,
            seeds=args.seed_list, num_seeds=args.num_seeds, seed=args.seed, width=args.width, height=args.height,
            batch_size=args.batch_size, baseline=labels.index(args.baseline) + 1 if args.baseline else None,
            teacher=labels.index(args.teacher) + 1 if args.teacher else None, prefix=f"prompt{k:02d}")
        ui = runtime.run(prompt)
        reports = {label: json.loads(ui[node]["text"][0]) for label, node in grids.items()}
        per_prompt.append({label: {**r["scores"], "seconds_per_image": r.get("seconds_per_image"),
                                   "clip_score": (r.get("clip_score") or {}).get("mean")}
                           for label, r in reports.items()})
        settings = {label: {"seeds": r["seeds"], "size": (r["settings"]["width"], r["settings"]["height"])}
                    for label, r in reports.items()}
        tables.append(f"## Prompt {k}: {text}\n\n{ui[compare]['text'][0]}\n")
        print(f"[{k}] {text}\n{ui[compare]['text'][0]}\n", flush=True)
    summary = aggregate(per_prompt, labels, args.baseline, args.teacher, settings)
    table = markdown(summary)
    summary["rows"] = [{**row, "recovery": None if row["recovery"] is None else asdict(row["recovery"])}
                       for row in summary["rows"]]
    summary["per_prompt"] = per_prompt
    with claim_new_path(out / "table.md") as md:  # a second run beside the first never overwrites it
        atomic_write_text(md, table + "\n\n" + "\n".join(tables))
    with claim_new_path(Path(md).with_suffix(".json")) as js:
        atomic_write_text(js, json.dumps(summary, indent=2))
    summary["files"] = [md, js]
    print(f"{table}\n\ntables: {md}, {js}")
    return summary


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
