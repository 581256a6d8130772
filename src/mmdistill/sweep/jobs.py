"""One job of a sweep, as it travels to whatever runs it (this process, a worker process, a
SLURM node): plain data in, plain data out, so it pickles, and a failure comes back as an
outcome with its error line instead of an exception that would stop the other jobs."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mmdistill.errors import UserError
from mmdistill.io import write_text_atomic


@dataclass
class Job:
    kind: str                       # "teacher" (a shared teacher, teacher stage only) or "run"
    label: str                      # "teacher 1a2b3c4d seed 42", "preset-kd seed 42"
    run_dir: str
    config: dict[str, Any]          # the resolved config (ExperimentConfig.model_dump(mode="json"))
    expected_hash: str              # what results.json must hold for this job to count as finished
    variant: Optional[str] = None
    seed: Optional[int] = None
    teacher_dir: Optional[str] = None   # the shared teacher this run loads
    dependents: list[str] = field(default_factory=list)  # teacher jobs: the runs that load it
    expected_data: Optional[str] = None  # the data signature results.json must hold (None: not checked)

    def is_finished(self) -> bool:
        """Finished = results.json exists, parses, and holds the hash of the config we would run
        now and the signature of the data as it is now (a corrected label file or a replaced
        image re-runs the job; `cache/keys.data_signature`)."""
        try:
            results = json.loads((Path(self.run_dir) / "results.json").read_text())
            return results.get("config_hash") == self.expected_hash and (
                self.expected_data is None or results.get("data_signature") == self.expected_data) \
                and self._same_code_and_teacher(results.get("identity") or {})
        except (OSError, ValueError, AttributeError):
            return False

    def _same_code_and_teacher(self, identity: dict[str, Any]) -> bool:
        """The run was made by this mmdistill, from the teacher checkpoint as it is now (its
        content: a shared teacher trained again at the same path makes its runs stale)."""
        from mmdistill import __version__
        from mmdistill.config.hashing import file_digest

        checkpoint = (self.config.get("teacher") or {}).get("checkpoint")
        return identity.get("mmdistill") == __version__ and (
            checkpoint is None or identity.get("teacher_checkpoint") == file_digest(checkpoint))


@dataclass
class Outcome:
    label: str
    ok: bool
    seconds: float
    error: Optional[str] = None     # one line
    summary: Optional[str] = None   # e.g. "test score 0.912"


def error_line(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _summary(kind: str, results: dict[str, Any]) -> str:
    role = "teacher" if kind == "teacher" else "student"
    parts = [f"{role} dev {results[role]['dev']['score']:.4f} test {results[role]['test']['score']:.4f}"]
    if "baseline" in results and kind != "teacher":
        parts.append(f"baseline test {results['baseline']['test']['score']:.4f}")
    return ", ".join(parts)


def execute_job(job: Job) -> Outcome:
    """Run one job; never raises for a failed run (KeyboardInterrupt still stops the sweep).
    The traceback of a failure goes to <run_dir>/error.log; its last line is the outcome's."""
    from mmdistill.environment import prepare_process

    prepare_process()
    start = time.perf_counter()
    run_dir = Path(job.run_dir)
    try:
        from mmdistill.preflight import checked_config
        from mmdistill.run.experiment import run_experiment

        config = checked_config(job.config, job.label)
        # the plan's config, so a directory of another config is replaced, and one of this config
        # (a job killed by preemption or a timeout) resumes where it stopped
        results = run_experiment(config, run_dir=run_dir, teacher_only=job.kind == "teacher", replace_changed=True)
        return Outcome(job.label, True, time.perf_counter() - start, summary=_summary(job.kind, results))
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the others
        line = error_line(exc)
        from mmdistill.distributed import is_writer

        try:
            if is_writer():  # a run on many devices fails on every rank; rank 0 says why
                write_text_atomic(run_dir / "error.log", traceback.format_exc() + f"\n{line}\n")
        except OSError:
            pass
        return Outcome(job.label, False, time.perf_counter() - start, error=line)
