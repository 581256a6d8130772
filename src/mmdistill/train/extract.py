"""`mmdistill extract CONFIG`: run the config's teacher over every split and write its
embeddings in seed 003's layout (`data/embeddings.py`), so feature-KD runs, seeds and grid
points train students against them without running the teacher again.

Train gets `data.num_views` views per sample, drawn exactly as the student will draw them
(per (seed, sample, view), at each model's own resolution); dev and test get one plain view.
The teacher is the config's `teacher` (its one encoder, pretrained or `teacher.checkpoint`),
and what is stored is that encoder's embedding, the `embedding:<modality>` feature.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmdistill import __version__
from mmdistill.config.schema import SPLITS, ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.data.embeddings import SPLIT_DIRS, split_dir, view_settings, write_split_embeddings
from mmdistill.errors import UserError
from mmdistill.train.checkpoints import load_weights
from mmdistill.train.pipeline import build_model


@torch.no_grad()
def extract_embeddings(config: ExperimentConfig) -> dict[str, Path]:
    if config.data.source != "embeddings":
        raise UserError(f"data.source: extract writes the embeddings layout; it needs source: embeddings "
                        f"(samples.csv per split), not {config.data.source!r}")
    if len(config.teacher.encoders) != 1:
        raise UserError("teacher.encoders: extract stores one embedding per sample; declare exactly one encoder")
    modality = next(iter(config.teacher.encoders))
    data = load_data(config)
    torch.manual_seed(config.seed)
    teacher = build_model(config, "teacher", data)
    if config.teacher.checkpoint is not None:
        load_weights(teacher, config.teacher.checkpoint, "teacher.checkpoint")
    teacher.eval()
    written = {}
    for split in SPLITS:
        dataset = data.datasets[split].select({modality})
        views = config.data.num_views if split == "train" else 1
        parts = []
        bar = tqdm(total=len(dataset) * views, desc=f"extracting {SPLIT_DIRS[split]}", unit="sample",
                   disable=not config.logging.progress_bar)
        for view in range(views):
            loader = DataLoader(dataset, batch_size=config.training.teacher.batch_size,
                                sampler=[(i, view) for i in range(len(dataset))], num_workers=config.data.num_workers)
            rows = []
            for batch in loader:
                rows.append(teacher(batch["inputs"]).embeddings[modality].float().numpy())
                bar.update(len(batch["index"]))
            parts.append(np.concatenate(rows))
        bar.close()
        array = np.stack(parts, axis=1).astype(np.float32)  # [samples, views, dim]
        meta = {"num_views": views, "embedding_dim": int(array.shape[2]), "modality": modality,
                "teacher": config.teacher.model_dump(mode="json"),
                "resolution": getattr(config.data.modalities[modality], "size", None),
                "mmdistill": __version__, **(view_settings(config) if split == "train" else {})}
        written[split] = write_split_embeddings(split_dir(config.data, split), array, meta, config.data.embeddings_file)
    return written
