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


def _image(rng: np.random.Generator, pattern: int, level: float, size: int = 32) -> np.ndarray:
    """Stripes whose orientation is `pattern` (0 horizontal, 1 vertical, 2 both), and a corner
    patch whose brightness rises faintly with `level` in [0, 1]: an image-only model can read
    the pattern for sure, the level only roughly."""
    yy, xx = np.mgrid[0:size, 0:size]
    period, phase = rng.uniform(5, 8), rng.uniform(0, 2 * np.pi)
    waves = [np.sin(2 * np.pi * yy / period + phase), np.sin(2 * np.pi * xx / period + phase)]
    stripes = 0.5 + 0.35 * (waves[pattern] if pattern < 2 else waves[0] * waves[1])
    tint = rng.uniform(0.7, 1.0, size=3)
    img = stripes[..., None] * tint + rng.normal(0, 0.08, size=(size, size, 3))
    patch = 0.35 + 0.3 * level + rng.normal(0, 0.12)
    img[1:11, 1:11, :] = patch + rng.normal(0, 0.05, size=(10, 10, 3))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _report(rng: np.random.Generator, severe: int) -> str:
    age, sex = int(rng.integers(20, 90)), ["female", "male"][int(rng.integers(2))]
    phrase = (SEVERE if severe else MILD)[int(rng.integers(5))]
    filler = FILLER[int(rng.integers(len(FILLER)))]
    return f"Imaging shows {phrase}. {age}-year-old {sex}. {filler}".strip()


def _noisy(rng: np.random.Generator, value: int, choices: int, split: str, rate: float = 0.2) -> int:
    """Train labels carry annotation noise; dev and test are clean (as if adjudicated)."""
    if split == "train" and rng.random() < rate:
        return int((value + rng.integers(1, choices)) % choices)
    return value


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@DEMO_KINDS.register("demo")
def write_demo(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    sizes = sizes or {"train": 480, "dev": 160, "test": 240}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            pattern, severe = int(rng.integers(2)), int(rng.integers(2))
            name = f"images/{split}_{i:04d}.png"
            Image.fromarray(_image(rng, pattern, severe)).save(root / name)
            text = _report(rng, severe)
            label_severe = _noisy(rng, severe, 2, split)
            finding = f"{PATTERNS[pattern]}_{'severe' if label_severe else 'mild'}"
            rows.append({"image": name, "report": text, "finding": finding, "urgent": int(pattern == 1 and label_severe)})
        _write_csv(root / f"{split}.csv", rows)
    return dict(sizes)


WOUND_TYPES = ["abrasion", "laceration", "ulcer"]
WOUND_SEVERITY = ["mild", "moderate", "severe"]


@DEMO_KINDS.register("wound")
def write_wound(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """Seed 001's Wound-1-0 layout: `metadata_{split}.csv` (type, severity, description,
    file_path) and images under `images/`. Type shows in the image, severity in the text."""
    sizes = sizes or {"train": 240, "dev": 60, "test": 90}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        rows = []
        for i in range(n):
            kind, severity = int(rng.integers(3)), int(rng.integers(3))
            name = f"wound_{split}_{i:04d}.png"
            Image.fromarray(_image(rng, kind, severity / 2)).save(root / "images" / name)
            text = f"Wound assessed as {WOUND_SEVERITY[severity]}; {FILLER[int(rng.integers(len(FILLER)))]}".strip()
            rows.append({"type": WOUND_TYPES[_noisy(rng, kind, 3, split, 0.1)],
                         "severity": WOUND_SEVERITY[_noisy(rng, severity, 3, split)],
                         "description": text, "file_path": name})
        _write_csv(root / f"metadata_{split}.csv", rows)
    return dict(sizes)


@DEMO_KINDS.register("fire_smoke")
def write_fire_smoke(root: Path, seed: int = 0, n: int = 300) -> dict[str, int]:
    """Seed 002's layout: one `data.csv` with rgb_path, ir_path, fire, smoke (no split column,
    so the recipe splits it by ratios), paths relative to the base path `root`. Fire is plain
    in the infrared frame and only faint in RGB; smoke is a haze visible in RGB."""
    rng = np.random.default_rng(seed)
    for sub in ("rgb", "ir"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    size = 32
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        fire, smoke = int(rng.random() < 0.4), int(rng.random() < 0.4)
        cy, cx = rng.uniform(8, 24, size=2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(2, 4) ** 2))
        scene = rng.uniform(0.2, 0.5, size=3) + rng.normal(0, 0.06, size=(size, size, 3))
        rgb = scene + (fire * rng.uniform(0.15, 0.4)) * blob[..., None] * np.array([1.0, 0.5, 0.1])
        if smoke:
            rgb = 0.55 * rgb + 0.45 * rng.uniform(0.55, 0.75) + rng.normal(0, 0.02, size=rgb.shape)
        ir = 0.25 + rng.normal(0, 0.05, size=(size, size)) + fire * 0.7 * blob
        Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(root / "rgb" / f"{i:04d}.png")
        Image.fromarray((np.clip(ir, 0, 1) * 255).astype(np.uint8), "L").save(root / "ir" / f"{i:04d}.png")
        rows.append({"rgb_path": f"rgb/{i:04d}.png", "ir_path": f"ir/{i:04d}.png", "fire": fire, "smoke": smoke})
    _write_csv(root / "data.csv", rows)
    return {"rows": n}


MEDPIX_TYPES = ["CT", "MR"]
MEDPIX_LOCATIONS = ["Abdomen", "Head", "Thorax"]


@DEMO_KINDS.register("medpix")
def write_medpix(root: Path, seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, int]:
    """The MedPix 2.0 layout (`splitted_dataset/data_{split}.jsonl` cases and
    `descriptions_{split}.jsonl` images, joined on U_id; `images/{image}.png`). Modality shows
    in the image; location is in the caption text and faint in the image."""
    import json

    sizes = sizes or {"train": 120, "dev": 40, "test": 40}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "splitted_dataset").mkdir(parents=True, exist_ok=True)
    case_id = 1000
    for split, n in sizes.items():
        cases, descriptions = [], []
        while len(descriptions) < n:
            case_id += 1
            uid = f"MPX{case_id}"
            location = int(rng.integers(3))
            images = []
            for k in range(int(rng.integers(1, 4))):
                modality = int(rng.integers(2))
                image = f"{uid}_synpic{case_id * 10 + k}"
                Image.fromarray(_image(rng, modality, location / 2)).save(root / "images" / f"{image}.png")
                images.append((image, modality))
                descriptions.append({
                    "Type": MEDPIX_TYPES[modality], "U_id": uid, "image": image,
                    "Description": {"ACR Codes": "-1.-1", "Age": str(int(rng.integers(20, 90))),
                                    "Caption": f"{MEDPIX_TYPES[modality]} of the {MEDPIX_LOCATIONS[location].lower()}.",
                                    "Figure Part": None, "Modality": MEDPIX_TYPES[modality], "Plane": "Axial",
                                    "Sex": ["female", "male"][int(rng.integers(2))]},
                    "Location": MEDPIX_LOCATIONS[location],
                    "Location Category": MEDPIX_LOCATIONS[_noisy(rng, location, 3, split, 0.1)],
                })
            cases.append({"U_id": uid, "TAC": [i for i, m in images if m == 0], "MRI": [i for i, m in images if m == 1],
                          "Case": {"History": f"Patient {case_id} referred for imaging.",
                                   "Findings": f"Lesion in the {MEDPIX_LOCATIONS[location].lower()} region.",
                                   "Title": "Synthetic case"},
                          "Topic": {"Category": "Synthetic"}})
        for name, rows in ((f"data_{split}.jsonl", cases), (f"descriptions_{split}.jsonl", descriptions)):
            (root / "splitted_dataset" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {split: n for split, n in sizes.items()}


DERM_LABELS = ["eczema", "melanoma", "psoriasis"]
DERM_SOURCES = ["fitzpatrick17k", "ddi", "isic"]


@DEMO_KINDS.register("derm")
def write_derm(root: Path, seed: int = 0, n: int = 300, dim: int = 16) -> dict[str, int]:
    """Seed 004's layout: `metadata_all_harmonized.csv` (image_id, image_path, label, dataset,
    text) with images under `imgs/`, and `text_embeddings.parquet` (image_id, embedding), the
    precomputed text embeddings. About a third of the cases have no text (and no embedding);
    the condition shows in the image stripes and, more clearly, in the text embedding."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    centers = rng.normal(0, 1, size=(len(DERM_LABELS), dim))
    rows, embeddings = [], []
    for i in range(n):
        label = int(rng.integers(len(DERM_LABELS)))
        image_id = f"derm_{i:05d}"
        Image.fromarray(_image(rng, label, rng.random())).save(root / "imgs" / f"{image_id}.png")
        has_text = rng.random() < 0.67
        rows.append({"image_id": image_id, "image_path": f"imgs/{image_id}.png",
                     "label": DERM_LABELS[_noisy(rng, label, 3, "train", 0.1)],
                     "dataset": DERM_SOURCES[int(rng.integers(3))],
                     "text": f"Lesion consistent with {DERM_LABELS[label]}." if has_text else ""})
        if has_text:
            embeddings.append({"image_id": image_id,
                               "embedding": (centers[label] + rng.normal(0, 0.7, size=dim)).astype(np.float32).tolist()})
    _write_csv(root / "metadata_all_harmonized.csv", rows)
    pq.write_table(pa.Table.from_pylist(embeddings), root / "text_embeddings.parquet")
    return {"cases": n, "with_text": len(embeddings)}


# What recipes/feature_kd.yaml draws its views with; the demo's embeddings must use the same.
EMBEDDINGS_DEMO_SEED = 42
EMBEDDINGS_DEMO_AUGMENT = {"horizontal_flip_prob": 0.5}


@DEMO_KINDS.register("embeddings")
def write_embeddings_demo(root: Path, seed: int = 0, sizes: dict[str, int] | None = None,
                          num_views: int = 2, dim: int = 64) -> dict[str, int]:
    """Seed 003's layout (`data/embeddings.py`) over the demo images, with the teacher's
    embeddings already extracted, so `mmdistill run recipes/feature_kd.yaml` works on it as
    written. The "teacher" is a fixed random projection of each view's 8x8 pixels: a function
    of exactly the image the student sees in that view, which a student can learn to match.
    Train views are drawn as recipes/feature_kd.yaml draws them (seed 42, random h-flips)."""
    from mmdistill.config.schema import AugmentSpec
    from mmdistill.data.augment import Augmenter
    from mmdistill.data.embeddings import SPLIT_DIRS, write_split_embeddings
    from mmdistill.data.images import load_image

    sizes = sizes or {"train": 320, "dev": 96, "test": 128}
    write_demo(root, seed=seed, sizes=sizes)
    augmenter = Augmenter(AugmentSpec(**EMBEDDINGS_DEMO_AUGMENT), EMBEDDINGS_DEMO_SEED)
    projection = np.random.default_rng(1234).normal(0, 1 / np.sqrt(3 * 64), size=(3 * 64, dim)).astype(np.float32)
    for split in sizes:
        table = root / f"{split}.csv"
        with table.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        views = num_views if split == "train" else 1
        out = np.zeros((len(rows), views, dim), dtype=np.float32)
        for i, row in enumerate(rows):
            image = load_image(root / row["image"], 3, 8)
            for v in range(views):
                seen = augmenter({"image": image}, {"image"}, augmenter.generator(i, v))["image"] if split == "train" else image
                out[i, v] = (seen.reshape(-1).numpy() - 0.5) @ projection
        directory = root / SPLIT_DIRS[split]
        directory.mkdir(parents=True, exist_ok=True)
        _write_csv(directory / "samples.csv", rows)
        meta = {"num_views": views, "embedding_dim": dim, "modality": "image_teacher",
                "teacher": "demo: fixed random projection of the view's 8x8 pixels"}
        if split == "train":
            meta.update({"seed": EMBEDDINGS_DEMO_SEED, "augment": AugmentSpec(**EMBEDDINGS_DEMO_AUGMENT).model_dump(mode="json")})
        write_split_embeddings(directory, out, meta)
        table.unlink()
    return dict(sizes)


def write_demo_data(kind: str, root: str | Path, seed: int = 0) -> dict[str, int]:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a directory")
    return DEMO_KINDS.get(kind, "KIND")(root, seed=seed)
