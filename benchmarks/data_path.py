"""What the decoded-image cache buys on the data path, measured in one run on the same data.

    .venv/bin/python benchmarks/data_path.py [--train 384] [--source-size 256] [--size 128] [--workers 0]

1. Samples per second iterating the train DataLoader (batch 32, shuffled) from the raw PNG
   files and from the decoded cache, each after a warm-up pass, so both read files the OS
   already has in its page cache: the difference is decoding and resizing, not the disk.
   Also the time to build the cache (one decode of every image of the three splits).
2. A short training loop of the tiny_cnn student on each path, and the share of its step
   time spent waiting for the next batch (`next(loader)`) rather than computing.
3. Peak RSS of a process reading a cache of N and of 10 N samples (fresh child processes, each
   reporting its own peak, VmHWM; see `peak_rss_mib`), which should be equal: rows are read by offset, not mapped
   (cache/store.py), so a larger cache costs disk and page cache, not process memory.

Ends with `samples_per_s_raw=`, `samples_per_s_cache=`, `speedup=`, `wait_share_raw=`,
`wait_share_cache=`, `peak_rss_mib=` (and `rss_ratio_10x=`) lines. The images are the demo
images upscaled to `--source-size` with pixel noise, so PNG decoding costs what a photo's would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle, load_data
from mmdistill.data.demo import write_demo
from mmdistill.cache.images import attach_image_caches
from mmdistill.models.build import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss import peak_rss_mib  # noqa: E402

BATCH = 32


def make_data(root: Path, train: int, source_size: int, seed: int = 0) -> None:
    """The demo data set with its 32 px images replaced by `source_size` px ones (bilinear
    upscale plus noise, which PNG cannot compress away)."""
    if (root / "train.csv").exists():
        return
    write_demo(root, seed=seed, sizes={"train": train, "dev": 32, "test": 32})
    rng = np.random.default_rng(seed)
    for path in sorted((root / "images").glob("*.png")):
        with Image.open(path) as img:
            big = np.asarray(img.convert("RGB").resize((source_size, source_size), Image.BILINEAR), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 6, size=big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path)


def make_config(root: Path, out: Path, size: int, workers: int) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment_name": "bench_data_path", "seed": 0, "output_dir": str(out),
        "data": {"source": "table", "root": str(root), "num_workers": workers,
                 "files": {"train": "train.csv", "dev": "dev.csv", "test": "test.csv"},
                 "modalities": {"image": {"kind": "image", "column": "image", "channels": 3, "size": size}}},
        "tasks": {"finding": {"type": "multiclass"}, "urgent": {"type": "binary"}},
        "teacher": {"encoders": {"image": {"type": "tiny_cnn"}}, "projection_dim": 64},
        "student": {"encoders": {"image": {"type": "tiny_cnn"}}, "projection_dim": 64},
        "cache": {"dir": str(out / "cache")},
        "logging": {"progress_bar": False, "plots": False},
    })


def loader(data: DataBundle, workers: int):
    return data.loader("train", batch_size=BATCH, shuffle=True, seed=0, num_workers=workers)


def samples_per_second(data: DataBundle, workers: int) -> float:
    """One warm-up pass (page cache, worker start-up), then one timed pass."""
    for _ in loader(data, workers):
        pass
    start, n = time.perf_counter(), 0
    for batch in loader(data, workers):
        n += len(batch["index"])
    return n / (time.perf_counter() - start)


def wait_share(config: ExperimentConfig, data: DataBundle, workers: int, steps: int) -> dict[str, float]:
    """Train the student for `steps` steps (after one untimed step); the share of step time
    spent in `next(loader)`."""
    L.seed_everything(0, verbose=False)
    model = build_model(config, "student", data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = iter(loader(data, workers))
    waited = total = 0.0
    for step in range(steps + 1):
        start = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader(data, workers))
            batch = next(batches)
        got = time.perf_counter()
        out = model(batch["inputs"])
        loss = sum(F.binary_cross_entropy_with_logits(logits, batch["labels"][task]) if logits.dim() == 1
                   else F.cross_entropy(logits, batch["labels"][task]) for task, logits in out.logits.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for worker start-up and allocator warm-up
            waited += got - start
            total += time.perf_counter() - start
    return {"wait_share": waited / total, "step_s": total / steps}


def rss_child(args: argparse.Namespace) -> None:
    """In a fresh process: build the cache (`--build-only`), or read every sample of the train
    split through the cache twice and print this process's peak RSS."""
    work = Path(args.rss_child)
    config = make_config(work / "data", work, args.size, 0)
    data = load_data(config)
    attach_image_caches(data, config)
    if args.build_only:
        return
    baseline = peak_rss_mib()
    for _ in range(2):
        for _batch in loader(data, 0):
            pass
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "before_reading_mib": baseline,
                      "cache_mib": len(data.datasets["train"]) * 3 * args.size ** 2 / 2 ** 20}))


def rss_for(n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"rss_{n}"
    make_data(out / "data", n, 32, seed=1)
    cmd = [sys.executable, __file__, "--rss-child", str(out), "--size", str(args.size)]
    subprocess.run(cmd + ["--build-only"], check=True)
    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench_data_path")
    parser.add_argument("--train", type=int, default=384, help="train samples")
    parser.add_argument("--source-size", type=int, default=256, help="pixel size of the image files")
    parser.add_argument("--size", type=int, default=128, help="size the modality reads them at")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (loader and cache build)")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per path")
    parser.add_argument("--rss-samples", type=int, default=200, help="N for the N vs 10 N peak-RSS comparison")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args)

    work = Path(args.work)
    make_data(work / "data", args.train, args.source_size)
    config = make_config(work / "data", work, args.size, args.workers)
    shutil.rmtree(config.cache_dir, ignore_errors=True)  # the build is timed
    print(f"{args.train} train images of {args.source_size} px read at {args.size} px, batch {BATCH}, "
          f"{args.workers} loader workers, {torch.get_num_threads()} torch threads", flush=True)

    raw = load_data(config)
    cached = load_data(config)
    start = time.perf_counter()
    attach_image_caches(cached, config)
    build = time.perf_counter() - start
    print(f"cache build (train + dev + test, {sum(len(d) for d in cached.datasets.values())} images): {build:.2f} s",
          flush=True)

    rate = {"raw": samples_per_second(raw, args.workers), "cache": samples_per_second(cached, args.workers)}
    print(f"loader: {rate['raw']:.0f} samples/s from raw files, {rate['cache']:.0f} samples/s from the cache "
          f"({rate['cache'] / rate['raw']:.1f}x)", flush=True)

    train = {"raw": wait_share(config, raw, args.workers, args.steps),
             "cache": wait_share(config, cached, args.workers, args.steps)}
    for path, r in train.items():
        print(f"training tiny_cnn from {path:>5}: {r['step_s'] * 1000:.0f} ms/step, "
              f"{100 * r['wait_share']:.1f}% of it waiting for data", flush=True)

    small = rss_for(args.rss_samples, args, work)
    large = rss_for(10 * args.rss_samples, args, work)
    print(f"peak RSS reading every cached sample twice: {small['peak_rss_mib']:.0f} MiB with {args.rss_samples} "
          f"samples ({small['cache_mib']:.0f} MiB cache), {large['peak_rss_mib']:.0f} MiB with "
          f"{10 * args.rss_samples} ({large['cache_mib']:.0f} MiB cache), "
          f"{small['before_reading_mib']:.0f} / {large['before_reading_mib']:.0f} MiB before reading: "
          f"{large['peak_rss_mib'] / small['peak_rss_mib']:.3f}x")
    print(f"samples_per_s_raw={rate['raw']:.1f}")
    print(f"samples_per_s_cache={rate['cache']:.1f}")
    print(f"speedup={rate['cache'] / rate['raw']:.3f}")
    print(f"cache_build_s={build:.3f}")
    print(f"wait_share_raw={train['raw']['wait_share']:.4f}")
    print(f"wait_share_cache={train['cache']['wait_share']:.4f}")
    print(f"rss_ratio_10x={large['peak_rss_mib'] / small['peak_rss_mib']:.4f}")
    print(f"peak_rss_mib={peak_rss_mib():.0f}")


if __name__ == "__main__":
    main()
