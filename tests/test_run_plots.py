"""Per-run embedding maps and per-stage training curves (mmdistill/eval/embeddings.py, plots.py),
and the sweep report's fused_vectors built on the same collector."""

from __future__ import annotations

import csv
import io
import logging
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.eval.embeddings import collect_features, plot_embedding_map, tsne_2d, umap_available, write_run_plots
from mmdistill.eval.plots import curve_columns, plot_stage_curves
from mmdistill.models.checkpoints import save_weights
from mmdistill.models.build import build_model

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with Image.open(path) as img:
        img.verify()
    return path.read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def run(demo_root, tmp_path_factory):
    raw = tiny_config(demo_root, tmp_path_factory.mktemp("runs"))
    raw["data"]["augment"] = {"horizontal_flip_prob": 0.5, "brightness": 0.4}
    config = ExperimentConfig.model_validate(raw)
    data = load_data(config)
    models = {role: build_model(config, role, data) for role in ("teacher", "student")}
    return config, data, models


@pytest.fixture
def no_umap(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError


def test_collect_features_is_the_split_in_order_and_restores_the_model(run):
    config, data, models = run
    teacher = models["teacher"]
    teacher.train()
    vectors, labels = collect_features(teacher, data, "test", batch_size=10)
    assert vectors.shape == (len(data.datasets["test"]), 16) and vectors.dtype == np.float32
    assert set(labels) == {"finding", "urgent"}
    np.testing.assert_array_equal(labels["finding"], data.datasets["test"].labels["finding"])
    np.testing.assert_array_equal(labels["urgent"], np.asarray(data.datasets["test"].labels["urgent"], np.float32))
    assert teacher.training  # given back in the mode it came in
    again, _ = collect_features(teacher, data, "test", batch_size=32)
    np.testing.assert_allclose(again, vectors, rtol=1e-5, atol=1e-6)  # eval mode: batch size does not matter


def test_collect_features_on_train_switches_augmentation_off(run):
    """The train split's vectors are of its plain images, not of one draw of augmentations."""
    _, data, models = run
    model = models["student"].eval()
    dataset = data.datasets["train"]
    augmenter = dataset.augmenter
    vectors, _ = collect_features(model, data, "train", 32)
    assert dataset.augmenter is augmenter  # restored
    with torch.no_grad():
        augmented = np.concatenate([model(b["inputs"]).fused.numpy() for b in data.loader("train", 32, False, 0)])
        dataset.augmenter = None
        try:
            plain = np.concatenate([model(b["inputs"]).fused.numpy() for b in data.loader("train", 32, False, 0)])
        finally:
            dataset.augmenter = augmenter
    np.testing.assert_allclose(vectors, plain, rtol=1e-5, atol=1e-6)
    assert not np.allclose(vectors, augmented, atol=1e-4)  # the augmenter does change them


@pytest.mark.parametrize("n, dim", [(1, 4), (2, 4), (3, 1), (5, 3), (12, 8)])
def test_tsne_handles_tiny_inputs(n, dim):
    xy = tsne_2d(np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32))
    assert xy.shape == (n, 2) and np.isfinite(xy).all()


def test_plot_embedding_map_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    vectors = np.concatenate([rng.normal(0, 1, (6, 5)), rng.normal(5, 1, (6, 5))])
    path = tmp_path / "maps" / "tsne_x.png"
    assert plot_embedding_map(vectors, np.repeat([0, 1], 6), ["a", "b"], "t-SNE", path, method="tsne")
    assert _is_png(path)
    with pytest.raises(ValueError, match="'pca'"):
        plot_embedding_map(vectors, np.repeat([0, 1], 6), ["a", "b"], "x", tmp_path / "y.png", method="pca")


def test_missing_umap_is_skipped_with_one_logged_line(no_umap, tmp_path, caplog):
    assert not umap_available()
    with caplog.at_level(logging.WARNING, logger="mmdistill.eval.embeddings"):
        ok = plot_embedding_map(np.ones((4, 3)), np.zeros(4), ["a"], "UMAP", tmp_path / "umap_x.png", method="umap")
    assert ok is False and not (tmp_path / "umap_x.png").exists()
    assert len(caplog.records) == 1 and "umap-learn" in caplog.records[0].getMessage()


def test_write_run_plots_one_map_per_method_and_role(run, no_umap, tmp_path, caplog):
    _, data, models = run
    with caplog.at_level(logging.WARNING, logger="mmdistill.eval.embeddings"):
        written = write_run_plots(tmp_path, models, data, batch_size=16)
    expected = [tmp_path / "plots" / f"tsne_{role}.png" for role in ("teacher", "student")]
    assert written == expected and all(_is_png(p) for p in expected)
    assert not list((tmp_path / "plots").glob("umap_*"))
    assert len([r for r in caplog.records if "UMAP" in r.getMessage()]) == 1  # once per run, not per model


@pytest.mark.skipif(not umap_available(), reason="umap-learn is an optional extra")
def test_umap_map_when_installed(tmp_path):
    vectors = np.random.default_rng(2).normal(size=(30, 6))
    assert plot_embedding_map(vectors, np.arange(30) % 3, ["a", "b", "c"], "UMAP", tmp_path / "u.png", method="umap")
    assert _is_png(tmp_path / "u.png")


def test_stage_curves_one_png_per_stage_from_metrics_rows(tmp_path):
    rows = [{"stage": stage, "epoch": e, "train_loss": 1.0 / e, "dev_score": 0.5 + 0.1 * e, "train_kl": 0.3 / e,
             "dev_finding_f1": 0.4 + 0.1 * e, "lr": 1e-3, "seconds": 0.2, "train_seconds": 0.1}
            for stage in ("teacher", "student") for e in (1, 2, 3)]
    rows[0].pop("train_kl")  # a column one row lacks, as metrics.csv writes it ('')
    written = plot_stage_curves(rows, tmp_path / "plots")
    assert [p.name for p in written] == ["teacher_training_curves.png", "student_training_curves.png"]
    assert all(_is_png(p) for p in written)
    # rows read back from metrics.csv are strings, blanks included
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[1]), restval="")
    writer.writeheader()
    writer.writerows(rows)
    back = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [p.name for p in plot_stage_curves(back, tmp_path / "again")] == [p.name for p in written]
    assert curve_columns(list(rows[1])) == (["train_kl"], ["dev_finding_f1"])  # no timings among the losses


def test_fused_vectors_rebuilds_the_run_and_matches_collect_features(run, tmp_path):
    from mmdistill.sweep.embeddings import fused_vectors

    config, data, models = run
    run_dir = tmp_path / "run"
    (run_dir / "config.yaml").parent.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    for role, model in models.items():
        save_weights(model, run_dir / "checkpoints" / f"{role}_best.safetensors")
    out = fused_vectors(run_dir)
    expected, labels = collect_features(models["student"], data, "test", 64)
    np.testing.assert_allclose(out["student"], expected, rtol=1e-5, atol=1e-6)
    assert out["teacher"].shape == (len(expected), 16)
    np.testing.assert_array_equal(out["labels"], labels["finding"])
    assert out["labels"].dtype == np.int64
    assert out["task"] == "finding" and out["classes"] == list(data.tasks[0].classes)


# --------------------------------------------------------------------------- subsampled maps (logging.plot_samples)


class _Recorder:
    """Stands in for tsne_2d: records the shape of what it was given, lays nothing out."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, vectors, seed=0):
        self.shapes.append(np.asarray(vectors).shape)
        return np.zeros((len(vectors), 2), dtype=np.float32)


def _count_embedded(model) -> tuple[list[int], object]:
    """How many samples pass through `model`'s forward, per call (a forward pre-hook)."""
    seen: list[int] = []

    def hook(_module, args):
        first = next(v for v in args[0].values() if torch.is_tensor(v))
        seen.append(len(first))

    return seen, model.register_forward_pre_hook(hook)


@pytest.fixture
def recorded_tsne(monkeypatch):
    import mmdistill.eval.embeddings as embeddings

    recorder = _Recorder()
    monkeypatch.setattr(embeddings, "tsne_2d", recorder)
    return recorder


def test_collect_features_at_rows_embeds_only_those_rows(run):
    _, data, models = run
    model = models["teacher"]
    full, full_labels = collect_features(model, data, "test", 8)
    rows = np.array([1, 4, 5, 17, 30])
    seen, handle = _count_embedded(model)
    try:
        vectors, labels = collect_features(model, data, "test", 2, rows=rows)
    finally:
        handle.remove()
    assert sum(seen) == len(rows)  # the other rows were never embedded
    np.testing.assert_allclose(vectors, full[rows], rtol=1e-5, atol=1e-6)
    for name in full_labels:
        np.testing.assert_array_equal(labels[name], full_labels[name][rows])


def test_write_run_plots_maps_k_samples_the_same_for_every_role(run, no_umap, recorded_tsne, tmp_path, monkeypatch):
    import mmdistill.eval.embeddings as embeddings

    _, data, models = run
    calls = []
    real = embeddings.collect_features

    def spy(model, data, split, batch_size, ref="fused", config=None, rows=None):
        out = real(model, data, split, batch_size, ref, config, rows=rows)
        calls.append((rows, out[1]))
        return out

    monkeypatch.setattr(embeddings, "collect_features", spy)
    counters = {role: _count_embedded(m) for role, m in models.items()}
    try:
        written = write_run_plots(tmp_path, models, data, batch_size=4, samples=9, seed=3)
    finally:
        for _, handle in counters.values():
            handle.remove()
    assert len(written) == 2 and all(_is_png(p) for p in written)
    assert recorded_tsne.shapes == [(9, 16), (9, 8)]  # teacher (16-d), student (8-d): K points each
    assert all(sum(seen) == 9 for seen, _ in counters.values())  # only the K rows were embedded
    (teacher_rows, teacher_labels), (student_rows, student_labels) = calls
    assert len(teacher_rows) == 9 and len(set(teacher_rows.tolist())) == 9
    np.testing.assert_array_equal(teacher_rows, student_rows)  # the same samples for every role
    np.testing.assert_array_equal(teacher_labels["finding"], student_labels["finding"])
    # stratified by the first task: every class of the test split is on the map
    assert set(teacher_labels["finding"]) == set(data.datasets["test"].labels["finding"])
    # a function of the seed: the same rows again, other rows for another seed
    write_run_plots(tmp_path, models, data, batch_size=4, samples=9, seed=3)
    np.testing.assert_array_equal(calls[2][0], teacher_rows)
    write_run_plots(tmp_path, models, data, batch_size=4, samples=9, seed=4)
    assert not np.array_equal(calls[4][0], teacher_rows)


@pytest.mark.parametrize("samples", [0, None, 32, 1000])
def test_write_run_plots_maps_every_sample_for_0_null_or_more_than_the_split(run, no_umap, recorded_tsne, tmp_path,
                                                                            samples):
    _, data, models = run
    write_run_plots(tmp_path, {"student": models["student"]}, data, batch_size=16, samples=samples, seed=3)
    assert recorded_tsne.shapes == [(len(data.datasets["test"]), 8)]


def test_report_stage_maps_logging_plot_samples_with_the_run_seed(run, no_umap, recorded_tsne, tmp_path, monkeypatch):
    """The report stage draws `logging.plot_samples` test rows by the run's `seed`."""
    from types import SimpleNamespace

    import mmdistill.eval.embeddings as embeddings
    from mmdistill.eval.sampling import sample_rows
    from mmdistill.run.stages.report import ReportStage

    config, data, models = run
    drawn = []
    real = embeddings.collect_features
    monkeypatch.setattr(embeddings, "collect_features",
                        lambda *a, rows=None, **k: drawn.append(rows) or real(*a, rows=rows, **k))
    test = data.datasets["test"]
    for samples, expected in ((5, sample_rows(len(test), 5, config.seed, test.labels["finding"])), (None, None)):
        recorded_tsne.shapes.clear()
        drawn.clear()
        cfg = config.model_copy(update={"logging": config.logging.model_copy(update={"plot_samples": samples})})
        ReportStage._plots(SimpleNamespace(config=cfg, data=data, log=SimpleNamespace(rows=[]), precomputed=None,
                                           teacher=models["teacher"], student=models["student"],
                                           dir=SimpleNamespace(path=tmp_path)))
        n = len(test) if samples is None else samples
        assert [shape[0] for shape in recorded_tsne.shapes] == [n, n]
        assert len(drawn) == 2 and all(np.array_equal(r, expected) if expected is not None else r is None
                                       for r in drawn)


def test_probe_features_embed_only_the_drawn_train_rows(run):
    from mmdistill.eval.probe import probe_features, probe_rows, probe_splits

    _, data, models = run
    model = models["student"]
    seen, handle = _count_embedded(model)
    try:
        features = probe_features(model, data, 16, seed=3, samples=10)
    finally:
        handle.remove()
    sizes = {s: len(data.datasets[s]) for s in ("dev", "test")}
    assert {s: len(v) for s, v in features.items()} == {"train": 10, **sizes}  # dev and test in full
    assert sum(seen) == 10 + sum(sizes.values())
    full = collect_features(model, data, "train", 16)[0]
    np.testing.assert_allclose(features["train"], full[probe_rows(data, 3, 10)], rtol=1e-5, atol=1e-6)
    # scored alike from the drawn rows or from the whole train split, on every test row
    drawn = probe_splits(features, data, seed=3, samples=10)
    whole = probe_splits({**features, "train": full}, data, seed=3, samples=10)
    assert drawn == whole and drawn["test"]["tasks"]["finding"]["n"] == sizes["test"]
