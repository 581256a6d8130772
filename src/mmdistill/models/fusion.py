"""Fusion modules: combine the per-modality projections (all of size `dim`) into one vector.

Chosen by `fusion.type` with `fusion.params`; every module takes the ordered modality names so
it can hold per-modality parameters, and returns a [batch, out_dim] vector. Each one also works
with a single modality, so an image-only student can use the teacher's fusion type.

`present` ([batch, modalities] booleans, or None for all present) is modality masking (seed
004): each fusion leaves a masked modality out in its own way rather than fusing a zero vector
as if it were data.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from mmdistill.errors import UserError
from mmdistill.registry import Registry


class FusionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Fusion(nn.Module):
    out_dim: int


FUSIONS: Registry[tuple[type[FusionParams], Callable[..., Fusion]]] = Registry("fusion type")


def register_fusion(name: str, params: type[FusionParams]):
    def add(cls):
        FUSIONS.register(name)((params, cls))
        return cls

    return add


class ConcatMLPParams(FusionParams):
    hidden: int | None = Field(None, gt=0, description="hidden width; default = dim")
    dropout: float = Field(0.1, ge=0, lt=1)


@register_fusion("concat_mlp", ConcatMLPParams)
class ConcatMLP(Fusion):
    """Concatenate the projections and mix them with a two-layer MLP (seed 000 "simple", seed 004)."""

    def __init__(self, modalities: list[str], dim: int, params: ConcatMLPParams):
        super().__init__()
        hidden = params.hidden or dim
        self.net = nn.Sequential(
            nn.Linear(dim * len(modalities), hidden), nn.GELU(), nn.Dropout(params.dropout), nn.Linear(hidden, dim)
        )
        self.out_dim = dim

    def forward(self, projections: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        if present is not None:  # a masked modality's slot is zero, as in seed 004
            projections = [p * present[:, i : i + 1].to(p.dtype) for i, p in enumerate(projections)]
        return self.net(torch.cat(projections, dim=-1))


class WeightedSumParams(FusionParams):
    pass


@register_fusion("weighted_sum", WeightedSumParams)
class WeightedSum(Fusion):
    """Softmax-weighted sum with one learned scalar per modality (seed 004 `weighted_sum`):
    the learned weights say how much the model leans on each modality."""

    def __init__(self, modalities: list[str], dim: int, params: WeightedSumParams):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(len(modalities)))
        self.out_dim = dim

    def forward(self, projections: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits.expand(projections[0].shape[0], -1)
        if present is not None:  # the weights are renormalised over the modalities present
            logits = logits.masked_fill(~present, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return sum(weights[:, i : i + 1] * p for i, p in enumerate(projections))


class CrossAttentionParams(FusionParams):
    heads: int = Field(4, ge=1)
    layers: int = Field(1, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


@register_fusion("cross_attention", CrossAttentionParams)
class CrossAttention(Fusion):
    """Each modality's projection is one token with a learned modality embedding; a small
    transformer lets every token attend to the others, and the tokens are mean-pooled."""

    def __init__(self, modalities: list[str], dim: int, params: CrossAttentionParams):
        super().__init__()
        if dim % params.heads:
            raise UserError(f"fusion.params.heads: projection_dim {dim} is not divisible by {params.heads} heads")
        self.modality_embedding = nn.Parameter(torch.zeros(len(modalities), dim))
        layer = nn.TransformerEncoderLayer(dim, params.heads, dim * 2, params.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, params.layers, enable_nested_tensor=False)
        self.out_dim = dim

    def forward(self, projections: list[torch.Tensor], present: torch.Tensor | None = None) -> torch.Tensor:
        tokens = torch.stack(projections, dim=1) + self.modality_embedding
        if present is None:
            return self.encoder(tokens).mean(dim=1)
        out = self.encoder(tokens, src_key_padding_mask=~present)  # masked tokens are not attended to
        keep = present.unsqueeze(-1).to(out.dtype)
        return (out * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _params(spec: Any, key: str) -> tuple[type[FusionParams], Callable[..., Fusion], FusionParams]:
    params_cls, cls = FUSIONS.get(spec.type, f"{key}.type")
    try:
        params = params_cls.model_validate(spec.params)
    except ValidationError as exc:
        err = exc.errors()[0]
        allowed = ", ".join(params_cls.model_fields) or "none"
        raise UserError(f"{key}.params.{'.'.join(map(str, err['loc']))}: {err['msg']} "
                        f"(fusion {spec.type!r} takes: {allowed})") from None
    return params_cls, cls, params


def check_fusion(spec: Any, key: str) -> None:
    _params(spec, key)


def build_fusion(spec: Any, modalities: list[str], dim: int, key: str = "fusion") -> Fusion:
    _, cls, params = _params(spec, key)
    return cls(modalities, dim, params)
