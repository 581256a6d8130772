"""The frozen teacher's outputs on the train split, computed once per (sample, view) and kept on disk.

The teacher is frozen for the whole student stage and views are deterministic
(`data/views.py`), so everything the objective reads from the teacher is a function of
(sample, view) alone. Computing it once turns the teacher's cost from epochs x seeds x loss
variants forward passes into one pass per view; every later student run with the same
teacher, data and views reads it back from disk (`train/teachers.py` turns the rows back into
a ModelOutput for the objective).

What a row holds is what the objective's terms declare they need of the teacher
(`Term.teacher_fields`): a feature as is, or a field a term derives from the teacher's output
(`Term.derive_teacher_field`), computed here on each batch the teacher returns and stored in
place of the feature it comes from. Attention transfer is the case in point: it uses only the
teacher's normalised [1, H, W] attention map, so that is stored, not the [C, H, W] feature map
(about 200 KB a row for a real CNN), and a row is C times smaller. This module only calls the
derivations it is given; it knows no term.

The key (`keys.teacher_outputs_key`) hashes what the outputs depend on: the teacher's
architecture and weights, its modality settings, every train record it reads, the view
settings and the fields and dtype stored (a derived field's name carries its parameters).
Stores are written atomically and checked on open (`store.py`), so a stale or truncated cache
is rebuilt, never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import teacher_outputs_key
from mmdistill.cache.store import ArrayStore, StoreWriter, open_or_build
from mmdistill.data.views import view_batches
from mmdistill.distributed import autocast, compute_device

if TYPE_CHECKING:
    from torch import nn

    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle


Derivations = Mapping[str, Callable[[Any], torch.Tensor]]  # derived field -> its value [B, ...] from a ModelOutput


def flat_outputs(out: Any, fields: list[str], derive: Derivations | None = None) -> dict[str, torch.Tensor]:
    """The stored fields of one batch's ModelOutput as {field name: tensor}: `logits` becomes
    `logits:<task>` per task, a field in `derive` is computed from the output by its function
    (`train/teachers.teacher_derivations`), every other field is a feature reference (`fused`, ...)."""
    derive = derive or {}
    flat = {}
    for f in fields:
        if f == "logits":
            flat.update({f"logits:{task}": value for task, value in out.logits.items()})
        elif f in derive:
            flat[f] = derive[f](out)
        else:
            flat[f] = out.feature(f)
    return flat


@torch.no_grad()
def build_teacher_store(path: Path, key: str, config: "ExperimentConfig", teacher: "nn.Module", data: "DataBundle",
                        fields: list[str], views: int, derive: Derivations | None = None) -> ArrayStore:
    """One teacher pass over the train split per view, rows written in (view, sample) order;
    derived fields are computed on each batch's outputs (`flat_outputs`), under the same
    autocast as the live teacher's step."""
    dataset = data.datasets["train"].select(set(config.teacher.encoders))
    n = len(dataset)
    dtype = np.float16 if config.cache.teacher_dtype == "float16" else np.float32
    device = compute_device(config)
    was_training = teacher.training
    teacher.eval().to(device)
    names: dict[str, str] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    batch_size = config.training.teacher.batch_size
    try:
        with StoreWriter(path, key, {"fields": fields, "views": views, "samples": n}) as writer:
            bar = tqdm(total=n * views, desc="caching teacher outputs", unit="sample",
                       disable=not config.logging.progress_bar)
            for batch in view_batches(dataset, views, batch_size, config.data.num_workers):
                inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
                with autocast(config, device):  # what the live teacher computes inside a training step
                    flat = flat_outputs(teacher(inputs), fields, derive)
                if not names:  # declare once the shapes are known
                    for j, (name, value) in enumerate(sorted(flat.items())):
                        names[name] = f"f{j}"
                        writer.declare(f"f{j}", (views * n, *value.shape[1:]), dtype)
                    writer.info["arrays_by_field"] = names
                for name, value in flat.items():
                    writer.append(names[name], value.float().cpu().numpy())
                bar.update(len(batch["index"]))
            bar.close()
            return writer.commit()
    finally:
        teacher.cpu().train(was_training)


class TeacherOutputs:
    """The read side: the stored fields of (sample, view) pairs, as float32 arrays."""

    def __init__(self, store: ArrayStore):
        self.store = store
        self.samples = int(store.meta["samples"])
        self.views = int(store.meta["views"])
        self.by_field: dict[str, str] = store.meta["arrays_by_field"]

    def read(self, index: np.ndarray, view: np.ndarray) -> dict[str, np.ndarray]:
        """{field: [len(index), ...]} for samples `index` at views `view` (rows are view-major;
        a stage longer than the views stored, a pruned student's fine-tune, cycles through them)."""
        rows = (view % self.views) * self.samples + index
        return {field: self.store.read(array, rows).astype(np.float32, copy=False)
                for field, array in self.by_field.items()}


def open_teacher_outputs(config: "ExperimentConfig", teacher: "nn.Module", data: "DataBundle",
                         fields: list[str], views: int,
                         derive: Derivations | None = None) -> tuple[TeacherOutputs | None, Path, bool]:
    """The store of `teacher`'s `fields` on `views` views of train (the derived ones computed by
    `derive`), built now if missing, stale or damaged: (outputs, where, whether it was built);
    outputs is None when it cannot be written."""
    key = teacher_outputs_key(config, teacher, data, fields, views)
    path = kind_dir(config, "teacher") / key
    build = lambda: build_teacher_store(path, key, config, teacher, data, fields, views, derive)  # noqa: E731
    store, built = open_or_build(path, key, build, "teacher output")
    return (TeacherOutputs(store) if store is not None else None), path, built
