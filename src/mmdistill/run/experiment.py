"""One experiment end to end: a run is a list of stages, run in order.

Order of work is chosen so that bad input fails before anything is written (config, data and
models are checked first), and so that a crash loses little: every stage leaves a record when
it finishes and a last checkpoint while it trains, so re-running the same command skips the
finished stages and continues the interrupted one from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mmdistill.cache.images import attach_caches, load_checked_data
from mmdistill.cache.keys import data_signature
from mmdistill.config.schema import ExperimentConfig
from mmdistill.distributed import check_launch
from mmdistill.preflight import check_models
from mmdistill.run.context import RunContext
from mmdistill.run.directory import RunDirectory
from mmdistill.run.stages import Stage
from mmdistill.run.stages.baseline import BaselineStage
from mmdistill.run.stages.compress import CompressStage
from mmdistill.run.stages.report import ReportStage
from mmdistill.run.stages.student import StudentStage
from mmdistill.run.stages.teacher import TeacherStage
from mmdistill.tracking import RunTrackers
from mmdistill.train.recorder import MetricsLog

logger = logging.getLogger(__name__)


def stages_for(config: ExperimentConfig, teacher_only: bool = False) -> list[Stage]:
    """The stages this config runs, in order; `teacher_only` is a sweep's shared teacher."""
    if teacher_only:
        return [TeacherStage(), ReportStage()]
    return [TeacherStage(), StudentStage(), *([BaselineStage()] if config.training.baseline else []),
            ReportStage(), *([CompressStage()] if config.compress is not None else [])]


def start_run(config: ExperimentConfig, overwrite: bool, run_dir: Path | None, teacher_only: bool,
              replace_changed: bool = False) -> RunContext:
    """Check the data and the models, then (and only then) prepare the run directory, attach
    the decoded-image caches and write config.yaml."""
    started = time.perf_counter()
    check_launch(config)
    data = load_checked_data(config)
    teacher = check_models(config, data)
    directory = RunDirectory(run_dir if run_dir is not None else config.run_dir)
    signature = data_signature(config, data, record=True)
    resumed = directory.prepare(config, overwrite, replace_changed, signature)
    trackers = RunTrackers.open(config, directory.path, resumed)
    log = (MetricsLog.resume if resumed else MetricsLog)(directory / "metrics.csv", trackers.log_row)
    run = RunContext(config, data, directory, log, teacher, teacher_only=teacher_only, started=started,
                     resumed=resumed, data_signature=signature, trackers=trackers)
    # a precomputed teacher reads none of the images: only the student's are decoded
    attach_caches(data, config, set(config.student.encoders) if run.precomputed is not None else None)
    directory.write_config(config)
    trackers.start(config)
    run.results.update({"experiment": config.experiment_name, "seed": config.seed})
    return run


def run_experiment(config: ExperimentConfig, overwrite: bool = False, run_dir: Path | None = None,
                   teacher_only: bool = False, replace_changed: bool = False) -> dict[str, Any]:
    """`run_dir` defaults to output_dir/experiment_name (a sweep passes .../<variant>/seed_<n>);
    `teacher_only` stops after the teacher stage (a sweep's shared teacher); `replace_changed`
    starts over in a directory whose run has another identity (a sweep's job). A directory
    holding this run already is resumed: finished stages are restored from their records,
    and every stage after the first one that runs runs too. Returns results.json."""
    run = start_run(config, overwrite, run_dir, teacher_only, replace_changed)
    fresh = not run.resumed
    try:
        for stage in stages_for(config, teacher_only):
            record = None if fresh else stage.finished(run)
            if record is not None:
                stage.restore(run, record)
                logger.info("%s: the %s stage finished earlier; its results are read back", run.dir.path, stage.name)
                continue
            fresh = True
            stage.run_and_record(run)
    except BaseException as exc:
        run.trackers.finish(None, run.dir.path, "killed" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "failed")
        raise
    run.trackers.finish(run.results, run.dir.path)
    return run.results


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
