"""The caches only save time: when none can be written (disk full, read-only or impossible
directory), a run warns, goes on without them, and computes exactly what a run with every
cache switched off computes."""

from __future__ import annotations

import logging

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.run.experiment import run_experiment

ALL_CACHES = ("images", "teacher", "text", "baseline")


def _config(demo_root, out, name, cache):
    raw = tiny_config(demo_root, out, text_teacher=True)
    raw["experiment_name"] = name
    raw["logging"]["plots"] = False
    raw["cache"] = cache
    return ExperimentConfig.model_validate(raw)


def test_a_run_goes_on_without_caches_it_cannot_write(demo_root, tmp_path, caplog):
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("a file where the cache directory would have to be")
    unwritable = _config(demo_root, tmp_path / "runs", "unwritable", {"dir": str(blocker / "cache")})
    with caplog.at_level(logging.WARNING):
        results = run_experiment(unwritable)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for what in ("decoded-image", "text vector", "teacher output"):
        assert f"could not write the {what} cache {blocker / 'cache'}" in warned
    assert "could not store the baseline" in warned and "could not store the teacher's scores" in warned
    assert blocker.read_text().startswith("a file")

    off = _config(demo_root, tmp_path / "runs", "off", {name: False for name in ALL_CACHES})
    reference = run_experiment(off)
    for stage in ("teacher", "student", "baseline"):
        assert results[stage]["test"] == reference[stage]["test"], stage
