"""CLIP score: how close each image stays to its prompt, from CLIP's own embeddings (Hessel et al. 2021).

Diversity scores cannot tell a method that varies the picture from one that leaves the prompt; the CLIP
score can. For one image and one prompt

    CLIP score = 100 · max(cos(E_image, E_text), 0)

with E_image and E_text CLIP's projected image and text embeddings. This is the convention of
torchmetrics' `CLIPScore` and of most text-to-image papers; Hessel et al.'s CLIP-S uses the weight
w = 2.5 instead of 100 (CLIP-S = CLIP score / 40). The node layer gets the embeddings from ComfyUI's own
CLIP objects; this module holds the maths and the check that the two towers belong together.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SCALE = 100.0  # torchmetrics' CLIPScore weight; Hessel et al.'s CLIP-S uses w = 2.5

DEFINITION = (
    "CLIP score (prompt fidelity; Hessel et al. 2021): for each image, 100 x max(cos(E_image, E_text), 0), "
    "E_image the projected image embedding of CLIP ViT-L/14 (ComfyUI's CLIP vision preprocessing: short side "
    "resized to the model's size, bicubic, centre crop, CLIP mean/std) and E_text the projected text embedding of "
    "the prompt by clip_l (its end-of-text token; a prompt longer than 75 tokens counts its first 75). Reported "
    "as the mean over the images and their spread (population std, ddof = 0). The factor 100 is torchmetrics' "
    "CLIPScore convention used by most text-to-image papers; Hessel et al.'s CLIP-S = 2.5 x max(cos, 0) = CLIP "
    "score / 40. Higher = closer to the prompt; compare only numbers from the same towers and prompt."
)

# Known CLIP towers by width, to name what a user connected: text hidden size -> name, and
# vision (hidden size, projection size) -> name.
TEXT_TOWERS = {768: "clip_l (CLIP ViT-L/14 text)", 1024: "OpenCLIP ViT-H/14 text", 1280: "clip_g (OpenCLIP ViT-bigG/14 text)"}
VISION_TOWERS = {(1024, 768): "CLIP ViT-L/14", (1280, 1024): "OpenCLIP ViT-H/14", (1664, 1280): "OpenCLIP ViT-bigG/14"}
EXPECTED = ("clip_l in a Load CLIP node (type stable_diffusion) with CLIP ViT-L/14 in a Load CLIP Vision node; "
            "openai/clip-vit-large-patch14's model.safetensors holds both towers and loads in both nodes")


class ClipTowerMismatch(ValueError):
    """The text and image towers cannot give a CLIP score together."""


@dataclass(frozen=True)
class Tower:
    """What a user connected, as far as the score cares: a name, the width inside, the embedding size."""

    kind: str  # "text" or "vision"
    hidden: int
    dim: int
    layers: int = 0

    @property
    def name(self) -> str:
        known = TEXT_TOWERS.get(self.hidden) if self.kind == "text" else VISION_TOWERS.get((self.hidden, self.dim))
        size = f"width {self.hidden}, {self.layers} layers, {self.dim}-dim embedding"
        return f"{known} ({size})" if known else f"an unknown CLIP {self.kind} tower ({size})"


def check_towers(text: Tower, vision: Tower) -> None:
    """Raise ClipTowerMismatch unless both towers embed into the same space size."""
    if text.dim != vision.dim:
        raise ClipTowerMismatch(
            f"clip_score_clip / clip_vision: the towers do not match: the text tower is {text.name}, the image tower "
            f"is {vision.name}; their embeddings must have the same size. Expected {EXPECTED}.")


def cosine(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [N] (float64) of each image embedding [N, D] with one text embedding [D] or [1, D]."""
    images = torch.as_tensor(image_embeds).detach().to("cpu", torch.float64)
    text = torch.as_tensor(text_embed).detach().to("cpu", torch.float64).reshape(-1)
    if images.dim() != 2 or images.shape[1] != text.numel():
        raise ClipTowerMismatch(f"CLIP score needs image embeddings [N, D] and a text embedding [D]; got "
                                f"{tuple(images.shape)} and {tuple(text.shape)}")
    for what, x in (("image", images), ("text", text)):
        if not torch.isfinite(x).all():
            raise ValueError(f"CLIP score: the {what} embedding has NaN/Inf values; the {what} tower's weights "
                             "are broken or were not loaded")
    norms = images.norm(dim=1)
    if float(text.norm()) == 0.0 or bool((norms == 0).any()):
        what = "text" if float(text.norm()) == 0.0 else "image"
        raise ValueError(f"CLIP score: a {what} embedding is all zeros, so it has no direction; the {what} tower's "
                         "projection weights are missing (e.g. a checkpoint's clip_l without text_projection)")
    return (images @ text) / (norms * text.norm())


def per_image_scores(image_embeds: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """100 · max(cos, 0) per image, [N] float64."""
    return SCALE * cosine(image_embeds, text_embed).clamp(min=0.0)


@dataclass
class ClipScore:
    """The CLIP score of one batch against one prompt: per image, and their mean and spread."""

    mean: float
    std: float  # population std over the images (ddof = 0)
    min: float
    max: float
    per_image: list[float]
    prompt: str
    text_tower: str = ""
    vision_tower: str = ""
    scale: float = SCALE

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    def line(self) -> str:
        """One line for a grid header."""
        return f"CLIP score {self.mean:.2f} ± {self.std:.2f} (min {self.min:.2f}, max {self.max:.2f})"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "per_image": self.per_image,
                "n_images": self.n_images, "prompt": self.prompt, "text_tower": self.text_tower,
                "vision_tower": self.vision_tower, "scale": self.scale}


def clip_score(image_embeds: torch.Tensor, text_embed: torch.Tensor, prompt: str, text_tower: str = "",
               vision_tower: str = "") -> ClipScore:
    """Score a batch: per-image 100 · max(cos, 0), their mean and population std (ddof = 0)."""
    scores = np.asarray(per_image_scores(image_embeds, text_embed))
    return ClipScore(mean=float(scores.mean()), std=float(scores.std()), min=float(scores.min()),
                     max=float(scores.max()), per_image=[float(s) for s in scores], prompt=prompt,
                     text_tower=text_tower, vision_tower=vision_tower)
