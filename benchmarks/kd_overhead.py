"""What distillation costs on top of training the student alone, with and without the
teacher-output cache, measured in one run on the same data.

    .venv/bin/python benchmarks/kd_overhead.py [--train 384] [--epochs 2] [--repeats 4] [--grid-epochs 3]

1. Seconds per training epoch (validation excluded) of a tiny_cnn student at 128 px trained
   alone, with KD from the cache, and with KD running a ResNet-50-sized teacher every step. The
   speed of this shared 2-core VM drifts by up to 40% over minutes (the same stage, same seed,
   took 8.8 s per epoch in one minute and 12.5 s in another), far more than the cost being
   measured. So the three modes run back to back in `--repeats` rounds, each round in a
   rotated order; a ratio is taken within each round, where the three runs saw the same
   machine, and the reported ratio is the median over rounds.
2. The wall time of a 3-loss-variant x 3-seed grid (one teacher checkpoint per seed, as a sweep
   shares them) with and without the caches, cache building included; `grid_speedup` is their
   ratio. Each grid run is timed with the cache and on the fly (alternately first) before
   the next one starts, again so that drift falls on both arms. The ideal is `ratio_onthefly_vs_alone`:
   every KD run as cheap as the student alone.
3. Peak RSS of a KD student stage reading a cache of N and of 10 N samples (fresh processes),
   which should be equal: the caches are read by offset, not mapped (cache/store.py).

With `--augment` every epoch reads a fresh augmented view, as the KD student does by default,
so the cache holds one view per epoch and its build is one teacher pass per epoch: then the
single-run line says whether caching beats running the teacher live even for one run.

Ends with `single_run_cache_vs_onthefly=`, `ratio_cache_vs_alone=`, `ratio_onthefly_vs_alone=`
and `grid_speedup=` lines.
Teachers are random-init (their accuracy does not change their cost); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.demo import write_demo
from mmdistill.data.views import student_views
from mmdistill.losses.objective import build_objective
from mmdistill.models.checkpoints import load_weights, save_weights
from mmdistill.cache.images import load_run_data
from mmdistill.models.build import build_model
from mmdistill.run.experiment import run_experiment
from mmdistill.train.recorder import MetricsLog
from mmdistill.train.fit import train_stage
from mmdistill.train.teachers import teacher_source

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import peak_rss_mib  # noqa: E402

PRESETS = ("kd", "kl_bce", "combined")
SEEDS = (0, 1, 2)


AUGMENT = {"horizontal_flip_prob": 0.5, "rotation_degrees": 10, "brightness": 0.2}


def make_config(root: Path, out: Path, size: int, teacher: str, epochs: int, seed: int = 0, preset: str = "kd",
                cache: bool = True, checkpoint: Path | None = None, name: str = "bench",
                augment: bool = False) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment_name": name, "seed": seed, "output_dir": str(out),
        "data": {"source": "table", "root": str(root),
                 "files": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                 "modalities": {"image": {"kind": "image", "column": "image", "channels": 3, "size": size}},
                 "augment": AUGMENT if augment else None},
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": {"image": {"type": "timm", "name": teacher, "pretrained": False}},
                    "projection_dim": 128, "checkpoint": str(checkpoint) if checkpoint else None},
        "student": {"encoders": {"image": {"type": "tiny_cnn"}}, "projection_dim": 128},
        "objective": {"preset": preset},
        "training": {"teacher": {"epochs": 1, "batch_size": 32},
                     "student": {"epochs": epochs, "batch_size": 32, "lr": 2e-3, "patience": None},
                     "baseline": False},
        "cache": {"dir": str(out / "cache"), "teacher": cache},
        "logging": {"progress_bar": False, "plots": False},
    })


def save_teachers(config: ExperimentConfig, out: Path) -> dict[int, Path]:
    data = load_run_data(config)
    paths = {}
    for seed in SEEDS:
        L.seed_everything(seed, verbose=False)
        paths[seed] = out / f"teacher_seed{seed}.safetensors"
        save_weights(build_model(config, "teacher", data), paths[seed])
    return paths


def epoch_seconds(config: ExperimentConfig, mode: str, out: Path) -> dict[str, Any]:
    """Train the student stage in `mode` (alone / cache / onthefly); per-epoch train seconds."""
    data = load_run_data(config)
    L.seed_everything(config.seed, verbose=False)
    student = build_model(config, "student", data)
    teacher = None
    build = 0.0
    if mode == "alone":
        objective = build_objective("task_only", None, data.tasks, student, None)
    else:
        teacher = build_model(config, "teacher", data)
        load_weights(teacher, config.teacher.checkpoint, "teacher")
        objective = build_objective(config.objective.preset, None, data.tasks, student, teacher)
        if mode == "cache":
            start = time.perf_counter()
            teacher_source(config, teacher, objective, data)  # built here so its time is reported apart
            build = time.perf_counter() - start
    log = MetricsLog(out / f"metrics_{mode}.csv")
    train_stage("student", config, config.training.student, student, objective, data, log,
                out / f"student_{mode}.safetensors", teacher=teacher, views=student_views(config))
    seconds = [float(r["train_seconds"]) for r in log.rows]
    return {"epochs": seconds, "per_epoch": statistics.median(seconds[1:] or seconds), "build": build}


def run_grid(root: Path, out: Path, args: argparse.Namespace, teachers: dict[int, Path]) -> dict[bool, float]:
    """Seconds of the whole grid with the caches (True; built from empty, inside the timing)
    and on the fly (False), the two arms interleaved run by run."""
    shutil.rmtree(out, ignore_errors=True)
    total = {True: 0.0, False: 0.0}
    pairs = 0
    for seed in SEEDS:
        for preset in PRESETS:
            pairs += 1
            for cache in ((True, False) if pairs % 2 else (False, True)):  # neither arm always goes first
                config = make_config(root, out / ("cache" if cache else "onthefly"), args.size, args.teacher,
                                     args.grid_epochs, seed, preset, cache, teachers[seed], name=f"{preset}_seed{seed}",
                                     augment=args.augment)
                start = time.perf_counter()
                run_experiment(config, overwrite=True)
                total[cache] += time.perf_counter() - start
                print(f"  grid run {preset} seed {seed} {'cache' if cache else 'on the fly'}: "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
    return total


def rss_child(args: argparse.Namespace) -> None:
    """In a fresh process: the KD student stage from a (pre-built) cache; print peak RSS."""
    out = Path(args.rss_child)
    config = make_config(out / "data", out, args.rss_size, args.teacher, 1, checkpoint=out / "teacher.safetensors")
    if args.build_only:
        data = load_run_data(config)
        L.seed_everything(0, verbose=False)
        save_weights(build_model(config, "teacher", data), out / "teacher.safetensors")
        teacher = build_model(config, "teacher", data)
        load_weights(teacher, out / "teacher.safetensors", "teacher")
        teacher_source(config, teacher, build_objective("kd", None, data.tasks, build_model(config, "student", data),
                                                        teacher), data)
        return
    result = epoch_seconds(config, "cache", out)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "build": result["build"]}))


def rss_for(n: int, args: argparse.Namespace, work: Path) -> float:
    out = work / f"rss_{n}"
    write_demo(out / "data", seed=1, sizes={"train": n, "dev": 32, "test": 32})
    cmd = [sys.executable, __file__, "--rss-child", str(out), "--rss-size", str(args.rss_size), "--teacher", args.teacher]
    subprocess.run(cmd + ["--build-only"], check=True)
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_kd_overhead")
    parser.add_argument("--train", type=int, default=384, help="train samples")
    parser.add_argument("--size", type=int, default=128, help="image resolution of teacher and student")
    parser.add_argument("--teacher", default="resnet50", help="timm teacher (random init)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per timed student stage")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of the three timed modes")
    parser.add_argument("--grid-epochs", type=int, default=3, help="student epochs per grid run")
    parser.add_argument("--rss-samples", type=int, default=200, help="N for the N vs 10 N peak-RSS comparison")
    parser.add_argument("--rss-size", type=int, default=32, help="image size of the RSS runs (cost only)")
    parser.add_argument("--augment", action="store_true",
                        help="train with augmentation: every epoch a fresh view, so the cache holds one view per "
                             "epoch and its build is one teacher pass per epoch")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args)

    work = Path(args.work)
    root = work / "data"
    if not (root / "train.csv").exists():
        write_demo(root, seed=0, sizes={"train": args.train, "dev": 64, "test": 64})
    base = make_config(root, work, args.size, args.teacher, args.epochs, augment=args.augment)
    teachers = save_teachers(base, work)
    kd = make_config(root, work, args.size, args.teacher, args.epochs, checkpoint=teachers[0], augment=args.augment)
    print(f"teacher {args.teacher} ({args.size} px), student tiny_cnn, {args.train} train samples", flush=True)

    shutil.rmtree(work / "cache", ignore_errors=True)  # the build is timed from empty
    modes = ["alone", "cache", "onthefly"]
    epochs: dict[str, list[float]] = {m: [] for m in modes}
    ratios: dict[str, list[float]] = {"cache": [], "onthefly": []}
    build = 0.0
    for round_ in range(args.repeats):
        this_round = {}
        for mode in modes[round_ % 3:] + modes[:round_ % 3]:
            config = kd.model_copy(update={"cache": kd.cache.model_copy(update={"teacher": mode != "onthefly"})})
            result = epoch_seconds(config, mode, work)
            this_round[mode] = statistics.median(result["epochs"])
            epochs[mode] += result["epochs"]
            build = max(build, result["build"])  # the first cache round builds, the others reuse
            print(f"round {round_ + 1} {mode:>9}: epochs {', '.join(f'{s:.2f}' for s in result['epochs'])} s",
                  flush=True)
        for mode in ratios:
            ratios[mode].append(this_round[mode] / this_round["alone"])
    for mode in modes:
        print(f"{mode:>9}: {statistics.median(epochs[mode]):.2f} s/epoch (median of {len(epochs[mode])} epochs, "
              f"range {min(epochs[mode]):.2f}-{max(epochs[mode]):.2f})")
    for mode, values in ratios.items():
        print(f"{mode} / alone, round by round: {', '.join(f'{r:.3f}' for r in values)}")
    views = args.epochs if args.augment else 1
    print(f"cache build ({views} teacher pass(es) over {args.train} samples): {build:.2f} s")
    ratio_cache = statistics.median(ratios["cache"])
    ratio_live = statistics.median(ratios["onthefly"])
    # one run on its own, the cache built inside it: is caching cheaper than the live teacher?
    per_epoch = {m: statistics.median(epochs[m]) for m in modes}
    single = (build + args.epochs * per_epoch["cache"]) / (args.epochs * per_epoch["onthefly"])
    print(f"single_run_cache_vs_onthefly={single:.4f}  (one student stage of {args.epochs} epochs, cache build "
          "included; below 1: caching is cheaper even for one run)")

    grid_speedup = float("nan")
    if not args.skip_grid:
        total = run_grid(root, work / "grid", args, teachers)
        grid_speedup = total[False] / total[True]
        print(f"grid {len(PRESETS)} loss variants x {len(SEEDS)} seeds, {args.grid_epochs} epochs: "
              f"{total[True]:.1f} s with the cache, {total[False]:.1f} s on the fly", flush=True)

    if not args.skip_rss:
        small = rss_for(args.rss_samples, args, work)
        large = rss_for(10 * args.rss_samples, args, work)
        print(f"peak RSS of the KD student stage: {small:.0f} MiB with {args.rss_samples} cached samples, "
              f"{large:.0f} MiB with {10 * args.rss_samples} ({large / small:.3f}x)")
        print(f"rss_ratio_10x={large / small:.4f}")
    print(f"peak_rss_mib={peak_rss_mib():.0f}")
    print(f"ratio_cache_vs_alone={ratio_cache:.4f}")
    print(f"ratio_onthefly_vs_alone={ratio_live:.4f}")
    print(f"grid_speedup={grid_speedup:.4f}")


if __name__ == "__main__":
    main()
