"""The same config on two processes (Lightning DDP on CPU, gloo) as on one: one writer, whole-
split metrics, the batches one device would take, and no hang when early stopping ends a stage.

Each test runs `python -m mmdistill run` in a subprocess: Lightning starts the second rank by
re-running the command line, which inside pytest would be pytest itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_SIZES, metric_rows, tiny_config, write_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP on CPU")


def _run(config: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mmdistill", "run", str(config), "--set", "logging.progress_bar=false", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


DDP = ("--set", "training.accelerator=cpu", "--set", "training.devices=2", "--set", "training.strategy=ddp")



RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def ddp_run(demo_root, tmp_path_factory):
    """The demo recipe as shipped (ResNet-18 + frozen MiniLM teacher, so the text-vector cache
    is built under DDP too), on the tiny demo data for 2 epochs per stage, with CRD added."""
    out = tmp_path_factory.mktemp("ddp")
    raw = yaml.safe_load((RECIPES / "demo.yaml").read_text())
    raw.update(experiment_name="tiny", output_dir=str(out / "runs"))
    raw["data"]["root"] = str(demo_root)
    raw["logging"] = {"progress_bar": False, "plots": True}
    raw["objective"] = {"terms": [{"term": "task", "weight": 0.5}, {"term": "kd_logits", "weight": 0.3},
                                  {"term": "crd", "weight": 0.2, "params": {"nce_k": 16}}]}
    for stage in ("teacher", "student"):
        raw["training"][stage].update(epochs=2, batch_size=16)
    config = write_config(out / "c.yaml", raw)
    done = _run(config, *DDP)
    return done, out / "runs" / "tiny"


def test_a_ddp_run_writes_once_and_measures_whole_splits(ddp_run):
    done, run_dir = ddp_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("results: ") == 1 and done.stdout.count("KD student") == 1, done.stdout
    assert "GLOBAL_RANK: 1" in done.stderr  # two processes really trained
    results = json.loads((run_dir / "results.json").read_text())
    rows = metric_rows(run_dir)
    for stage in ("teacher", "student", "baseline"):
        epochs = [int(r["epoch"]) for r in rows if r["stage"] == stage]
        assert epochs == [1, 2], (stage, epochs)  # one row per epoch, not one per rank
        for split, size in (("dev", TINY_SIZES["dev"]), ("test", TINY_SIZES["test"])):
            assert all(t["n"] == size for t in results[stage][split]["tasks"].values()), (stage, split)
        best = next(r for r in rows if r["stage"] == stage and int(r["epoch"]) == results[stage]["best_epoch"])
        assert float(best["dev_score"]) == pytest.approx(results[stage]["dev"]["score"], abs=1e-6), stage
    student = [r for r in rows if r["stage"] == "student"]
    assert all(float(r["train_crd"]) > 0 and float(r["train_kd_logits"]) > 0 for r in student)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "baseline_best.safetensors", "student_best.safetensors", "teacher_best.safetensors"]
    assert (run_dir / "plots" / "curves.png").is_file()
    assert not list(run_dir.rglob(".*.tmp"))  # no rank left a half-written file behind
    cache = run_dir.parent / "cache"
    for kind in ("teacher", "text", "images"):  # built once, by one rank, and read by both
        entries = [p for p in (cache / kind).iterdir() if not p.name.startswith(".")]
        assert len(entries) >= 1 and all((p / "store.json").is_file() for p in entries), (kind, entries)
    assert len(list((cache / "teacher").glob("*/store.json"))) == 1


def _exact_config(demo_root, out: Path, batch: int) -> Path:
    """No batch norm (GroupNorm) and no dropout: what makes a step depend on the rank's part of
    the batch rather than on the whole batch."""
    raw = tiny_config(demo_root, out / "runs")
    for role in ("teacher", "student"):
        raw[role]["encoders"]["image"]["norm"] = "group"
        raw[role]["dropout"] = 0.0
        raw[role]["fusion"] = {"type": "concat_mlp", "params": {"dropout": 0.0}}
    raw["teacher"]["encoders"] = {"image": raw["teacher"]["encoders"]["image"]}
    raw["training"]["teacher"].update(epochs=3, batch_size=batch)
    raw["training"]["student"].update(epochs=3, batch_size=batch)
    raw["logging"]["plots"] = False
    out.mkdir(parents=True, exist_ok=True)
    return write_config(out / "c.yaml", raw)


def test_two_processes_train_what_one_trains_at_the_same_global_batch(demo_root, tmp_path):
    """RankShard gives each global step the samples one process takes at batch size 2B
    (data/shard.py), and DDP averages the two halves' gradients, which is the whole batch's
    mean gradient. What remains is float summation order (gloo's all-reduce, two partial
    means instead of one), about 1e-7 relative per step; Adam over 3 epochs of 2 steps keeps
    it below 1e-4 in the losses and leaves the dev predictions unchanged. A different shuffle,
    batch norm over half batches or rank-seeded dropout would move the losses by 1e-2."""
    one = _run(_exact_config(demo_root, tmp_path / "one", 32), "--set", "training.accelerator=cpu")
    two = _run(_exact_config(demo_root, tmp_path / "two", 16), *DDP)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    rows_one, rows_two = metric_rows(tmp_path / "one" / "runs" / "tiny"), metric_rows(tmp_path / "two" / "runs" / "tiny")
    assert len(rows_one) == len(rows_two) == 9
    for a, b in zip(rows_one, rows_two):
        assert (a["stage"], a["epoch"]) == (b["stage"], b["epoch"])
        for key in ("train_loss", "dev_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4, abs=1e-5), (a["stage"], a["epoch"], key)
        assert float(b["dev_score"]) == pytest.approx(float(a["dev_score"]), abs=1e-6)
    r_one = json.loads((tmp_path / "one" / "runs" / "tiny" / "results.json").read_text())
    r_two = json.loads((tmp_path / "two" / "runs" / "tiny" / "results.json").read_text())
    for role in ("teacher", "student", "baseline"):
        assert r_two[role]["test"]["score"] == pytest.approx(r_one[role]["test"]["score"], abs=1e-6), role


def test_early_stopping_under_ddp_ends_the_stage_on_every_rank(demo_root, tmp_path):
    """lr 1e-12 leaves the dev score where it is: patience 1 stops each stage after its second epoch.
    Ranks that disagreed about stopping would wait for each other forever (the timeout)."""
    raw = tiny_config(demo_root, tmp_path / "runs")
    for stage in ("teacher", "student"):
        raw["training"][stage].update(epochs=6, patience=1, lr=1e-12)
    raw["logging"]["plots"] = False
    done = _run(write_config(tmp_path / "c.yaml", raw), *DDP, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = metric_rows(tmp_path / "runs" / "tiny")
    assert [int(r["epoch"]) for r in rows if r["stage"] == "teacher"] == [1, 2]
    assert [int(r["epoch"]) for r in rows if r["stage"] == "student"] == [1, 2]


def test_configs_lightning_would_refuse_are_refused_naming_the_keys(demo_root, tmp_path, capsys):
    from mmdistill.cli import main
    from mmdistill.preflight import load_config

    path = write_config(tmp_path / "c.yaml", tiny_config(demo_root, tmp_path / "runs"))
    for overrides, expected in (
            (["training.accelerator=cpu", "training.sync_batchnorm=true"], "training: `sync_batchnorm` works only on GPUs"),
            (["training.accelerator=cpu", "training.precision=16-mixed"], "`precision: 16-mixed` needs a GPU"),
            (["training.strategy=fsdp"], "training.strategy"),
            (["training.strategy=deepspeed"], "training.strategy"),
            # Lightning's CPU accelerator takes a count of processes, not GPU ids or -1
            (["training.accelerator=cpu", "training.devices=0,1"], "`devices: 0,1` with `accelerator: cpu`"),
            (["training.accelerator=cpu", "training.devices=-1"], "`devices: -1` with `accelerator: cpu`")):
        args = ["validate", str(path)] + [x for o in overrides for x in ("--set", o)]
        assert main(args) == 2, overrides
        assert expected in capsys.readouterr().err, overrides
    assert not (tmp_path / "runs").exists()
    for devices in ("2", "auto"):  # what a CPU run may ask for
        assert load_config(path, ["training.accelerator=cpu", f"training.devices={devices}"])


def test_a_run_where_no_gpu_is_visible_is_checked_by_the_cpus_rules_before_anything_is_written(
        demo_root, tmp_path, capsys, monkeypatch):
    """`validate` passes `auto` + 16-mixed (it may run on a GPU-less login node for a GPU job);
    `run` on a machine with no GPU would fail inside Lightning after making the run directory."""
    from mmdistill.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write_config(tmp_path / "c.yaml", tiny_config(demo_root, tmp_path / "runs"))
    assert main(["validate", str(path), "--set", "training.precision=16-mixed"]) == 0
    capsys.readouterr()
    for overrides, expected in (
            (["training.precision=16-mixed"], "training.accelerator=auto runs on the CPU here"),
            (["training.sync_batchnorm=true"], "`sync_batchnorm` works only on GPUs"),
            (["training.devices=0,1"], "`devices: 0,1` with `accelerator: cpu`"),
            (["training.accelerator=gpu"], "training.accelerator=gpu: no GPU is visible here")):
        args = ["run", str(path)] + [x for o in overrides for x in ("--set", o)]
        assert main(args) == 2, overrides
        assert expected in capsys.readouterr().err, overrides
    assert not (tmp_path / "runs").exists()


def test_bf16_mixed_precision_with_channels_last_runs_every_stage(demo_root, tmp_path):
    """What a GPU run would use, on the CPU: autocast in training, in the teacher-output cache
    build and in the final evaluation; channels-last weights saved and loaded back."""
    from mmdistill.cli import main

    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["training"].update(accelerator="cpu", precision="bf16-mixed", channels_last=True)
    raw["objective"] = {"preset": "rkd"}
    raw["logging"]["plots"] = False
    assert main(["run", str(write_config(tmp_path / "c.yaml", raw))]) == 0
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    for role in ("teacher", "student", "baseline"):
        assert 0 <= results[role]["test"]["score"] <= 1 and results[role]["dev"]["loss"] == results[role]["dev"]["loss"]


def test_rank_shards_cover_one_process_order_exactly_once_weighted_or_not():
    """The ranks' shards, interleaved, are the order one process draws (so a weighted sampler
    keeps its distribution and a shuffled epoch sees each sample once), padded only at the end."""
    import torch
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    from mmdistill.data.shard import RankShard

    def draw(sampler_factory):
        return list(sampler_factory())

    for make in (lambda: RandomSampler(range(10), generator=torch.Generator().manual_seed(3)),
                 lambda: WeightedRandomSampler([0.1] * 5 + [0.9] * 5, 10, generator=torch.Generator().manual_seed(3))):
        single = draw(make)
        shards = [list(RankShard._shard(iter(make()), 3, rank)) for rank in range(3)]
        assert [len(s) for s in shards] == [4, 4, 4]
        interleaved = [s[i] for i in range(4) for s in shards]
        assert interleaved[:10] == single  # the same samples, in the same global order
        assert interleaved[10:] == single[:2]  # padding repeats the start, as DistributedSampler does


HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__")


def test_training_and_validation_steps_read_nothing_back_to_the_host(monkeypatch):
    """On a GPU every read of a tensor's value on the host (item, float, bool, tolist, numpy,
    a copy to the CPU) waits for the device to finish the step so far. The steps keep their
    sums and dev outputs on the device and read them once per epoch (`train/module.py`)."""
    from mmdistill.config.schema import ImageModality, ModelSpec, StageTraining
    from mmdistill.losses.objective import build_objective
    from mmdistill.models.net import MultiModalNet, TaskInfo
    from mmdistill.train.module import StageModule
    from mmdistill.train.teachers import FrozenTeacher

    tasks, mods = [TaskInfo("y", "multiclass", ("a", "b", "c"))], {"image": ImageModality(kind="image", column="i", size=8)}
    net = lambda widths: MultiModalNet(ModelSpec.model_validate(  # noqa: E731
        {"encoders": {"image": {"type": "tiny_cnn", "widths": widths}}, "projection_dim": 8}), mods, tasks)
    torch.manual_seed(0)
    student, teacher = net([4, 8]), FrozenTeacher(net([8, 16]))
    module = StageModule("student", student, build_objective("kd", None, tasks, student, teacher.model),
                         StageTraining(epochs=1), teacher, teacher)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)  # Lightning's, outside the step's own work
    batches = [{"inputs": {"image": torch.randn(4, 3, 8, 8)}, "labels": {"y": torch.tensor([0, 1, 2, 1])},
                "index": torch.arange(4) + 4 * i} for i in range(3)]
    reads: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _f=original, **k: (reads.append(_n), _f(self, *a, **k))[1])
    module.on_train_epoch_start()
    for i, batch in enumerate(batches):
        module.training_step(batch, i)
    module.on_validation_epoch_start()
    for i, batch in enumerate(batches):
        module.validation_step(batch, i)
    assert reads == []
    monkeypatch.undo()
    metrics = module._collector.metrics(tasks)  # once per pass: the host reads what the steps kept
    assert metrics["tasks"]["y"]["n"] == 12 and float(module._dev_loss_sum) > 0


def test_rank_1_with_overwrite_deletes_nothing_and_takes_rank_0s_answer(demo_root, tmp_path, monkeypatch):
    """Under DDP every rank runs the command, --overwrite included. Rank 1 must neither delete
    what rank 0 is writing nor decide for itself whether the run resumes (rank 0 has just made
    the directory, whose marker then matches): it waits for rank 0's answer for this launch."""
    from mmdistill.preflight import load_config
    from mmdistill.run import directory

    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["training"].update(accelerator="cpu", devices=2)
    config = load_config(write_config(tmp_path / "c.yaml", raw))
    for name in ("SLURM_JOB_ID", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(directory, "FOLLOW_TIMEOUT_S", 1.0)
    run = directory.RunDirectory(tmp_path / "run")
    monkeypatch.setenv("MMDISTILL_SESSION", "earlier launch")
    assert run.prepare(config) is False  # rank 0 of an earlier launch: a run is there
    (run / "metrics.csv").write_text("epoch\n1\n")

    monkeypatch.setenv("MMDISTILL_SESSION", "this launch")
    monkeypatch.setattr(directory, "is_writer", lambda: False)
    with pytest.raises(RuntimeError, match="rank 0 did not prepare"):  # rank 1 first: it waits, touching nothing
        run.prepare(config, overwrite=True)
    assert (run / "metrics.csv").is_file()
    monkeypatch.setattr(directory, "is_writer", lambda: True)
    assert run.prepare(config, overwrite=True) is False  # rank 0 replaces the run
    assert not (run / "metrics.csv").exists()
    monkeypatch.setattr(directory, "is_writer", lambda: False)
    assert run.prepare(config, overwrite=True) is False  # rank 1 follows: a fresh run, not a resumed one
    assert (run / directory.MARKER).is_file()


def test_evaluation_features_and_extract_run_under_the_stages_precision(demo_root, tmp_path, monkeypatch):
    """Final dev/test evaluation (and teacher scores), the features of probes and plots, and
    `extract` run as training did: under the stage's autocast (and on its device), not in fp32."""
    from mmdistill.config.smoke import smoke_config
    from mmdistill.data.dataset import load_data
    from mmdistill.data.demo import write_embeddings_demo
    from mmdistill.eval.embeddings import collect_features
    from mmdistill.models.build import build_model
    from mmdistill.models.net import MultiModalNet
    from mmdistill.preflight import load_config
    from mmdistill.run.extract import extract_embeddings
    from mmdistill.train.fit import evaluate_model

    seen: list[torch.dtype | None] = []
    forward = MultiModalNet.forward

    def recording(self, *args, **kwargs):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MultiModalNet, "forward", recording)
    bf16 = ["training.accelerator=cpu", "training.precision=bf16-mixed"]
    config = load_config(write_config(tmp_path / "c.yaml", tiny_config(demo_root, tmp_path / "runs")), bf16)
    data = load_data(config)
    model = build_model(config, "student", data)
    evaluate_model(model, data, "dev", 16, config)
    collect_features(model, data, "dev", 16, config=config)
    write_embeddings_demo(tmp_path / "emb", seed=1, sizes={"train": 9, "dev": 5, "test": 5})
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "feature_kd.yaml"
    extract_embeddings(smoke_config(load_config(recipe, [f"data.root={tmp_path / 'emb'}", f"output_dir={tmp_path}",
                                                         "logging.progress_bar=false", *bf16])))
    assert len(seen) > 4 and set(seen) == {torch.bfloat16}


def test_each_rank_computes_outside_training_on_its_own_gpu(monkeypatch):
    """Teacher caches, final evaluation and extract run on `compute_device`: local rank r on
    the r-th GPU of `training.devices` (or cuda:r), never every rank on cuda:0."""
    from types import SimpleNamespace

    from mmdistill.distributed import compute_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    config = lambda devices, accelerator="gpu": SimpleNamespace(  # noqa: E731
        training=SimpleNamespace(accelerator=accelerator, devices=devices))
    for rank, expected in ((0, ["cuda:0", "cuda:2", "cpu"]), (1, ["cuda:1", "cuda:3", "cpu"])):
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        got = [compute_device(config(4)), compute_device(config("2,3")), compute_device(config(2, "cpu"))]
        assert [str(d) for d in got] == expected, rank
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "1")  # srun numbers the processes of a node
    assert str(compute_device(config(4))) == "cuda:1"


def test_sweep_jobs_under_ddp_share_the_teacher_checkpoint_and_the_baseline_cache(demo_root, tmp_path):
    """What a sweep's variant jobs do on two processes (`srun` under SLURM; here Lightning's gloo
    DDP): load the shared teacher, trained once per seed, and train the baseline once per
    student setup, later variants copying it from `cache/baselines`. Neither run may train the
    teacher again, the second must copy (rank 0 copies, both ranks take its answer) and not
    train the baseline, and the cache must hold one finished entry and no rank's temp files."""
    from mmdistill.preflight import load_config
    from mmdistill.run.experiment import run_experiment

    # the shared teacher, as a sweep's teacher job trains it: one process, teacher stage only
    raw = tiny_config(demo_root, tmp_path / "shared")
    raw["logging"]["plots"] = False
    shared = run_experiment(load_config(write_config(tmp_path / "teacher.yaml", raw), ["training.accelerator=cpu"]),
                            teacher_only=True)
    checkpoint = tmp_path / "shared" / "tiny" / "checkpoints" / "teacher_best.safetensors"
    assert checkpoint.is_file()

    out = tmp_path / "runs"
    done, results, dirs = {}, {}, {}
    for name, preset in (("kd", "kd"), ("kl_bce", "kl_bce")):  # two variants of one seed, one after the other
        raw = tiny_config(demo_root, out)
        raw.update(experiment_name=name, objective={"preset": preset})
        raw["teacher"]["checkpoint"] = str(checkpoint)
        raw["logging"]["plots"] = False
        done[name] = _run(write_config(tmp_path / f"{name}.yaml", raw), *DDP)
        assert done[name].returncode == 0, (name, done[name].stderr[-3000:])
        assert "GLOBAL_RANK: 1" in done[name].stderr and done[name].stdout.count("results: ") == 1, name
        dirs[name] = out / name
        results[name] = json.loads((dirs[name] / "results.json").read_text())
    first, second = results["kd"], results["kl_bce"]

    for name, run_dir in dirs.items():
        rows = metric_rows(run_dir)
        assert not [r for r in rows if r["stage"] == "teacher"], name  # loaded, not trained again
        for stage in ("student", "baseline"):
            assert [int(r["epoch"]) for r in rows if r["stage"] == stage] == [1, 2], (name, stage)
        assert results[name]["teacher_checkpoint"] == str(checkpoint)
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
            "baseline_best.safetensors", "student_best.safetensors"], name

    # the teacher is only evaluated: the first run scores it on both ranks over the whole splits
    # (what the one process that trained it measured), the second reads the first's scores
    for split in ("dev", "test"):
        assert second["teacher"][split] == first["teacher"][split]
        assert first["teacher"][split]["score"] == pytest.approx(shared["teacher"][split]["score"], abs=1e-6)
        for task, metrics in first["teacher"][split]["tasks"].items():
            assert metrics["n"] == TINY_SIZES[split] == shared["teacher"][split]["tasks"][task]["n"]
    assert "reused_from" not in first["teacher"] and second["teacher"]["reused_from"].startswith(
        str(out / "cache" / "teacher_scores"))

    # the baseline: trained by the first run, copied by the second, exactly
    entries = list((out / "cache" / "baselines").iterdir())
    assert len(entries) == 1 and (entries[0] / "result.json").is_file(), entries
    assert "reused_from" not in first["baseline"] and second["baseline"]["reused_from"] == str(entries[0])
    for key in ("dev", "test", "best_epoch"):
        assert second["baseline"][key] == first["baseline"][key], key
    assert metric_rows(dirs["kl_bce"], "baseline") == metric_rows(dirs["kd"], "baseline")
    assert (dirs["kl_bce"] / "checkpoints" / "baseline_best.safetensors").read_bytes() == \
           (dirs["kd"] / "checkpoints" / "baseline_best.safetensors").read_bytes()

    assert not [p for p in out.rglob(".*") if ".tmp" in p.name], "a rank left a temp file or directory"
