"""The data signature a sweep resumes by: equal for the same data, new for any change a run
would see (an image file rewritten, a text edited) and only for those: a file touched or copied
with new times but the same bytes is the same data."""

from __future__ import annotations

import csv
import os
import shutil

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.cache.keys import data_signature


def _signature(root, tmp_path):
    raw = tiny_config(root, tmp_path / "runs", text_teacher=True)
    config = ExperimentConfig.model_validate(raw)
    return data_signature(config, load_data(config))


def test_signature_follows_the_files_a_run_reads(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    first = _signature(root, tmp_path)
    assert _signature(root, tmp_path) == first  # loading again is not a change

    image = root / "images" / "test_0002.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new time
    assert _signature(root, tmp_path) == first

    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF  # rewritten in place: same size, one byte different
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    second = _signature(root, tmp_path)
    assert second != first

    rows = list(csv.DictReader(open(root / "train.csv")))
    rows[3]["report"] += " Reviewed."
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert _signature(root, tmp_path) not in (first, second)
