"""`mmdistill predict SOURCE INPUT`: apply a model to every item of INPUT and write one row per
item: its id, per task the predicted class and a probability column per class (a binary task:
the positive class's probability), and `error` for the items that could not be read.

Bad items do not stop the others: each is reported in its row and counted in a closing warning
(`--strict`: the first one stops the command, exit 2, naming it). When INPUT carries the
tasks' label columns, the same metrics `mmdistill run` reports are printed for the rows
predicted, so predicting a run's own test split reproduces its results.json test scores.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmdistill.errors import UserError
from mmdistill.io import atomic_path, write_text_atomic
from mmdistill.models.card import ModelCard
from mmdistill.predict.inputs import Item, read_input
from mmdistill.predict.model import DeployedModel, load
from mmdistill.predict.preprocess import Prepared, collate

def warn(message: str) -> None:
    """A closing warning, on stderr whatever the output goes to."""
    print(f"warning: {message}", file=sys.stderr)


def default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def predict_items(model: DeployedModel, items: list[Item], batch_size: int = 64, workers: int | None = None,
                  strict: bool = False, progress: bool = True) -> tuple[np.ndarray, list[str | None]]:
    """(flat logits [N, outputs] with NaN rows for the items that failed, error per item)."""
    width = sum(t.width for t in model.card.tasks)
    logits = np.full((len(items), width), np.nan, dtype=np.float32)
    errors: list[str | None] = [None] * len(items)
    workers = default_workers() if workers is None else workers
    loader = DataLoader(Prepared(items, model.card), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    with tqdm(total=len(items), desc=f"predicting ({model.name})", unit="input", disable=not progress) as bar:
        for batch in loader:
            for i, error in batch["errors"]:
                if strict:
                    raise UserError(f"{items[i].id}: {error}")
                errors[i] = error
            if batch["index"]:
                logits[batch["index"]] = model.logits(batch["inputs"]).float().numpy()
            bar.update(len(batch["index"]) + len(batch["errors"]))
    return logits, errors


def rows(model: DeployedModel, items: list[Item], logits: np.ndarray,
         errors: list[str | None]) -> list[dict[str, Any]]:
    """The output table: id, per task the class and its probabilities, error."""
    card, out = model.card, []
    probs = model.probabilities(torch.from_numpy(np.nan_to_num(logits)))
    for n, item in enumerate(items):
        row: dict[str, Any] = {"id": item.id}
        for task in card.tasks:
            p = probs[task.name][n]
            if errors[n] is not None:
                row[task.name] = ""
                row.update({k: "" for k in _prob_columns(task)})
            elif task.type == "binary":
                row[task.name] = task.classes[int(p > 0.5)]
                row[f"{task.name}_prob"] = float(p)
            else:
                row[task.name] = task.classes[int(np.argmax(p))]
                row.update({col: float(v) for col, v in zip(_prob_columns(task), p)})
        row["error"] = errors[n] or ""
        out.append(row)
    return out


def _prob_columns(task: Any) -> list[str]:
    return [f"{task.name}_prob"] if task.type == "binary" else [f"{task.name}_prob_{c}" for c in task.classes]


def write_rows(table: list[dict[str, Any]], out: str) -> None:
    """CSV, or parquet / JSONL by the file's extension; `-` is CSV on stdout."""
    if out == "-":
        _csv(table, sys.stdout)
        return
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(table), tmp)
    elif suffix in (".jsonl", ".ndjson"):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in table))
    else:
        buf = io.StringIO()
        _csv(table, buf)
        write_text_atomic(path, buf.getvalue())


def _csv(table: list[dict[str, Any]], fh: Any) -> None:
    writer = csv.DictWriter(fh, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)


def label_metrics(card: ModelCard, items: list[Item], logits: np.ndarray,
                  errors: list[str | None]) -> tuple[dict[str, Any] | None, int]:
    """Metrics of the predicted rows whose labels the model knows (as `mmdistill run` computes
    them), and how many labelled rows had to be left out (an unknown label)."""
    from mmdistill.compress.tensor_model import split_logits
    from mmdistill.data.labels import TaskInfo, encode_label
    from mmdistill.eval.metrics import evaluate

    tasks = [TaskInfo(t.name, t.type, tuple(t.classes)) for t in card.tasks]
    keep, labels, skipped = [], {t.name: [] for t in tasks}, 0
    for n, item in enumerate(items):
        if errors[n] is not None:
            continue
        try:
            encoded = {t.name: encode_label(t, item.labels[t.name], item.id) for t in tasks}
        except (KeyError, UserError):
            skipped += 1
            continue
        keep.append(n)
        for task, value in encoded.items():
            labels[task].append(value)
    if not keep:
        return None, skipped
    per_task = split_logits(tasks, torch.from_numpy(logits[keep]))
    targets = {t.name: torch.tensor(labels[t.name], dtype=torch.float32 if t.type == "binary" else torch.long)
               for t in card.tasks}
    return evaluate(tasks, per_task, targets), skipped


def metrics_table(metrics: dict[str, Any]) -> str:
    lines = [f"{'task':<16}{'F1':>8}{'macro F1':>10}{'accuracy':>10}{'n':>8}"]
    for name, m in metrics["tasks"].items():
        lines.append(f"{name:<16}{m['f1']:>8.4f}{m['f1_macro']:>10.4f}{m['accuracy']:>10.4f}{m['n']:>8}")
    lines.append(f"{'score':<16}{metrics['score']:>8.4f}{'':>10}{metrics['accuracy']:>10.4f}")
    return "\n".join(lines)


def run_predict(source: str, input_path: str, model: str | None = None, out: str = "predictions.csv",
                batch_size: int = 64, workers: int | None = None, strict: bool = False,
                image_root: str | None = None, progress: bool = True,
                echo: Callable[[str], None] = print) -> dict[str, Any]:
    """What the CLI runs; returns {"rows", "metrics", "errors"}."""
    deployed = load(source, model)
    items, labelled = read_input(input_path, deployed.card, image_root)
    logits, errors = predict_items(deployed, items, batch_size, workers, strict, progress)
    table = rows(deployed, items, logits, errors)
    write_rows(table, out)
    say = (lambda line: print(line, file=sys.stderr)) if out == "-" else echo
    failed = [e for e in errors if e is not None]
    metrics = None
    if labelled:
        metrics, skipped = label_metrics(deployed.card, items, logits, errors)
        if metrics is not None:
            say(f"metrics of {deployed.name} on the {sum(m['n'] for m in metrics['tasks'].values()) // len(metrics['tasks'])} "
                f"labelled row(s) predicted:\n{metrics_table(metrics)}")
        if skipped:
            warn(f"{skipped} labelled row(s) left out of the metrics: a label the model does not know")
    if failed:
        first = next(f"{items[n].id}: {e}" for n, e in enumerate(errors) if e)
        warn(f"{len(failed)} of {len(items)} input(s) could not be predicted (see the `error` column); the first: "
             f"{first}")
    if out != "-":
        say(f"predictions of {len(items) - len(failed)} input(s) by {deployed.name}: {out}")
    return {"rows": table, "metrics": metrics, "errors": failed}
