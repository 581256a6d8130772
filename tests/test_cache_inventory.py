"""`mmdistill cache`: entries listed with size and last use; pruning by use removes what no
run touched for the given time, damaged stores and abandoned builds, and nothing else."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from mmdistill.cli import main
from mmdistill.cache.store import STORE_FILE, ArrayStore, StoreWriter, open_or_build
from mmdistill.cache.inventory import list_entries, prune

DAY = 86400.0


def _store(path, key="k", rows=4):
    path.parent.mkdir(parents=True, exist_ok=True)
    with StoreWriter(path, key) as writer:
        writer.declare("x", (rows, 3), np.float32)
        writer.append("x", np.ones((rows, 3), np.float32))
        return writer.commit()


def _age(path, days):
    """Backdate `path` (and, for a directory, its files) by `days`."""
    then = time.time() - days * DAY
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (then, then))


@pytest.fixture
def cache(tmp_path):
    root = tmp_path / "out" / "cache"
    _store(root / "teacher" / "old")
    _store(root / "teacher" / "recent")
    _store(root / "images" / "train-image-32px-damaged", rows=8)
    with open(root / "images" / "train-image-32px-damaged" / "x.bin", "r+b") as f:
        f.truncate(10)
    _store(root / "text" / "old-but-reopened")
    (root / "teacher_scores").mkdir()
    (root / "teacher_scores" / "old.json").write_text('{"key": "old"}')
    (root / "teacher_scores" / ".new.json.x1y2.tmp").write_text('{"ke')  # an atomic write in progress
    (root / "teacher" / ".fresh.tmp-1234").mkdir()  # a build in progress
    (root / "teacher" / ".fresh.tmp-1234" / "x.bin").write_bytes(b"\0" * 100)
    (root / "teacher" / ".crashed.tmp-5678").mkdir()  # a build that died two days ago
    (root / "teacher" / ".crashed.tmp-5678" / "x.bin").write_bytes(b"\0" * 100)
    for name in ("teacher/old", "images/train-image-32px-damaged", "text/old-but-reopened",
                 "teacher_scores/old.json", "teacher/.crashed.tmp-5678"):
        _age(root / name, 40)
    _age(root / "teacher" / "recent", 2)
    return root


def test_entries_are_listed_with_state_size_and_last_use(cache):
    entries = {e.name: e for e in list_entries(cache)}
    assert set(entries) == {"old", "recent", "train-image-32px-damaged", "old-but-reopened", "old.json",
                            ".new.json.x1y2.tmp", ".fresh.tmp-1234", ".crashed.tmp-5678"}
    assert entries["old"].state == "ok" and entries["old"].bytes == 4 * 3 * 4 + (cache / "teacher/old" / STORE_FILE).stat().st_size
    assert entries["train-image-32px-damaged"].state == "damaged"
    assert entries[".fresh.tmp-1234"].state == entries[".new.json.x1y2.tmp"].state == "unfinished"
    assert time.time() - entries["old"].last_used == pytest.approx(40 * DAY, abs=60)
    assert time.time() - entries["recent"].last_used == pytest.approx(2 * DAY, abs=60)
    assert [e.name for e in list_entries(cache)][:2] == ["old", "train-image-32px-damaged"]  # least recently used first


def test_opening_a_store_marks_it_used_so_pruning_keeps_it(cache):
    path = cache / "text" / "old-but-reopened"
    store, built = open_or_build(path, "k", lambda: pytest.fail("a complete store is not rebuilt"), "text vector")
    assert not built
    store.close()
    removed, kept = prune(cache, older_than_days=30)
    assert {e.name for e in removed} == {"old", "train-image-32px-damaged", "old.json", ".crashed.tmp-5678"}
    assert {e.name for e in kept} == {"recent", "old-but-reopened", ".fresh.tmp-1234", ".new.json.x1y2.tmp"}
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == [".fresh.tmp-1234", "recent"]
    assert not (cache / "teacher_scores" / "old.json").exists()
    assert not list(cache.rglob("*.trash-*"))
    assert ArrayStore.open(cache / "teacher" / "recent", "k") is not None


def test_dry_run_removes_nothing_and_age_zero_spares_a_build_in_progress(cache):
    before = sorted(str(p) for p in cache.rglob("*"))
    removed, _ = prune(cache, older_than_days=0, dry_run=True)
    assert sorted(str(p) for p in cache.rglob("*")) == before
    assert {e.name for e in removed} & {".fresh.tmp-1234", ".new.json.x1y2.tmp"} == set()
    assert "recent" in {e.name for e in removed}


def test_cli_lists_prunes_and_rejects_what_is_not_a_cache(cache, tmp_path, capsys):
    assert main(["cache", str(tmp_path / "out")]) == 0  # an output_dir finds its cache/
    out = capsys.readouterr().out
    assert "old-but-reopened" in out and "damaged" in out and "8 entries" in out

    assert main(["cache", str(cache), "--older-than", "30"]) == 0
    out = capsys.readouterr().out
    assert "removed 5 entries" in out and "kept 3" in out  # old-but-reopened is 40 days old here
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == [".fresh.tmp-1234", "recent"]

    assert main(["cache", str(tmp_path)]) == 2
    assert f"{tmp_path}: no mmdistill cache here" in capsys.readouterr().err
    assert main(["cache", str(cache), "--older-than", "-1"]) == 2
    assert "--older-than" in capsys.readouterr().err


def test_a_baseline_entry_needs_its_result_and_weights(tmp_path):
    root = tmp_path / "cache"
    for name, files in {"whole": ["result.json", "baseline_best.safetensors"], "no-weights": ["result.json"],
                        "no-result": ["baseline_best.safetensors"]}.items():
        (root / "baselines" / name).mkdir(parents=True)
        for file in files:
            (root / "baselines" / name / file).write_text('{"key": "k"}')
    states = {e.name: e.state for e in list_entries(root)}
    assert states == {"whole": "ok", "no-weights": "damaged", "no-result": "damaged"}


def _slow_build(path, key, log):
    """A store build that takes a while and leaves a line in `log` (a file: it runs in another process)."""
    import time

    from mmdistill.cache.store import StoreWriter, open_or_build

    def build():
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(1.0)
        with StoreWriter(path, key) as writer:
            writer.declare("x", (3, 2), np.float32)
            writer.append("x", np.ones((3, 2), np.float32))
            return writer.commit()

    store, _ = open_or_build(path, key, build, "test")
    assert store.read("x", [0, 2]).sum() == 4


def test_concurrent_builds_of_one_store_build_it_once(tmp_path):
    import multiprocessing

    path, log = tmp_path / "teacher" / "k1", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_slow_build, args=(path, "k1", log)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert log.read_text().count("built") == 1  # one builder; the others waited and read its store


def _build_and_hold(path, key, ready, done):
    """Another process that built a store and goes on reading it (holding its shared lock)."""
    from mmdistill.cache.store import open_or_build

    store, built = open_or_build(path, key, lambda: _store(path, key), "test")
    assert built
    ready.set()
    done.wait(60)
    store.close()


def test_a_process_that_missed_a_store_reads_it_while_its_builder_still_holds_it(tmp_path, monkeypatch):
    """Two ranks of a DDP run both look, find no store, and one builds it and keeps reading it
    (a shared lock) until both meet at the next collective. The other must read that store, not
    queue for an exclusive lock the reader never gives up: the deadlock that hung a CI run."""
    import multiprocessing
    import threading

    from mmdistill.cache import store as store_module

    path = tmp_path / "teacher" / "k3"
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    builder = ctx.Process(target=_build_and_hold, args=(path, "k3", ready, done))
    builder.start()
    try:
        assert ready.wait(60)
        real, looks = store_module._open_in_use, []

        def look(*args):  # the first look happened before the builder had committed
            looks.append(args)
            return None if len(looks) == 1 else real(*args)

        monkeypatch.setattr(store_module, "_open_in_use", look)
        answer: list = []
        waiter = threading.Thread(target=lambda: answer.append(store_module.open_or_build(
            path, "k3", lambda: pytest.fail("a store another process built is not rebuilt"), "test")), daemon=True)
        waiter.start()
        waiter.join(20)
        assert answer, "open_or_build waited for the builder's shared lock to go away"
        store, built = answer[0]
        assert not built and store.read("x", [0]).shape == (1, 3)
        store.close()
    finally:
        done.set()
        builder.join(30)


def test_a_store_in_use_is_never_pruned(tmp_path):
    from mmdistill.cache.store import open_or_build

    path = tmp_path / "teacher" / "k2"
    store, built = open_or_build(path, "k2", lambda: _store(path, "k2"), "test")
    assert built
    old = time.time() - 90 * 86400
    os.utime(path / STORE_FILE, (old, old))
    removed, kept = prune(tmp_path, 30)
    assert removed == [] and [e.state for e in kept] == ["in use"] and path.is_dir()
    store.close()  # the run is done with it
    removed, _ = prune(tmp_path, 30)
    assert [e.name for e in removed] == ["k2"] and not path.exists()
