"""A model's fused vectors over a split, and 2-D maps of them (seed 002's tsne_teacher.png,
umap_student.png).

One collector serves the per-run plots, the sweep report's t-SNE and the probes, so all three
look at the same vectors: eval mode, no augmentation, dataset order. The per-run maps embed only
a draw of `logging.plot_samples` test rows (`eval/sampling.py`), the same rows for every model:
a t-SNE of a whole large split takes hours, and only the drawn rows are ever embedded.
UMAP comes from umap-learn, an optional extra (`pip install mmdistill[umap]`): it pulls in
numba, which most installs do not need, so without it the UMAP maps are skipped with one
logged line and t-SNE (scikit-learn) is drawn alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmdistill.distributed import autocast, compute_device
from mmdistill.eval.sampling import sample_rows

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap")
TITLES = {"tsne": "t-SNE", "umap": "UMAP"}


@torch.no_grad()
def collect_features(model: Any, data: Any, split: str, batch_size: int, ref: str = "fused",
                     config: Any = None, rows: Sequence[int] | np.ndarray | None = None,
                     ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """([N, D] float32 vectors of feature `ref`, {task: [N] labels}) of `split`, in dataset
    order; `ref` as loss terms name features (`fused`, `embedding:<m>`, `projection:<m>`).
    `rows`: only these dataset indices, in the order given (N = len(rows)); the others are
    never loaded nor embedded.

    Labels keep the dataset's dtypes (binary 0/1 floats, multiclass int64). The model is put in
    eval mode (no dropout, no modality masking) and given back in the mode it came in. With
    the run's `config` it runs on this process's device under the stage's precision
    (`distributed.py`), and is given back on the CPU.
    """
    was_training = model.training
    model.eval()
    device = compute_device(config) if config is not None else next(model.parameters()).device
    moved = config is not None
    if moved:
        model.to(device)
    vectors: list[np.ndarray] = []
    labels: dict[str, list[np.ndarray]] = {t.name: [] for t in data.tasks}
    try:
        # the data, not one random draw of augmentations; only the modalities this model reads
        loader = data.loader(split, batch_size, shuffle=False, seed=0, modalities=set(model.modalities),
                             augment=False)
        if rows is not None:  # the same dataset view, read at `rows` instead of in full
            loader = DataLoader(loader.dataset, batch_size=batch_size, sampler=[int(i) for i in rows],
                                collate_fn=loader.collate_fn)
        for batch in loader:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
            with autocast(config, device):
                vectors.append(model(inputs).feature(ref).float().cpu().numpy())
            for name in labels:
                labels[name].append(batch["labels"][name].cpu().numpy())
    finally:
        model.train(was_training)
        if moved:
            model.cpu()
    if not vectors:
        raise ValueError(f"split {split!r} has no samples to embed")
    return np.concatenate(vectors), {name: np.concatenate(parts) for name, parts in labels.items()}


def tsne_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE. One OpenMP thread: in a process where torch already runs its own OpenMP pool,
    sklearn's Barnes-Hut threads spin against it (measured: 55 s instead of 0.7 s for 200
    points on a busy 2-core machine). Perplexity must stay below the sample count, so tiny
    splits get a smaller one; below 2 samples there is nothing to lay out."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    perplexity = min(float(max(2.0, min(30.0, (n - 1) / 3))), n - 1.0)
    init = "pca" if min(vectors.shape) >= 2 else "random"  # PCA to 2-D needs 2 samples and 2 features
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed).fit_transform(vectors)


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def _skip_umap() -> None:
    log.warning("UMAP maps skipped: umap-learn is not installed (pip install 'mmdistill[umap]'); t-SNE maps are drawn")


def umap_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn must be importable). Neighbours capped below the sample count;
    random init on tiny inputs, where the spectral one has too few points to work with."""
    import umap

    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(15, n - 1)), random_state=seed,
                        init="spectral" if n > 10 else "random")
    return reducer.fit_transform(vectors)


def plot_embedding_map(vectors: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, path: Path,
                       method: str = "tsne", seed: int = 0) -> bool:
    """Scatter the 2-D `method` map of `vectors`, one colour per class; False (and one logged
    line) when the method's library is missing, so a plot never costs a run."""
    from mmdistill.eval.plots import plot_scatter

    if method not in METHODS:
        raise ValueError(f"unknown embedding map method {method!r}: use one of {', '.join(METHODS)}")
    if method == "umap" and not umap_available():
        _skip_umap()
        return False
    xy = tsne_2d(vectors, seed) if method == "tsne" else umap_2d(vectors, seed)
    plot_scatter(xy, np.asarray(labels).astype(np.int64), list(classes), title, Path(path))
    return True


def write_run_plots(run_dir: Path, models: dict[str, Any], data: Any, batch_size: int,
                    methods: Sequence[str] = METHODS, split: str = "test", config: Any = None,
                    samples: int | None = None, seed: int = 0) -> list[Path]:
    """plots/{method}_{role}.png for every model (e.g. {"teacher": ..., "student": ...}),
    coloured by the first task. Each model's vectors are collected once for all methods.

    `samples`: points per map, drawn once from `split` by `seed` (stratified by the first
    task, `eval/sampling.py`) and embedded for every model, so the maps show the same
    samples; 0 or None: the whole split."""
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown embedding map method {unknown[0]!r}: use one of {', '.join(METHODS)}")
    if "umap" in methods and not umap_available():
        _skip_umap()  # once per run, not once per model
        methods.remove("umap")
    task = data.tasks[0]
    total = len(data.datasets[split])
    rows = sample_rows(total, samples, seed, strata=data.datasets[split].labels[task.name])
    drawn = f"{split}, {len(rows)} of {total}" if rows is not None else split
    written: list[Path] = []
    for role, model in models.items():
        vectors, labels = collect_features(model, data, split, batch_size, config=config, rows=rows)
        for method in methods:
            path = Path(run_dir) / "plots" / f"{method}_{role}.png"
            title = f"{TITLES[method]} of the {role}'s fused vectors ({drawn}, by {task.name})"
            if plot_embedding_map(vectors, labels[task.name], task.classes, title, path, method):
                written.append(path)
    return written
