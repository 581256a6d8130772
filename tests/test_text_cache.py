"""Frozen text encoders' vectors on disk: computed once per (weights, text set), read back by
later models a batch at a time (nothing per text held in memory), equal to what the encoder
computes, rebuilt when damaged or stale; texts not stored are encoded live."""

from __future__ import annotations

import gc
import os
import pickle
import types
from copy import deepcopy

import numpy as np
import pytest
import torch

from conftest import tiny_config
from mmdistill.cache import text as text_cache
from mmdistill.cache.store import _HELD, StoreWriter, lock_path
from mmdistill.cache.text import BATCH
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.data.demo import write_demo
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


# --------------------------------------------------------------------------- read per batch, not held in memory


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """About 40 distinct texts: MiniLM encodes them in a second or two."""
    root = tmp_path_factory.mktemp("small-demo")
    write_demo(root, seed=0, sizes={"train": 24, "dev": 8, "test": 8})
    return root


def _minilm(root, tmp_path):
    """The packaged MiniLM, frozen, as the teacher's report encoder; the run's texts, sorted."""
    raw = tiny_config(root, tmp_path, text_teacher=True)
    raw["teacher"]["encoders"]["report"]["trainable"] = False
    config = ExperimentConfig.model_validate(raw)
    data = load_data(config)
    texts = sorted({r.values["report"] for ds in data.datasets.values() for r in ds.records})
    return _teacher(config, data).encoders["report"], texts


def _stored_as_built(encoder, texts):
    """What the store holds, computed as `_build` does: in batches of BATCH (the tiny data's
    texts fit one, so the order of the store's rows does not change a vector's padding)."""
    with torch.no_grad():
        return torch.cat([encoder._encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]).float()


def _containers(root, skip) -> list:
    """Every dict, list, tuple or set reachable from `root` through plain Python objects (not
    through the transformer, the tokenizer, tensors, arrays, types or functions)."""
    seen, found, todo = {id(root)}, [], [root]
    while todo:
        for obj in gc.get_referents(todo.pop()):
            if id(obj) in seen or any(obj is s for s in skip) or isinstance(
                    obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, str, bytes,
                          torch.nn.Module, torch.Tensor, np.ndarray)):
                continue
            seen.add(id(obj))
            if isinstance(obj, (dict, list, tuple, set, frozenset)):
                found.append(obj)
            todo.append(obj)
    return found


def test_a_forward_over_every_text_keeps_nothing_per_text_in_python(small_demo, tmp_path, encodes):
    encoder, texts = _minilm(small_demo, tmp_path)
    n = len(texts)
    assert n > 20
    out = torch.cat([encoder(texts[i:i + 7]) for i in range(0, n, 7)])
    assert sum(encodes) == n  # built once, then every batch read from disk
    assert len(encoder._memo) == 0
    stored = encoder._stored
    assert [a.dtype for a in (stored.keys, stored.checks, stored.rows)] == [np.uint64, np.uint64, np.int64]
    assert stored.keys.nbytes + stored.checks.nbytes + stored.rows.nbytes == 24 * n  # the whole index
    big = [c for c in _containers(encoder, skip=[encoder.tokenizer]) if len(c) >= n]
    # not even the run's distinct texts: the source keeps them packed in one buffer
    assert not big and len(encoder.vector_source.texts) == n
    assert out.shape == (n, encoder.out_dim)


def test_stored_vectors_are_exactly_a_live_encode_in_any_order(small_demo, tmp_path, encodes):
    encoder, texts = _minilm(small_demo, tmp_path)
    expected = _stored_as_built(encoder, texts)
    pick = [5, 0, 5, len(texts) - 1, 3, 0]  # out of order, with repeats
    batch = [texts[i] for i in pick]
    got = encoder(batch)
    assert torch.equal(got, expected[pick])  # bit for bit: the float32 rows the build wrote
    with torch.no_grad():  # and what the model computes on this batch as it is (other padding: not to the bit)
        torch.testing.assert_close(got, encoder._encode(batch), atol=1e-5, rtol=1e-4)
    encodes.clear()
    assert torch.equal(encoder(batch), got) and encodes == []  # read again, not encoded

    encoder.double()  # the output follows the model's dtype (and device), as before
    assert encoder(batch).dtype == torch.float64 and torch.equal(encoder(batch), expected[pick].double())


def test_a_text_not_in_the_store_is_encoded_live(small_demo, tmp_path, encodes):
    encoder, texts = _minilm(small_demo, tmp_path)
    expected = _stored_as_built(encoder, texts)
    new = "a lesion on the left forearm, no text of the data says this"
    assert new not in texts
    with torch.no_grad():
        live = encoder._encode([new]).float()
    encodes.clear()
    got = encoder([texts[2], new, texts[1], new])
    assert sum(encodes) == len(texts) + 1 and encodes[-1] == 1  # the store's build, then the new text alone
    assert torch.equal(got[1], live[0]) and torch.equal(got[3], live[0])
    assert torch.equal(got[[0, 2]], expected[[2, 1]])
    assert list(encoder._memo) == [new]
    encoder([new])
    assert sum(encodes) == len(texts) + 1  # memoized


def test_a_copy_reads_the_store_under_a_lock_of_its_own_and_the_lock_goes_with_the_encoder(
        small_demo, tmp_path, encodes):
    encoder, texts = _minilm(small_demo, tmp_path)
    expected = encoder(texts[:4])
    lock = lock_path(encoder._stored.store.path)
    assert _HELD[lock] == 1
    for make in (lambda m: pickle.loads(pickle.dumps(m)), deepcopy):  # a spawned worker; compress
        copy = make(encoder)
        assert _HELD[lock] == 2 and copy._stored.store._lock is not None
        assert torch.equal(copy(texts[:4]), expected)
        del copy
        gc.collect()
        assert _HELD[lock] == 1
    assert sum(encodes) == len(texts)
    del encoder
    gc.collect()
    assert _HELD[lock] == 0  # closed: the entry may be pruned now


def test_texts_whose_hashes_collide_are_left_to_the_live_encoder(tmp_path, monkeypatch):
    texts = ["a", "b", "c", "d"]
    with StoreWriter(tmp_path / "store", "k") as writer:
        writer.declare("vectors", (4, 2), np.float32)
        writer.append("vectors", np.arange(8, dtype=np.float32).reshape(4, 2))
        store = writer.commit()
    real = text_cache.text_digests

    def colliding(batch):  # "c" shares the first 64 bits of "b"; "e", not stored, those of "a"
        digests = real(batch)
        for i, t in enumerate(batch):
            if t in ("c", "e"):
                digests[i, 0] = real(["b" if t == "c" else "a"])[0, 0]
        return digests

    monkeypatch.setattr(text_cache, "text_digests", colliding)
    vectors = text_cache.TextVectors(store, "k", text_cache.text_digests(texts))
    assert len(vectors) == 2  # "b" and "c" are out of the index
    found, got = vectors.read(["d", "c", "a", "b", "e", "d"])
    assert found.tolist() == [True, False, True, False, False, True]  # "e": its check does not match "a"'s
    assert torch.equal(got, torch.tensor([[6.0, 7.0], [0.0, 1.0], [6.0, 7.0]]))
    vectors.close()
