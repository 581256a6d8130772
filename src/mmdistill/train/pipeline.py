"""One experiment end to end: teacher -> KD student -> baseline student -> results.

Order of work is chosen so that bad input fails before anything is written (config and data
are checked first), and so that a crash keeps what finished: metrics.csv and the best
checkpoints are written per epoch, results.json once at the end, atomically.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle, class_counts, load_data
from mmdistill.errors import UserError
from mmdistill.data.stats import image_stats
from mmdistill.eval.embeddings import collect_features, write_run_plots
from mmdistill.eval.probe import probe_splits
from mmdistill.eval.plots import plot_confusion, plot_curves, plot_stage_curves
from mmdistill.io import write_json_atomic, write_text_atomic
from mmdistill.losses.objective import Objective, build_objective
from mmdistill.models.net import MultiModalNet
from mmdistill.sweep.hashing import config_hash, teacher_hash
from mmdistill.train.baseline_cache import baseline_stage
from mmdistill.train.checkpoints import load_weights
from mmdistill.train.recorder import MetricsLog
from mmdistill.data.embeddings import load_teacher_embeddings, teacher_modality
from mmdistill.data.records_digest import data_signature
from mmdistill.train.stage import StageResult, train_stage
from mmdistill.train.teacher_cache import PrecomputedTeacher
from mmdistill.train.text_cache import attach_text_caches
from mmdistill.train.teacher_scores import evaluate_teacher, remember_teacher_scores


def attach_caches(data: DataBundle, config: ExperimentConfig, modalities: set[str] | None = None) -> DataBundle:
    """With `cache.images` on, every image is decoded and resized once into a uint8 array that
    all stages and epochs read instead of the files (`modalities`: only these)."""
    if config.cache.images:
        from mmdistill.data.image_cache import attach_image_caches

        attach_image_caches(data, config, modalities)
    return data


def load_run_data(config: ExperimentConfig) -> DataBundle:
    return attach_caches(load_data(config), config)


def build_model(config: ExperimentConfig, role: str, data: DataBundle) -> MultiModalNet:
    spec = getattr(config, role)
    modalities = config.data.modalities
    model = MultiModalNet(spec, modalities, data.tasks, data.embedding_dims, key=role)
    return attach_text_caches(model, config, data, role)


def check_models(config: ExperimentConfig, data: DataBundle) -> MultiModalNet | PrecomputedTeacher:
    """Build the teacher, the student and the objective between them once, so unknown backbone
    names, unreachable weights and terms whose features are missing fail before any training;
    returns the run's teacher (seeded). A precomputed teacher (`data.source: embeddings`) is
    its extracted embeddings, checked here (files, shapes, view settings, and that the
    objective reads only what they hold) and never built: a run needs no teacher weights."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    teacher: MultiModalNet | PrecomputedTeacher
    if config.data.source == "embeddings":
        modality = teacher_modality(config)
        splits = load_teacher_embeddings(config, {s: len(ds) for s, ds in data.datasets.items()})
        teacher = PrecomputedTeacher(splits, modality)
    else:
        teacher = build_model(config, "teacher", data)
    build_objective(config.objective.preset, config.objective.terms, data.tasks, build_model(config, "student", data), teacher)
    return teacher


def prepare_run_dir(config: ExperimentConfig, overwrite: bool, run_dir: Path | None = None) -> Path:
    run_dir = Path(run_dir) if run_dir is not None else config.run_dir
    if (run_dir / "results.json").exists() and not overwrite:
        raise UserError(f"{run_dir}: a finished run is already there; pass --overwrite to replace it "
                        "or choose another experiment_name/output_dir")
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _stage_entry(result: StageResult) -> dict[str, Any]:
    strip = lambda m: {"score": m["score"], "tasks": {t: {k: v for k, v in tm.items() if k != "confusion_matrix"}
                                                       for t, tm in m["tasks"].items()}}
    entry = {"dev": strip(result.dev), "test": strip(result.test), "best_epoch": result.best_epoch}
    return entry | ({"reused_from": result.reused_from} if result.reused_from else {})


def _write_confusions(run_dir: Path, stage: str, result: StageResult, plots: bool) -> None:
    for task, m in result.test["tasks"].items():
        if "confusion_matrix" not in m:  # probe scores of a precomputed teacher
            continue
        matrix = np.asarray(m["confusion_matrix"], dtype=np.int64)
        np.save(run_dir / "confusion" / f"{stage}_{task}_test.npy", matrix)
        if plots:
            plot_confusion(matrix, m["classes"], f"{stage} / {task} (test)",
                           run_dir / "plots" / f"confusion_{stage}_{task}_test.png")


def run_experiment(config: ExperimentConfig, overwrite: bool = False, run_dir: Path | None = None,
                   teacher_only: bool = False) -> dict[str, Any]:
    """`run_dir` defaults to output_dir/experiment_name (a sweep passes .../<variant>/seed_<n>);
    `teacher_only` stops after the teacher stage (a sweep's shared teacher)."""
    started = time.perf_counter()
    data = load_data(config)
    teacher = check_models(config, data)
    precomputed = teacher if isinstance(teacher, PrecomputedTeacher) else None
    run_dir = prepare_run_dir(config, overwrite, run_dir)
    attach_caches(data, config, set(config.student.encoders) if precomputed is not None else None)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "confusion").mkdir(exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    log = MetricsLog(run_dir / "metrics.csv")
    counts = {task: list(c.values()) for task, c in class_counts(data.datasets["train"]).items()}

    def supervised(model: MultiModalNet) -> Objective:
        spec = config.objective
        objective = build_objective("task_only" if not spec.supervised else None, spec.supervised, data.tasks, model,
                                    None, "objective.supervised")
        objective.set_class_counts(counts)
        return objective

    results: dict[str, Any] = {"experiment": config.experiment_name, "seed": config.seed}
    timing: dict[str, float] = {}

    # Stage 1: the teacher, trained, loaded, or (precomputed embeddings) only scored by probes.
    if precomputed is not None:
        start = time.perf_counter()
        probe = probe_splits({s: np.asarray(e[:, 0], dtype=np.float32) for s, e in precomputed.splits.items()},
                             data, config.seed)
        stages = {"teacher": StageResult(probe["dev"], probe["test"], None, time.perf_counter() - start)}
        results["probe"] = {"teacher": probe}
    elif config.teacher.checkpoint is not None:
        load_weights(teacher, config.teacher.checkpoint, "teacher.checkpoint")
        stages = {"teacher": evaluate_teacher(config, teacher, data)}
        results["teacher_checkpoint"] = str(config.teacher.checkpoint)
    else:
        stages = {"teacher": train_stage("teacher", config, config.training.teacher, teacher, supervised(teacher), data,
                                         log, run_dir / "checkpoints" / "teacher_best.safetensors", fresh_views=True)}
        remember_teacher_scores(config, teacher, data, stages["teacher"])

    # Stage 2: the KD student, and the same student trained without the teacher.
    student = None
    if not teacher_only:
        L.seed_everything(config.seed, workers=True, verbose=False)
        student = build_model(config, "student", data)
        objective = build_objective(config.objective.preset, config.objective.terms, data.tasks, student, teacher)
        objective.set_dataset_size(len(data.datasets["train"]))
        objective.set_class_counts(counts)
        stages["student"] = train_stage("student", config, config.training.student, student, objective, data, log,
                                        run_dir / "checkpoints" / "student_best.safetensors", teacher=teacher)
        if precomputed is not None:  # the student's representation, scored as the teacher's was
            ref = next((r for t in objective.terms for role, r in t.features() if role == "student"), "fused")
            features = {s: collect_features(student, data, s, config.training.student.batch_size, ref)[0]
                        for s in data.datasets}
            results["probe"]["student"] = {"feature": ref, **probe_splits(features, data, config.seed)}
    if config.training.baseline and not teacher_only:
        L.seed_everything(config.seed, workers=True, verbose=False)
        best = run_dir / "checkpoints" / "baseline_best.safetensors"

        def train_baseline() -> StageResult:
            baseline = build_model(config, "student", data)
            baseline_cfg = config.training.student.model_copy(update={"resume_from": None})  # that is the student's
            return train_stage("baseline", config, baseline_cfg, baseline, supervised(baseline), data, log, best)

        stages["baseline"] = baseline_stage(config, data, log, best, train_baseline)

    for name, result in stages.items():
        results[name] = _stage_entry(result)
        timing[name] = round(result.seconds, 3)
        _write_confusions(run_dir, name, result, config.logging.plots)
    timing["total"] = round(time.perf_counter() - started, 3)
    results["timing"] = timing
    results["params"] = {"teacher": teacher.num_parameters() if precomputed is None else None}
    if student is not None:
        results["params"]["student"] = student.num_parameters()
    results["tasks"] = {t.name: {"type": t.type, "classes": list(t.classes)} for t in data.tasks}
    results["samples"] = {split: len(ds) for split, ds in data.datasets.items()}
    results["image_stats"] = image_stats(data.modalities)  # the mean/std the inputs were normalised with
    results["data_signature"] = data_signature(config, data)  # a sweep re-runs this run when its data changes
    if config.logging.plots and log.rows:
        plot_curves(log.rows, run_dir / "plots" / "curves.png")
        plot_stage_curves(log.rows, run_dir / "plots")
    if config.logging.plots:  # seed 002's t-SNE / UMAP of each model's fused test vectors
        roles = {"teacher": None if precomputed is not None else teacher, "student": student}
        write_run_plots(run_dir, {r: m for r, m in roles.items() if m is not None}, data,
                        batch_size=config.training.student.batch_size)
    # what a sweep compares to decide whether this run is finished (mmdistill/sweep/hashing.py)
    results["config_hash"] = teacher_hash(config) if teacher_only else config_hash(config)
    write_json_atomic(run_dir / "results.json", results)
    if config.compress is not None and "student" in results:  # prune / quantize / export the student
        from mmdistill.compress import compress_run

        results = compress_run(run_dir, config=config, data=data)
    return results


def summary_table(results: dict[str, Any]) -> str:
    rows = [("teacher", "teacher"), ("KD student", "student"), ("baseline student", "baseline")]
    lines = [f"{'model':<18}{'dev score':>10}{'test score':>12}{'params':>14}"]
    for label, key in rows:
        if key not in results:
            continue
        params = results["params"]["teacher" if key == "teacher" else "student"]
        shown = f"{params:,}" if params is not None else "precomputed"
        lines.append(f"{label:<18}{results[key]['dev']['score']:>10.4f}{results[key]['test']['score']:>12.4f}{shown:>14}")
    return "\n".join(lines)
