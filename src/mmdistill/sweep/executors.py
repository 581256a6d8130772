"""Where a sweep's jobs run, by name (`sweep.executor.type`):

- `local`: this machine. `workers: 1` runs the jobs one after another in this process;
  `workers: N` runs N at a time in spawned worker processes (each with cores / N torch threads).
- `slurm`: submitit. Each phase of the sweep (shared teachers, then runs) is one array job
  (`executor.map_array`), with partition, time, mem, cpus, GPUs / gres and setup lines from the
  config. `cluster: debug` runs the very same jobs in this process through submitit's debug
  executor (no cluster needed); `cluster: local` through submitit's local subprocess executor.

An executor takes jobs and two callbacks (a job starts or is submitted; a job is done) and
returns one Outcome per job; a job that fails or dies is a failed Outcome, never an exception.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

from mmdistill.config.schema import SweepExecutorSpec
from mmdistill.registry import Registry
from mmdistill.sweep.jobs import Job, Outcome, error_line, execute_job

class RequeueingJob:
    """A sweep job on a SLURM node that survives preemption and its time limit: before SLURM
    stops it, submitit signals the job (`--signal=USR2@90` in the sbatch script) and calls
    `checkpoint`, which asks for the same job to be queued again; when it starts again,
    `run_experiment` finds its run directory and resumes it (finished stages from their
    records, the interrupted one from its last checkpoint)."""

    def __call__(self, job: Job) -> Outcome:
        return execute_job(job)

    def checkpoint(self, job: Job) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job)


OnStart = Callable[[Job], None]
OnDone = Callable[[Job, Outcome], None]

EXECUTORS: Registry[type] = Registry("sweep executor")


def build_executor(spec: SweepExecutorSpec, sweep_dir: Path):
    return EXECUTORS.get(spec.type, "sweep.executor.type")(spec, sweep_dir)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def seeds_apart(jobs: list[Job]) -> list[Job]:
    """The jobs in an order where neighbours have different seeds: the first job of each seed,
    then the second of each, and so on. A pool runs neighbours at the same time, and runs of one
    seed share one baseline (`cache/baselines.py`): in the plan's seed-by-seed order two workers
    would reach the same baseline together and one would wait for the other to train it."""
    rank: dict[Any, int] = {}
    ordered = []
    for index, job in enumerate(jobs):
        ordered.append((rank.get(job.seed, 0), index, job))
        rank[job.seed] = rank.get(job.seed, 0) + 1
    return [job for _, _, job in sorted(ordered, key=lambda item: item[:2])]


@EXECUTORS.register("local")
class LocalExecutor:
    def __init__(self, spec: SweepExecutorSpec, sweep_dir: Path):
        self.workers = spec.workers
        self.in_order = spec.workers == 1  # on_start is called when a job really starts

    @staticmethod
    def quiet(spec: SweepExecutorSpec) -> bool:
        """Progress bars of parallel runs would overwrite each other."""
        return spec.workers > 1

    def describe(self) -> str:
        return "local, one run at a time" if self.workers == 1 else f"local, {self.workers} worker processes"

    def run(self, jobs: list[Job], on_start: OnStart, on_done: OnDone) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        if self.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                on_start(job)
                outcomes[job.label] = execute_job(job)
                on_done(job, outcomes[job.label])
            return [outcomes[j.label] for j in jobs]
        workers = min(self.workers, len(jobs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        context = multiprocessing.get_context("spawn")  # fork after torch threads started can hang
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = {pool.submit(execute_job, job): job for job in seeds_apart(jobs)}
            for job in futures.values():
                on_start(job)
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process died (out of memory, killed)
                    outcome = Outcome(job.label, False, 0.0, error=f"worker process died: {error_line(exc)}")
                outcomes[job.label] = outcome
                on_done(job, outcome)
        return [outcomes[j.label] for j in jobs]


@EXECUTORS.register("slurm")
class SlurmExecutor:
    JOB_NAME = "mmdistill-sweep"
    in_order = False  # on_start is called when a job is submitted

    def __init__(self, spec: SweepExecutorSpec, sweep_dir: Path):
        self.spec = spec
        self.folder = Path(spec.folder) if spec.folder else Path(sweep_dir) / "_submitit"

    @staticmethod
    def quiet(spec: SweepExecutorSpec) -> bool:
        return True

    def describe(self) -> str:
        where = f"partition {self.spec.partition}" if self.spec.partition else "default partition"
        how = {"slurm": "SLURM array jobs", "debug": "submitit debug executor (in this process)",
               "local": "submitit local executor"}[self.spec.cluster]
        return f"{how}, {where}, {self.spec.time} min per job"

    def sbatch_parameters(self) -> dict[str, Any]:
        """Keyword arguments of submitit's sbatch writer (`submitit.slurm.slurm._make_sbatch_string`)."""
        spec = self.spec
        params: dict[str, Any] = {"job_name": self.JOB_NAME, "time": spec.time,
                                  "array_parallelism": spec.array_parallelism}
        if spec.nodes > 1 or spec.tasks_per_node > 1:  # srun starts one process per device; Lightning reads
            params.update(nodes=spec.nodes, ntasks_per_node=spec.tasks_per_node)  # its ranks from SLURM
        for key in ("partition", "account", "qos", "constraint", "mem", "cpus_per_task", "gpus_per_task", "gres"):
            if getattr(spec, key) is not None:
                params[key] = getattr(spec, key)
        if spec.setup:
            params["setup"] = list(spec.setup)
        if spec.additional_parameters:
            params["additional_parameters"] = dict(spec.additional_parameters)
        return params

    def sbatch_script(self, n_jobs: int) -> str:
        """The sbatch file submitit writes for an array of `n_jobs` jobs (for --dry-run and tests)."""
        from submitit.slurm.slurm import _make_sbatch_string

        python = self.spec.python or shlex.quote(sys.executable)
        command = f"{python} -u -m submitit.core._submit {shlex.quote(str(self.folder / '%j'))}"
        return _make_sbatch_string(command=command, folder=self.folder / "%j", map_count=n_jobs if n_jobs > 1 else None,
                                   **self.sbatch_parameters())

    def executor(self):
        import submitit

        extra = {"slurm_python": self.spec.python} if self.spec.python else {}
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.spec.cluster, **extra)
        params = self.sbatch_parameters()
        # the generic timeout also bounds the debug/local clusters (submitit's local default is 2 min)
        executor.update_parameters(name=params.pop("job_name"), timeout_min=params.pop("time"),
                                   **{f"slurm_{k}": v for k, v in params.items()})
        return executor

    def submit(self, jobs: list[Job]) -> list:
        """One array job for all `jobs` (a single job is submitted alone)."""
        return self.executor().map_array(RequeueingJob(), jobs)

    def run(self, jobs: list[Job], on_start: OnStart, on_done: OnDone) -> list[Outcome]:
        from submitit.helpers import as_completed as jobs_completed

        if not jobs:
            return []
        submitted = self.submit(jobs)
        by_id = {id(s): job for s, job in zip(submitted, jobs)}
        for job in jobs:
            on_start(job)
        outcomes: dict[str, Outcome] = {}
        poll = 1.0 if self.spec.cluster != "slurm" else 15.0
        for done in jobs_completed(submitted, poll_frequency=poll):
            job = by_id[id(done)]
            try:
                outcome = done.result()
            except Exception as exc:  # timeout, out of memory, node failure, cancelled
                lines = [line for line in str(exc).splitlines() if line.strip()]
                outcome = Outcome(job.label, False, 0.0,
                                  error=f"SLURM job {getattr(done, 'job_id', '?')}: {lines[-1] if lines else error_line(exc)}")
            outcomes[job.label] = outcome
            on_done(job, outcome)
        return [outcomes[j.label] for j in jobs]
