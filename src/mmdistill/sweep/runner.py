"""`mmdistill sweep CONFIG`: plan (everything validated), skip what is finished, train the
shared teachers, run the variants, list failures, aggregate, report.

Resuming is the default: a run is finished when its results.json holds the hash of the config
it would run now, so re-running the same command after a crash, a Ctrl-C or a cancelled SLURM
job trains only what is missing or failed; changing the base config or a grid value reruns
exactly the runs it changes. One failed run never stops the others; the exit code is 1 when
any run failed, and the aggregation and report of the finished ones are written anyway.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

from mmdistill.io import write_json_atomic
from mmdistill.sweep.aggregate import AGGREGATED, BEST_CONFIG, MANIFEST
from mmdistill.sweep.executors import EXECUTORS, SlurmExecutor, build_executor
from mmdistill.sweep.jobs import Job, Outcome
from mmdistill.sweep.plan import TEACHER_FILE, SweepPlan, make_plan
from mmdistill.tracking.sweep import SweepTracking


class SweepLog:
    """Print a line and keep it in <sweep dir>/sweep.log (the record of what ran when)."""

    def __init__(self, echo: Callable[[str], None] = print):
        self.echo = echo
        self.path: Path | None = None

    def __call__(self, line: str) -> None:
        self.echo(line)
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _teacher_ready(job: Job) -> bool:
    return job.is_finished() and (Path(job.run_dir) / TEACHER_FILE).is_file()


def _status(plan: SweepPlan) -> tuple[list[Job], list[Job], list[Job]]:
    """(runs already finished, runs to do, teachers to train for them)."""
    finished = [r for r in plan.runs if r.is_finished()]
    todo = [r for r in plan.runs if r not in finished]
    needed = {r.teacher_dir for r in todo if r.teacher_dir}
    teachers = [t for t in plan.teachers if t.run_dir in needed and not _teacher_ready(t)]
    return finished, todo, teachers


def run_sweep(path: str | Path, overrides: Iterable[str] = (), dry_run: bool = False, report: bool = True,
              echo: Callable[[str], None] = print) -> int:
    started = time.perf_counter()
    log = SweepLog(echo)
    quiet = lambda spec: EXECUTORS.get(spec.executor.type, "sweep.executor.type").quiet(spec.executor)
    plan = make_plan(path, overrides, quiet=quiet)
    executor = build_executor(plan.spec.executor, plan.sweep_dir)
    finished, todo, teachers = _status(plan)

    log(f"sweep {plan.experiment}: {len(plan.variants)} variant(s) x {len(plan.spec.seeds)} seed(s) = {len(plan.runs)} "
        f"runs in {plan.sweep_dir}; executor: {executor.describe()}")
    for variant in plan.variants:
        log(f"  variant {variant.name}: {variant.label()}")
    log(f"{len(finished)} run(s) already finished (skipped), {len(todo)} to run; "
        f"{len(plan.teachers)} shared teacher(s), {len(teachers)} to train")
    if dry_run:
        for job in teachers + todo:
            log(f"  would run {job.label} -> {job.run_dir}")
        if isinstance(executor, SlurmExecutor):
            for phase, jobs in (("teachers", teachers), ("runs", todo)):
                if jobs:
                    log(f"--- sbatch script for the {phase} ({len(jobs)} job(s)) ---\n{executor.sbatch_script(len(jobs))}")
        return 0

    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    log.path = plan.sweep_dir / "sweep.log"
    write_json_atomic(plan.sweep_dir / MANIFEST, plan.manifest())
    tracking = SweepTracking.open(plan.sweep_dir, plan.experiment, plan.teachers + plan.runs)
    failures: list[Outcome] = []
    try:
        failed_teachers = _train_teachers(executor, teachers, log, failures)
        runnable = []
        for job in todo:
            if job.teacher_dir in failed_teachers:
                outcome = Outcome(job.label, False, 0.0, error=f"not run: its shared teacher failed "
                                                              f"({failed_teachers[job.teacher_dir]})")
                failures.append(outcome)
                log(f"[skip] {job.label}: {outcome.error}")
            else:
                runnable.append(job)
        _run(executor, runnable, log, failures)
    except (KeyboardInterrupt, SystemExit):  # Lightning turns Ctrl-C during fit into sys.exit(1)
        log("interrupted: finished runs are kept; run the same command again to resume the sweep")
        if tracking is not None:
            tracking.finish(plan.sweep_dir, "killed")
        return 130

    ran = len(todo) - sum(1 for f in failures if f.label in {j.label for j in todo})
    log(f"sweep {plan.experiment} done in {time.perf_counter() - started:.0f} s: {ran} run(s) trained now, "
        f"{len(finished)} skipped as finished, {len(failures)} failed")
    if report:
        _report(plan, log)
    if tracking is not None:
        tracking.finish(plan.sweep_dir, "failed" if failures else "success")
    if failures:
        log(f"FAILED ({len(failures)}):")
        for outcome in failures:
            log(f"  {outcome.label}: {outcome.error}")
    return 1 if failures else 0


def _train_teachers(executor, teachers: list[Job], log: SweepLog, failures: list[Outcome]) -> dict[str, str]:
    """Phase 1: every shared teacher still needed, once per teacher configuration and seed."""
    failed: dict[str, str] = {}
    if not teachers:
        return failed
    count = {"n": 0}

    def start(job: Job) -> None:
        count["n"] += 1
        queued = "" if getattr(executor, "in_order", False) else " (queued)"
        log(f"[teacher {count['n']}/{len(teachers)}] {job.label}: training teacher{queued}, shared by "
            f"{len(job.dependents)} run(s) -> {job.run_dir}")

    def done(job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            log(f"[teacher] {job.label}: done in {outcome.seconds:.0f} s ({outcome.summary})")
        else:
            failed[job.run_dir] = f"{job.label}: {outcome.error}"
            failures.append(outcome)
            log(f"[teacher] {job.label}: FAILED after {outcome.seconds:.0f} s: {outcome.error}")

    executor.run(teachers, start, done)
    return failed


def _run(executor, runs: list[Job], log: SweepLog, failures: list[Outcome]) -> None:
    """Phase 2: the runs (KD student and baseline; the teacher loaded from its shared run)."""
    if not runs:
        return
    count = {"started": 0, "done": 0}

    def start(job: Job) -> None:
        count["started"] += 1
        verb = "running" if getattr(executor, "in_order", False) else "queued"
        log(f"[{count['started']}/{len(runs)}] {job.label}: {verb} -> {job.run_dir}")

    def done(job: Job, outcome: Outcome) -> None:
        count["done"] += 1
        if outcome.ok:
            log(f"[done {count['done']}/{len(runs)}] {job.label} in {outcome.seconds:.0f} s: {outcome.summary}")
        else:
            failures.append(outcome)
            log(f"[done {count['done']}/{len(runs)}] {job.label}: FAILED after {outcome.seconds:.0f} s: {outcome.error}")

    executor.run(runs, start, done)


def _report(plan: SweepPlan, log: SweepLog) -> None:
    from mmdistill.sweep.report import make_report

    try:
        make_report(plan.sweep_dir, tsne=plan.spec.tsne, log=log)
    except Exception as exc:  # noqa: BLE001 - the runs are done; say why the report is not
        from mmdistill.sweep.jobs import error_line

        log(f"report failed: {error_line(exc)} (re-run it with: mmdistill report {plan.sweep_dir})")
        return
    best = plan.sweep_dir / BEST_CONFIG
    aggregated = json.loads((plan.sweep_dir / AGGREGATED).read_text())
    if aggregated.get("best") and best.is_file():
        b = aggregated["best"]
        log(f"best variant by {b['metric']} ({b['mode']}): {b['variant']} ({b['mean']:.4f}, n = {b['n']}); "
            f"its config: {best}")
