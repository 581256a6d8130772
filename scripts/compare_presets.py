"""Compare every objective preset on the demo data, without a sweep.

Trains the demo teacher once, then one KD student per preset from that same teacher
checkpoint (same seed, same student init), and prints a table of dev and test scores.

    .venv/bin/python scripts/compare_presets.py [--data data/demo] [--out runs/presets] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mmdistill.preflight import load_config
from mmdistill.data.demo import write_demo_data
from mmdistill.losses.objective import PRESETS
from mmdistill.run.experiment import run_experiment

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--out", default="runs/presets")
    parser.add_argument("--epochs", type=int, default=10, help="student epochs per preset")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not Path(args.data, "train.csv").is_file():
        write_demo_data("demo", args.data)
    common = [f"data.root={args.data}", f"output_dir={args.out}", f"seed={args.seed}", "logging.progress_bar=false",
              "logging.plots=false", f"training.student.epochs={args.epochs}"]

    first = load_config(RECIPE, common + ["experiment_name=teacher_and_baseline"])
    results = run_experiment(first, overwrite=True)
    teacher_ckpt = first.run_dir / "checkpoints" / "teacher_best.safetensors"
    rows = [("(teacher)", results["teacher"], results["timing"]["teacher"]),
            ("(baseline: task only)", results["baseline"], results["timing"]["baseline"])]
    for preset in [p for p in PRESETS if p != "task_only"]:
        config = load_config(RECIPE, common + [f"experiment_name=preset_{preset}", f"objective.preset={preset}",
                                               f"teacher.checkpoint={teacher_ckpt}", "training.baseline=false"])
        start = time.perf_counter()
        out = run_experiment(config, overwrite=True)
        rows.append((preset, out["student"], time.perf_counter() - start))
        print(f"done {preset}: test {out['student']['test']['score']:.4f}", flush=True)

    print(f"\n| preset | dev score | test score | seconds |\n|---|---|---|---|")
    for name, m, seconds in rows:
        print(f"| {name} | {m['dev']['score']:.4f} | {m['test']['score']:.4f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
