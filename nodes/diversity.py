"""Diversity nodes: a multi-seed grid scored with LPIPS and pixel std, a model-beside-model comparison, a scorer."""
from __future__ import annotations

import time

import comfy.samplers
from comfy_api.latest import io

from ..sda_core.diversity.grid import draw_heatmap
from ..sda_core.diversity.limits import BATCH_SIZE, CFG, MAX_ROWS, MIN_ROWS, NUM_SEEDS, SIZE, STEPS
from ..sda_core.diversity.results import DiversityResult, compare_image, compare_results, grid_header, grid_report
from ..sda_core.diversity.scores import score_batch
from ..sda_core.seeds import resolve_seeds
from . import clip_fidelity, host, sampling

CATEGORY = "SDA"
DiversityType = io.Custom("SDA_DIVERSITY")
LPIPS_NETS = ["alex", "vgg", "squeeze"]
LPIPS_SIZES = ["short side 256", "native"]
ROLES = ["none", *map(str, range(1, MAX_ROWS + 1))]


def _score_outputs() -> list:
    """The two scores every diversity node outputs, alike on each."""
    return [
        io.Float.Output("avg_lpips", display_name="avg_lpips",
                        tooltip="Average pairwise LPIPS over all image pairs, 0…~1; higher = more diverse."),
        io.Float.Output("pixel_std", display_name="pixel_std",
                        tooltip="Mean per-image pixel std in [0, 0.5]; a drop warns of grey/flat collapse."),
    ]


def _lpips_inputs() -> list:
    return [
        io.Combo.Input("lpips_net", options=LPIPS_NETS, default="alex",
                       tooltip="LPIPS backbone. alex is what the SDA card reports (and the lpips package "
                               "recommends as a metric); vgg/squeeze give other, not comparable, numbers."),
        io.Combo.Input("lpips_size", options=LPIPS_SIZES, default="short side 256",
                       tooltip="Resize so the short side is 256 px before LPIPS (the card's setting: numbers comparable "
                               "across resolutions), or score at the native size (slower, not comparable)."),
    ]


def _resize(lpips_size: str) -> int | None:
    return 256 if lpips_size == "short side 256" else None


class SDASeedDiversityGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDASeedDiversityGrid",
            display_name="SDA Seed Diversity Grid",
            category=CATEGORY,
            description=("Render one prompt with many seeds (image k = KSampler's image for seed k), score the batch "
                         "with average pairwise LPIPS and pixel std, and draw a labelled grid."),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to sample, with its adapters/patches (any architecture "
                                                "ComfyUI samples: its own latent format is used)."),
                io.Conditioning.Input("positive", tooltip="The prompt, as for KSampler."),
                io.Conditioning.Input("negative", tooltip="The negative prompt, as for KSampler (unused at cfg 1)."),
                io.Vae.Input("vae", tooltip="The model's VAE: decodes every image for scoring and the grid."),
                io.Int.Input("width", default=1024, min=SIZE[0], max=SIZE[1], step=16,
                             tooltip="Image width in pixels, rounded down to whole 8-pixel latent cells as "
                                     "EmptyLatentImage does; 1024 is Z-Image-Turbo's native size."),
                io.Int.Input("height", default=1024, min=SIZE[0], max=SIZE[1], step=16,
                             tooltip="Image height in pixels, rounded down to whole 8-pixel latent cells as "
                                     "EmptyLatentImage does; 1024 is Z-Image-Turbo's native size."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="First seed; the grid uses seed, seed+1, … unless seed_list is set. "
                                     "Image k equals KSampler's image for seed k."),
                io.Int.Input("num_seeds", default=16, min=NUM_SEEDS[0], max=NUM_SEEDS[1],
                             tooltip="How many seeds (images); 16 as in the SDA card. More seeds: less noise in "
                                     "the scores, linearly more time."),
                io.String.Input("seed_list", default="",
                                tooltip="e.g. 42,123,777,999 — wins over seed/num_seeds when not empty. Use one list "
                                        "for every row you compare."),
                io.Int.Input("steps", default=8, min=STEPS[0], max=STEPS[1],
                             tooltip="Sampling steps, as for KSampler; 8 is Z-Image-Turbo's distilled setting."),
                io.Float.Input("cfg", default=1.0, min=CFG[0], max=CFG[1], step=0.1, round=0.01,
                               tooltip="Classifier-free guidance, as for KSampler; 1 (no negative pass) for "
                                       "distilled models, ~4 for a many-step teacher."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="ComfyUI's sampler. Those that draw noise while sampling (ancestral, SDE) "
                                       "run one seed at a time so every image still equals KSampler's."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="ComfyUI's noise schedule; simple is Z-Image-Turbo's."),
                io.Int.Input("batch_size", default=4, min=BATCH_SIZE[0], max=BATCH_SIZE[1],
                             tooltip="Seeds sampled together: speed against memory. The images do not depend on "
                                     "it (batch 1 == batch 4)."),
                io.String.Input("label", default="model", tooltip="The row's name in the grid header and in "
                                                                   "Diversity Compare's table."),
                *_lpips_inputs(),
                *clip_fidelity.inputs(),
            ],
            outputs=[
                io.Image.Output("grid", display_name="grid",
                                tooltip="The labelled grid: seed under each tile, label, settings and scores on top."),
                io.Image.Output("images", display_name="images", tooltip="The decoded images, in seed order."),
                *_score_outputs(),
                io.String.Output("report", display_name="report",
                                 tooltip="JSON: settings, seeds, every score, seconds per image, the pairwise "
                                         "matrix summary and the definitions."),
                DiversityType.Output("result", display_name="result",
                                     tooltip="Everything above for SDA Diversity Compare (one row)."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, vae, width, height, seed, num_seeds, seed_list, steps, cfg,
                sampler_name, scheduler, batch_size, label, lpips_net="alex", lpips_size="short side 256",
                clip_score_clip=None, clip_vision=None, clip_score_prompt="") -> io.NodeOutput:
        seeds = resolve_seeds(seed, num_seeds, seed_list)
        lpips = host.lpips_model(lpips_net)  # before sampling: missing weights fail fast
        fidelity = clip_fidelity.prepare(clip_score_clip, clip_vision, clip_score_prompt)  # so do mismatched towers
        started = time.perf_counter()
        latents, used_batch = sampling.sample_seeds(
            model, positive, negative, seeds, width=width, height=height, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, batch_size=batch_size)
        host.throw_if_interrupted()
        images = host.decode(vae, latents)
        seconds = (time.perf_counter() - started) / len(seeds)
        rendered_h, rendered_w = int(images.shape[1]), int(images.shape[2])
        settings = {"width": rendered_w, "height": rendered_h, "steps": steps, "cfg": cfg, "sampler": sampler_name,
                    "scheduler": scheduler, "batch_size": used_batch}
        notes = []
        if (rendered_w, rendered_h) != (width, height):
            notes.append(f"asked {width}×{height}, rendered {rendered_w}×{rendered_h}: the latent holds whole "
                         f"{sampling.LATENT_FACTOR}-pixel blocks (as EmptyLatentImage and KSampler)")
        if used_batch != batch_size:
            notes.append(f"{sampler_name} draws noise while sampling: seeds were sampled one at a time")
        if notes:
            settings["note"] = "; ".join(notes)
        scores, matrix = score_batch(images, lpips, _resize(lpips_size))
        result = DiversityResult(label=label, images=images, seeds=seeds, scores=scores, matrix=matrix,
                                 settings=settings, clip_score=fidelity.score(images) if fidelity else None,
                                 seconds_per_image=seconds)
        result.grid = result.draw_grid(grid_header(label, settings, scores, result.clip_score))
        report = grid_report(result)
        return io.NodeOutput(result.grid, images, scores.avg_lpips, scores.pixel_std, report, result,
                             ui=host.image_and_text_ui(result.grid, report, cls))


class SDADiversityCompare(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDADiversityCompare",
            display_name="SDA Diversity Compare",
            category=CATEGORY,
            description=(f"{MIN_ROWS} to {MAX_ROWS} Seed Diversity Grid results side by side, one row per model, with the recovery "
                         "(candidate − baseline) / (teacher − baseline) when a baseline and a teacher are marked."),
            is_output_node=True,
            inputs=[
                *(DiversityType.Input(f"result_{k}", optional=k > MIN_ROWS,
                                      tooltip=f"A Seed Diversity Grid's result: row {k} of the table"
                                              + (" (optional)." if k > MIN_ROWS else "."))
                  for k in range(1, MAX_ROWS + 1)),
                io.Combo.Input("baseline", options=ROLES, default="1",
                               tooltip="Which input is the collapsed baseline (e.g. the plain turbo model): the "
                                       "reference for LPIPS differences, relative sharpness and the recovery."),
                io.Combo.Input("teacher", options=ROLES, default="none",
                               tooltip="Which input is the many-step teacher. With a baseline and a teacher, each "
                                       "other row gets its recovery (shown only above the scores' noise)."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image",
                                tooltip="One row per model (its grid, its scores beside it), warnings on top."),
                io.String.Output("table", display_name="table",
                                 tooltip="The comparison as a Markdown table, recovery lines, warnings, definitions."),
            ],
        )

    @classmethod
    def execute(cls, result_1, result_2, baseline="1", teacher="none", **more) -> io.NodeOutput:
        results = [result_1, result_2, *(more.get(f"result_{k}") for k in range(MIN_ROWS + 1, MAX_ROWS + 1))]
        comparison = compare_results(results, baseline=None if baseline == "none" else int(baseline),
                                     teacher=None if teacher == "none" else int(teacher))
        image = compare_image(comparison)
        return io.NodeOutput(image, comparison.table, ui=host.image_and_text_ui(image, comparison.table, cls))


class SDALPIPSScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDALPIPSScore",
            display_name="SDA LPIPS Diversity Score",
            category=CATEGORY,
            description="Average pairwise LPIPS, pixel std, sharpness and Vendi score of any IMAGE batch, with the pairwise heat-map.",
            is_output_node=True,
            inputs=[io.Image.Input("images", tooltip="Any IMAGE batch of at least 2 images, e.g. one prompt over "
                                                     "many seeds."), *_lpips_inputs(), *clip_fidelity.inputs()],
            outputs=[
                *_score_outputs(),
                io.Image.Output("heatmap", display_name="heatmap",
                                tooltip="The pairwise LPIPS matrix as a heat-map (values written for 16 images "
                                        "or fewer)."),
                io.String.Output("report", display_name="report",
                                 tooltip="JSON: every score, the pairwise matrix summary and the definitions."),
            ],
        )

    @classmethod
    def execute(cls, images, lpips_net="alex", lpips_size="short side 256", clip_score_clip=None, clip_vision=None,
                clip_score_prompt="") -> io.NodeOutput:
        fidelity = clip_fidelity.prepare(clip_score_clip, clip_vision, clip_score_prompt)
        scores, matrix = score_batch(images, host.lpips_model(lpips_net), _resize(lpips_size))
        labels = [str(k) for k in range(matrix.shape[0])]
        heatmap = draw_heatmap(matrix, labels, f"pairwise LPIPS ({scores.net}) — avg {scores.avg_lpips:.3f}")
        result = DiversityResult(label="images", images=images, seeds=labels, scores=scores, matrix=matrix, settings={},
                                 clip_score=fidelity.score(images) if fidelity else None)
        report = grid_report(result)
        return io.NodeOutput(scores.avg_lpips, scores.pixel_std, heatmap, report,
                             ui=host.image_and_text_ui(heatmap, report, cls))


NODES = [SDASeedDiversityGrid, SDADiversityCompare, SDALPIPSScore]
