"""`mmdistill extract CONFIG`: run the config's teacher over every split and write its
embeddings in seed 003's layout (`data/embeddings.py`), so feature-KD runs, seeds and grid
points train students against them without running the teacher again.

Train gets `data.num_views` views per sample, drawn exactly as the student will draw them
(per (seed, sample, view), at each model's own resolution); dev and test get one plain view.
The teacher is the config's `teacher` (its one encoder, pretrained or `teacher.checkpoint`),
and what is stored is that encoder's embedding, the `embedding:<modality>` feature.

Extraction streams: each batch's rows are written to their [sample, view] place in the split's
final .npy as soon as the teacher computes them (`SplitEmbeddingsWriter`, a preallocated file
mapped into memory). The rows come view by view while the file holds [samples, views, dim];
gathering a split in memory to reorder it took about three copies of all its embeddings (at
Derm1M's million samples x views x dim, many GB). Memory is now one batch's rows, plus a byte
per (sample, view) to check that every one was written, whatever the split's size. The file
is written beside the final one under a temporary name and renamed only once every row is in
it, meta.json after it: an extract that fails or is interrupted leaves the previous complete
file (or none), never a partial one for a run to read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from mmdistill import __version__
from mmdistill.distributed import autocast, compute_device
from mmdistill.config.schema import SPLITS, ExperimentConfig
from mmdistill.cache.images import load_checked_data
from mmdistill.data.views import view_batches, view_settings
from mmdistill.data.embeddings import SPLIT_DIRS, SplitEmbeddingsWriter, split_dir, teacher_modality
from mmdistill.errors import UserError
from mmdistill.models.build import build_model
from mmdistill.models.checkpoints import load_weights


@torch.no_grad()
def extract_embeddings(config: ExperimentConfig) -> dict[str, Path]:
    if config.data.source != "embeddings":
        raise UserError(f"data.source: extract writes the embeddings layout; it needs source: embeddings "
                        f"(samples.csv per split), not {config.data.source!r}")
    modality = teacher_modality(config)
    data = load_checked_data(config)
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
        with tqdm(total=len(dataset) * views, desc=f"extracting {SPLIT_DIRS[split]}", unit="sample",
                  disable=not config.logging.progress_bar) as bar, \
                SplitEmbeddingsWriter(split_dir(config.data, split), len(dataset), views,
                                      config.data.embeddings_file) as out:
            # rows come view by view ([views * samples, dim]); each goes to its [sample, view] place
            for batch in view_batches(dataset, views, config.training.teacher.batch_size, config.data.num_workers):
                inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
                with autocast(config, device):
                    rows = teacher(inputs).embeddings[modality].float().cpu().numpy()
                out.write(batch["index"], batch["view"], rows)
                bar.update(len(batch["index"]))
            meta = {"num_views": views, "embedding_dim": out.dim, "modality": modality,
                    "teacher": config.teacher.model_dump(mode="json"),
                    "resolution": getattr(config.data.modalities[modality], "size", None),
                    "mmdistill": __version__, **(view_settings(config) if split == "train" else {})}
            written[split] = out.commit(meta)
    return written
