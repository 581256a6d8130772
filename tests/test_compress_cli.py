"""`mmdistill compress RUN_DIR`: exit 2 naming the file for a missing or damaged input, with
the run directory left exactly as it was; overrides; students that cannot be exported.

The run directories here are made without training (untrained weights saved where `run`
puts them): compression only reads config.yaml, results.json and the checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import yaml

from conftest import tiny_config
from mmdistill.cli import main
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.models.checkpoints import save_weights
from mmdistill.models.build import build_model

QUICK = ["--set", "compress.repeats=2", "--set", "compress.warmup=1", "--set", "compress.calibration_samples=16"]


def make_run_dir(root: Path, raw: dict) -> Path:
    config = ExperimentConfig.model_validate(raw)
    run_dir = config.run_dir
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    data = load_data(config)
    L.seed_everything(0, verbose=False)
    for role in ("teacher", "student"):
        save_weights(build_model(config, role, data), run_dir / "checkpoints" / f"{role}_best.safetensors")
    (run_dir / "results.json").write_text(json.dumps({"experiment": config.experiment_name, "seed": config.seed,
                                                      "student": {"test": {"score": 0.5}}}))
    return run_dir


@pytest.fixture
def run_dir(demo_root, tmp_path) -> Path:
    return make_run_dir(tmp_path, tiny_config(demo_root, tmp_path / "runs"))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    """The one error line (progress lines such as a cache being built may come before it)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_compress_command_with_overrides(run_dir, capsys):
    before = json.loads((run_dir / "results.json").read_text())
    files = snapshot(run_dir)
    code = main(["compress", str(run_dir), "--set", "compress.methods=[onnx]", "--set", "compress.finetune_epochs=0",
                 *QUICK])
    assert code == 0, capsys.readouterr().err
    assert "compress.md" in capsys.readouterr().out
    after = json.loads((run_dir / "results.json").read_text())
    assert list(after["compressed"]) == ["fp32", "onnx_fp32", "onnx_int8_qdq", "onnx_int8_qoperator"]
    assert {k: v for k, v in after.items() if k != "compressed"} == before
    assert (run_dir / "compress.md").is_file()
    assert sorted(p.name for p in (run_dir / "compressed").iterdir()) == [
        "student_fp32.onnx", "student_int8_qdq.onnx", "student_int8_qoperator.onnx"]
    now = snapshot(run_dir)
    assert {k: now[k] for k in files if k != "results.json"} == {k: v for k, v in files.items() if k != "results.json"}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "student missing": ("checkpoints/student_best.safetensors", lambda p: p.unlink()),
    "student not safetensors": ("checkpoints/student_best.safetensors", lambda p: p.write_bytes(b"not a checkpoint")),
    "student truncated": ("checkpoints/student_best.safetensors", _truncate),
    "teacher missing": ("checkpoints/teacher_best.safetensors", lambda p: p.unlink()),
    "teacher truncated": ("checkpoints/teacher_best.safetensors", _truncate),
    "results missing": ("results.json", lambda p: p.unlink()),
    "results corrupted": ("results.json", lambda p: p.write_text("{not json")),
    "config corrupted": ("config.yaml", lambda p: p.write_text("seed: [unclosed")),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_missing_or_damaged_input_exits_2_and_touches_nothing(run_dir, capsys, case):
    name, damage = DAMAGE[case]
    damage(run_dir / name)
    before = snapshot(run_dir)
    code = main(["compress", str(run_dir), *QUICK])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(run_dir / name) in one_line(err)
    assert snapshot(run_dir) == before  # nothing written, nothing replaced
    assert not (run_dir / "compressed").exists()


def test_missing_run_directory_exits_2(tmp_path, capsys):
    assert main(["compress", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in one_line(capsys.readouterr().err)


def test_a_failed_compression_keeps_the_previous_results(run_dir, capsys):
    """Results of an earlier compression stay until a new one completes."""
    assert main(["compress", str(run_dir), "--set", "compress.methods=[]", *QUICK]) == 0
    before = snapshot(run_dir)
    (run_dir / "checkpoints" / "teacher_best.safetensors").write_bytes(b"\0" * 100)
    before["checkpoints/teacher_best.safetensors"] = b"\0" * 100
    assert main(["compress", str(run_dir), "--set", "compress.methods=[prune_structured]", *QUICK]) == 2
    assert snapshot(run_dir) == before


def test_text_student_skips_export_and_quantization_with_a_note(demo_root, tmp_path, capsys):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["student"]["encoders"]["report"] = {"type": "hf_text", "model": "tiny-random-bert", "max_length": 16}
    run_dir = make_run_dir(tmp_path, raw)
    code = main(["compress", str(run_dir), "--set", "compress.finetune_epochs=0", *QUICK])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["compressed"]) == ["fp32", "pruned_unstructured", "pruned_structured"]
    assert results["compressed"]["pruned_structured"]["channels"] == {"image": [2, 2, 4, 4]}
    notes = (run_dir / "compress.md").read_text()
    assert "ONNX export and int8 quantization skipped" in notes and "'report'" in notes
