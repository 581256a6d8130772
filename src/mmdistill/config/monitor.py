"""What picks a stage's best epoch, stops it early and, for the student, ranks a sweep's variants:
`training.<stage>.monitor`, one dev metric, with its direction (`mode`).

    dev_score           mean over tasks of the headline F1 (the default, as seeds 000-002 select)
    dev_accuracy        mean over tasks of the accuracy (seed 004 keeps its best validation accuracy)
    dev_loss            the stage's loss on dev (seed 003 selects on validation loss); minimised
    dev_<task>_<metric> one task's f1, f1_macro, accuracy or auroc, e.g. dev_smoke_f1

Each name is also a path into results.json (`results_path`), so a sweep tunes on the same
number the stages selected with.
"""

from __future__ import annotations

from typing import Iterable, Literal, Optional

TASK_METRICS = ("f1_macro", "f1", "accuracy", "auroc")  # longest first: `_f1_macro` before `_f1`
OVERALL = {"dev_score": "score", "dev_accuracy": "accuracy", "dev_loss": "loss"}


def parse_monitor(name: str, tasks: Iterable[str]) -> tuple[Optional[str], str]:
    """(task or None, metric) of a monitor name; ValueError naming the choices when unknown."""
    if name in OVERALL:
        return None, OVERALL[name]
    if name.startswith("dev_"):
        rest = name[len("dev_"):]
        for metric in TASK_METRICS:
            task = rest[: -len(metric) - 1] if rest.endswith(f"_{metric}") else None
            if task in set(tasks):
                return task, metric
    choices = ", ".join(list(OVERALL) + [f"dev_<task>_<{'|'.join(TASK_METRICS)}>"])
    raise ValueError(f"unknown monitor {name!r}; choose one of {choices} (tasks: {', '.join(tasks)})")


def monitor_mode(name: str, mode: Optional[Literal["min", "max"]]) -> Literal["min", "max"]:
    """The direction of `name`: as given, else min for a loss and max for everything else."""
    return mode or ("min" if name == "dev_loss" else "max")


def results_path(name: str, tasks: Iterable[str], role: str) -> str:
    """Where results.json keeps the monitored value of `role`'s best epoch, e.g.
    `student.dev.loss` or `student.dev.tasks.smoke.f1`."""
    task, metric = parse_monitor(name, tasks)
    return f"{role}.dev.{metric}" if task is None else f"{role}.dev.tasks.{task}.{metric}"


def monitor_value(name: str, dev: dict, tasks: Iterable[str]) -> Optional[float]:
    """The monitored value in a dev metrics dict M (`eval/metrics.evaluate`, plus `loss`)."""
    task, metric = parse_monitor(name, tasks)
    value = dev.get(metric) if task is None else dev["tasks"][task].get(metric)
    return None if value is None else float(value)
