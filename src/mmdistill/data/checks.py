"""`mmdistill validate`: read every split, decode every image, and summarise the data.

Image decoding is the slow part, so it runs with a progress bar; all unreadable images are
counted, and the first one is named in the error so the user knows where to start.
"""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from mmdistill.config.schema import SPLITS, ExperimentConfig
from mmdistill.data.dataset import DataBundle, class_counts
from mmdistill.data.images import check_image
from mmdistill.errors import UserError


def check_images(config: ExperimentConfig, data: DataBundle, progress: bool = True) -> int:
    image_modalities = [m for m, s in config.data.modalities.items() if s.kind in ("image", "stacked_image")
                        and m in config.used_modalities]
    todo = list(dict.fromkeys(
        (record.origin, path)
        for s in SPLITS for record in data.datasets[s].records for m in image_modalities
        for path in (record.values[m] if isinstance(record.values[m], tuple) else (record.values[m],))
    ))
    bad: list[str] = []
    for origin, path in tqdm(todo, desc="checking images", disable=not progress or not todo, leave=False):
        try:
            check_image(path)
        except Exception as exc:  # PIL raises many types for corrupt files
            bad.append(f"{origin}: cannot read image {path} ({type(exc).__name__}: {exc})")
    if bad:
        more = f" (and {len(bad) - 1} more unreadable images)" if len(bad) > 1 else ""
        raise UserError(bad[0] + more)
    return len(todo)


def summary(config: ExperimentConfig, data: DataBundle, images_checked: int) -> str:
    lines = [f"experiment {config.experiment_name!r}: config and data OK ({images_checked} images decoded)"]
    lines.append("samples: " + ", ".join(f"{s} {len(data.datasets[s])}" for s in SPLITS))
    counts = class_counts(data.datasets["train"])
    for task in data.tasks:
        dist = ", ".join(f"{c} {n}" for c, n in counts[task.name].items())
        lines.append(f"task {task.name} ({task.type}, {len(task.classes)} classes): train {dist}")
    mods: dict[str, Any] = {m: s.kind for m, s in config.data.modalities.items()}
    lines.append("teacher reads: " + ", ".join(f"{m} ({mods[m]})" for m in config.teacher.encoders))
    lines.append("student reads: " + ", ".join(f"{m} ({mods[m]})" for m in config.student.encoders))
    return "\n".join(lines)
