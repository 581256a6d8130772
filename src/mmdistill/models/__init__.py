"""Models: per-modality encoders, the fusion registry, the MultiModalNet that joins them, building
a config's teacher or student (`build.py`), and their safetensors checkpoints (`checkpoints.py`)."""

from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

__all__ = ["ModelOutput", "MultiModalNet", "TaskInfo"]
