"""Costs that must not grow with the data (issue: from 500 samples to Derm1M), on small N:
a re-run stats each image once and decodes none, a change to a label or an image is still
seen, and a forked loader worker reading every record copies none of them."""

from __future__ import annotations

import builtins
import csv
import multiprocessing
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from mmdistill.cache.keys import data_signature
from mmdistill.cache.stats import ImageStatsCache
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import MultiModalDataset, load_data
from mmdistill.data.labels import TaskInfo
from mmdistill.data.records import TableBuilder
from mmdistill.run.experiment import run_experiment


def _config(root: Path, out: Path, name: str) -> ExperimentConfig:
    raw = tiny_config(root, out, text_teacher=False)
    raw["experiment_name"] = name
    raw["data"]["modalities"]["image"].update(mean="dataset", std="dataset")
    raw["logging"]["plots"] = False
    raw["training"]["teacher"]["epochs"] = raw["training"]["student"]["epochs"] = 1
    return ExperimentConfig.model_validate(raw)


def test_a_rerun_with_nothing_changed_stats_each_image_once_and_decodes_none(demo_root, tmp_path, monkeypatch):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    images = str(root / "images")
    run_experiment(_config(root, tmp_path / "runs", "first"))  # builds every cache

    stats, opens = Counter(), Counter()
    real_stat, real_lstat, real_open = os.stat, os.lstat, builtins.open

    def counting(real, counter):
        def call(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(images):
                counter[os.fspath(path)] += 1
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "stat", counting(real_stat, stats))
    monkeypatch.setattr(os, "lstat", counting(real_lstat, stats))
    monkeypatch.setattr(builtins, "open", counting(real_open, opens))
    results = run_experiment(_config(root, tmp_path / "runs", "second"))  # a new run: every stage trains
    monkeypatch.undo()

    n_images = sum(1 for _ in Path(images).iterdir())
    assert "student" in results and len(stats) == n_images  # every image was looked at ...
    assert max(stats.values()) == 1, stats.most_common(3)  # ... once
    assert not opens, opens.most_common(3)  # and none decoded: statistics and pixels come from the caches


def _rewrite(root: Path, split: str, change) -> None:
    with open(root / f"{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    change(rows)
    with open(root / f"{split}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_an_edited_label_or_a_rewritten_image_is_still_seen(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    config = _config(root, tmp_path / "runs", "x")

    def fingerprint():
        data = load_data(config, ImageStatsCache(config))
        train = data.datasets["train"].records
        return data_signature(config, data), ImageStatsCache.key(train, "image", config.data.modalities["image"])

    first = fingerprint()
    assert fingerprint() == first  # reading again is not a change

    def relabel(rows):
        rows[5]["urgent"] = "0" if rows[5]["urgent"] == "1" else "1"
    _rewrite(root, "test", relabel)
    relabelled = fingerprint()
    assert relabelled[0] != first[0] and relabelled[1] == first[1]  # a test label: not the train images' statistics

    image = root / "images" / "train_0003.png"
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))  # rewritten in place, same size
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = fingerprint()
    assert touched[0] not in (first[0], relabelled[0]) and touched[1] != first[1]


def _private_bytes() -> int:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) * 1024
    return fields["Private_Dirty"]


def _read_every_record(dataset, queue) -> None:
    """What `dataset[i]` reads of the data, for every i (not the tensors it then builds: torch's
    allocator grows a forked heap by itself, whatever the records are)."""
    before = _private_bytes()
    for i in range(len(dataset)):
        record = dataset.records[i]
        record.values["report"], dataset.labels["finding"][i]
    queue.put(_private_bytes() - before)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's smaps_rollup")
def test_a_forked_loader_worker_reading_every_record_copies_none_of_them():
    """What a DataLoader worker does: forked from the main process, it reads each record. With
    one Python object per record (the old list of Records) every read wrote a reference count
    and copied the page holding it, about 400 bytes a record; packed columns are only read."""
    n = 50_000
    builder = TableBuilder({"report": "text"}, {}, ["finding"])
    for i in range(n):
        builder.add(f"train.csv line {i + 2}", {"report": f"finding number {i} in a plain report"},
                    {"finding": "ab"[i % 2]}, {})
    table = builder.build()
    spec = ExperimentConfig.model_validate(tiny_config(Path("."), Path("."))).data.modalities
    dataset = MultiModalDataset(table, {"report": spec["report"]}, [TaskInfo("finding", "multiclass", ("a", "b"))],
                                "train")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_read_every_record, args=(dataset, queue))
    worker.start()
    copied = queue.get(timeout=120)
    worker.join(30)
    assert copied / n < 40, f"{copied / n:.0f} bytes copied per record"
    assert np.asarray(dataset.labels["finding"]).tolist()[:4] == [0, 1, 0, 1]


def test_origins_are_kept_as_one_file_name_and_numbers_yet_read_back_as_written():
    uniform = TableBuilder({}, {}, [])
    mixed = TableBuilder({}, {}, [])
    for origin in ("data/train.csv line 2", "data/train.csv line 3", "data/train.csv line 10"):
        uniform.add(origin, {}, {}, {})
    for origin in ("a.csv line 2", "a.csv line 3", "case MPX1 entry 007", "b.json"):
        mixed.add(origin, {}, {}, {})
    table = uniform.build()
    assert type(table.origins).__name__ == "OriginColumn" and table.origins.numbers.nbytes == 24
    assert list(table.origins) == ["data/train.csv line 2", "data/train.csv line 3", "data/train.csv line 10"]
    assert [r.origin for r in mixed.build()] == ["a.csv line 2", "a.csv line 3", "case MPX1 entry 007", "b.json"]
