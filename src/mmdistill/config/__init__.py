"""Experiment configuration: the schema, reading a file with `--set` overrides, the checks
that read the config alone, and the hashes that say when two configs make the same run.

The whole check before a run, against the registries of models and loss terms too, is
`mmdistill.preflight.load_config`.
"""

from mmdistill.config.loading import validate_config
from mmdistill.config.schema import ExperimentConfig

__all__ = ["ExperimentConfig", "validate_config"]
