"""`--smoke`: the same recipe, shrunk to run in seconds on a laptop.

Every backbone is swapped for a tiny random-init model of the same family (timm's own `test_*`
models, a two-layer BERT for text), images are decoded small, and each stage runs one epoch of
a few batches. What it checks is the wiring of a recipe (data, modalities, fusion, objective,
artifacts) before it goes to a cluster, not the numbers.
"""

from __future__ import annotations

from mmdistill.config.schema import ExperimentConfig, hw

SMOKE_SIZE = 32
SMOKE_TEXT_MODEL = "tiny-random-bert"

# timm name prefix -> tiny model of the same family (timm ships these for its own tests)
TIMM_FAMILIES = [
    (("vit", "deit", "beit", "eva", "swin"), "test_vit"),
    (("efficientnet", "tf_efficientnet", "mobilenet"), "test_efficientnet"),
    (("convnext",), "test_convnext"),
]


def tiny_timm_name(name: str) -> str:
    for prefixes, tiny in TIMM_FAMILIES:
        if name.startswith(prefixes):
            return tiny
    return "test_resnet"


def smoke_config(config: ExperimentConfig) -> ExperimentConfig:
    data = config.data.model_copy(deep=True)
    for modality in data.modalities.values():
        if modality.kind in ("image", "stacked_image"):
            h, w = hw(modality.size)
            modality.size = min(h, SMOKE_SIZE) if h == w else (min(h, SMOKE_SIZE), min(w, SMOKE_SIZE))
    models = {}
    for role in ("teacher", "student"):
        spec = getattr(config, role).model_copy(deep=True)
        for encoder in spec.encoders.values():
            if encoder.type == "timm":
                encoder.name, encoder.pretrained, encoder.checkpoint = tiny_timm_name(encoder.name), False, None
                encoder.checkpoint_format = None
                encoder.layers = [0] if encoder.layers else None  # the wiring, on a tiny model's first layer
                encoder.input_size = SMOKE_SIZE
            elif encoder.type == "hf_text":
                encoder.model, encoder.max_length = SMOKE_TEXT_MODEL, min(encoder.max_length, 32)
                encoder.layers = [0] if encoder.layers else None
            elif encoder.type == "tiny_cnn":
                encoder.input_size = None
        spec.projection_dim = min(spec.projection_dim, 32)
        spec.checkpoint = None
        models[role] = spec
    training = config.training.model_copy(deep=True)
    for stage in (training.teacher, training.student):
        stage.epochs, stage.limit_train_batches, stage.patience = 1, 3, None
        stage.batch_size = min(stage.batch_size, 8)
    extra = {}
    if config.compress is not None:  # the same methods, on a short fine-tune and a quick timing
        extra["compress"] = config.compress.model_copy(update={
            "finetune_epochs": min(config.compress.finetune_epochs, 1), "calibration_samples": 16, "warmup": 1,
            "repeats": 3})
    return config.model_copy(update={
        "experiment_name": f"{config.experiment_name}_smoke", "data": data, "training": training, **models, **extra,
    })
