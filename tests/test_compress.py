"""Compression end to end on a tiny run: the `compress` block runs after training, every model
is written, scored and timed, and each one loads back and predicts what was measured."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from mmdistill.compress import artifacts, prune_channels, prune_unstructured
from mmdistill.compress.measure import count_params, predict_split, score
from mmdistill.compress.runfiles import load_run
from mmdistill.compress.tensor_model import plain_batches, tensor_student
from mmdistill.config.schema import ExperimentConfig
from mmdistill.run.experiment import run_experiment

# tiny and quick: one fine-tuning epoch, a handful of timed runs
COMPRESS = {"sparsity": 0.6, "channel_sparsity": 0.5, "finetune_epochs": 1, "calibration_samples": 32,
            "warmup": 1, "repeats": 3}
MODELS = ["fp32", "pruned_unstructured", "pruned_structured", "int8_dynamic", "int8_static_fx", "onnx_fp32",
          "onnx_int8_qdq", "onnx_int8_qoperator", "pruned_structured_int8"]
KEYS = {"score", "params", "nonzero_params", "file_bytes", "latency_ms_batch1", "throughput_batch32"}


@pytest.fixture(scope="module")
def compressed_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress")
    raw = tiny_config(demo_root, out / "runs")
    raw["training"]["baseline"] = False
    raw["compress"] = COMPRESS
    results = run_experiment(ExperimentConfig.model_validate(raw))
    return out / "runs" / "tiny", results


@pytest.fixture(scope="module")
def loaded(compressed_run):
    return load_run(compressed_run[0], need_teacher=False)


def test_run_with_a_compress_block_writes_every_model(compressed_run):
    run_dir, results = compressed_run
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == results
    assert list(on_disk["compressed"]) == MODELS
    for name, entry in on_disk["compressed"].items():
        assert KEYS <= set(entry), name
        assert 0 <= entry["score"] <= 1 and entry["latency_ms_batch1"] > 0 and entry["throughput_batch32"] > 0
        assert (run_dir / entry["file"]).is_file() and entry["file_bytes"] == (run_dir / entry["file"]).stat().st_size
    # everything else kept; fp32 is the student as trained
    assert {"experiment", "seed", "teacher", "student", "timing", "params"} <= set(on_disk)
    assert on_disk["compressed"]["fp32"]["score"] == pytest.approx(on_disk["student"]["test"]["score"])
    assert on_disk["compressed"]["fp32"]["params"] == on_disk["params"]["student"]
    assert sum(bool(e.get("default_int8")) for e in on_disk["compressed"].values()) == 1
    table = (run_dir / "compress.md").read_text()
    for name in MODELS:
        assert f"| {name} |" in table or f"| **{name}** |" in table
    assert "default int8 path" in table
    assert not list(run_dir.rglob("*.tmp"))
    assert (run_dir / "compressed" / "finetune_metrics.csv").is_file()


def test_unstructured_pruning_reaches_the_requested_sparsity(compressed_run, loaded):
    run_dir, results = compressed_run
    entry = results["compressed"]["pruned_unstructured"]
    assert entry["sparsity"] == pytest.approx(COMPRESS["sparsity"], abs=1e-3)
    model = artifacts.load_student(loaded, run_dir / entry["file"], "pruned")
    weights = prune_unstructured.prunable_weights(model)
    assert prune_unstructured.sparsity(weights) == pytest.approx(COMPRESS["sparsity"], abs=1e-3)
    assert not any(hasattr(m, "weight_orig") for m, _ in weights)  # made permanent
    assert entry["nonzero_params"] < 0.6 * entry["params"]


def test_structured_pruning_removes_channels_and_still_runs(compressed_run, loaded):
    run_dir, results = compressed_run
    fp32, pruned = results["compressed"]["fp32"], results["compressed"]["pruned_structured"]
    assert pruned["channels_before"] == {"image": [4, 4, 8, 8]}
    assert pruned["channels"] == {"image": [2, 2, 4, 4]}
    assert pruned["params"] < 0.8 * fp32["params"]
    assert pruned["file_bytes"] < fp32["file_bytes"]
    model = artifacts.load_student(loaded, run_dir / pruned["file"], "pruned")
    assert count_params(model)[0] == pruned["params"]
    assert model.encoders["image"].out_dim == 4
    batch = next(plain_batches(loaded.data, "test", 5))
    out = model(batch["inputs"])
    assert out.logits["finding"].shape == (5, 4) and out.logits["urgent"].shape == (5,)


@pytest.mark.parametrize("name", MODELS)
def test_every_compressed_model_loads_and_predicts_what_was_measured(compressed_run, loaded, name):
    run_dir, results = compressed_run
    predict = artifacts.load_predictor(loaded, name, results["compressed"])
    flat, labels = predict_split(predict, loaded.data)
    assert flat.shape == (32, 5)
    assert score(loaded.data.tasks, flat, labels)["score"] == pytest.approx(results["compressed"][name]["score"])


def test_onnx_fp32_matches_pytorch_within_1e4(compressed_run, loaded):
    import onnxruntime as ort

    run_dir, results = compressed_run
    assert results["compressed"]["onnx_fp32"]["max_abs_diff"] < 1e-4
    assert results["compressed"]["onnx_fp32"]["agreement"] == 1.0
    session = ort.InferenceSession(str(run_dir / results["compressed"]["onnx_fp32"]["file"]),
                                   providers=["CPUExecutionProvider"])
    wrapper = tensor_student(loaded.student)
    for batch in plain_batches(loaded.data, "test", 16):
        image = batch["inputs"]["image"]
        with torch.no_grad():
            expected = wrapper(image).numpy()
            native = loaded.student(batch["inputs"]).logits
        np.testing.assert_allclose(session.run(["logits"], {"image": image.numpy()})[0], expected, atol=1e-4)
        torch.testing.assert_close(torch.from_numpy(expected[:, :4]), native["finding"])  # wrapper == model
        torch.testing.assert_close(torch.from_numpy(expected[:, 4]), native["urgent"])


def test_int8_models_agree_with_fp32(compressed_run):
    """(Their files are smaller only past the per-file overhead: see test_compress_units.)"""
    entries = compressed_run[1]["compressed"]
    for name in ("int8_dynamic", "int8_static_fx", "onnx_int8_qdq", "onnx_int8_qoperator"):
        assert entries[name]["agreement"] >= 0.8, name
        assert entries[name]["params"] == entries["fp32"]["params"]


def test_channel_pruning_of_dead_channels_is_exact(loaded):
    """Channels whose BN scale and shift are zero output nothing: removing them changes no output."""
    import copy

    model = copy.deepcopy(loaded.student).eval()
    backbone = model.encoders["image"].backbone
    with torch.no_grad():
        for bn in (m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            dead = torch.arange(bn.num_features) % 2 == 1  # every other channel
            bn.weight[dead] = 0
            bn.bias[dead] = 0
    batch = next(plain_batches(loaded.data, "test", 8))
    with torch.no_grad():
        before = model(batch["inputs"]).logits
        plan, notes = prune_channels.prune_channels(model, 0.5)
        after = model(batch["inputs"]).logits
    assert notes == [] and prune_channels.conv_widths(model) == {"image": [2, 2, 4, 4]}
    for task in before:
        torch.testing.assert_close(after[task], before[task], atol=1e-5, rtol=1e-5)
    rebuilt = prune_channels.rebuild(copy.deepcopy(loaded.student), plan)
    rebuilt.load_state_dict(model.state_dict())  # same shapes as the pruned model
