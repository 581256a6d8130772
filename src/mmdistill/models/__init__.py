"""Models: per-modality encoders, fusion registry, and the MultiModalNet that joins them."""

from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

__all__ = ["ModelOutput", "MultiModalNet", "TaskInfo"]
