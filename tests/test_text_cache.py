"""Frozen text encoders' vectors on disk: computed once per (weights, text set), read back by
later models, equal to what the encoder computes, rebuilt when damaged or stale."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.models.encoders import TextEncoder
from mmdistill.models.build import build_model


def _config(demo_root, out, **cache) -> ExperimentConfig:
    raw = tiny_config(demo_root, out, text_teacher=True)
    raw["teacher"]["encoders"]["report"].update({"type": "hf_text", "trainable": False, "model": "tiny-random-bert"})
    raw["cache"] = cache
    return ExperimentConfig.model_validate(raw)


@pytest.fixture
def encodes(monkeypatch):
    """How many texts TextEncoder._encode was asked for, call by call."""
    calls: list[int] = []
    real = TextEncoder._encode
    monkeypatch.setattr(TextEncoder, "_encode", lambda self, texts: calls.append(len(texts)) or real(self, texts))
    return calls


def _teacher(config, data, seed=0):
    torch.manual_seed(seed)
    return build_model(config, "teacher", data)


def test_vectors_are_computed_once_and_read_back_by_a_later_model(demo_root, tmp_path, encodes):
    config = _config(demo_root, tmp_path)
    data = load_data(config)
    texts = sorted({r.values["report"] for ds in data.datasets.values() for r in ds.records})
    probe = list(data.datasets["dev"][i]["inputs"]["report"] for i in range(5))

    first = _teacher(config, data).encoders["report"]
    expected = first._encode(probe).detach()
    encodes.clear()
    out = first(probe)
    assert sum(encodes) == len(texts) and len(texts) > 5  # the whole text set, once, on first use
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert len(list((config.cache_dir / "text").glob("*/store.json"))) == 1

    first.to(torch.device("cpu"))  # Lightning moves the model at every stage: the memo stays
    first(probe)
    assert sum(encodes) == len(texts)

    again = _teacher(config, data).encoders["report"]  # another process, in effect: same weights
    torch.testing.assert_close(again(probe), out, atol=1e-6, rtol=1e-5)
    assert sum(encodes) == len(texts)  # read from disk, not encoded

    other = _teacher(config, data, seed=1).encoders["report"]  # other weights: a new key
    other(probe)
    assert sum(encodes) == 2 * len(texts)
    assert len(list((config.cache_dir / "text").glob("*/store.json"))) == 2


def test_a_truncated_store_is_rebuilt_and_reloaded_weights_rekey(demo_root, tmp_path, encodes):
    config = _config(demo_root, tmp_path)
    data = load_data(config)
    model = _teacher(config, data)
    text = [data.datasets["train"][0]["inputs"]["report"]]
    good = model.encoders["report"](text)
    store = next((config.cache_dir / "text").glob("*/vectors.bin"))
    os.truncate(store, store.stat().st_size // 2)
    n = sum(encodes)
    torch.testing.assert_close(_teacher(config, data).encoders["report"](text), good)
    assert sum(encodes) == 2 * n  # rebuilt, not read

    torch.manual_seed(3)  # noise, not a constant shift, which the embeddings' LayerNorm would undo
    changed = {k: v + 0.1 * torch.randn_like(v) if k.endswith("report.model.embeddings.word_embeddings.weight")
               else v for k, v in model.state_dict().items()}
    model.load_state_dict(changed)  # new weights: the memo and the key go with the old ones
    moved = model.encoders["report"](text)
    assert sum(encodes) == 3 * n and not torch.allclose(moved, good)


def test_cache_text_false_keeps_nothing_on_disk(demo_root, tmp_path, encodes):
    config = _config(demo_root, tmp_path, text=False)
    data = load_data(config)
    text = [data.datasets["train"][0]["inputs"]["report"]]
    _teacher(config, data).encoders["report"](text)
    assert encodes == [1] and not (config.cache_dir / "text").exists()
