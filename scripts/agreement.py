"""How often each student predicts what its teacher predicts, on the test split, per task.

    .venv/bin/python scripts/agreement.py SWEEP_DIR      # e.g. runs/medpix_sweep/medpix_cpu_image

A KD student that does not beat its baseline either did not follow the teacher (low
agreement) or followed it where the teacher itself was wrong. For every finished run under
SWEEP_DIR (`<variant>/seed_<n>/`) this rebuilds the teacher, the KD student and the baseline
from the run's config and checkpoints, predicts the test split once, and prints per variant
and task, as mean over seeds: each model's accuracy, the student's and the baseline's
agreement with the teacher, and their accuracy on the samples the teacher gets right and wrong.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml

from mmdistill.cache.images import load_run_data
from mmdistill.config.schema import ExperimentConfig
from mmdistill.models.build import build_model
from mmdistill.models.checkpoints import load_weights


@torch.no_grad()
def predictions(model, data, batch_size: int = 64) -> dict[str, np.ndarray]:
    model.eval()
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for batch in data.loader("test", batch_size, shuffle=False, seed=0, modalities=set(model.modalities)):
        logits = model(batch["inputs"]).logits
        for task, z in logits.items():
            out[task].append((z > 0).long().numpy() if z.dim() == 1 else z.argmax(1).numpy())
    return {task: np.concatenate(parts) for task, parts in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    runs = sorted(p.parent for p in args.sweep_dir.glob("*/seed_*/results.json"))
    if not runs:
        sys.exit(f"{args.sweep_dir}: no finished runs (<variant>/seed_<n>/results.json)")
    config = ExperimentConfig.model_validate(yaml.safe_load((runs[0] / "config.yaml").read_text()))
    data = load_run_data(config)
    labels = {t.name: np.asarray(data.datasets["test"].labels[t.name]).astype(np.int64) for t in data.tasks}
    teacher = build_model(config, "teacher", data)
    load_weights(teacher, Path(config.teacher.checkpoint or runs[0] / "checkpoints" / "teacher_best.safetensors"),
                 "teacher checkpoint")
    t_pred = predictions(teacher, data)
    rows: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for run in runs:
        run_config = ExperimentConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
        found = {}
        for name in ("student", "baseline"):
            path = run / "checkpoints" / f"{name}_best.safetensors"
            if path.is_file():
                model = build_model(run_config, "student", data)
                load_weights(model, path, f"{name} checkpoint")
                found[name] = predictions(model, data)
        for task, y in labels.items():
            right = t_pred[task] == y
            row = [float(right.mean())]
            for name in ("student", "baseline"):
                p = found[name][task]
                row += [float((p == y).mean()), float((p == t_pred[task]).mean()),
                        float((p[right] == y[right]).mean()), float((p[~right] == y[~right]).mean())]
            rows[(run.parent.name, task)].append(row)
        print(f"{run}: done", file=sys.stderr)
    print("| variant | task | seeds | teacher acc | KD acc | KD agrees with teacher | KD acc where teacher right / wrong "
          "| baseline acc | baseline agrees with teacher | baseline acc where teacher right / wrong |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (variant, task), values in sorted(rows.items()):
        m = np.mean(values, axis=0)
        print(f"| {variant} | {task} | {len(values)} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} / {m[4]:.3f} "
              f"| {m[5]:.3f} | {m[6]:.3f} | {m[7]:.3f} / {m[8]:.3f} |")


if __name__ == "__main__":
    main()
