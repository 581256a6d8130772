"""Where the KD student's teacher outputs come from: the frozen teacher run on every step, or
an on-disk cache of its outputs computed once per (train sample, view).

The teacher is frozen for the whole student stage and views are deterministic
(`data/views.py`), so everything the objective reads from the teacher is a function of
(sample, view) alone. Computing it once turns the teacher's cost from epochs x seeds x loss
variants forward passes into one pass per view; every later student run with the same
teacher, data and views reads it back from disk.

The cache key hashes what the outputs depend on: the teacher's architecture and weights, the
teacher's modality settings, every train record the teacher reads (values and image file
size/mtime, so a changed split or file is a new key), the view settings (augmentation, count,
and the seed when augmentation is on) and the fields and dtype stored. Stores are written
atomically and checked on open (`data/array_store.py`), so a stale or truncated cache is
rebuilt, never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.array_store import ArrayStore, StoreWriter, open_or_build
from mmdistill.data.dataset import DataBundle
from mmdistill.data.records_digest import hash_records
from mmdistill.data.views import view_batches, view_settings
from mmdistill.errors import UserError
from mmdistill.losses.objective import Objective
from mmdistill.models.net import ModelOutput, MultiModalNet

log = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """The teacher run on the fly: no gradients, and eval mode whatever its parent asks."""

    def __init__(self, model: MultiModalNet):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        return self.model(batch["inputs"])


def teacher_fields(objective: Objective) -> list[str]:
    """What the cache stores for this objective: every task's logits and the fused vector, always
    (both small; between them they serve every built-in preset, so a grid over presets builds
    one store per teacher, not one per preset), plus each other teacher feature its terms name
    (`projection:<m>`, `embedding:<m>`, `feature_map:<m>`)."""
    fields = {"logits", "fused"}
    for term in objective.terms:
        fields.update(ref for role, ref in term.features() if role == "teacher")
    return sorted(fields)


def _outputs(out: ModelOutput, fields: list[str]) -> dict[str, torch.Tensor]:
    """Flatten the stored fields of one batch to {field name: tensor}."""
    flat = {}
    for f in fields:
        if f == "logits":
            flat.update({f"logits:{task}": value for task, value in out.logits.items()})
        else:
            flat[f] = out.feature(f)
    return flat


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def teacher_digest(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle,
                   splits: tuple[str, ...]) -> "hashlib._Hash":
    """A hash of what any teacher output on `splits` depends on: the teacher's architecture and
    weights, its modality settings (with the mean/std actually used, which `mean: dataset`
    derives from train), whether inputs come through the 8-bit image cache, the tasks, and every
    record of those splits the teacher reads (image files by size and mtime)."""
    reads = list(config.teacher.encoders)
    h = hashlib.sha256()
    h.update(json.dumps({
        "teacher": config.teacher.model_dump(mode="json", exclude={"checkpoint"}),
        "modalities": {m: data.modalities[m].model_dump(mode="json") for m in reads},
        "image_cache": config.cache.images,
        "tasks": [[t.name, t.type, list(t.classes)] for t in data.tasks],
        "samples": {s: len(data.datasets[s]) for s in splits},
    }, sort_keys=True, default=str).encode())
    h.update(weights_digest(teacher).encode())
    for split in splits:
        hash_records(h, data.datasets[split].records, {m: config.data.modalities[m].kind for m in reads}, labels=False)
    return h


def cache_key(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle, fields: list[str]) -> str:
    """See the module docstring for what is hashed, and why each part is there."""
    h = teacher_digest(config, teacher, data, ("train",))
    h.update(json.dumps({"format": 2, "views": config.data.views, **view_settings(config), "fields": fields,
                         "dtype": config.cache.teacher_dtype}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _device(config: ExperimentConfig) -> torch.device:
    if config.training.accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def build_teacher_store(path: Path, key: str, config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle,
                        fields: list[str]) -> ArrayStore:
    """One teacher pass over the train split per view, rows written in (view, sample) order."""
    dataset = data.datasets["train"].select(set(config.teacher.encoders))
    n, views = len(dataset), config.data.views
    dtype = np.float16 if config.cache.teacher_dtype == "float16" else np.float32
    device = _device(config)
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
                flat = _outputs(teacher(inputs), fields)
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


def _sample_views(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, torch.device]:
    """The batch's sample indices and views (view 0 without one), and the device it is on."""
    index = batch["index"].cpu().numpy().astype(np.int64)
    view = batch["view"].cpu().numpy().astype(np.int64) if "view" in batch else np.zeros_like(index)
    return index, view, next(iter(batch["labels"].values())).device


class CachedTeacher(nn.Module):
    """Teacher outputs read from the cache for the batch's (index, view) pairs, as a ModelOutput
    with the fields the objective reads (float32, on the batch's device)."""

    def __init__(self, store: ArrayStore):
        super().__init__()
        self.store = store
        self.samples = int(store.meta["samples"])
        self.by_field: dict[str, str] = store.meta["arrays_by_field"]

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        index, view, device = _sample_views(batch)
        rows = view * self.samples + index
        out = ModelOutput(logits={})
        for field, array in self.by_field.items():
            value = torch.from_numpy(self.store.read(array, rows)).to(device=device, dtype=torch.float32)
            kind, _, name = field.partition(":")
            if field == "fused":
                out.fused = value
            else:
                {"logits": out.logits, "projection": out.projections, "embedding": out.embeddings,
                 "feature_map": out.feature_maps}[kind][name] = value
        return out


def teacher_source(config: ExperimentConfig, teacher: MultiModalNet, objective: Objective,
                   data: DataBundle) -> nn.Module | None:
    """What the KD student stage reads its teacher outputs from: None when the objective needs
    no teacher, the cache when `cache.teacher` is on (built now if missing or stale), else the
    frozen teacher run on the fly."""
    if not objective.needs_teacher:
        return None
    if not config.cache.teacher:
        return FrozenTeacher(teacher)
    fields = teacher_fields(objective)
    key = cache_key(config, teacher, data, fields)
    path = config.cache_dir / "teacher" / key
    store, built = open_or_build(path, key, lambda: build_teacher_store(path, key, config, teacher, data, fields),
                                 "teacher output")
    if store is None:
        return FrozenTeacher(teacher)
    log.info("teacher outputs cached in %s" if built else "reusing cached teacher outputs from %s", path)
    return CachedTeacher(store)


class PrecomputedTeacher(nn.Module):
    """A teacher that exists only as embeddings extracted ahead of time (seed 003,
    `data.source: embeddings`): it answers `embedding:<modality>` for the batch's (index, view)
    pairs and, for building the objective, the size of that embedding."""

    def __init__(self, splits: dict[str, np.ndarray], modality: str):
        """`splits`: {split: [samples, views, dim]}; the student stage reads train."""
        super().__init__()
        self.splits = splits
        self.modality = modality
        self.want_feature_maps: set[str] = set()

    def feature_dim(self, ref: str) -> int:
        if ref != f"embedding:{self.modality}":
            raise UserError(f"the teacher is precomputed embeddings (data.source: embeddings); terms can read only "
                            f"teacher: embedding:{self.modality}, not {ref!r}")
        return int(self.splits["train"].shape[-1])

    def has_feature_map(self, modality: str) -> bool:
        return False

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        index, view, device = _sample_views(batch)
        rows = torch.from_numpy(np.asarray(self.splits["train"][index, view], dtype=np.float32)).to(device)
        return ModelOutput(logits={}, embeddings={self.modality: rows})
