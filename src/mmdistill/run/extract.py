"""`mmdistill extract CONFIG`: run the config's teacher over every split and write its
embeddings in seed 003's layout (`data/embeddings.py`), so feature-KD runs, seeds and grid
points train students against them without running the teacher again.

Train gets `data.num_views` views per sample, drawn exactly as the student will draw them
(per (seed, sample, view), at each model's own resolution); dev and test get one plain view.
The teacher is the config's `teacher` (its one encoder, pretrained or `teacher.checkpoint`),
and what is stored is that encoder's embedding, the `embedding:<modality>` feature.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill import __version__
from mmdistill.distributed import autocast, compute_device
from mmdistill.config.schema import SPLITS, ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.data.views import view_batches, view_settings
from mmdistill.data.embeddings import SPLIT_DIRS, split_dir, teacher_modality, write_split_embeddings
from mmdistill.errors import UserError
from mmdistill.models.build import build_model
from mmdistill.models.checkpoints import load_weights


@torch.no_grad()
def extract_embeddings(config: ExperimentConfig) -> dict[str, Path]:
    if config.data.source != "embeddings":
        raise UserError(f"data.source: extract writes the embeddings layout; it needs source: embeddings "
                        f"(samples.csv per split), not {config.data.source!r}")
    modality = teacher_modality(config)
    data = load_data(config)
    torch.manual_seed(config.seed)
    teacher = build_model(config, "teacher", data)
    if config.teacher.checkpoint is not None:
        load_weights(teacher, config.teacher.checkpoint, "teacher.checkpoint")
    device = compute_device(config)  # the GPU when training would use one
    teacher.eval().to(device)
    written = {}
    for split in SPLITS:
        dataset = data.datasets[split].select({modality})
        views = config.data.num_views if split == "train" else 1
        rows = []
        bar = tqdm(total=len(dataset) * views, desc=f"extracting {SPLIT_DIRS[split]}", unit="sample",
                   disable=not config.logging.progress_bar)
        for batch in view_batches(dataset, views, config.training.teacher.batch_size, config.data.num_workers):
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
            with autocast(config, device):
                rows.append(teacher(inputs).embeddings[modality].float().cpu().numpy())
            bar.update(len(batch["index"]))
        bar.close()
        # rows come view by view: [views * samples, dim] -> [samples, views, dim]
        array = np.concatenate(rows).reshape(views, len(dataset), -1).transpose(1, 0, 2).astype(np.float32)
        meta = {"num_views": views, "embedding_dim": int(array.shape[2]), "modality": modality,
                "teacher": config.teacher.model_dump(mode="json"),
                "resolution": getattr(config.data.modalities[modality], "size", None),
                "mmdistill": __version__, **(view_settings(config) if split == "train" else {})}
        written[split] = write_split_embeddings(split_dir(config.data, split), array, meta, config.data.embeddings_file)
    return written
