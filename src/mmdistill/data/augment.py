"""Train-time image augmentation (seed 004's set: colour jitter, rotation, scale, translate,
flips, grayscale), drawn once per sample and applied alike to every image modality of it.

One draw per sample matters for multimodal data: an RGB frame and its infrared twin must be
rotated and flipped together, and teacher and student must see the same view. Photometric
changes touch only 3-channel images (jittering an IR or CT channel's "hue" means nothing).
Draws come from a generator seeded by (seed, sample index, view index) (`data/views.py`), so
a view is the same image in every epoch, process and model, which is what lets the teacher's
outputs be cached per view.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from mmdistill.config.schema import AugmentSpec


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen))


class Augmenter:
    def __init__(self, spec: AugmentSpec, seed: int):
        self.spec = spec
        self.seed = seed

    def generator(self, index: int, view: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, index, view)) & 0x7FFF_FFFF_FFFF_FFFF)

    def __call__(self, images: dict[str, torch.Tensor], rgb: set[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
        s = self.spec
        angle = _uniform(gen, -s.rotation_degrees, s.rotation_degrees) if s.rotation_degrees else 0.0
        scale = _uniform(gen, *s.scale) if s.scale else 1.0
        hflip = bool(torch.rand((), generator=gen) < s.horizontal_flip_prob)
        vflip = bool(torch.rand((), generator=gen) < s.vertical_flip_prob)
        shift = [_uniform(gen, -f, f) for f in s.translate] if s.translate else [0.0, 0.0]
        jitter = {name: _uniform(gen, max(0.0, 1 - v), 1 + v) for name, v in
                  (("brightness", s.brightness), ("contrast", s.contrast), ("saturation", s.saturation)) if v}
        hue = _uniform(gen, -s.hue, s.hue) if s.hue else 0.0
        gray = bool(torch.rand((), generator=gen) < s.grayscale_prob)
        out = {}
        for name, img in images.items():
            if angle or scale != 1.0 or any(shift):
                h, w = img.shape[-2:]
                img = TF.affine(img, angle=angle, translate=[shift[0] * w, shift[1] * h], scale=scale, shear=[0.0, 0.0])
            if hflip:
                img = TF.horizontal_flip(img)
            if vflip:
                img = TF.vertical_flip(img)
            if name in rgb and img.shape[0] == 3:
                if "brightness" in jitter:
                    img = TF.adjust_brightness(img, jitter["brightness"])
                if "contrast" in jitter:
                    img = TF.adjust_contrast(img, jitter["contrast"])
                if "saturation" in jitter:
                    img = TF.adjust_saturation(img, jitter["saturation"])
                if hue:
                    img = TF.adjust_hue(img, hue)
                if gray:
                    img = TF.rgb_to_grayscale(img, num_output_channels=3)
            out[name] = img.clamp(0.0, 1.0)
        return out
