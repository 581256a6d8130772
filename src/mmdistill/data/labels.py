"""Label encoding: class lists are discovered from train and fixed, so indices mean the same
thing in every split, checkpoint and confusion matrix; a dev/test label that train never had
is an error naming its row rather than a silently wrong index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from mmdistill.config.schema import TaskSpec
from mmdistill.data.records import RecordTable
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


def _first_with(table: RecordTable, task: str, code: int) -> str:
    """The origin of the first record whose label for `task` is category `code`."""
    return table.origins[int(np.flatnonzero(table.labels[task].codes == code)[0])]


def _category_codes(table: RecordTable, task: str, encode: Callable[[Any, int], int]) -> np.ndarray:
    """Each record's encoded label: `encode(value, code)` once per distinct value, not per record."""
    column = table.labels[task]
    mapping = np.asarray([encode(value, code) for code, value in enumerate(column.categories)], dtype=np.int64)
    return mapping[column.codes] if len(column.codes) else np.zeros(0, dtype=np.int64)


def discover_tasks(tasks: dict[str, TaskSpec], train: RecordTable) -> list[TaskInfo]:
    infos = []
    for name, spec in tasks.items():
        if spec.type == "binary":
            _category_codes(train, name, lambda value, code: _binary(value, _first_with(train, name, code), name))
            infos.append(TaskInfo(name, "binary", ("0", "1")))
            continue
        column = train.labels[name]
        texts = [_label_text(value) for value in column.categories]
        if "" in texts:
            raise UserError(f"{_first_with(train, name, texts.index(''))}: task {name!r}: empty label")
        classes = sorted(set(texts), key=_sort_key)
        if len(classes) < 2:
            raise UserError(f"task {name!r}: train has only {len(classes)} class(es) ({', '.join(classes)}); need at least 2")
        infos.append(TaskInfo(name, "multiclass", tuple(classes)))
    return infos


def encode_label(task: TaskInfo, value: Any, origin: str) -> int:
    """One label's class index as `encode_labels` gives it, for labels that arrive one at a time
    (rows handed to `predict`); a label the task does not know is a UserError naming `origin`."""
    if task.type == "binary":
        return _binary(value, origin, task.name)
    label = _label_text(value)
    if label not in task.classes:
        raise UserError(f"{origin}: task {task.name!r}: label {label!r} is not one of the model's classes "
                        f"({', '.join(task.classes)})")
    return task.classes.index(label)


def encode_labels(records: RecordTable, tasks: list[TaskInfo], split: str) -> dict[str, np.ndarray]:
    """Per task, every record's class index (int64), checked once per distinct label."""
    encoded: dict[str, np.ndarray] = {}
    for task in tasks:
        if task.type == "binary":
            encoded[task.name] = _category_codes(
                records, task.name, lambda value, code: _binary(value, _first_with(records, task.name, code), task.name))
            continue
        index = {c: i for i, c in enumerate(task.classes)}

        def encode(value: Any, code: int) -> int:
            label = _label_text(value)
            if label not in index:
                raise UserError(f"{_first_with(records, task.name, code)}: task {task.name!r}: label {label!r} in "
                                f"{split} never appears in train (train classes: {', '.join(task.classes)})")
            return index[label]

        encoded[task.name] = _category_codes(records, task.name, encode)
    return encoded
