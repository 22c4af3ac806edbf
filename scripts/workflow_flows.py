"""The shipped workflows, described node by node: widget values and links BY NAME (compiled to
workflows/*.json by scripts/build_workflows.py with scripts/workflow_compiler.py).

To add a workflow: write a function decorated with @workflow that returns its Flow (start from `_flow`,
which puts the model-file Note first), then run `COMFYUI_PATH=… python scripts/build_workflows.py`.
The tests check every workflow here is in workflows/ and up to date, and that ComfyUI validates it.
"""
from __future__ import annotations

from typing import Callable

from workflow_compiler import Flow, Out

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


def _flow(name: str, note: str) -> Flow:
    """A Flow whose Note says which model files to download and where, then `note`."""
    return Flow(name, MODELS_NOTE + note, model_links=MODEL_LINKS)


FLOWS: list[Callable[[], Flow]] = []  # in the order they were written


def workflow(make: Callable[[], Flow]) -> Callable[[], Flow]:
    """Register a workflow; its function name is its file name."""
    FLOWS.append(make)
    return make


def all_flows() -> list[Flow]:
    """Every shipped workflow's description; names are unique and equal to their function's."""
    flows = []
    for make in FLOWS:
        flow = make()
        if flow.name != make.__name__:
            raise ValueError(f"workflow {make.__name__}() describes {flow.name!r}: name them alike")
        flows.append(flow)
    return flows


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


@workflow
def sda_lokr_basic() -> Flow:
    f = _flow("sda_lokr_basic", f"""
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


@workflow
def sda_style_stack() -> Flow:
    f = _flow("sda_style_stack", f"""
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


@workflow
def training_adapter_inversion() -> Flow:
    f = _flow("training_adapter_inversion", f"""
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


@workflow
def seed_grid_diversity_comparison() -> Flow:
    f = _flow("seed_grid_diversity_comparison", f"""
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


@workflow
def sda_early_steps() -> Flow:
    f = _flow("sda_early_steps", f"""
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


@workflow
def diversity_methods_compared() -> Flow:
    f = _flow("diversity_methods_compared", f"""
Adapter, in `models/loras/`: the SDA LoKr, here `{SDA_LOKR}` (rename to match your file).
Optional, in `models/diffusion_models/`: the base (non-distilled) Z-Image, `{TEACHER}`, for the last row.
LPIPS needs torchvision's AlexNet weights: downloaded on first use, or put `alexnet-owt-7be5be79.pth`
into `models/lpips/` on an offline machine.

## Use
One prompt, the same 16 seeds, six ways to get varied seeds out of Z-Image-Turbo, scored side by side in
one *Diversity Compare* table (row 1 is the baseline; the second Note says what each row is).
Where the files go: the grids show on their nodes and save nothing; the comparison image is saved as
`ComfyUI/output/diversity_methods_00001_.png` (…2, …3 on later runs) and the table shows on the canvas.
""")
    _loaders_and_prompt(f)
    f.add("rows", "Note", title="The rows", text=f"""\
1. Baseline: Z-Image-Turbo as it is (8 steps, cfg 1).
2. + SDA LoKr on every step (`{SDA_LOKR}` in models/loras).
3. + SDA LoKr on the first 2 steps only (Adapter Strength by Step).
4. + Conditioning Noise: the prompt embedding noised on the first 2 steps, a different draw per seed.
5. + Condition Annealing (CADS, Sadat et al. 2024): the prompt embedding noised early, annealed away.
6. + the base Z-Image on the first step with cfg 4 (Gandikota & Bau 2025). Muted: put `{TEACHER}` in
   models/diffusion_models, select the three muted nodes and unmute them (Ctrl+M).

Read avg LPIPS / Vendi (diversity) next to sharpness relative to the baseline: a method that buys diversity
by blurring, or by leaving the prompt, shows it there.
""")
    f.add("shift", "ModelSamplingAuraFlow", model=Out("unet"), shift=3.0)
    f.add("lokr", "SDALoKrLoader", title="+ SDA LoKr", model=Out("shift"), lokr_name=SDA_LOKR, strength=1.0)
    f.add("early2", "SDAScheduledAdapter", title="+ SDA on the first 2 steps", model=Out("shift"),
          lora_name=SDA_LOKR, strength=1.0, step_strengths="1,1,0,0,0,0,0,0", start_percent=0.0, end_percent=1.0)
    f.add("noise", "SDAConditioningNoise", title="+ conditioning noise", model=Out("shift"), strength=0.2,
          start_percent=0.0, end_percent=0.25, protect_tokens=0)
    f.add("cads", "SDAConditionAnnealing", title="+ CADS", model=Out("shift"), tau1=0.6, tau2=0.9,
          noise_scale=0.25, psi=1.0)
    f.add("base_unet", "UNETLoader", title="Base Z-Image (optional, muted)", mode=2, unet_name=TEACHER,
          weight_dtype="default")
    f.add("base_shift", "ModelSamplingAuraFlow", title="Base shift (muted)", mode=2, model=Out("base_unet"), shift=3.0)
    f.add("by_step", "SDAModelByStep", title="+ base model on the first step (muted)", mode=2, model=Out("shift"),
          model_early=Out("base_shift"), cfg_early=4.0, start_percent=0.0, end_percent=0.125)
    grid = dict(positive=Out("positive"), negative=Out("negative"), vae=Out("vae"), width=1024, height=1024,
                seed=0, num_seeds=16, seed_list="", batch_size=4, lpips_net="alex", lpips_size="short side 256",
                **SAMPLING)
    rows = [("grid_base", "Baseline: Z-Image-Turbo", "shift", "Turbo", 0),
            ("grid_sda", "+ SDA LoKr", "lokr", "+ SDA", 0),
            ("grid_sda2", "+ SDA on the first 2 steps", "early2", "+ SDA steps 1-2", 0),
            ("grid_noise", "+ conditioning noise", "noise", "+ cond. noise", 0),
            ("grid_cads", "+ CADS", "cads", "+ CADS", 0),
            ("grid_base_step", "+ base model on step 1 (muted)", "by_step", "+ base step 1", 2)]
    for key, title, model, label, mode in rows:
        f.add(key, "SDASeedDiversityGrid", title=title, mode=mode, model=Out(model), label=label, **grid)
    results = {f"result_{k}": Out(key, "result") for k, (key, *_rest) in enumerate(rows, start=1)}
    f.add("compare", "SDADiversityCompare", **results, baseline="1", teacher="none")
    f.add("table", "PreviewAny", title="Diversity table", source=Out("compare", "table"))
    f.add("save", "SaveImage", images=Out("compare", "image"), filename_prefix="diversity_methods")
    return f


TRAINING_PROMPTS = "\n".join([
    "A street musician playing a violin in a rainy city square at dusk, cinematic photo.",
    "A red fox crossing a snowy forest clearing, morning light, wildlife photography.",
    "An old fisherman mending nets on a wooden pier, overcast sky, documentary photo.",
    "A cyclist riding through a market street in a hillside town, summer afternoon.",
])


@workflow
def sda_training() -> Flow:
    f = _flow("sda_training", f"""
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
