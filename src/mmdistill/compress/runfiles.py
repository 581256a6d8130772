"""Reading a finished run directory for compression, every file checked before anything is
written: config.yaml, results.json and the checkpoints, each error naming its file (exit 2)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mmdistill.cache.images import load_run_data
from mmdistill.config.loading import apply_overrides, read_config_file
from mmdistill.config.schema import CompressSpec, ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.distributed import one_device
from mmdistill.errors import UserError
from mmdistill.models.build import build_model
from mmdistill.models.checkpoints import load_weights
from mmdistill.models.net import MultiModalNet
from mmdistill.preflight import checked_config


@dataclass
class RunFiles:
    run_dir: Path

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def results(self) -> Path:
        return self.run_dir / "results.json"

    @property
    def student(self) -> Path:
        return self.run_dir / "checkpoints" / "student_best.safetensors"

    @property
    def out_dir(self) -> Path:
        return self.run_dir / "compressed"

    def teacher(self, config: ExperimentConfig) -> Path:
        """The run's own teacher, or the checkpoint it reused (`teacher.checkpoint`)."""
        if config.teacher.checkpoint is not None:
            return Path(config.teacher.checkpoint)
        return self.run_dir / "checkpoints" / "teacher_best.safetensors"


def load_run_config(files: RunFiles, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """The run's resolved config with `--set` overrides; a missing `compress` block is the
    defaults (so `--set compress.sparsity=0.7` works on any run)."""
    if not files.run_dir.is_dir():
        raise UserError(f"{files.run_dir}: run directory not found")
    if not files.config.is_file():
        raise UserError(f"{files.config}: not found; is {files.run_dir} a run directory made by `mmdistill run`?")
    raw = read_config_file(files.config)
    if not isinstance(raw.get("compress"), dict):
        raw["compress"] = {}
    return checked_config(apply_overrides(raw, overrides), str(files.config))


def read_results(files: RunFiles) -> dict[str, Any]:
    if not files.results.is_file():
        raise UserError(f"{files.results}: not found; the run has not finished")
    try:
        results = json.loads(files.results.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{files.results}: not valid JSON ({exc})") from None
    if not isinstance(results, dict):
        raise UserError(f"{files.results}: expected a JSON object")
    return results


def load_checkpoint(model: MultiModalNet, path: Path, what: str) -> MultiModalNet:
    """load_weights, plus the failures it leaves to safetensors (a truncated payload)."""
    try:
        load_weights(model, path, what)
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own types for a damaged payload
        raise UserError(f"{what}: {path} is not a readable safetensors file ({exc})") from None
    return model


@dataclass
class LoadedRun:
    files: RunFiles
    config: ExperimentConfig
    spec: CompressSpec
    results: dict[str, Any]
    data: DataBundle
    student: MultiModalNet
    teacher: MultiModalNet | None


def load_run(run_dir: str | Path, overrides: Iterable[str] = (), data: DataBundle | None = None,
             config: ExperimentConfig | None = None, need_teacher: bool | None = None) -> LoadedRun:
    """Everything compression reads, loaded and checked; raises UserError naming the file."""
    import lightning as L


    files = RunFiles(Path(run_dir))
    if config is None:
        config = one_device(load_run_config(files, overrides))
    spec = config.compress or CompressSpec()
    results = read_results(files)
    if not files.student.is_file():
        raise UserError(f"student checkpoint not found: {files.student}")
    if need_teacher is None:
        pruning = {"prune_unstructured", "prune_structured"} & set(spec.methods)
        need_teacher = bool(pruning) and spec.finetune_epochs > 0
    teacher_path = files.teacher(config)
    if need_teacher and not teacher_path.is_file():
        raise UserError(f"teacher checkpoint not found: {teacher_path} (needed to fine-tune after pruning; "
                        "--set compress.finetune_epochs=0 skips fine-tuning)")
    data = data if data is not None else load_run_data(config)  # the images the run itself read
    L.seed_everything(config.seed, workers=True, verbose=False)
    student = load_checkpoint(build_model(config, "student", data), files.student, "student checkpoint")
    teacher = None
    if need_teacher:
        teacher = load_checkpoint(build_model(config, "teacher", data), teacher_path, "teacher checkpoint")
    student.eval()
    return LoadedRun(files, config, spec, results, data, student, teacher)
