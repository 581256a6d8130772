"""Label encoding: class lists are discovered from train and fixed, so indices mean the same
thing in every split, checkpoint and confusion matrix; a dev/test label that train never had
is an error naming its row rather than a silently wrong index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmdistill.config.schema import TaskSpec
from mmdistill.data.records import Record
from mmdistill.errors import UserError


@dataclass(frozen=True)
class TaskInfo:
    """A task as the model sees it: binary tasks have one logit, multiclass one per class.
    Defined with the labels, since its classes are what `discover_tasks` finds in train."""

    name: str
    type: str
    classes: tuple[str, ...]

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "binary" else len(self.classes)


TRUE = {"1", "1.0", "true", "yes", "y", "t"}
FALSE = {"0", "0.0", "false", "no", "n", "f"}


def _label_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _binary(value: Any, origin: str, task: str) -> int:
    text = _label_text(value).lower()
    if text in TRUE:
        return 1
    if text in FALSE:
        return 0
    raise UserError(f"{origin}: task {task!r}: binary label must be 0/1 or true/false, got {value!r}")


def _sort_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def discover_tasks(tasks: dict[str, TaskSpec], train: list[Record]) -> list[TaskInfo]:
    infos = []
    for name, spec in tasks.items():
        if spec.type == "binary":
            for r in train:
                _binary(r.labels[name], r.origin, name)
            infos.append(TaskInfo(name, "binary", ("0", "1")))
            continue
        classes = sorted({_label_text(r.labels[name]) for r in train} - {""}, key=_sort_key)
        empty = next((r for r in train if _label_text(r.labels[name]) == ""), None)
        if empty is not None:
            raise UserError(f"{empty.origin}: task {name!r}: empty label")
        if len(classes) < 2:
            raise UserError(f"task {name!r}: train has only {len(classes)} class(es) ({', '.join(classes)}); need at least 2")
        infos.append(TaskInfo(name, "multiclass", tuple(classes)))
    return infos


def encode_labels(records: list[Record], tasks: list[TaskInfo], split: str) -> dict[str, list[int]]:
    encoded: dict[str, list[int]] = {}
    for task in tasks:
        if task.type == "binary":
            encoded[task.name] = [_binary(r.labels[task.name], r.origin, task.name) for r in records]
            continue
        index = {c: i for i, c in enumerate(task.classes)}
        values = []
        for r in records:
            label = _label_text(r.labels[task.name])
            if label not in index:
                raise UserError(f"{r.origin}: task {task.name!r}: label {label!r} in {split} never appears in train "
                                f"(train classes: {', '.join(task.classes)})")
            values.append(index[label])
        encoded[task.name] = values
    return encoded
