"""Bad input exits 2 with one line naming the key, file, column or row, and no traceback."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_config, write_config
from mmdistill.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    """What a terminal shows: a progress bar cleared with carriage returns leaves no line."""
    lines = [l.split("\r")[-1] for l in err.split("\n")]
    lines = [l for l in lines if l.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_validate_prints_summary(capsys, config_file):
    code, out, _ = _run(capsys, "validate", str(config_file))
    assert code == 0
    assert "samples: train 64, dev 32, test 32" in out
    assert "task finding (multiclass, 4 classes)" in out
    assert "student reads: image (image)" in out


@pytest.mark.parametrize("override, expected", [
    ("training.student.lr_rate=1", "training.student.lr_rate: unknown key"),
    ("training.student.epochs=many", "training.student.epochs"),
    ("data.files.dev=missing.csv", "missing.csv"),
    ("data.modalities.image.column=scan", "missing column 'scan'"),
])
def test_bad_config_or_data_exit_2_with_one_line(capsys, config_file, override, expected):
    for command in ("validate", "run"):
        code, _, err = _run(capsys, command, str(config_file), "--set", override)
        assert code == 2
        assert expected in _one_line_error(err)


def test_missing_image_names_row(capsys, demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    (root / "images" / "dev_0003.png").unlink()
    path = write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "runs"))
    code, _, err = _run(capsys, "run", str(path))
    assert code == 2
    line = _one_line_error(err)
    assert "dev.csv line 5" in line and "dev_0003.png" in line
    assert not (tmp_path / "runs").exists()  # nothing written for a run that could not start


def test_corrupt_image_is_found_by_validate(capsys, demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    path = root / "images" / "test_0001.png"
    path.write_bytes(path.read_bytes()[:40])
    code, _, err = _run(capsys, "validate", str(write_config(tmp_path / "c.yaml", tiny_config(root, tmp_path / "r"))))
    assert code == 2
    assert "test.csv line 3" in _one_line_error(err)


def test_console_script_exit_code(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment_name: x\nnot_a_key: 1\n")
    proc = subprocess.run([sys.executable, "-m", "mmdistill", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "not_a_key" in proc.stderr


def test_demo_data_writes_all_splits(capsys, tmp_path):
    code, out, _ = _run(capsys, "demo-data", "demo", str(tmp_path / "d"))
    assert code == 0
    for split in ("train", "dev", "test"):
        rows = list(csv.DictReader((tmp_path / "d" / f"{split}.csv").open()))
        assert rows and (tmp_path / "d" / rows[0]["image"]).is_file()
    code, _, err = _run(capsys, "demo-data", "nope", str(tmp_path / "e"))
    assert code == 2 and "unknown demo-data kind 'nope'" in err


def test_unknown_backbone_name_is_caught_by_validate(capsys, config_file):
    code, _, err = _run(capsys, "validate", str(config_file), "--set", "teacher.encoders.image={type: timm, name: resnet999}")
    assert code == 2
    assert "teacher.encoders.image.name: 'resnet999' is not a timm model name" in _one_line_error(err)


def test_losses_lists_every_term_and_preset(capsys):
    from mmdistill.losses.objective import PRESETS
    from mmdistill.losses.terms import TERMS

    code, out, _ = _run(capsys, "losses")
    assert code == 0
    for name in TERMS.names():
        assert f"\n{name}  (" in out or out.startswith(f"{name}  (") or f"\n\n{name}  (" in out
    for name in PRESETS:
        assert f"\n{name}" in out
    assert "temperature: float = 4.0" in out
