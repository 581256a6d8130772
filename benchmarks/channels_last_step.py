"""Does `training.channels_last` speed a recipe's student up on this CPU? Interleaved, same batches.

EfficientNet's depthwise convolutions run much faster on x86 CPUs (oneDNN) in channels-last
memory format than in PyTorch's default NCHW; on GPUs the gain is known under mixed precision
only. This script builds a recipe's student twice from the same seed, one copy in each format,
training the layer groups the recipe trains (`training.student.unfreeze_layers`), and runs the
identical 6 batches as plain training steps (task loss, AdamW), alternating the two formats
three times, so the machine's drift over minutes falls on both arms alike. It prints each
round's seconds, the ratio, and the largest difference between the two copies' logits on the
first batch (channels-last changes the order of float sums, nothing else).

    .venv/bin/python benchmarks/channels_last_step.py --recipe recipes/medpix_cpu.yaml --threads 1
    .venv/bin/python benchmarks/channels_last_step.py --recipe recipes/medpix_cpu_image.yaml --threads 1

`--threads 1` is how a two-worker sweep runs each job on two cores.
"""
import argparse
import time
from types import SimpleNamespace

import torch

from mmdistill.cache.images import load_run_data
from mmdistill.losses.objective import build_objective
from mmdistill.losses.terms import LossBatch
from mmdistill.models.build import build_model
from mmdistill.preflight import load_config
from mmdistill.train.module import channels_last_inputs
from mmdistill.train.warmup import BackboneWarmup

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--recipe", required=True, help="a config whose student to time")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value (repeatable)")
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
parser.add_argument("--steps", type=int, default=6, help="batches per round")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
cfg = load_config(args.recipe, args.set)
data = load_run_data(cfg)
arms = {}
for name, channels_last in (("nchw", False), ("channels_last", True)):
    torch.manual_seed(0)
    model = build_model(cfg, "student", data)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # the layer groups a run trains after its warm-up, set by the run's own callback (one device)
    BackboneWarmup(0, cfg.training.student.unfreeze_layers).on_train_epoch_start(
        SimpleNamespace(current_epoch=0, world_size=1), SimpleNamespace(model=model))
    arms[name] = (model, channels_last, build_objective("task_only", None, data.tasks, model, None),
                  torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4))
batches = list(data.loader("train", 32, shuffle=True, seed=0, modalities=set(arms["nchw"][0].modalities)))[:args.steps]


def as_format(batch, channels_last):
    return {**batch, "inputs": channels_last_inputs(batch["inputs"])} if channels_last else batch


with torch.no_grad():
    first, second = (arms[n][0].eval()(as_format(batches[0], arms[n][1])["inputs"]).logits for n in arms)
    diff = max((first[k] - second[k]).abs().max().item() for k in first)
for model, *_ in arms.values():
    model.train()
seconds = {name: [] for name in arms}
for rnd in range(3):
    for name, (model, channels_last, objective, opt) in arms.items():
        start = time.perf_counter()
        for b in batches:
            b = as_format(b, channels_last)
            loss, _ = objective(model(b["inputs"]), None, LossBatch(b["labels"], b["index"], 0.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
        seconds[name].append(time.perf_counter() - start)
        print(f"round {rnd + 1} {name}: {seconds[name][-1]:.2f}s for {len(batches)} steps", flush=True)
ratio = sum(seconds["nchw"]) / sum(seconds["channels_last"])
print(f"NCHW / channels-last time: {ratio:.2f}x (torch threads {torch.get_num_threads()}); "
      f"largest logit difference at init: {diff}")
