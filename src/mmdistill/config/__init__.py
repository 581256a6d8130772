"""Experiment configuration: schema, loading with overrides, and cross-section checks."""

from mmdistill.config.loading import load_config
from mmdistill.config.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "load_config"]
