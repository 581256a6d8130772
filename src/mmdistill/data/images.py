"""Decoding any image file into a float tensor with the configured channel count.

Medical and IR data arrive as 8-bit L/RGB/RGBA/palette PNGs and as 16-bit grayscale; all become
[channels, height, width] floats in [0, 1] before normalisation. Transparent pixels are composited
onto black (the background of CT/MR/IR frames), 16-bit values are scaled by 65535, and grayscale
is replicated when the model wants three channels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmdistill.config.schema import hw

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


def _decode(img: Image.Image) -> np.ndarray:
    """HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA) float32 in [0, 1], as the file holds it."""
    if img.mode in SIXTEEN_BIT or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        if img.mode in SIXTEEN_BIT or (img.mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 65535.0
        elif img.mode == "I":
            arr = arr / 255.0
        return np.clip(arr, 0.0, 1.0)[..., None]
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _fit_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    if channels == 4:
        if arr.shape[-1] == 4:
            return arr
        rgb = np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr
        return np.concatenate([rgb, np.ones_like(rgb[..., :1])], -1)
    if arr.shape[-1] == 4:  # composite onto black
        arr = arr[..., :3] * arr[..., 3:4]
    if channels == 1:
        return arr if arr.shape[-1] == 1 else (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return np.repeat(arr, 3, -1) if arr.shape[-1] == 1 else arr


def load_image(path: str | Path | Image.Image, channels: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Read `path` (or an image already open) as a [channels, height, width] float tensor in
    [0, 1] (`size`: N for N x N)."""
    if isinstance(path, Image.Image):
        arr = _fit_channels(_decode(path), channels)
    else:
        with Image.open(path) as img:
            img.load()
            arr = _fit_channels(_decode(img), channels)
    tensor = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    shape = hw(size)
    if tuple(tensor.shape[-2:]) != shape:
        tensor = F.interpolate(tensor[None], size=shape, mode="bilinear", align_corners=False, antialias=True)[0]
    return tensor.clamp_(0.0, 1.0)


def check_image(path: str | Path) -> None:
    """Raise if the file is not a fully decodable image (truncated files included)."""
    with Image.open(path) as img:
        img.load()
