"""The shipped workflows, described node by node: widget values and links BY NAME (compiled to
workflows/*.json by scripts/build_workflows.py with scripts/workflow_compiler.py).

To add a workflow: write a function decorated with @workflow that returns its Flow (start from `_flow`,
which puts the model-file Note first), then run `COMFYUI_PATH=… python scripts/build_workflows.py`.
The tests check every workflow here is in workflows/ and up to date, and that ComfyUI validates it.
"""
from __future__ import annotations

from dataclasses import dataclass
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


# --- seed grids for the other few-step families ComfyUI runs ------------------------------------------

@dataclass(frozen=True)
class ModelFile:
    """A file a family's workflow loads: its name, its folder under ComfyUI/models and where to get it."""

    name: str
    folder: str
    url: str


HF_FLUX = "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main"
HF_FLUX_TE = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main"
HF_SD35 = "https://huggingface.co/stabilityai/stable-diffusion-3.5-large-turbo/resolve/main"
HF_SD35_TE = "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders"
HF_QWEN = "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
# The files each family's seed-grid workflow loads (the tests write a stand-in for each).
FAMILY_FILES: dict[str, tuple[ModelFile, ...]] = {
    "sdxl": (ModelFile("sdxl_lightning_4step.safetensors", "checkpoints",
                       "https://huggingface.co/ByteDance/SDXL-Lightning/resolve/main/sdxl_lightning_4step.safetensors"),),
    "flux": (ModelFile("flux1-schnell.safetensors", "diffusion_models", f"{HF_FLUX}/flux1-schnell.safetensors"),
             ModelFile("clip_l.safetensors", "text_encoders", f"{HF_FLUX_TE}/clip_l.safetensors"),
             ModelFile("t5xxl_fp8_e4m3fn.safetensors", "text_encoders", f"{HF_FLUX_TE}/t5xxl_fp8_e4m3fn.safetensors"),
             ModelFile("ae.safetensors", "vae", f"{HF_FLUX}/ae.safetensors")),
    "sd35": (ModelFile("sd3.5_large_turbo.safetensors", "checkpoints", f"{HF_SD35}/sd3.5_large_turbo.safetensors"),
             ModelFile("clip_l.safetensors", "text_encoders", f"{HF_SD35_TE}/clip_l.safetensors"),
             ModelFile("clip_g.safetensors", "text_encoders", f"{HF_SD35_TE}/clip_g.safetensors"),
             ModelFile("t5xxl_fp16.safetensors", "text_encoders", f"{HF_SD35_TE}/t5xxl_fp16.safetensors")),
    "qwen_image": (
        ModelFile("qwen_image_fp8_e4m3fn.safetensors", "diffusion_models",
                  f"{HF_QWEN}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors"),
        ModelFile("qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders",
                  f"{HF_QWEN}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors"),
        ModelFile("qwen_image_vae.safetensors", "vae", f"{HF_QWEN}/vae/qwen_image_vae.safetensors"),
        ModelFile("Qwen-Image-Lightning-8steps-V1.0.safetensors", "loras",
                  "https://huggingface.co/lightx2v/Qwen-Image-Lightning/resolve/main/"
                  "Qwen-Image-Lightning-8steps-V1.0.safetensors")),
}
# Sampling as each student's card (or ComfyUI's own example) says; cfg 1 = the distilled models' guidance 0.
FAMILY_SAMPLING = {
    "sdxl": {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "sgm_uniform"},
    "flux": {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"},
    "sd35": {"steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"},
    "qwen_image": {"steps": 8, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"},
}
QWEN_SHIFT = 3.1  # ModelSamplingAuraFlow's shift in ComfyUI's Qwen-Image example


def _family_flow(name: str, family: str, model_name: str, use: str) -> Flow:
    """A Flow whose Note lists the family's files (folder/name, with links), then `use`."""
    return _files_flow(name, FAMILY_FILES[family], model_name, use)


def _files_flow(name: str, files: tuple[ModelFile, ...], model_name: str, use: str) -> Flow:
    """A Flow whose Note lists `files` (folder/name, with links), then `use`."""
    listing = "\n".join(f"- `models/{f.folder}/{f.name}` — [download]({f.url})" for f in files)
    note = f"""## Model files: {model_name}

Put these files into `ComfyUI/models/` (folder/name):

{listing}
{use}"""
    links = {f.name: {"name": f.name, "url": f.url, "directory": f.folder} for f in files}
    return Flow(name, note, model_links=links)


def _family_grid(f: Flow, family: str, label: str, model: Out, clip: Out, vae: Out, size: int,
                 empty_latent: str) -> None:
    """Prompt, the 16-seed grid with its report and saved image, and KSampler on seed 0 (the grid's first image)."""
    sampling = FAMILY_SAMPLING[family]
    f.add("positive", "CLIPTextEncode", clip=clip, text=PROMPT)
    f.add("negative", "ConditioningZeroOut", conditioning=Out("positive"))
    f.add("grid", "SDASeedDiversityGrid", title=f"Seed grid: {label}", model=model, positive=Out("positive"),
          negative=Out("negative"), vae=vae, width=size, height=size, seed=0, num_seeds=16, seed_list="",
          batch_size=4, label=label, lpips_net="alex", lpips_size="short side 256", **sampling)
    f.add("report", "PreviewAny", title="Grid report (scores, settings, seeds)", source=Out("grid", "report"))
    f.add("save_grid", "SaveImage", images=Out("grid", "grid"), filename_prefix=f"seed_grid_{family}/grid")
    f.add("latent", empty_latent, width=size, height=size, batch_size=1)
    f.add("sampler", "KSampler", title="KSampler, seed 0: the grid's first image", model=model,
          positive=Out("positive"), negative=Out("negative"), latent_image=Out("latent"), seed=0, denoise=1.0,
          controls={"seed": "fixed"}, **sampling)
    f.add("decode", "VAEDecode", samples=Out("sampler"), vae=vae)
    f.add("save", "SaveImage", images=Out("decode"), filename_prefix=f"seed_grid_{family}/seed_0")


GRID_USE = """
LPIPS needs torchvision's AlexNet weights: downloaded on first use, or put `alexnet-owt-7be5be79.pth` into
`models/lpips/` on an offline machine.

## Use
One prompt over 16 seeds; the grid scores them (average pairwise LPIPS = diversity, pixel std = contrast) and
its report shows on the canvas. Image k of the grid is exactly what KSampler gives for seed k with the same
settings: the KSampler below renders seed 0 alone for comparison. Put a many-step model's grid (or the same
model with an SDA LoKr) beside it with *SDA Diversity Compare* to see how much diversity the distillation took.
"""


@workflow
def seed_grid_sdxl() -> Flow:
    f = _family_flow("seed_grid_sdxl", "sdxl", "SDXL-Lightning 4-step (SDXL, eps)", GRID_USE + """
SDXL-Lightning's card, for ComfyUI: the all-in-one checkpoint, 4 steps, cfg 1, euler, sgm_uniform, 1024².
Other SDXL few-step students load the same way; set steps, sampler and scheduler as their card says:
- SDXL-Lightning 2 / 8 steps: `sdxl_lightning_2step.safetensors` / `sdxl_lightning_8step.safetensors` (checkpoints),
  or its LoRA (e.g. `sdxl_lightning_4step_lora.safetensors`, loras) on `sd_xl_base_1.0.safetensors` through
  *LoraLoaderModelOnly*;
- DMD2 (tianweiy/DMD2): its LoRA, e.g. `dmd2_sdxl_4step_lora_fp16.safetensors` (loras), on the SDXL base,
  4 steps, cfg 1, the lcm sampler;
- Hyper-SD (ByteDance/Hyper-SD): e.g. `Hyper-SDXL-8steps-lora.safetensors` (loras) on the SDXL base.

**v-prediction SDXL** (e.g. NoobAI-XL V-Pred): ComfyUI reads v-prediction from the checkpoint's `v_pred` key and
the grid samples it as KSampler does (tested on tiny SDXL models, eps and v). A v-prediction file without that
key needs *ModelSamplingDiscrete* (v_prediction, zsnr as its card says) between the loader and the grid.
""")
    f.add("checkpoint", "CheckpointLoaderSimple", ckpt_name=FAMILY_FILES["sdxl"][0].name)
    _family_grid(f, "sdxl", "SDXL-Lightning 4 steps", Out("checkpoint", "MODEL"), Out("checkpoint", "CLIP"),
                 Out("checkpoint", "VAE"), 1024, "EmptyLatentImage")
    return f


@workflow
def seed_grid_flux() -> Flow:
    unet, clip_l, t5, ae = (m.name for m in FAMILY_FILES["flux"])
    f = _family_flow("seed_grid_flux", "flux", "FLUX.1-schnell", GRID_USE + f"""
As ComfyUI's own FLUX.1-schnell example: *Load Diffusion Model*, *DualCLIPLoader* (type flux), *Load VAE*;
4 steps, cfg 1, euler, simple, 1024². `t5xxl_fp16.safetensors` (same folder and download page) instead of
`{t5}` if you have the memory; Comfy-Org's all-in-one `flux1-schnell-fp8.safetensors` (checkpoints) works
through *Load Checkpoint* too. FLUX.1-dev (guidance-distilled) loads the same way: about 20 steps, with
*FluxGuidance* on the prompt.
""")
    f.add("unet", "UNETLoader", unet_name=unet, weight_dtype="default")
    f.add("clip", "DualCLIPLoader", clip_name1=clip_l, clip_name2=t5, type="flux", device="default")
    f.add("vae", "VAELoader", vae_name=ae)
    _family_grid(f, "flux", "FLUX.1-schnell 4 steps", Out("unet"), Out("clip"), Out("vae"), 1024,
                 "EmptySD3LatentImage")
    return f


@workflow
def seed_grid_sd35() -> Flow:
    ckpt, clip_l, clip_g, t5 = (m.name for m in FAMILY_FILES["sd35"])
    f = _family_flow("seed_grid_sd35", "sd35", "Stable Diffusion 3.5 Large Turbo", GRID_USE + f"""
The checkpoint (gated: accept Stability AI's licence on its Hugging Face page first) holds the model and the
VAE; the three text encoders load through *TripleCLIPLoader*. The card: 4 steps, guidance 0 (cfg 1 here),
1024². `t5xxl_fp8_e4m3fn.safetensors` instead of `{t5}` saves memory. SD3.5 Large (the many-step teacher,
`sd3.5_large.safetensors`) loads the same way: about 28 steps, cfg 3.5–4.5.
""")
    f.add("checkpoint", "CheckpointLoaderSimple", ckpt_name=ckpt)
    f.add("clip", "TripleCLIPLoader", clip_name1=clip_l, clip_name2=clip_g, clip_name3=t5)
    _family_grid(f, "sd35", "SD3.5 Large Turbo 4 steps", Out("checkpoint", "MODEL"), Out("clip"),
                 Out("checkpoint", "VAE"), 1024, "EmptySD3LatentImage")
    return f


@workflow
def seed_grid_qwen_image() -> Flow:
    unet, text_encoder, vae, lightning = (m.name for m in FAMILY_FILES["qwen_image"])
    f = _family_flow("seed_grid_qwen_image", "qwen_image", "Qwen-Image + Lightning 8-step LoRA", GRID_USE + f"""
As ComfyUI's own Qwen-Image example (*CLIPLoader* type qwen_image, *ModelSamplingAuraFlow* shift {QWEN_SHIFT},
1328²) with lightx2v's Lightning LoRA: 8 steps, cfg 1, euler, simple. Qwen-Image's latents are 5-D (frames × height ×
width, like Wan's): the grid samples them in that format. `qwen_image_bf16.safetensors` (same folder) is the
full-precision model; the 4-step LoRA (`Qwen-Image-Lightning-4steps-V1.0.safetensors`, 4 steps) and later
versions (e.g. V1.1, V2.0) load the same way. A distilled model instead of the LoRA: delete the LoRA node and
load it in *Load Diffusion Model* (e.g. Comfy-Org's `qwen_image_distill_full_fp8_e4m3fn.safetensors`, steps and
cfg as its card says). The plain model without the LoRA is the many-step teacher: about 20 steps, cfg 2.5.
""")
    f.add("unet", "UNETLoader", unet_name=unet, weight_dtype="default")
    f.add("clip", "CLIPLoader", clip_name=text_encoder, type="qwen_image", device="default")
    f.add("vae", "VAELoader", vae_name=vae)
    f.add("lightning", "LoraLoaderModelOnly", title="Lightning LoRA (the few-step student)", model=Out("unet"),
          lora_name=lightning, strength_model=1.0)
    f.add("shift", "ModelSamplingAuraFlow", model=Out("lightning"), shift=QWEN_SHIFT)
    _family_grid(f, "qwen_image", "Qwen-Image Lightning 8 steps", Out("shift"), Out("clip"), Out("vae"), 1328,
                 "EmptySD3LatentImage")
    return f


# --- SDA training for another family ------------------------------------------------------------------

HF_SDXL = "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main"
# The SDXL training workflow's files: the teacher checkpoint and the student's distillation LoRA on it.
SDXL_TRAINING_FILES = (
    ModelFile("sd_xl_base_1.0.safetensors", "checkpoints", f"{HF_SDXL}/sd_xl_base_1.0.safetensors"),
    ModelFile("sdxl_lightning_4step_lora.safetensors", "loras",
              "https://huggingface.co/ByteDance/SDXL-Lightning/resolve/main/sdxl_lightning_4step_lora.safetensors"),
)
SDXL_TEACHER_CFG = 6.0  # SDXL base's usual guidance (its card samples at 5-7.5)


@workflow
def sda_training_sdxl() -> Flow:
    base, lightning = (m.name for m in SDXL_TRAINING_FILES)
    sampling = FAMILY_SAMPLING["sdxl"]
    f = _files_flow("sda_training_sdxl", SDXL_TRAINING_FILES, "SDXL base (teacher) + SDXL-Lightning 4-step LoRA "
                    "(student)", f"""
## Use
*SDA Train LoKr* on an SDXL few-step student: SDXL base is the many-step teacher, the same base with the
Lightning 4-step LoRA the student. Because the student is the teacher plus a LoRA, training runs on one set of
weights (the report's `models:` line says so). The loss trains on the student's own schedule: 4 steps, euler,
sgm_uniform (*student_steps* 4, *scheduler* sgm_uniform), the diversity term on steps 0-2 (*div_skip* 3) and the
last step pure anchor. SDXL base needs guidance: the teacher's targets use *teacher_cfg* {SDXL_TEACHER_CFG:g} with
*negative_prompt*. SDXL predicts noise (eps): the anchor compares predicted noise (see docs/method.md, "Other
architectures"). The LoKr is saved in `models/loras/` in kohya's SDXL names (`lora_unet_…`), which ComfyUI,
A1111/Forge and diffusers read.

Other SDXL students load the same way: DMD2's LoRA (e.g. `dmd2_sdxl_4step_lora_fp16.safetensors`, 4 steps)
or Hyper-SD's (e.g. `Hyper-SDXL-8steps-lora.safetensors`: *student_steps* 8, *div_skip* 7, and its scheduler);
a merged few-step checkpoint (e.g. `sdxl_lightning_4step.safetensors`) loads as the student with its own
*Load Checkpoint*, the base as the teacher (two models in memory instead of one). Out of memory: training
stops and keeps the last complete step (resume continues); lower *width*/*height* to 768.
""")
    f.add("checkpoint", "CheckpointLoaderSimple", title="Teacher: SDXL base", ckpt_name=base)
    f.add("student", "LoraLoaderModelOnly", title="Student: + Lightning 4-step LoRA", model=Out("checkpoint", "MODEL"),
          lora_name=lightning, strength_model=1.0)
    f.add("train", "SDATrainLoKr", student=Out("student"), teacher=Out("checkpoint", "MODEL"),
          clip=Out("checkpoint", "CLIP"), vae=Out("checkpoint", "VAE"), prompts=TRAINING_PROMPTS,
          negative_prompt="blurry, low quality, deformed", teacher_cfg=SDXL_TEACHER_CFG, assistant_adapter="None",
          width=1024, height=1024, steps=1000, student_steps=4, div_skip=3, scheduler=sampling["scheduler"],
          gradient_checkpointing=True, save_name="sda_lokr_sdxl_lightning_4step", checkpoint_every=100,
          resume=False, eval_every=250, eval_seeds=4)
    f.add("curves", "SaveImage", title="Save loss curves", images=Out("train", "loss_curves"),
          filename_prefix="sda_training_sdxl/loss_curves")
    f.add("path", "PreviewAny", title="Saved LoKr", source=Out("train", "lokr_path"))
    f.add("positive", "CLIPTextEncode", clip=Out("checkpoint", "CLIP"), text=PROMPT)
    f.add("negative", "ConditioningZeroOut", conditioning=Out("positive"))
    f.add("latent", "EmptyLatentImage", width=1024, height=1024, batch_size=1)
    f.add("sampler", "KSampler", title="The student with the new LoKr", model=Out("train", "MODEL"),
          positive=Out("positive"), negative=Out("negative"), latent_image=Out("latent"), seed=0, denoise=1.0,
          controls={"seed": "randomize"}, **sampling)
    f.add("decode", "VAEDecode", samples=Out("sampler"), vae=Out("checkpoint", "VAE"))
    f.add("save", "SaveImage", images=Out("decode"), filename_prefix="sda_training_sdxl/sample")
    return f
