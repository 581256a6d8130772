"""What the last checkpoint (what a killed run resumes from, train/resume.py) costs, measured
on the demo's teacher stage and on a ResNet-50 teacher stage, in one run.

    .venv/bin/python benchmarks/checkpoint_cost.py [--rounds 2] [--skip-resnet50]

Each setup trains its teacher stage in three arms, back to back within a round and in rotated
order across rounds (this shared VM's speed drifts by tens of percent over minutes, so only
ratios within a round are compared): `none` (training.last_checkpoint_budget 0), `default`
(0.05: save only when the epochs since the last save took 20x what a save takes) and `every`
(budget 1: a save after every epoch but the last, the naive cadence). Per arm it reports the
stage seconds, the saves made, the seconds they took (timed inside the callback), and
`save_share` = save seconds / stage seconds, the direct measure; `ratio_vs_none` is the
median over rounds of the arm's stage time over `none`'s in the same round (noisy: it moves
with the machine, not only with the saves).

Ends with one `<setup>_<arm>_save_share=` and `<setup>_<arm>_ratio_vs_none=` line per arm.
Teachers are random-init (their accuracy does not change the cost); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.demo import write_demo
from mmdistill.environment import prepare_process
from mmdistill.run.experiment import run_experiment
from mmdistill.train import fit
from mmdistill.train.resume import LastCheckpoint

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"none": 0.0, "default": 0.05, "every": 1.0}
SAVES: list[LastCheckpoint] = []


class _Counted(LastCheckpoint):
    """The real callback, remembered so its `saves` can be read after the stage."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        SAVES.append(self)


def demo_config(work: Path) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    root = work / "demo_data"
    if not (root / "train.csv").exists():
        write_demo(root, seed=0)
    raw["data"]["root"] = str(root)
    raw["training"]["teacher"]["patience"] = None  # every arm trains the same number of epochs
    return raw


def resnet50_config(work: Path, size: int, train: int, epochs: int) -> dict[str, Any]:
    root = work / "r50_data"
    if not (root / "train.csv").exists():
        write_demo(root, seed=0, sizes={"train": train, "dev": 32, "test": 32})
    return {
        "experiment_name": "r50", "seed": 0,
        "data": {"source": "table", "root": str(root), "files": {s: f"{s}.csv" for s in ("train", "dev", "test")},
                 "modalities": {"image": {"kind": "image", "column": "image", "channels": 3, "size": size}}},
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": {"image": {"type": "timm", "name": "resnet50", "pretrained": False}},
                    "projection_dim": 128},
        "student": {"encoders": {"image": {"type": "tiny_cnn"}}, "projection_dim": 128},
        "training": {"teacher": {"epochs": epochs, "batch_size": 32, "patience": None}, "baseline": False},
    }


def one_arm(raw: dict[str, Any], work: Path, name: str, budget: float) -> dict[str, float]:
    tree = {**raw, "experiment_name": f"{raw['experiment_name']}_{name}", "output_dir": str(work / "runs")}
    tree["training"] = {**tree["training"], "last_checkpoint_budget": budget}
    tree["logging"] = {"progress_bar": False, "plots": False}
    tree["cache"] = {"dir": str(work / "cache")}
    config = ExperimentConfig.model_validate(tree)
    SAVES.clear()
    results = run_experiment(config, overwrite=True, teacher_only=True)
    saves = [s for callback in SAVES for s in callback.saves]
    stage = results["timing"]["teacher"]
    return {"stage": stage, "saves": len(saves), "save_seconds": sum(saves), "save_share": sum(saves) / stage}


def measure(label: str, raw: dict[str, Any], work: Path, rounds: int) -> None:
    arms = list(ARMS)
    per_round: list[dict[str, dict[str, float]]] = []
    for index in range(rounds):
        order = arms[index % len(arms):] + arms[:index % len(arms)]
        row = {}
        for arm in order:
            row[arm] = one_arm(raw, work / label, arm, ARMS[arm])
            r = row[arm]
            print(f"  {label} round {index + 1} {arm:>7}: stage {r['stage']:.1f} s, {r['saves']:.0f} save(s) taking "
                  f"{r['save_seconds']:.2f} s ({100 * r['save_share']:.2f}% of the stage)", flush=True)
        per_round.append(row)
    for arm in arms:
        share = statistics.median(r[arm]["save_share"] for r in per_round)
        ratio = statistics.median(r[arm]["stage"] / r["none"]["stage"] for r in per_round)
        print(f"{label}_{arm}_save_share={share:.4f}")
        print(f"{label}_{arm}_ratio_vs_none={ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_checkpoint_cost")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=96, help="ResNet-50 image size")
    parser.add_argument("--train", type=int, default=256, help="ResNet-50 train samples")
    parser.add_argument("--epochs", type=int, default=4, help="ResNet-50 teacher epochs")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-resnet50", action="store_true")
    args = parser.parse_args()
    prepare_process()
    fit.LastCheckpoint = _Counted  # type: ignore[misc] - the stage builds this one
    work = Path(args.work)
    if not args.skip_demo:
        print("demo teacher stage (recipes/demo.yaml: ResNet-18 + MiniLM, 32 px, 8 epochs)", flush=True)
        measure("demo", demo_config(work), work, args.rounds)
    if not args.skip_resnet50:
        print(f"ResNet-50 teacher stage ({args.size} px, {args.train} train samples, {args.epochs} epochs)", flush=True)
        measure("resnet50", resnet50_config(work, args.size, args.train, args.epochs), work, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
