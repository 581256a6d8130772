"""Cache keys and a sweep's resume follow what the input files hold, not their mtimes: the same
data copied again with new times keeps every key and is read once to find that out; a run on
unchanged files reads none of them to compute its keys."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from mmdistill.data import file_content
from mmdistill.cache.file_digests import FileDigests, FileDigestsMemo, read_memo
from mmdistill.cache.images import load_run_data
from mmdistill.cache.inventory import list_entries
from mmdistill.cache.keys import data_signature, images_key
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data


@pytest.fixture
def reads(monkeypatch):
    """The files hashed, in order."""
    seen: list[str] = []
    real = file_content.file_digest64
    monkeypatch.setattr(file_content, "file_digest64", lambda path: seen.append(str(path)) or real(path))
    return seen


def _setup(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    config = ExperimentConfig.model_validate(tiny_config(root, tmp_path / "runs"))

    def keys():
        data = load_data(config, file_digests=FileDigestsMemo(config))
        data.file_digests.save()  # what a run does once its data is checked (`attach_caches`)
        spec = config.data.modalities["image"]
        return data_signature(config, data), [images_key(d.records, "image", spec) for d in data.datasets.values()]
    return root, config, keys


def test_new_times_same_bytes_keep_every_key_and_unchanged_files_are_not_read(demo_root, tmp_path, reads):
    root, config, keys = _setup(demo_root, tmp_path)
    images = sorted(str(p) for p in (root / "images").iterdir())
    first = keys()
    assert sorted(reads) == images  # every image hashed once
    reads.clear()
    assert keys() == first and reads == []  # unchanged: the memo answers, no file is read

    shutil.rmtree(root)
    shutil.copytree(demo_root, root, copy_function=shutil.copy)  # the same bytes, new mtimes
    assert keys() == first
    assert sorted(reads) == images  # each read once to find out ...
    reads.clear()
    assert keys() == first and reads == []  # ... and not again

    changed = root / "images" / "dev_0001.png"
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte different
    mtime = changed.stat().st_mtime_ns
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(mtime + 5 * 10**9, mtime + 5 * 10**9))  # a new time even on a coarse filesystem
    second = keys()
    assert reads == [str(changed)]
    assert second[0] != first[0]
    train, dev, test = 0, 1, 2
    assert second[1][dev] != first[1][dev] and second[1][train] == first[1][train] and second[1][test] == first[1][test]


def test_the_memo_is_a_listed_cache_entry_and_a_damaged_one_is_rebuilt(demo_root, tmp_path, reads):
    root, config, keys = _setup(demo_root, tmp_path)
    first = keys()
    memo = FileDigestsMemo(config)(str(root.absolute())).path
    assert [(e.kind, e.path, e.state) for e in list_entries(config.cache_dir) if e.kind == "files"] == [("files", memo, "ok")]

    memo.unlink()
    load_run_data(config)  # a run records the digests with its first cache
    assert memo.is_file()

    memo.write_bytes(memo.read_bytes()[:-40])  # a truncated write by something else
    assert [e.state for e in list_entries(config.cache_dir) if e.kind == "files"] == ["damaged"]
    reads.clear()
    assert keys() == first
    assert len(reads) == len(list((root / "images").iterdir()))
    assert len(read_memo(memo)) == len(reads)


def test_processes_saving_at_once_keep_each_others_entries(demo_root, tmp_path, reads):
    """Sweep workers and DDP ranks each hash and save; a later save merges, it does not drop."""
    paths = sorted(str(p) for p in (demo_root / "images").iterdir())[:4]
    stats = [os.stat(p) for p in paths]
    sizes = [s.st_size for s in stats]
    mtimes = [s.st_mtime_ns for s in stats]
    memo = tmp_path / "cache" / "files" / "m.npy"
    a, b = FileDigests(memo), FileDigests(memo)
    first = a(paths[:2], sizes[:2], mtimes[:2])
    second = b(paths[2:], sizes[2:], mtimes[2:])
    a.save()
    b.save()
    reads.clear()
    again = FileDigests(memo)(paths, sizes, mtimes)
    assert reads == [] and list(again) == list(first) + list(second)
    assert len(set(again.tolist())) == 4  # different files, different digests


def test_a_file_that_cannot_be_read_is_named(tmp_path):
    from mmdistill.data.file_content import hash_files
    from mmdistill.errors import UserError

    present = tmp_path / "a.png"
    present.write_bytes(b"abc")
    with pytest.raises(UserError, match=r"gone\.png: cannot read this file"):
        hash_files([str(present), str(tmp_path / "gone.png")])
    assert list(hash_files([str(present), str(present)])) == [hash_files([str(present)])[0]] * 2


def test_a_changed_size_or_a_memo_of_another_layout_is_hashed_again(tmp_path, reads):
    path = tmp_path / "a.png"
    path.write_bytes(b"abc")
    st = os.stat(path)
    memo = tmp_path / "files" / "m.npy"
    memo.parent.mkdir()
    digests = FileDigests(memo)
    first = digests([str(path)], [st.st_size], [st.st_mtime_ns])
    digests.save()
    assert reads == [str(path)]
    assert list(FileDigests(memo)([str(path)], [st.st_size + 1], [st.st_mtime_ns])) == list(first)
    assert reads == [str(path)] * 2  # the size recorded was not this one
    np.save(memo, np.zeros(3))  # a memo written in another layout (an older format, another tool)
    assert list(FileDigests(memo)([str(path)], [st.st_size], [st.st_mtime_ns])) == list(first)
    assert reads == [str(path)] * 3


def test_the_memo_answers_by_path_among_many_and_keeps_the_latest_entry_of_a_path(tmp_path, reads):
    """Looked up by searchsorted over path digests: each of many paths gets its own digest
    whatever the order asked in, and a file hashed again replaces its entry, not adds one."""
    files = []
    for i in range(300):
        files.append(tmp_path / f"{i:03d}.bin")
        files[-1].write_bytes(f"content {i}".encode())
    paths = [str(f) for f in files]
    stats = [os.stat(p) for p in paths]
    sizes, mtimes = [s.st_size for s in stats], [s.st_mtime_ns for s in stats]
    memo = tmp_path / "files" / "m.npy"
    truth = FileDigests(memo)(paths, sizes, mtimes)
    assert len(set(truth.tolist())) == 300
    FileDigests(memo)(paths[:150], sizes[:150], mtimes[:150])
    assert not memo.exists()  # nothing saved yet
    digests = FileDigests(memo)
    digests(paths, sizes, mtimes)
    digests.save()
    reads.clear()
    order = np.random.default_rng(0).permutation(300)
    again = FileDigests(memo)([paths[i] for i in order], [sizes[i] for i in order], [mtimes[i] for i in order])
    assert reads == [] and list(again) == list(truth[order])

    files[7].write_bytes(b"other bytes")
    os.utime(files[7], ns=(mtimes[7] + 10**9, mtimes[7] + 10**9))
    changed = FileDigests(memo)
    new_digest = changed([paths[7]], [os.stat(paths[7]).st_size], [mtimes[7] + 10**9])[0]
    changed.save()
    assert new_digest != truth[7] and reads == [paths[7]]
    entries = read_memo(memo)
    assert len(entries) == 300 and entries["digest"].tolist().count(new_digest) == 1
