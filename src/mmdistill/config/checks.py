"""Checks that span sections of the config (a student encoder must read a modality the data
declares, masking must name a modality the model reads, weighted sampling a declared task),
done at load time so a bad combination fails before any data is read or any model is built.
Checks that also need the registries of models and losses (fusion parameters, loss terms and
the features they read) are one level up, in `mmdistill/preflight.py`."""

from __future__ import annotations

from mmdistill.config.monitor import parse_monitor
from mmdistill.config.schema import ExperimentConfig
from mmdistill.errors import UserError

ENCODERS_FOR_KIND = {"image": {"timm", "tiny_cnn"}, "stacked_image": {"timm", "tiny_cnn"}, "text": {"hf_text"},
                     "embedding": {"mlp"}}


def check_consistency(config: ExperimentConfig, source: str) -> None:
    modalities = config.data.modalities
    for role in ("teacher", "student"):
        spec = getattr(config, role)
        for name, encoder in spec.encoders.items():
            key = f"{source}: {role}.encoders.{name}"
            if name not in modalities:
                raise UserError(f"{key}: no modality {name!r} in data.modalities (declared: {', '.join(modalities)})")
            kind = modalities[name].kind
            if encoder.type not in ENCODERS_FOR_KIND[kind]:
                allowed = ", ".join(sorted(ENCODERS_FOR_KIND[kind]))
                raise UserError(f"{key}.type: {encoder.type!r} cannot read {kind} modality {name!r}; use {allowed}")
    for role in ("teacher", "student"):
        masking = getattr(config, role).masking
        if masking is None:
            continue
        for name in [masking.complete, *masking.random] if masking.complete else list(masking.random):
            if name not in getattr(config, role).encoders:
                raise UserError(f"{source}: {role}.masking: {name!r} is not a modality the {role} reads "
                                f"({', '.join(getattr(config, role).encoders)})")
    for stage in ("teacher", "student"):
        settings = getattr(config.training, stage)
        for key in ("resume_from", "load_from"):
            path = getattr(settings, key)
            if path is not None and not path.is_file():
                raise UserError(f"{source}: training.{stage}.{key}: checkpoint not found: {path}")
        try:
            parse_monitor(settings.monitor, config.tasks)
        except ValueError as exc:
            raise UserError(f"{source}: training.{stage}.monitor: {exc}") from None
        task = getattr(config.training, stage).weighted_sampling
        if task is not None and task not in config.tasks:
            raise UserError(f"{source}: training.{stage}.weighted_sampling: no task {task!r} "
                            f"(tasks: {', '.join(config.tasks)})")
