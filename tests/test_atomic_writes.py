"""Nothing torn: the files a run or a sweep writes appear whole or not at all, because each is
written under a temporary name and renamed into place (a crash mid-write leaves the old file,
or none, never half a figure or half a traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mmdistill.io


@pytest.fixture
def renamed(monkeypatch) -> list[Path]:
    """Every path a file was renamed onto through mmdistill.io."""
    targets: list[Path] = []
    real = os.replace

    def replace(src, dst):
        targets.append(Path(dst))
        real(src, dst)

    monkeypatch.setattr(mmdistill.io.os, "replace", replace)
    return targets


def test_a_report_writes_its_figures_whole(tmp_path, renamed):
    from mmdistill.sweep.report import Figure, write_report

    blocks = [("h1", "sweep"), ("figure", Figure("scores", "scores", b"\x89PNG\r\n\x1a\n" + b"\0" * 64))]
    write_report(tmp_path, blocks, "sweep")
    figure = tmp_path / "report_files" / "scores.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert figure in renamed and tmp_path / "report.md" in renamed
    assert sorted(p.name for p in figure.parent.iterdir()) == ["scores.png"]  # no temporary left behind


def test_a_failed_sweep_job_writes_its_error_log_whole(tmp_path, renamed):
    from mmdistill.sweep.jobs import Job, execute_job

    job = Job("run", "broken seed 1", str(tmp_path / "broken" / "seed_1"), {"experiment_name": "x"}, "h")
    outcome = execute_job(job)
    log = tmp_path / "broken" / "seed_1" / "error.log"
    assert not outcome.ok and outcome.error in log.read_text()
    assert log in renamed
