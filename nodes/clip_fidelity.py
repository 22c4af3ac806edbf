"""Prompt fidelity for the diversity nodes: the CLIP score from ComfyUI's own clip_l and CLIP vision objects.

The maths lives in sda_core.diversity.clip_score. Here: the optional inputs, which tower inside a CLIP object
is clip_l, its projected pooled output (ComfyUI's SD1 clip_l returns the *unprojected* pooled output by
default, in 0.3.75 and 0.8.0 alike, so the projection is asked for explicitly), and the projected image
embeddings (`image_embeds`) of a CLIP_VISION, preprocessed by CLIP vision's own `encode_image`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.clip_model
import comfy.sd1_clip
from comfy_api.latest import io

from ..sda_core.diversity.clip_score import EXPECTED, ClipScore, ClipTowerMismatch, Tower, check_towers, clip_score
from . import host

IMAGES_PER_PASS = 16  # CLIP vision batch: ViT-L/14 at 224 px, a few hundred MB of activations


def inputs() -> list:
    """The three optional inputs every node that reports a CLIP score takes."""
    return [
        io.Clip.Input("clip_score_clip", optional=True,
                      tooltip="Optional, for the CLIP score (prompt fidelity, 100 x max(cos, 0): 0-100, higher = "
                              "closer to the prompt): a CLIP holding clip_l with its text projection, e.g. Load CLIP "
                              "(type stable_diffusion) with openai/clip-vit-large-patch14's model.safetensors. Not "
                              "the model's own text encoder (Qwen3 for Z-Image). Connect clip_vision too; leave both "
                              "empty to skip the score."),
        io.ClipVision.Input("clip_vision", optional=True,
                            tooltip="Optional, for the CLIP score: CLIP ViT-L/14 from Load CLIP Vision, the image "
                                    "tower that pairs with clip_l (openai/clip-vit-large-patch14's model.safetensors "
                                    "holds both)."),
        io.String.Input("clip_score_prompt", optional=True, multiline=True, default="",
                        tooltip="The prompt the images are scored against (the positive prompt's text; a prompt "
                                "cannot be read back from a CONDITIONING). Needed when the CLIP towers are "
                                "connected; convert it to an input to share one text with the prompt encoder."),
    ]


def _text_tower(clip) -> comfy.sd1_clip.SDClipModel:
    """The clip_l text encoder inside a CLIP object (SD1, SDXL, SD3, Flux, HiDream … all name it `clip_l`)."""
    model = getattr(clip, "cond_stage_model", None)
    if model is None:
        raise ClipTowerMismatch(f"clip_score_clip: expected a CLIP object (from Load CLIP), got {type(clip).__name__}")
    tower = getattr(model, "clip_l", None)
    if isinstance(tower, comfy.sd1_clip.SDClipModel) and isinstance(tower.transformer, comfy.clip_model.CLIPTextModel):
        return tower
    found = ", ".join(name for name, _ in model.named_children()) or type(model).__name__
    raise ClipTowerMismatch(f"clip_score_clip: this CLIP holds {found} ({type(model).__name__}), not clip_l. "
                            f"The CLIP score pairs {EXPECTED}.")


def _text_info(tower: comfy.sd1_clip.SDClipModel) -> Tower:
    dim, hidden = tower.transformer.text_projection.weight.shape
    return Tower("text", hidden=int(hidden), dim=int(dim), layers=int(tower.num_layers))


def _vision_info(clip_vision) -> Tower:
    model = getattr(clip_vision, "model", None)
    projection = getattr(model, "visual_projection", None)
    vision = getattr(model, "vision_model", None)
    if (not isinstance(model, comfy.clip_model.CLIPVisionModelProjection) or not isinstance(projection, torch.nn.Module)
            or getattr(vision.embeddings, "class_embedding", None) is None):
        found = type(model).__name__ if model is not None else type(clip_vision).__name__
        if isinstance(model, comfy.clip_model.CLIPVisionModelProjection):
            found += " without a CLIP image projection (SigLIP?)"
        raise ClipTowerMismatch(f"clip_vision: found {found}, expected a CLIP vision model with its image projection; "
                                f"the CLIP score pairs {EXPECTED}.")
    dim, hidden = projection.weight.shape
    return Tower("vision", hidden=int(hidden), dim=int(dim), layers=len(vision.encoder.layers))


def _text_embedding(clip, tower: comfy.sd1_clip.SDClipModel, prompt: str) -> torch.Tensor:
    """clip_l's projected pooled output (text_projection at the end-of-text token) of the prompt, [D]."""
    tokens = clip.tokenize(prompt)
    if "l" not in tokens:
        raise ClipTowerMismatch(f"clip_score_clip: its tokenizer gives {sorted(tokens)}, no clip_l tokens ('l')")
    patcher = clip.load_model()
    tower.set_clip_options({"projected_pooled": True, "execution_device": patcher.load_device})
    try:
        pooled = tower.encode_token_weights(tokens["l"])[1]
    finally:
        tower.reset_clip_options()
    return pooled[0].detach().float().cpu()


def _image_embeddings(clip_vision, images: torch.Tensor) -> torch.Tensor:
    """CLIP vision's projected image embeddings [N, D], its own preprocessing, a few images per pass."""
    out = []
    for start in range(0, images.shape[0], IMAGES_PER_PASS):
        host.throw_if_interrupted()
        out.append(clip_vision.encode_image(images[start:start + IMAGES_PER_PASS])["image_embeds"].float().cpu())
    return torch.cat(out)


@dataclass
class PromptFidelity:
    """Two checked towers and the prompt's embedding, ready to score image batches."""

    clip_vision: object
    prompt: str
    text_embed: torch.Tensor
    text_tower: Tower
    vision_tower: Tower

    def score(self, images: torch.Tensor) -> ClipScore:
        return clip_score(_image_embeddings(self.clip_vision, images), self.text_embed, self.prompt,
                          text_tower=self.text_tower.name, vision_tower=self.vision_tower.name)


def prepare(clip, clip_vision, prompt: str | None) -> PromptFidelity | None:
    """None when neither tower is connected; else the checked towers and the prompt embedded (fails fast,
    before any sampling, on a missing half, an empty prompt or towers that do not match)."""
    if clip is None and clip_vision is None:
        return None
    if clip is None or clip_vision is None:
        given, missing = ("clip_vision", "clip_score_clip") if clip is None else ("clip_score_clip", "clip_vision")
        raise ClipTowerMismatch(f"{given} is connected but {missing} is not: the CLIP score needs both towers "
                                f"({EXPECTED}); connect {missing} or disconnect {given}.")
    if not (prompt or "").strip():
        raise ValueError("clip_score_prompt is empty: type the prompt the images should show (the positive "
                         "prompt's text), or disconnect clip_score_clip and clip_vision to skip the CLIP score.")
    tower = _text_tower(clip)
    text, vision = _text_info(tower), _vision_info(clip_vision)
    check_towers(text, vision)
    return PromptFidelity(clip_vision=clip_vision, prompt=prompt, text_embed=_text_embedding(clip, tower, prompt),
                          text_tower=text, vision_tower=vision)
