"""Building a run's teacher or student from its config, the one way every command does it.

`build_model(config, "teacher", data)` is the config's `teacher` as a MultiModalNet for this
data (its tasks, class lists and embedding sizes), with each frozen text encoder reading its
vectors from the on-disk text cache (`cache/text.py`), so the run, `compress`, the sweep report
and `extract` all get the same model for the same config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmdistill.cache.text import attach_text_caches
from mmdistill.models.net import MultiModalNet

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle


def build_model(config: "ExperimentConfig", role: str, data: "DataBundle") -> MultiModalNet:
    """The config's `role` ("teacher" or "student") for `data`; weights are random or
    pretrained as the spec says (load a checkpoint with `models/checkpoints.load_weights`)."""
    spec = getattr(config, role)
    model = MultiModalNet(spec, config.data.modalities, data.tasks, data.embedding_dims, key=role)
    return attach_text_caches(model, config, data, role)
