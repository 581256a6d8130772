"""The t-SNE of a run's teacher and student: rebuild both models from the run's config.yaml,
load their best checkpoints, and embed the fused vectors (ModelOutput.fused) of the test split
(the run's `logging.plot_samples` rows of it, drawn as the run's own maps draw them).

This is the one heavy step of a report (data loading, two forward passes, t-SNE), so it is
done once per report, for one run (the best variant's first finished seed), and is optional
(`sweep.tsne: false` or `mmdistill report --no-tsne`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mmdistill.eval.embeddings import collect_features, tsne_2d
from mmdistill.eval.sampling import sample_rows

__all__ = ["fused_vectors", "tsne_2d"]


def fused_vectors(run_dir: Path) -> dict[str, Any]:
    """{"teacher": [N, D], "student": [N, d], "labels": [N], "classes": [...], "task": name}."""
    import yaml

    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.cache.images import load_checked_data
    from mmdistill.models.build import build_model
    from mmdistill.models.checkpoints import load_weights

    run_dir = Path(run_dir)
    config = ExperimentConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    data = load_checked_data(config)
    checkpoints = {"teacher": config.teacher.checkpoint or run_dir / "checkpoints" / "teacher_best.safetensors",
                   "student": run_dir / "checkpoints" / "student_best.safetensors"}
    out: dict[str, Any] = {}
    task = data.tasks[0]
    test = data.datasets["test"]
    rows = sample_rows(len(test), config.logging.plot_samples, config.seed, np.asarray(test.labels[task.name]))
    for role, path in checkpoints.items():
        model = build_model(config, role, data)
        load_weights(model, Path(path), f"{role} checkpoint")
        out[role], labels = collect_features(model, data, "test", 64, rows=rows)
        out["labels"] = labels[task.name].astype("int64")
    out["classes"] = list(task.classes)
    out["task"] = task.name
    return out
