"""The SLURM executor: the array job submitit would submit (captured by a fake `sbatch`), and
tiny jobs run through submitit's debug executor, one of them failing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from conftest import tiny_config, write_config
from mmdistill.cli import main
from mmdistill.config.schema import SweepExecutorSpec
from mmdistill.sweep.executors import SlurmExecutor, build_executor
from mmdistill.sweep.jobs import Job

SPEC = {"type": "slurm", "partition": "gpu", "gres": "gpu:1", "time": "02:00:00", "mem": "32G", "cpus_per_task": 8,
        "account": "lab", "setup": ["module purge", "module load cuda/12.2", "source /scratch/venv/bin/activate"],
        "python": "/scratch/venv/bin/python", "array_parallelism": 2}


def _fake_slurm(bin_dir: Path, record: Path) -> None:
    """`srun` (so submitit believes it is on a cluster) and an `sbatch` that keeps the script."""
    bin_dir.mkdir()
    scripts = {"srun": "#!/bin/sh\nexit 0\n",
               "sbatch": f"#!/bin/sh\ncp \"$1\" {record}\necho 'Submitted batch job 4242'\n"}
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_one_array_job_with_the_configured_resources(tmp_path, monkeypatch):
    record = tmp_path / "submitted.sbatch"
    _fake_slurm(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = build_executor(SweepExecutorSpec.model_validate(SPEC), tmp_path / "sweep")
    assert isinstance(executor, SlurmExecutor)
    jobs = [Job("run", f"v seed {s}", str(tmp_path / f"seed_{s}"), {}, "h", variant="v", seed=s) for s in (1, 2, 3)]
    submitted = executor.submit(jobs)
    assert [j.job_id for j in submitted] == ["4242_0", "4242_1", "4242_2"]
    script = record.read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1", "#SBATCH --time=120",
                 "#SBATCH --mem=32G", "#SBATCH --cpus-per-task=8", "#SBATCH --account=lab",
                 "#SBATCH --job-name=mmdistill-sweep", "module load cuda/12.2", "source /scratch/venv/bin/activate",
                 "/scratch/venv/bin/python -u -m submitit.core._submit"):
        assert line in script, line
    assert script.index("module purge") < script.index("srun")  # setup runs before the job
    assert "#SBATCH --signal=USR2@90" in script  # warned before preemption or the time limit
    assert executor.sbatch_script(3) == script  # what --dry-run prints is what gets submitted
    pickles = list((tmp_path / "sweep" / "_submitit" / "4242_0").glob("*_submitted.pkl"))
    assert len(pickles) == 1


def test_a_preempted_job_asks_to_be_requeued_with_the_same_job(tmp_path):
    """submitit calls `checkpoint` when SLURM warns of preemption or the time limit; the job it
    queues again is the same one, which resumes its run directory when it starts."""
    from submitit.helpers import DelayedSubmission

    from mmdistill.sweep.executors import RequeueingJob

    job = Job("run", "v seed 1", str(tmp_path / "seed_1"), {}, "h", variant="v", seed=1)
    again = RequeueingJob().checkpoint(job)
    assert isinstance(again, DelayedSubmission) and isinstance(again.function, RequeueingJob)
    assert again.args == (job,)


def test_a_single_job_is_not_an_array():
    executor = SlurmExecutor(SweepExecutorSpec.model_validate(SPEC), Path("/tmp/x"))
    assert "--array" not in executor.sbatch_script(1) and "--array=0-4%2" in executor.sbatch_script(5)


def test_dry_run_prints_the_sbatch_scripts(demo_root, tmp_path, capsys):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["sweep"] = {"grid": {"objective.preset": ["kd", "kl_bce"]}, "seeds": [1, 2, 3], "executor": SPEC}
    assert main(["sweep", str(write_config(tmp_path / "s.yaml", raw)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sbatch script for the teachers (3 job(s))" in out and "#SBATCH --array=0-2%2" in out
    assert "sbatch script for the runs (6 job(s))" in out and "#SBATCH --array=0-5%2" in out
    assert not (tmp_path / "runs").exists()


def test_debug_executor_runs_the_jobs_and_a_failing_run_does_not_stop_the_others(demo_root, tmp_path, capsys):
    raw = tiny_config(demo_root, tmp_path / "runs")
    for stage in ("teacher", "student"):
        raw["training"][stage]["epochs"] = 1
    raw["logging"]["plots"] = False
    # input_size 1 passes every check, then the student's CNN cannot pool a 1x1 image: a runtime failure
    raw["sweep"] = {"grid": {"student.encoders.image.input_size": [None, 1]}, "seeds": [3], "tsne": False,
                    "executor": SPEC | {"cluster": "debug"}}
    path = write_config(tmp_path / "s.yaml", raw)
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    root = tmp_path / "runs" / "tiny"
    assert "submitit debug executor" in out
    assert out.count("training teacher (queued)") == 1
    assert (root / "input_size-null" / "seed_3" / "results.json").is_file()
    assert not (root / "input_size-1" / "seed_3" / "results.json").exists()
    failures = out.split("FAILED (1):")[1].strip().splitlines()
    assert len(failures) == 1 and failures[0].startswith("input_size-1 seed 3: RuntimeError:")
    assert "Output size is too small" in failures[0]
    assert "Traceback" in (root / "input_size-1" / "seed_3" / "error.log").read_text()
    agg = json.loads((root / "aggregated_results.json").read_text())  # written although a run failed
    assert agg["variants"]["input_size-null"]["seeds"] == [3]
    assert agg["unfinished"][0]["variant"] == "input_size-1" and "Output size" in agg["unfinished"][0]["error"]
    assert (root / "report.html").is_file() and "Runs not finished" in (root / "report.md").read_text()
    assert list((root / "_submitit").iterdir())  # the jobs went through submitit

    # fixing nothing and re-running retries only the failed run, and it fails again the same way
    assert main(["sweep", str(path), "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "1 run(s) already finished (skipped), 1 to run" in out and "training teacher" not in out


def test_runs_on_several_devices_get_one_process_per_device_from_srun(demo_root, tmp_path, capsys):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["training"].update(accelerator="cpu", devices=2, num_nodes=2)
    raw["sweep"] = {"grid": {"objective.preset": ["kd"]}, "seeds": [1],
                    "executor": {**SPEC, "nodes": 2, "tasks_per_node": 2}}
    assert main(["sweep", str(write_config(tmp_path / "s.yaml", raw)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in out and "#SBATCH --ntasks-per-node=2" in out
    # srun starts the 2 x 2 processes, and Lightning's SLURM environment reads their ranks
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in out.splitlines()), out


def test_runs_on_several_devices_are_refused_where_nothing_starts_their_processes(demo_root, tmp_path, capsys):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["training"].update(accelerator="cpu", devices=2)
    for executor, expected in (({"type": "local"}, "needs several processes per run"),
                               ({**SPEC, "tasks_per_node": 4}, "must match sweep.executor.tasks_per_node=4")):
        raw["sweep"] = {"grid": {"objective.preset": ["kd"]}, "seeds": [1], "executor": executor}
        assert main(["sweep", str(write_config(tmp_path / "s.yaml", raw)), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert "training.devices=2" in err and expected in err, err
