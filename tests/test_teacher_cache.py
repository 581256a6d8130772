"""The teacher-output cache: exact equivalence with running the teacher, keys that change
with what the outputs depend on, and damaged stores that are rebuilt rather than read."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.data.views import ViewSampler
from mmdistill.losses.objective import build_objective
from mmdistill.losses.terms import LossBatch
from mmdistill.cache import teacher_outputs as teacher_cache
from mmdistill.models.build import build_model
from mmdistill.models.net import ModelOutput
from mmdistill.run.experiment import run_experiment
from mmdistill.cache.keys import teacher_outputs_key as cache_key
from mmdistill.train.teachers import ROWS as teacher_rows_key
from mmdistill.train.teachers import CachedTeacher, FrozenTeacher, dev_teacher_source, teacher_fields, teacher_source

# logit KD, feature regression on the fused vector, and attention transfer on the feature map:
# one term per kind of stored field
TERMS = [
    {"term": "task", "weight": 0.5},
    {"term": "kd_logits", "weight": 0.5, "params": {"temperature": 4.0}},
    {"term": "feat_l2", "weight": 0.2, "params": {"student": "fused", "teacher": "fused"}},
    {"term": "at", "weight": 0.2, "params": {"student": "feature_map:image", "teacher": "feature_map:image"}},
]

AT_FIELD = "attention_map:image:p=2.0"  # the field attention transfer declares (p = 2, the default)


def _config(demo_root, out, **cache) -> ExperimentConfig:
    raw = tiny_config(demo_root, out)
    raw["objective"] = {"terms": TERMS}
    raw["training"]["student"]["epochs"] = 3
    raw["training"]["baseline"] = False
    raw["cache"] = {"teacher_dtype": "float32", **cache}
    return ExperimentConfig.model_validate(raw)


def _student_losses(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["stage"] == "student"]
    return [{k: float(v) for k, v in r.items() if k.startswith("train_") and k != "train_seconds"} for r in rows]


def test_cached_and_on_the_fly_teacher_give_the_same_loss_curve(demo_root, tmp_path):
    cached = _config(demo_root, tmp_path / "a")
    run_experiment(cached)
    stores = list((tmp_path / "a" / "cache" / "teacher").glob("*/store.json"))
    assert len(stores) == 1

    teacher_weights = tmp_path / "a" / "tiny" / "checkpoints" / "teacher_best.safetensors"
    live = _config(demo_root, tmp_path / "b", teacher=False).model_copy(deep=True)
    live.teacher.checkpoint = teacher_weights
    run_experiment(live)
    assert not (tmp_path / "b" / "cache" / "teacher").exists()

    a, b = _student_losses(tmp_path / "a" / "tiny"), _student_losses(tmp_path / "b" / "tiny")
    assert len(a) == len(b) == 3
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys() and {"train_kd_logits", "train_feat_l2", "train_at"} <= row_a.keys()
        for key in row_a:
            assert row_a[key] == pytest.approx(row_b[key], abs=1e-5), key
    assert a[0]["train_kd_logits"] > 1e-4 and a[0]["train_loss"] != a[-1]["train_loss"]  # the curve moves


def _parts(config):
    data = load_data(config)
    torch.manual_seed(0)
    teacher, student = build_model(config, "teacher", data), build_model(config, "student", data)
    objective = build_objective(None, config.objective.terms, data.tasks, student, teacher)
    return data, teacher, objective


def test_cached_outputs_equal_the_teachers_outputs_field_by_field(demo_root, tmp_path):
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)
    # attention transfer stores the teacher's attention map, not its feature map (the next tests)
    assert teacher_fields(objective) == [AT_FIELD, "fused", "logits"]
    source = teacher_source(config, teacher, objective, data)
    assert isinstance(source, CachedTeacher)
    batch = next(iter(data.loader("train", 8, shuffle=True, seed=3, modalities={"image"})))
    live, cached = FrozenTeacher(teacher)(batch), source(batch)
    torch.testing.assert_close(cached.fused, live.fused, atol=1e-6, rtol=1e-5)
    assert cached.feature_maps == {} and list(cached.derived) == [AT_FIELD]
    at = objective.terms[objective.names.index("at")]
    torch.testing.assert_close(cached.derived[AT_FIELD], at.derive_teacher_field(AT_FIELD, live), atol=1e-6, rtol=1e-5)
    for task in live.logits:
        torch.testing.assert_close(cached.logits[task], live.logits[task], atol=1e-6, rtol=1e-5)


def test_under_mixed_precision_the_cache_holds_what_the_live_teacher_computes_in_a_step(demo_root, tmp_path):
    """Lightning runs the live teacher inside the step's autocast; the cache is built under the
    same autocast, so turning the cache on or off changes nothing under bf16-mixed. Its key
    keeps such outputs apart from fp32 ones."""
    raw = _config(demo_root, tmp_path).model_dump(mode="json")
    raw["training"].update(accelerator="cpu", precision="bf16-mixed")
    config = ExperimentConfig.model_validate(raw)
    data, teacher, objective = _parts(config)
    fields = teacher_fields(objective)
    assert cache_key(config, teacher, data, fields) != cache_key(_config(demo_root, tmp_path), teacher, data, fields)
    source = teacher_source(config, teacher, objective, data)
    assert isinstance(source, CachedTeacher)
    batch = next(iter(data.loader("train", 8, shuffle=True, seed=3, modalities={"image"})))
    cached = source(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what Lightning's bf16-mixed step does around it
        live = FrozenTeacher(teacher)(batch)
    fp32 = FrozenTeacher(teacher)(batch)
    for task in live.logits:
        torch.testing.assert_close(cached.logits[task], live.logits[task].float(), atol=1e-6, rtol=1e-6)
        assert (cached.logits[task] - fp32.logits[task]).abs().max() > 1e-4  # so the test can tell them apart
    torch.testing.assert_close(cached.fused, live.fused.float(), atol=1e-6, rtol=1e-6)


def test_the_train_loader_brings_the_cached_rows_so_the_step_reads_none(demo_root, tmp_path, monkeypatch):
    """The rows are read in the loader's collate (its worker processes, ahead of the step), not
    row by row inside the training step while the GPU waits."""
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)
    source = teacher_source(config, teacher, objective, data)
    loader = lambda collate: data.loader("train", 8, shuffle=True, seed=3, modalities={"image"}, collate=collate)  # noqa: E731
    read_in_step = source(next(iter(loader(None))))
    batch = next(iter(loader(source.collate())))
    assert set(batch[teacher_rows_key]) == set(source.outputs.by_field)
    monkeypatch.setattr(teacher_cache.TeacherOutputs, "read", lambda *a: pytest.fail("read inside the step"))
    brought = source(batch)
    for task in read_in_step.logits:
        assert torch.equal(brought.logits[task], read_in_step.logits[task])
    assert torch.equal(brought.fused, read_in_step.fused)


def _at_config(demo_root, out, p: float) -> ExperimentConfig:
    """`_config` with attention transfer's exponent set to p."""
    raw = _config(demo_root, out).model_dump(mode="json")
    raw["objective"]["terms"][3]["params"]["p"] = p
    return ExperimentConfig.model_validate(raw)


def _loss_batch(batch) -> LossBatch:
    return LossBatch(batch["labels"], batch["index"])


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_cached_attention_transfer_loss_equals_the_live_teachers(demo_root, tmp_path, p):
    config = _at_config(demo_root, tmp_path, p)
    data, teacher, objective = _parts(config)
    at = objective.terms[objective.names.index("at")]
    assert at.teacher_fields() == [f"attention_map:image:p={p}"]
    student = build_model(config, "student", data)
    student.want_feature_maps.add("image")
    source = teacher_source(config, teacher, objective, data)
    assert isinstance(source, CachedTeacher)

    batch = next(iter(data.loader("train", 8, shuffle=True, seed=3, modalities={"image"})))
    s_out = student(batch["inputs"])
    live, cached = FrozenTeacher(teacher)(batch), source(batch)
    assert type(live) is ModelOutput and cached.feature_maps == {}  # live: derived from its map; cached: stored
    loss_live, loss_cached = at(s_out, live, _loss_batch(batch)), at(s_out, cached, _loss_batch(batch))
    assert loss_live.item() > 1e-4
    assert loss_cached.item() == pytest.approx(loss_live.item(), abs=1e-6)
    total_live, _ = objective(s_out, live, _loss_batch(batch))
    total_cached, _ = objective(s_out, cached, _loss_batch(batch))
    assert total_cached.item() == pytest.approx(total_live.item(), abs=1e-6)
    loss_cached.backward()  # the student still learns through its own map
    assert student.encoders["image"].backbone.blocks[0][0].weight.grad.abs().sum() > 0

    # the dev loss's teacher outputs (computed once into memory) derive the same map
    dev_source = dev_teacher_source(config, teacher, objective, data)
    dev = next(iter(data.loader("dev", 8, shuffle=False, seed=0, modalities={"image"})))
    with torch.no_grad():
        s_dev = student(dev["inputs"])
        from_memory = at(s_dev, dev_source(dev), _loss_batch(dev))
        from_live = at(s_dev, FrozenTeacher(teacher)(dev), _loss_batch(dev))
    assert from_memory.item() == pytest.approx(from_live.item(), abs=1e-6)


def test_attention_transfer_stores_a_map_c_times_smaller_than_the_feature_map(demo_root, tmp_path):
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)
    n = len(data.datasets["train"])
    cached = teacher_source(config, teacher, objective, data).outputs
    assert not any(f.startswith("feature_map:") for f in cached.by_field)  # no raw map in the store
    # a store of the raw feature map, as kept before, for comparison
    raw, _, _ = teacher_cache.open_teacher_outputs(config, teacher, data, ["feature_map:image", "fused", "logits"], 1)
    c, h, w = raw.store.shape(raw.by_field["feature_map:image"])[1:]
    assert c == 16 and raw.store.shape(raw.by_field["feature_map:image"]) == (n, c, h, w)
    assert cached.store.shape(cached.by_field[AT_FIELD]) == (n, 1, h, w)  # one view: a [1, H, W] row per sample
    rows = cached.read(np.arange(n), np.zeros(n, dtype=np.int64))[AT_FIELD]
    np.testing.assert_allclose(np.linalg.norm(rows.reshape(n, -1), axis=1), 1.0, rtol=1e-5)  # each map normalised


def test_cache_key_follows_attention_transfers_exponent(demo_root, tmp_path):
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)
    fields, cubed = teacher_fields(objective), teacher_fields(_parts(_at_config(demo_root, tmp_path, 3))[2])
    assert cubed == ["attention_map:image:p=3.0", "fused", "logits"]
    assert cache_key(config, teacher, data, fields) != cache_key(config, teacher, data, cubed)
    raw = ["feature_map:image", "fused", "logits"]  # what a store of the raw map was keyed by
    assert cache_key(config, teacher, data, raw) not in {cache_key(config, teacher, data, f) for f in (fields, cubed)}


def test_cache_key_follows_teacher_weights_data_and_views(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    config = _config(root, tmp_path)
    data, teacher, objective = _parts(config)
    fields = teacher_fields(objective)
    key = cache_key(config, teacher, data, fields)
    assert cache_key(config, teacher, load_data(config), fields) == key  # stable

    weight = next(teacher.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1e-3)
    assert cache_key(config, teacher, data, fields) != key
    with torch.no_grad():
        weight.copy_(saved)
    assert cache_key(config, teacher, data, fields) == key

    # a data file: one train row points at another image
    rows = list(csv.DictReader(open(root / "train.csv")))
    rows[0]["image"], rows[1]["image"] = rows[1]["image"], rows[0]["image"]
    with open(root / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    edited = load_data(config)
    assert cache_key(config, teacher, edited, fields) != key

    # an image file rewritten on disk
    image = root / rows[5]["image"]
    before = cache_key(config, teacher, edited, fields)
    image.write_bytes(image.read_bytes() + b"\0")
    assert cache_key(config, teacher, load_data(config), fields) != before

    # view settings, and the stored fields / dtype
    flips = config.model_dump()
    flips["data"]["augment"] = {"horizontal_flip_prob": 0.5}
    two_views = {**flips, "data": {**flips["data"], "views": 2}}
    keys = {cache_key(ExperimentConfig.model_validate(c), teacher, edited, fields) for c in (flips, two_views)}
    assert len(keys | {cache_key(config, teacher, edited, fields)}) == 3
    assert cache_key(config, teacher, edited, ["logits"]) != cache_key(config, teacher, edited, fields)
    half = config.model_copy(update={"cache": config.cache.model_copy(update={"teacher_dtype": "float16"})})
    assert cache_key(half, teacher, edited, fields) != cache_key(config, teacher, edited, fields)


def test_truncated_cache_is_rebuilt_not_read(demo_root, tmp_path, monkeypatch):
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)
    builds = []
    real_build = teacher_cache.build_teacher_store
    monkeypatch.setattr(teacher_cache, "build_teacher_store", lambda *a, **k: builds.append(1) or real_build(*a, **k))

    first = teacher_source(config, teacher, objective, data)
    teacher_source(config, teacher, objective, data)
    assert len(builds) == 1  # the second run reuses it

    victim = next(first.store.path.glob("*.bin"))
    os.truncate(victim, victim.stat().st_size // 2)
    again = teacher_source(config, teacher, objective, data)
    assert len(builds) == 2
    assert victim.stat().st_size == np.prod(again.store.shape(victim.stem)) * 4


def test_interrupted_build_leaves_nothing_readable(demo_root, tmp_path, monkeypatch):
    config = _config(demo_root, tmp_path)
    data, teacher, objective = _parts(config)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    calls = {"n": 0}
    real_forward = teacher.forward

    def forward_then_crash(inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            crash()
        return real_forward(inputs)

    monkeypatch.setattr(teacher, "forward", forward_then_crash)
    with pytest.raises(KeyboardInterrupt):
        teacher_source(config, teacher, objective, data)
    teacher_dir = config.cache_dir / "teacher"
    assert [p.name for p in teacher_dir.iterdir() if not p.name.startswith(".")] == []
    assert list(teacher_dir.iterdir()) == []  # the temporary directory is gone too


def test_views_are_deterministic_per_seed_epoch_and_sample():
    base = list(range(50))
    a, b = ViewSampler(base, seed=1, views=3), ViewSampler(base, seed=1, views=3)
    first, again = list(a), list(b)
    assert first == again and {v for _, v in first} == {0, 1, 2}
    second = list(a)  # next epoch: another draw of one view per sample
    assert [i for i, _ in second] == base and second != first
    assert all(v == 0 for _, v in ViewSampler(base, seed=1, views=1))
    fresh = ViewSampler(base, seed=1, views=None)
    fresh.set_epoch(4)
    assert {v for _, v in fresh} == {4}


def test_a_view_is_the_same_augmentation_at_every_resolution(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path)
    raw["data"]["modalities"]["big"] = {"kind": "image", "column": "image", "channels": 3, "size": 32}
    raw["teacher"]["encoders"] = {"big": {"type": "tiny_cnn", "widths": [8, 16]}}
    raw["data"]["augment"] = {"horizontal_flip_prob": 0.5, "vertical_flip_prob": 0.5}  # exact at any size
    raw["data"]["views"] = 4
    config = ExperimentConfig.model_validate(raw)
    train = load_data(config).datasets["train"]
    items = [train[(3, view)]["inputs"] for view in range(4)]
    for view, item in enumerate(items):
        torch.testing.assert_close(train[(3, view)]["inputs"]["image"], item["image"])  # same view, same image
        down = torch.nn.functional.interpolate(item["big"][None], size=16, mode="bilinear", antialias=True)[0]
        distance = [float((down - other["image"]).abs().mean()) for other in items]
        # the 32 px teacher image, brought to 16 px, is closest to the student's image of its own view
        assert distance[view] == min(distance) and distance[view] < 0.8 * max(distance), distance
    assert len({tuple(item["image"].flatten().tolist()) for item in items}) > 1  # the views differ


def test_no_teacher_cache_flag_turns_the_cache_off():
    from mmdistill.cli import _overrides, build_parser

    args = build_parser().parse_args(["run", "c.yaml", "--no-teacher-cache", "--set", "seed=1"])
    assert _overrides(args) == ["seed=1", "cache.teacher=false"]
    assert _overrides(build_parser().parse_args(["sweep", "c.yaml"])) == []


def test_a_checkpointed_teachers_scores_are_computed_once_per_weights_and_data(demo_root, tmp_path, monkeypatch):
    from mmdistill.train import fit

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    first = _config(root, tmp_path / "out")
    run_experiment(first)  # trains the teacher, whose checkpoint the next runs load
    weights = first.run_dir / "checkpoints" / "teacher_best.safetensors"
    trained = json.loads((first.run_dir / "results.json").read_text())["teacher"]

    evaluations = []
    real = fit.evaluate_only
    monkeypatch.setattr(fit, "evaluate_only", lambda *a: evaluations.append(1) or real(*a))

    def run(config_dir, **cache):
        config = _config(root, tmp_path / "out", **cache).model_copy(deep=True)
        config.teacher.checkpoint = weights
        config.experiment_name = config_dir
        entry = run_experiment(config)["teacher"]
        reused.append("reused_from" in entry)
        return {k: v for k, v in entry.items() if k != "reused_from"}

    reused: list[bool] = []

    scored = run("a")  # the training run stored its teacher's scores under the checkpoint's key
    trained_dev = {k: v for k, v in trained["dev"].items() if k != "loss"}  # the dev loss is the training stage's
    assert evaluations == [] and scored["dev"] == trained_dev and scored["test"] == trained["test"]
    assert run("b", teacher=False) == scored and len(evaluations) == 1  # --no-teacher-cache evaluates
    stored = next((tmp_path / "out" / "cache" / "teacher_scores").glob("*.json"))
    os.utime(stored, (0, 0))
    assert run("c") == scored and len(evaluations) == 1
    assert reused == [True, False, True]  # results.json says where evaluated scores came from
    assert stored.stat().st_mtime > time.time() - 600  # reading marks it used (`mmdistill cache --older-than`)

    stored.write_text('{"key": "trunc')  # a damaged file is recomputed, then rewritten whole
    assert run("d") == scored and len(evaluations) == 2
    assert json.loads(stored.read_text())["dev"]["score"] == scored["dev"]["score"]

    rows = list(csv.DictReader(open(root / "dev.csv")))  # a dev file changes: a new key
    rows[0]["image"], rows[1]["image"] = rows[1]["image"], rows[0]["image"]
    with open(root / "dev.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run("e")
    assert len(evaluations) == 3
    assert len(list((tmp_path / "out" / "cache" / "teacher_scores").glob("*.json"))) == 2

    rows = list(csv.DictReader(open(root / "test.csv")))  # a corrected test label, same inputs: a new key
    rows[0]["urgent"] = "1" if rows[0]["urgent"] == "0" else "0"
    with open(root / "test.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run("f")
    assert len(evaluations) == 4
