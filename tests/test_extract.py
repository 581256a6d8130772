"""`mmdistill extract` streams: each batch's rows go to their [sample, view] place on disk as the
teacher computes them (memory is one batch, not one split), and an extract that stops part way
leaves no file a run would take for complete."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from mmdistill.config.smoke import smoke_config
from mmdistill.data.dataset import load_data
from mmdistill.data.demo import write_embeddings_demo
from mmdistill.data.embeddings import SPLIT_DIRS, SplitEmbeddingsWriter, load_teacher_embeddings, split_dir
from mmdistill.errors import UserError
from mmdistill.preflight import load_config
from mmdistill.run import extract
from mmdistill.run.extract import extract_embeddings

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "feature_kd.yaml"
SIZES = {"train": 37, "dev": 11, "test": 9}  # not multiples of the smoke batch size (8)
MODALITY = "image_teacher"


@pytest.fixture
def root(tmp_path) -> Path:
    write_embeddings_demo(tmp_path / "data", seed=1, sizes=SIZES)
    return tmp_path / "data"


def _config(root: Path, tmp_path: Path):
    return smoke_config(load_config(RECIPE, [f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
                                            "logging.progress_bar=false"]))


class Teacher(nn.Module):
    """The built teacher, counting its forward passes; it can widen its embedding (`repeat`
    copies side by side) and raise at the `fail_at`-th pass."""

    def __init__(self, inner: nn.Module, repeat: int = 1, fail_at: int | None = None, error: type = RuntimeError):
        super().__init__()
        self.inner, self.repeat, self.fail_at, self.error = inner, repeat, fail_at, error
        self.calls = 0

    def forward(self, inputs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error("teacher stopped")
        out = self.inner(inputs)
        out.embeddings = {k: v.repeat(1, self.repeat) for k, v in out.embeddings.items()}
        return out


def _wrap_teacher(monkeypatch, **kwargs) -> list[Teacher]:
    built: list[Teacher] = []

    def build(*args, **kw):
        built.append(Teacher(build_model(*args, **kw), **kwargs))
        return built[-1]

    build_model = extract.build_model
    monkeypatch.setattr(extract, "build_model", build)
    return built


def test_rows_land_at_their_sample_and_view(root, tmp_path, monkeypatch):
    """Each [sample, view] of the file is the teacher's output on that sample's view, computed
    here in one batch per split and view in a shuffled order (not extract's batches)."""
    config = _config(root, tmp_path)
    built = _wrap_teacher(monkeypatch)
    written = extract_embeddings(config)
    teacher = built[0].inner.eval()
    data = load_data(config)
    for split, n in SIZES.items():
        array = np.load(written[split])
        views = 2 if split == "train" else 1
        assert written[split] == split_dir(config.data, split) / "embeddings.npy"
        assert array.dtype == np.float32 and array.shape[:2] == (n, views)
        dataset = data.datasets[split].select({MODALITY})
        for v in range(views):
            order = np.random.default_rng(v).permutation(n)
            with torch.no_grad():
                inputs = default_collate([dataset[(int(i), v)] for i in order])["inputs"]
                direct = teacher(inputs).embeddings[MODALITY].numpy()
            np.testing.assert_allclose(array[order, v], direct, rtol=1e-4, atol=1e-5, err_msg=f"{split} view {v}")
    train = np.load(written["train"])
    assert not np.allclose(train[:, 0], train[:, 1])  # two views of each sample, not one copied


def test_memory_is_one_batch_not_one_split(root, tmp_path, monkeypatch):
    """What numpy allocates while the teacher runs stays under one split's embeddings (the old
    extract gathered them all, then concatenated and reordered them: three copies)."""
    config = _config(root, tmp_path)
    built = _wrap_teacher(monkeypatch, repeat=256)  # 64 -> 16384 dims: a batch 0.5 MB, train 4.8 MB
    first, start = Teacher.forward, []

    def forward(self, inputs):
        if self.calls == 0:  # from the first batch on: the pass itself, not building the model
            start.append(tracemalloc.get_traced_memory()[0])
            tracemalloc.reset_peak()
        return first(self, inputs)

    monkeypatch.setattr(Teacher, "forward", forward)
    tracemalloc.start()
    try:
        written = extract_embeddings(config)
        growth = tracemalloc.get_traced_memory()[1] - start[0]
    finally:
        tracemalloc.stop()
    train = np.load(written["train"], mmap_mode="r")
    assert built[0].calls == 10 + 2 + 2 and train.shape == (SIZES["train"], 2, 64 * 256)
    assert growth < train.nbytes / 2, f"{growth} bytes more at the peak while extracting {train.nbytes} bytes"


def _leftovers(root: Path) -> dict[str, list[str]]:
    return {split: sorted(p.name for p in (root / d).iterdir() if p.name != "samples.csv")
            for split, d in SPLIT_DIRS.items()}


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_extract_leaves_no_file_a_run_accepts(root, tmp_path, monkeypatch, error):
    config = _config(root, tmp_path)
    for d in SPLIT_DIRS.values():  # a first extract: no embeddings yet
        (root / d / "embeddings.npy").unlink()
        (root / d / "meta.json").unlink()
    # train is 5 batches per view (10), dev 2: stop at dev's second batch, train already written
    built = _wrap_teacher(monkeypatch, fail_at=12, error=error)
    with pytest.raises(error, match="teacher stopped"):
        extract_embeddings(config)
    assert built[0].calls == 12
    assert _leftovers(root) == {"train": ["embeddings.npy", "meta.json"], "dev": [], "test": []}  # no temp file
    with pytest.raises(UserError, match="val_embeddings/embeddings.npy: file not found"):
        load_teacher_embeddings(config, SIZES)


def test_interrupted_extract_keeps_the_previous_file(root, tmp_path, monkeypatch):
    config = _config(root, tmp_path)
    before = {d: (root / d / "embeddings.npy").read_bytes() for d in SPLIT_DIRS.values()}
    _wrap_teacher(monkeypatch, fail_at=3)
    with pytest.raises(RuntimeError, match="teacher stopped"):
        extract_embeddings(config)
    assert {d: (root / d / "embeddings.npy").read_bytes() for d in SPLIT_DIRS.values()} == before
    assert all(names == ["embeddings.npy", "meta.json"] for names in _leftovers(root).values())


def test_writer_commits_only_a_complete_array(tmp_path):
    with pytest.raises(ValueError, match=r"1 of 6 \(sample, view\) rows never written, e.g. \(2, 1\)"):
        with SplitEmbeddingsWriter(tmp_path, 3, 2) as out:
            out.write([0, 1, 2], 0, np.ones((3, 4), dtype=np.float32))
            out.write([0, 1], 1, np.ones((2, 4), dtype=np.float32))
            out.commit({})
    with pytest.raises(RuntimeError, match="without commit"):
        with SplitEmbeddingsWriter(tmp_path, 1, 1) as out:
            out.write([0], [0], np.ones((1, 4), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []

    rows = np.arange(24, dtype=np.float32).reshape(6, 4)  # view by view: [views * samples, dim]
    with SplitEmbeddingsWriter(tmp_path, 3, 2) as out:
        out.write([0, 1, 2], [0, 0, 0], rows[:3])
        out.write([0, 1, 2], [1, 1, 1], rows[3:])
        path = out.commit({"embedding_dim": out.dim})
    np.testing.assert_array_equal(np.load(path), rows.reshape(2, 3, 4).transpose(1, 0, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embeddings.npy", "meta.json"]
