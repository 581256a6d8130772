"""Building a run's teacher or student from its config, the one way every command does it.

`build_model(config, "teacher", data)` is the config's `teacher` as a MultiModalNet for this
data (its tasks, class lists and embedding sizes), with each frozen text encoder reading its
vectors from the on-disk text cache (`cache/text.py`), so the run, `compress`, the sweep report
and `extract` all get the same model for the same config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

from mmdistill.cache.text import attach_text_caches
from mmdistill.models.net import MultiModalNet, TaskInfo

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle


def build_model(config: "ExperimentConfig", role: str, data: "DataBundle") -> MultiModalNet:
    """The config's `role` ("teacher" or "student") for `data`; weights are random or
    pretrained as the spec says (load a checkpoint with `models/checkpoints.load_weights`)."""
    model = build_net(config, role, data.tasks, data.embedding_dims)
    return attach_text_caches(model, config, data, role)


def build_net(config: "ExperimentConfig", role: str, tasks: list[TaskInfo],
              embedding_dims: Mapping[str, int] | None = None) -> MultiModalNet:
    """The same model without the data at hand (applying a trained model to new inputs): the
    tasks and embedding sizes come from the run's results.json instead."""
    return MultiModalNet(getattr(config, role), config.data.modalities, tasks, embedding_dims, key=role)
