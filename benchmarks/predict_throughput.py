"""How fast `mmdistill predict` applies a student to a folder of images, measured in one run.

    .venv/bin/python benchmarks/predict_throughput.py [--run runs/demo] [--images 2000] [--workers 2]

For the run's fp32 student (PyTorch) and its default int8 model (`--model best`, onnxruntime;
`mmdistill compress RUN` first), predicts the same list of images (the demo's test images,
repeated to `--images`) the way `mmdistill predict` does: batched, decoded in `--workers`
processes. Reports images per second, and the share of the time the prediction loop waited
for decoded batches rather than running the model. The two models take turns over `--rounds`
rounds and the median is reported (this shared VM's speed drifts).

Ends with `images_per_s_fp32=`, `images_per_s_int8=`, `decode_share_fp32=` and
`decode_share_int8=` lines.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import mmdistill
from mmdistill.predict.inputs import read_input
from mmdistill.predict.preprocess import Prepared, collate


def measure(model, items, batch_size: int, workers: int) -> tuple[float, float]:
    """(images per second, share of the time spent waiting for decoded batches)."""
    loader = DataLoader(Prepared(items, model.card), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    waiting = running = 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        t1 = time.perf_counter()
        if batch is None:
            break
        model.logits(batch["inputs"])
        waiting, running = waiting + t1 - t0, running + time.perf_counter() - t1
    total = time.perf_counter() - start
    return len(items) / total, waiting / (waiting + running)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo", help="a run directory whose student was compressed")
    parser.add_argument("--data", default="data/demo", help="the demo data (its test images are the inputs)")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch / onnxruntime intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models = {"fp32": mmdistill.load(args.run, "fp32"), "int8": mmdistill.load(args.run, "best")}
    items, _ = read_input(Path(args.data) / "images", models["fp32"].card)
    items = [items[i % len(items)] for i in range(args.images)]
    print(f"{args.images} images ({len(set(i.id for i in items))} distinct) from {args.data}/images, "
          f"batch {args.batch_size}, {args.workers} decoding worker(s), {args.threads} model thread(s); "
          f"int8 = {models['int8'].name}", flush=True)
    speed: dict[str, list[float]] = {name: [] for name in models}
    share: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in (list(models.items()) if r % 2 == 0 else list(models.items())[::-1]):
            per_s, waited = measure(model, items, args.batch_size, args.workers)
            speed[name].append(per_s)
            share[name].append(waited)
            print(f"round {r + 1} {name}: {per_s:.0f} images/s, {waited:.0%} of the time waiting for decoding",
                  flush=True)
    for name in models:
        print(f"images_per_s_{name}={statistics.median(speed[name]):.1f}")
    for name in models:
        print(f"decode_share_{name}={statistics.median(share[name]):.3f}")


if __name__ == "__main__":
    main()
