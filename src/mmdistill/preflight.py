"""Everything checked before a command writes anything: the config whole, then the models.

`config/` checks what the config alone can say (schema, modalities, tasks). The checks here
also need the registries of models and loss terms, so they sit above both: fusion parameters,
every loss term with its parameters and the features it reads, and finally the teacher, the
student and the objective between them built once, so an unknown backbone, unreachable
weights or a term reading a feature the models lack fails with exit 2 before any training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import lightning as L

from mmdistill.config.loading import apply_overrides, read_config_file, validate_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.data.embeddings import load_teacher_embeddings, teacher_modality
from mmdistill.errors import UserError
from mmdistill.losses.objective import check_objective, student_objective
from mmdistill.models.build import build_model
from mmdistill.models.fusion import check_fusion
from mmdistill.models.net import MultiModalNet
from mmdistill.models.precomputed import PrecomputedTeacher
from mmdistill.tracking import check_trackers


def check_config(config: ExperimentConfig, source: str) -> ExperimentConfig:
    """Fusion parameters, the objective's terms and the trackers (names, and their packages
    installed), against their registries; raises UserError
    naming `source` and the key."""
    for role in ("teacher", "student"):
        try:
            check_fusion(getattr(config, role).fusion, f"{role}.fusion")
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
    try:
        check_objective(config)
        check_trackers(config)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return config


def checked_config(raw: dict[str, Any], source: str) -> ExperimentConfig:
    """A raw config tree (a sweep variant, a run's config.yaml) checked whole."""
    return check_config(validate_config(raw, source), source)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a config file, apply `--set` overrides, and check it whole; raises UserError on any
    problem, naming the file and the key."""
    return checked_config(apply_overrides(read_config_file(path), overrides), str(path))


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
    student_objective(config, data.tasks, build_model(config, "student", data), teacher)
    return teacher
