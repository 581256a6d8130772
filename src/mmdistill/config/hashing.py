"""What makes two runs the same run, and two teachers the same teacher.

`config_hash` covers everything in a resolved config that can change a run's results; it is
stored in results.json, and a sweep treats a run as finished only when the stored hash equals
the hash of the config it would run now. `teacher_key` covers what can change the teacher
stage: everything except the parts known to act only on the student side, so a config field
added later counts for the teacher until someone says otherwise (less sharing, never a wrong
teacher shared).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Where a run is written and how it talks, not what it computes.
NOT_RESULTS = ("sweep", "output_dir", "experiment_name", "logging", "cache.dir", "cache.text", "cache.baseline",
               "training.last_checkpoint_budget")
# Read only by the student and baseline stages (and what happens after them).
STUDENT_ONLY = ("student", "objective.preset", "objective.overrides", "objective.terms", "training.student",
                "training.baseline", "compress",
                "data.views", "cache.teacher", "cache.teacher_dtype")

# Read only by the teacher stage and the KD student, not by the baseline (the student on task
# loss alone); `resume_from` is the KD student's own checkpoint.
NOT_BASELINE = ("teacher", "training.teacher", "objective.preset", "objective.overrides", "objective.terms",
                "cache.teacher",
                "cache.teacher_dtype", "compress", "training.student.resume_from")


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(last, None)


def _digest(tree: dict[str, Any]) -> str:
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _tree(config: Any) -> dict[str, Any]:
    tree = config.model_dump(mode="json") if hasattr(config, "model_dump") else json.loads(json.dumps(config))
    for key in NOT_RESULTS + ("data.num_workers",):
        _drop(tree, key)
    return tree


def config_hash(config: Any) -> str:
    """Hash of a resolved ExperimentConfig (or its JSON dump) minus paths, names and logging."""
    return _digest(_tree(config))


def teacher_key(config: Any, with_seed: bool = False) -> str:
    """Hash of the parts of a config that the teacher stage reads (data, tasks, teacher,
    training.teacher, accelerator settings, objective.supervised, ...); the seed only when
    `with_seed` (a sweep keeps one teacher directory per key and one seed folder inside it)."""
    tree = _tree(config)
    for key in STUDENT_ONLY + (() if with_seed else ("seed",)):
        _drop(tree, key)
    return _digest(tree)


def teacher_hash(config: Any) -> str:
    """What a teacher-only run stores as its `config_hash`."""
    return teacher_key(config, with_seed=True)


def baseline_hash(config: Any) -> str:
    """Hash of what a run's baseline stage reads: everything but `NOT_BASELINE`, so runs that
    differ only in teacher or KD objective share one baseline (`cache/baselines.py`)."""
    tree = _tree(config)
    for key in NOT_BASELINE:
        _drop(tree, key)
    return _digest(tree)


def file_digest(path: Any) -> str | None:
    """sha256 of a file's bytes (None when it is missing): what a checkpoint *is*, where its
    path only says where it was."""
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:24]
    except OSError:
        return None


def run_identity(config: Any, data_signature: str | None = None) -> dict[str, Any]:
    """What makes a run directory the same run: the config (`config_hash`), the data it reads
    (a corrected label file is another run), the content of the teacher checkpoint it loads (a
    retrained teacher at the same path is another run), and the mmdistill version. A re-run
    with the same identity resumes; another one is refused unless --overwrite."""
    from mmdistill import __version__

    checkpoint = config.teacher.checkpoint
    return {"config": config_hash(config), "data": data_signature,
            "teacher_checkpoint": file_digest(checkpoint) if checkpoint is not None else None,
            "mmdistill": __version__}


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (for the error that refuses a
    changed config in an existing run directory)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [k for key in keys for k in differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]
