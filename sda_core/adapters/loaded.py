"""What loading produced: placements of modules on the model, what could not be placed, and a report
the user reads on the node (so it says what the file is and what it did, in words)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .algorithms import AdapterModule
from .layout import SWAP_HALVES, Target

ALGO_NAMES = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
FORMAT_NAMES = {"lycoris": "LyCORIS", "kohya": "kohya/musubi", "diffusers": "diffusers", "peft": "PEFT",
                "ai-toolkit/comfyui": "ai-toolkit/ComfyUI", "diffsynth": "DiffSynth (bare names)",
                "onetrainer": "OneTrainer"}
UNPLACED_SHOWN = 10


def _num(x: float | None) -> str:
    return "none" if x is None else f"{x:g}"


def _params_text(d: dict) -> str:
    """One line of algorithm parameters from AdapterModule.describe()."""
    algo = d["algo"]
    if algo == "lokr":
        a, c = d["factor"]
        parts = [f"factor {a}×{c} (lokr_w1" + (f", rank {d['w1_rank']}" if d["w1_rank"] else "") + ")"]
        if d["full_rank"]:
            parts.append("full rank (lokr_w2 a full matrix)")
        else:
            parts.append(f"rank {d['w2_rank']}" + (" tucker" if d["tucker"] else ""))
        if d["alpha_ignored"]:
            parts.append(f"alpha {_num(d['alpha'])} ignored (full lokr_w1 and lokr_w2: scale 1, "
                         "as in LyCORIS and ComfyUI)")
        else:
            parts.append(f"alpha {_num(d['alpha'])}, scale {d['scale']:g}")
        return ", ".join(parts)
    parts = [f"rank {d['rank']}"]
    if d.get("tucker"):
        parts.append("tucker")
    alpha = f"alpha {_num(d['alpha'])}"
    if d.get("alpha_source") == "metadata":
        alpha += " (from the file's lora_adapter_metadata)"
    parts.append(f"{alpha}, scale {d['scale']:g}")
    return ", ".join(parts)


@dataclass
class LoadedAdapter:
    """An adapter file parsed onto one model layout."""

    label: str
    format: str
    placements: list[tuple[Target, AdapterModule]]
    unplaced: list[str]
    metadata: dict[str, str]
    unplaced_reasons: dict[str, str] = field(default_factory=dict)  # module name -> why it was not placed
    model_name: str = "the model"

    @property
    def patched_params(self) -> set[str]:
        """Distinct model parameters this adapter touches (q/k/v slices of one qkv count once)."""
        return {target.param for target, _ in self.placements}

    @property
    def algorithms(self) -> Counter:
        return Counter(module.algo for _, module in self.placements)

    def report(self) -> str:
        """Human text: format, algorithm(s), parameters, layers patched, keys left unplaced."""
        fmt = " + ".join(FORMAT_NAMES.get(f, f) for f in self.format.split("+"))
        algos = ", ".join(f"{ALGO_NAMES.get(a, a)} ×{n}" for a, n in sorted(self.algorithms.items()))
        lines = [f"{self.label}: {fmt} format, {algos} ({len(self.placements)} modules)"]
        params = Counter(_params_text(m.describe()) for _, m in self.placements)
        by_algo = {}
        for _, m in self.placements:
            by_algo.setdefault(_params_text(m.describe()), m.algo)
        for text, n in sorted(params.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {ALGO_NAMES.get(by_algo[text], by_algo[text])} ×{n}: {text}")
        sliced = sum(1 for t, _ in self.placements if t.rows is not None)
        patched = f"patches {len(self.patched_params)} layers of {self.model_name}"
        if sliced:
            fused = {t.param for t, _ in self.placements if t.rows is not None}
            if all(p.endswith("attention.qkv.weight") for p in fused):
                patched += f" ({sliced} modules land on q/k/v row slices of a fused attention.qkv)"
            else:
                patched += f" ({sliced} modules land on row slices of fused weights, as ComfyUI maps them)"
        lines.append("  " + patched)
        swapped = sum(1 for t, _ in self.placements if t.transform == SWAP_HALVES)
        if swapped:
            lines.append(f"  {swapped} × modulation (e.g. norm_out.linear): scale and shift halves swapped on landing "
                         "(diffusers orders them the other way), as ComfyUI places them")
        if self.unplaced:
            shown = [f"{name} ({self.unplaced_reasons[name]})" if name in self.unplaced_reasons else name
                     for name in self.unplaced[:UNPLACED_SHOWN]]
            more = len(self.unplaced) - UNPLACED_SHOWN
            lines.append(f"  {len(self.unplaced)} keys not placed: " + "; ".join(shown)
                         + (f"; and {more} more" if more > 0 else ""))
        else:
            lines.append("  every key placed")
        return "\n".join(lines)
