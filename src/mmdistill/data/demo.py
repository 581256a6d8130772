"""Generated datasets for demos and tests (`mmdistill demo-data KIND DIR`).

The `demo` kind is built so that distillation has something to transfer. Each case has a
pattern (horizontal or vertical stripes, plain in the image) and a severity (plain in the
report text, only faintly visible in the image as the brightness of a corner patch). The
`finding` label needs both; `urgent` is "vertical and severe". The train labels carry 20%
annotation noise on severity (dev and test are clean, as if adjudicated). So:

- the image+text teacher reads severity from the text and sees through the noise;
- an image-only student must learn the faint cue, and learns it better from the teacher's
  clean soft targets than from the noisy hard labels: that is the gain KD should show.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from mmdistill.errors import UserError
from mmdistill.registry import Registry

DEMO_KINDS: Registry[Callable[[Path, int], dict[str, int]]] = Registry("demo-data kind")

MILD = ["mild changes", "mild findings", "a mildly abnormal appearance", "minimal mild abnormality", "mild, non-acute features"]
SEVERE = ["severe changes", "severe findings", "a severely abnormal appearance", "extensive severe abnormality", "severe, acute features"]
FILLER = ["Follow-up advised.", "Compared with prior study.", "Clinical correlation recommended.", "Report dictated.", ""]
PATTERNS = ["horizontal", "vertical"]


def _image(rng: np.random.Generator, pattern: int, severe: int, size: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    coord = xx if pattern else yy
    period = rng.uniform(5, 8)
    stripes = 0.5 + 0.35 * np.sin(2 * np.pi * coord / period + rng.uniform(0, 2 * np.pi))
    tint = rng.uniform(0.7, 1.0, size=3)
    img = stripes[..., None] * tint + rng.normal(0, 0.08, size=(size, size, 3))
    # the faint severity cue: a corner patch brighter when severe, blurred by per-image noise
    # (an image-only model can reach about 90% on severity from it, the text gives 100%)
    patch = 0.35 + 0.3 * severe + rng.normal(0, 0.12)
    img[1:11, 1:11, :] = patch + rng.normal(0, 0.05, size=(10, 10, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _report(rng: np.random.Generator, severe: int) -> str:
    age, sex = int(rng.integers(20, 90)), ["female", "male"][int(rng.integers(2))]
    phrase = (SEVERE if severe else MILD)[int(rng.integers(5))]
    filler = FILLER[int(rng.integers(len(FILLER)))]
    return f"Imaging shows {phrase}. {age}-year-old {sex}. {filler}".strip()


@DEMO_KINDS.register("demo")
def write_demo(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    sizes = sizes or {"train": 480, "dev": 160, "test": 240}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            pattern, severe = int(rng.integers(2)), int(rng.integers(2))
            name = f"images/{split}_{i:04d}.png"
            Image.fromarray(_image(rng, pattern, severe)).save(root / name)
            text = _report(rng, severe)
            label_severe = severe ^ int(rng.random() < 0.2) if split == "train" else severe
            finding = f"{PATTERNS[pattern]}_{'severe' if label_severe else 'mild'}"
            rows.append({"image": name, "report": text, "finding": finding, "urgent": int(pattern == 1 and label_severe)})
        with (root / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = n
    return counts


def write_demo_data(kind: str, root: str | Path, seed: int = 0) -> dict[str, int]:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a directory")
    return DEMO_KINDS.get(kind, "KIND")(root, seed)
