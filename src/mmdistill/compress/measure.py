"""Measuring a model: test score, parameters, file size, latency and throughput on CPU.

Timing is the median of `repeats` runs after `warmup` untimed ones, with the intra-op thread
count fixed (torch.set_num_threads for PyTorch, SessionOptions for onnxruntime): the median
resists the occasional slow run a shared machine produces, the warm-up keeps one-off costs
(allocations, kernel selection, lazy weight packing) out of the number.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from mmdistill.compress.tensor_model import flat_logits, plain_batches, split_logits, tensors_of
from mmdistill.eval.metrics import evaluate, predictions
from mmdistill.data.labels import TaskInfo

# A predictor maps a batch's `inputs` dict to flat logits [B, total task outputs] (float32, CPU).
Predictor = Callable[[dict[str, Any]], torch.Tensor]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def nondeterministic() -> Iterator[None]:
    """Inference outside `torch.use_deterministic_algorithms(True)`, which a deterministic
    Lightning run leaves switched on: quantized kernels have no deterministic variant (their
    results are deterministic on CPU all the same)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a float model."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def file_bytes(path: str | Path) -> int:
    return Path(path).stat().st_size


def timing_batch(data, size: int) -> dict[str, Any]:
    """The first `size` test samples as one batch (real inputs, not noise); a test split
    smaller than `size` is repeated up to it."""
    batch = next(iter(plain_batches(data, "test", size)))["inputs"]
    n = len(next(iter(batch.values())))
    if n < size:
        reps = -(-size // n)
        batch = {k: v.repeat(reps, *[1] * (v.ndim - 1))[:size] if torch.is_tensor(v) else (list(v) * reps)[:size]
                 for k, v in batch.items()}
    return batch


def speed(predictors: dict[str, Predictor], data, threads: int, warmup: int, repeats: int,
          rounds: int = 5) -> dict[str, dict[str, float]]:
    """latency_ms_batch1 and throughput_batch32 (samples/s) of every predictor.

    The models take turns (`rounds` rounds, each timing every model in a row), so a burst of
    load from elsewhere on a shared machine spreads over all of them instead of landing on one.
    """
    one, many = timing_batch(data, 1), timing_batch(data, 32)
    rounds = max(1, min(rounds, repeats))
    times: dict[str, dict[int, list[float]]] = {name: {1: [], 32: []} for name in predictors}
    with torch_threads(threads), torch.inference_mode(), nondeterministic():
        for predict in predictors.values():
            for _ in range(warmup):
                predict(one)
            for _ in range(max(1, warmup // 4)):
                predict(many)
        for r in range(rounds):
            for name, predict in predictors.items():
                for size, batch, count in ((1, one, repeats), (32, many, max(3, repeats // 4))):
                    share = count // rounds + (1 if r < count % rounds else 0)
                    times[name][size] += [_timed(predict, batch) for _ in range(share)]
    return {name: {"latency_ms_batch1": round(statistics.median(t[1]) * 1000, 4),
                   "throughput_batch32": round(32 / statistics.median(t[32]), 1)} for name, t in times.items()}


def _timed(predict: Predictor, batch: dict[str, Any]) -> float:
    start = time.perf_counter()
    predict(batch)
    return time.perf_counter() - start


def predict_split(predict: Predictor, data, split: str = "test", batch_size: int = 64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(flat logits of every sample, labels per task), in file order."""
    logits, labels = [], {}
    with torch.inference_mode(), nondeterministic():
        for batch in plain_batches(data, split, batch_size):
            logits.append(predict(batch["inputs"]).float().cpu())
            for task, value in batch["labels"].items():
                labels.setdefault(task, []).append(value)
    return torch.cat(logits), {t: torch.cat(v) for t, v in labels.items()}


def score(tasks: list[TaskInfo], flat: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The run's metric (`score`: eval/metrics.SCORE_MEANING) via mmdistill.eval.metrics.evaluate."""
    return evaluate(tasks, split_logits(tasks, flat), labels)


def agreement(tasks: list[TaskInfo], flat: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of (sample, task) predictions equal to the reference model's."""
    a, b = split_logits(tasks, flat), split_logits(tasks, reference)
    same = [np.mean(predictions(t, a[t.name]) == predictions(t, b[t.name])) for t in tasks]
    return float(np.mean(same))


def torch_predictor(module: nn.Module, names: list[str]) -> Predictor:
    """A TensorStudent (float or quantized) as a predictor."""
    module.eval()
    return lambda inputs: module(*tensors_of(inputs, names))


def net_predictor(model: nn.Module, tasks: list[TaskInfo]) -> Predictor:
    """A MultiModalNet on its own dict inputs (students with text, which do not export)."""
    model.eval()
    return lambda inputs: flat_logits(tasks, model(inputs).logits)
