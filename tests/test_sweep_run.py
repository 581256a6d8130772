"""`mmdistill sweep` end to end on tiny configs: layout, one teacher per seed shared by every
variant, resume after deletion / stale hash / interruption, the report, parallel workers."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

import torch
import yaml

from conftest import tiny_config, write_config
from mmdistill.cli import main
from mmdistill.config.schema import ExperimentConfig
from mmdistill.config.hashing import config_hash
from mmdistill.sweep.executors import seeds_apart
from mmdistill.sweep.jobs import Job
from mmdistill.sweep.plan import make_plan
from mmdistill.sweep.runner import run_sweep

PNG = b"\x89PNG\r\n\x1a\n"
SEEDS = (1, 2)
VARIANTS = ("preset-kd", "preset-kl_bce")


def sweep_config(demo_root, out: Path, sweep: dict, name: str = "tiny", trackers: tuple[str, ...] = ()) -> Path:
    raw = tiny_config(demo_root, out / "runs")
    raw["logging"]["trackers"] = ["csv", *trackers]
    raw["experiment_name"] = name
    for stage in ("teacher", "student"):
        raw["training"][stage]["epochs"] = 1
    raw["logging"]["plots"] = False  # per-run PNGs: slow, and the report draws from metrics.csv and confusion/*.npy
    raw["sweep"] = sweep
    return write_config(out / f"{name}.yaml", raw)


@pytest.fixture(scope="module")
def sweep(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    path = sweep_config(demo_root, out, {"grid": {"objective.preset": ["kd", "kl_bce"]}, "seeds": list(SEEDS)},
                        trackers=("mlflow",))
    log: list[str] = []
    code = run_sweep(path, echo=log.append)
    return {"path": path, "dir": out / "runs" / "tiny", "log": log, "code": code}


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_every_run_lands_in_variant_seed_dirs(sweep):
    assert sweep["code"] == 0, "\n".join(sweep["log"])
    root = sweep["dir"]
    for variant in VARIANTS:
        for seed in SEEDS:
            run_dir = root / variant / f"seed_{seed}"
            results = _results(run_dir)
            assert results["seed"] == seed and {"teacher", "student", "baseline", "config_hash"} <= set(results)
            for name in ("config.yaml", "metrics.csv", "checkpoints/student_best.safetensors", "confusion"):
                assert (run_dir / name).exists(), run_dir / name
    for name in ("sweep.json", "sweep.log", "aggregated_results.json", "best_config.yaml", "report.md", "report.html"):
        assert (root / name).is_file(), name
    # the hash a run stores is the hash of the config it wrote (what resuming compares)
    run_dir = root / VARIANTS[0] / "seed_1"
    config = ExperimentConfig.model_validate(yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert _results(run_dir)["config_hash"] == config_hash(config)


def test_mlflow_files_every_run_under_the_sweep_tagged_with_variant_and_seed(sweep):
    import mlflow

    mlflow.set_tracking_uri((sweep["dir"].parent / "mlruns").as_uri())
    found = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    [parent] = [r for r in found if r.data.tags.get("kind") == "sweep"]
    assert parent.info.status == "FINISHED"
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    runs = {(r.data.tags["variant"], r.data.tags["seed"]) for r in children}
    assert runs == {(v, str(s)) for v in (*VARIANTS, "shared teacher") for s in SEEDS}
    aggregated = json.loads((sweep["dir"] / "aggregated_results.json").read_text())
    for variant in VARIANTS:
        expected = aggregated["variants"][variant]["metrics"]["student.test.score"]["mean"]
        assert parent.data.metrics[f"{variant}/student.test.score/mean"] == pytest.approx(expected, rel=1e-9)
    kd = next(r for r in children if r.data.tags["variant"] == "preset-kd" and r.data.tags["seed"] == str(SEEDS[0]))
    assert kd.data.params["objective.preset"] == "kd"
    assert kd.data.metrics["student/test/score"] == pytest.approx(
        _results(sweep["dir"] / "preset-kd" / f"seed_{SEEDS[0]}")["student"]["test"]["score"], rel=1e-9)


def test_the_teacher_is_trained_once_per_seed_and_shared(sweep):
    root, log = sweep["dir"], sweep["log"]
    trained = [line for line in log if "training teacher" in line]
    assert len(trained) == len(SEEDS)
    assert [f"seed {s}:" in line for s in SEEDS for line in trained].count(True) == len(SEEDS)
    teacher_dirs = sorted((root / "_teachers").glob("*/seed_*"))
    assert len(teacher_dirs) == len(SEEDS)
    for tdir in teacher_dirs:
        results = _results(tdir)
        assert "student" not in results and "baseline" not in results and "teacher" in results
        assert (tdir / "checkpoints" / "teacher_best.safetensors").is_file()
    for seed in SEEDS:
        runs = [_results(root / v / f"seed_{seed}") for v in VARIANTS]
        checkpoint = runs[0]["teacher_checkpoint"]
        assert checkpoint.endswith(f"seed_{seed}/checkpoints/teacher_best.safetensors")
        assert all(r["teacher_checkpoint"] == checkpoint for r in runs)
        assert runs[0]["teacher"]["test"] == runs[1]["teacher"]["test"]  # the same teacher, evaluated in each run
        metrics = (root / VARIANTS[1] / f"seed_{seed}" / "metrics.csv").read_text()
        assert "\nteacher," not in metrics and "\nstudent," in metrics  # loaded, not trained again


def test_aggregation_and_best_config(sweep):
    from mmdistill.preflight import load_config

    agg = json.loads((sweep["dir"] / "aggregated_results.json").read_text())
    assert list(agg["variants"]) == list(VARIANTS)
    for variant in VARIANTS:
        stat = agg["variants"][variant]["metrics"]["student.test.score"]
        assert stat["n"] == 2 and stat["std"] is not None and len(stat["ci95"]) == 2
        assert "test.score" in agg["variants"][variant]["kd_gain"]
    assert "preset-kd vs preset-kl_bce" in agg["comparisons"]
    assert agg["best"]["variant"] in VARIANTS and agg["unfinished"] == []
    config = load_config(sweep["dir"] / "best_config.yaml")
    assert config.objective.preset == agg["best"]["variant"].removeprefix("preset-") and config.sweep is None


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def _pngs_in(html_path: Path) -> list[bytes]:
    parser = _Images()
    parser.feed(html_path.read_text())
    images = []
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data.startswith(PNG) and len(data) > 1000
        images.append(data)
    return images


def test_report_html_is_self_contained_with_every_figure(sweep):
    html = (sweep["dir"] / "report.html").read_text()
    assert len(_pngs_in(sweep["dir"] / "report.html")) == 4  # scores, curves, confusion matrices, t-SNE
    for alt in ("Test score per variant", "Training curves", "confusion matrices", "t-SNE"):
        assert alt in html
    assert "src='report_files" not in html and "http" not in html.split("<body>")[1]
    md = (sweep["dir"] / "report.md").read_text()
    assert "| variant | n | teacher score | KD student score | baseline score |" in md
    for figure in ("scores", "curves", "confusion", "tsne"):
        assert f"(report_files/{figure}.png)" in md and (sweep["dir"] / "report_files" / f"{figure}.png").is_file()


def test_report_command_on_a_sweep_and_on_one_run(sweep, capsys):
    root = sweep["dir"]
    (root / "report.html").unlink()
    assert main(["report", str(root), "--no-tsne"]) == 0
    assert len(_pngs_in(root / "report.html")) == 3
    run_dir = root / VARIANTS[0] / "seed_1"
    assert main(["report", str(run_dir)]) == 0
    assert len(_pngs_in(run_dir / "report.html")) == 3  # curves (with the shared teacher's), confusion, t-SNE
    assert "| KD student |" in (run_dir / "report.md").read_text()
    assert main(["report", str(root / "report_files")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


def test_rerun_runs_only_what_is_missing_or_stale(sweep):
    root = sweep["dir"]
    (root / "preset-kd" / "seed_1" / "results.json").unlink()                # killed before it finished
    stale = root / "preset-kl_bce" / "seed_2" / "results.json"                  # from an older config
    stale.write_text(stale.read_text().replace('"config_hash": "', '"config_hash": "old'))
    untouched = root / "preset-kl_bce" / "seed_1" / "results.json"
    before = untouched.stat().st_mtime_ns
    log: list[str] = []
    assert run_sweep(sweep["path"], echo=log.append, report=False) == 0
    assert "2 run(s) already finished (skipped), 2 to run; 2 shared teacher(s), 0 to train" in log
    ran = [line for line in log if ": running ->" in line]
    assert len(ran) == 2 and "preset-kd seed 1" in ran[0] and "preset-kl_bce seed 2" in ran[1]
    assert not any("training teacher" in line for line in log)
    assert untouched.stat().st_mtime_ns == before
    log.clear()
    assert run_sweep(sweep["path"], echo=log.append, report=False) == 0
    assert "4 run(s) already finished (skipped), 0 to run; 2 shared teacher(s), 0 to train" in log


def test_changed_data_reruns_the_runs_and_teachers_that_read_it(demo_root, tmp_path):
    """The config is unchanged, so only the data signature can tell the finished runs are stale."""
    import csv
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    path = sweep_config(root, tmp_path, {"seeds": [1], "tsne": False})
    assert run_sweep(path, echo=lambda line: None, report=False) == 0
    run_dir = tmp_path / "runs" / "tiny" / "default" / "seed_1"
    first = _results(run_dir)["data_signature"]

    log: list[str] = []
    assert run_sweep(path, echo=log.append, report=False) == 0
    assert "1 run(s) already finished (skipped), 0 to run; 1 shared teacher(s), 0 to train" in log

    rows = list(csv.DictReader(open(root / "dev.csv")))  # one dev label corrected
    rows[0]["urgent"] = "1" if rows[0]["urgent"] == "0" else "0"
    with open(root / "dev.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.clear()
    assert run_sweep(path, echo=log.append, report=False) == 0
    assert "0 run(s) already finished (skipped), 1 to run; 1 shared teacher(s), 1 to train" in log
    assert _results(run_dir)["data_signature"] != first


def test_an_interrupted_sweep_resumes_where_it_stopped(demo_root, tmp_path, monkeypatch):
    import mmdistill.sweep.executors as executors

    path = sweep_config(demo_root, tmp_path, {"seeds": [1, 2], "tsne": False})
    real = executors.execute_job

    def killed_at_seed_2(job):
        if job.kind == "run" and job.seed == 2:
            Path(job.run_dir).mkdir(parents=True)
            (Path(job.run_dir) / "config.yaml").write_text("experiment_name: tiny\n")  # a half-done run
            (Path(job.run_dir) / "metrics.csv").write_text("stage,epoch\nstudent,1\n")
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(executors, "execute_job", killed_at_seed_2)
    log: list[str] = []
    assert run_sweep(path, echo=log.append) == 130
    assert any("interrupted" in line for line in log)
    root = tmp_path / "runs" / "tiny"
    assert (root / "default" / "seed_1" / "results.json").is_file()
    assert not (root / "default" / "seed_2" / "results.json").exists()
    monkeypatch.setattr(executors, "execute_job", real)
    log.clear()
    assert run_sweep(path, echo=log.append) == 0
    assert [line for line in log if ": running ->" in line] == [
        f"[1/1] default seed 2: running -> {root / 'default' / 'seed_2'}"]
    assert not any("training teacher" in line for line in log)
    assert _results(root / "default" / "seed_2")["seed"] == 2


def test_parallel_workers_start_runs_of_different_seeds_together():
    """A pool runs neighbours at once; two runs of one seed would reach their shared baseline together."""
    jobs = [Job("run", f"v{v} seed {s}", f"d/v{v}/{s}", {}, "h", variant=f"v{v}", seed=s)
            for s in (1, 2, 3) for v in (1, 2)]
    order = seeds_apart(jobs)
    assert [j.label for j in order] == ["v1 seed 1", "v1 seed 2", "v1 seed 3", "v2 seed 1", "v2 seed 2", "v2 seed 3"]
    assert all(a.seed != b.seed for a, b in zip(order, order[1:]))
    assert seeds_apart(order[:1]) == order[:1] and seeds_apart([]) == []


def test_parallel_workers(demo_root, tmp_path):
    """Two spawned worker processes; no shared teacher, so one phase."""
    path = sweep_config(demo_root, tmp_path, {"seeds": [1, 2], "share_teacher": False, "tsne": False,
                                              "executor": {"workers": 2}}, name="par")
    log: list[str] = []
    assert run_sweep(path, echo=log.append) == 0, "\n".join(log)
    assert "local, 2 worker processes" in log[0]
    root = tmp_path / "runs" / "par"
    for seed in (1, 2):
        results = _results(root / "default" / f"seed_{seed}")
        assert "teacher_checkpoint" not in results  # trained its own teacher
        config = (root / "default" / f"seed_{seed}" / "config.yaml").read_text()
        assert "progress_bar: false" in config
    assert not (root / "_teachers").exists()


def test_a_failed_teacher_fails_only_the_runs_that_need_it(demo_root, tmp_path):
    # a teacher-side grid key: two teachers; the 1x1 one cannot be pooled and fails at runtime
    path = sweep_config(demo_root, tmp_path, {"grid": {"teacher.encoders.image.input_size": [None, 1]}, "seeds": [1]})
    log: list[str] = []
    assert run_sweep(path, echo=log.append, report=False) == 1
    assert len([line for line in log if "training teacher" in line]) == 2
    root = tmp_path / "runs" / "tiny"
    assert (root / "input_size-null" / "seed_1" / "results.json").is_file()
    assert not (root / "input_size-1" / "seed_1").exists()
    failed = log[log.index("FAILED (2):") + 1:]
    assert failed[0].startswith("  teacher ") and "RuntimeError" in failed[0]
    assert failed[1].startswith("  input_size-1 seed 1: not run: its shared teacher failed (teacher ")


def test_a_shared_teacher_is_the_teacher_a_standalone_run_trains(demo_root, tmp_path):
    """The shared-teacher job is planned from the first variant; a run of another variant (a
    student of another size, built before the teacher trains) trains the very same teacher."""
    from safetensors.torch import load_file

    from mmdistill.preflight import load_config
    from mmdistill.run.experiment import run_experiment

    path = sweep_config(demo_root, tmp_path, {"grid": {"student.projection_dim": [8, 12]}, "seeds": [1]})
    assert run_sweep(path, echo=lambda line: None, report=False) == 0
    shared = next((tmp_path / "runs" / "tiny" / "_teachers").glob("*/seed_1/checkpoints/teacher_best.safetensors"))
    alone = load_config(path, ["student.projection_dim=12", "seed=1", f"output_dir={tmp_path / 'alone'}",
                               "training.baseline=false"])
    run_experiment(alone)
    standalone = load_file(str(tmp_path / "alone" / "tiny" / "checkpoints" / "teacher_best.safetensors"))
    shared_weights = load_file(str(shared))
    assert shared_weights.keys() == standalone.keys()
    assert all(torch.equal(shared_weights[k], standalone[k]) for k in standalone)


def test_a_teacher_trained_again_at_the_same_path_makes_its_runs_stale(sweep):
    """Reuse is keyed by the teacher checkpoint's content, not its path."""
    root = sweep["dir"]
    run = _results(root / VARIANTS[0] / f"seed_{SEEDS[0]}")
    checkpoint = Path(yaml.safe_load((root / VARIANTS[0] / f"seed_{SEEDS[0]}" / "config.yaml").read_text())
                      ["teacher"]["checkpoint"])
    plan = make_plan(sweep["path"], check_runtime=False)
    job = next(j for j in plan.runs if j.run_dir == str(root / VARIANTS[0] / f"seed_{SEEDS[0]}"))
    assert job.is_finished() and run["identity"]["teacher_checkpoint"]
    original = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(original[:-4] + b"\x00\x00\x00\x01")  # the same path, other weights
        assert not job.is_finished()
    finally:
        checkpoint.write_bytes(original)
    assert job.is_finished()


def test_a_preempted_sweep_job_resumes_its_run_and_keeps_its_checkpoints(demo_root, tmp_path):
    """A job run again (requeued after preemption or its time limit) finds its own run: the
    finished stages are read back and the periodic checkpoints are kept, not deleted by an
    overwrite (a job of another config in that directory is still replaced)."""
    from mmdistill.sweep.jobs import Job, execute_job

    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["logging"]["plots"] = False
    for stage in ("teacher", "student"):
        raw["training"][stage]["epochs"] = 1
    tree = ExperimentConfig.model_validate(raw).model_dump(mode="json")
    run_dir = tmp_path / "runs" / "tiny" / "default" / "seed_7"
    job = Job("run", "default seed 7", str(run_dir), tree, "h", variant="default", seed=7)
    assert execute_job(job).ok
    for name in ("results.json", "stages/baseline.json"):  # preempted while training the baseline
        (run_dir / name).unlink()
    kept = run_dir / "checkpoints" / "student_epochs" / "epoch001.ckpt"
    kept.parent.mkdir()
    kept.write_bytes(b"a periodic checkpoint")
    teacher = (run_dir / "checkpoints" / "teacher_best.safetensors").stat().st_mtime_ns
    assert execute_job(job).ok
    assert kept.read_bytes() == b"a periodic checkpoint"
    assert (run_dir / "checkpoints" / "teacher_best.safetensors").stat().st_mtime_ns == teacher  # not retrained
    assert (run_dir / "results.json").is_file()
