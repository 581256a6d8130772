"""Backbone warm-up (seed 004's n_warmup_epochs / unfreeze_layers): the encoders stay frozen
for the first epochs while the new projections, fusion and heads settle, then only the last
N layer groups of each encoder are trained, so a pretrained backbone is not wrecked by the
large early gradients of randomly initialised heads."""

from __future__ import annotations

import lightning as L


class BackboneWarmup(L.Callback):
    def __init__(self, freeze_epochs: int, unfreeze_layers: int | None):
        self.freeze_epochs = freeze_epochs
        self.unfreeze_layers = unfreeze_layers

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        warming = trainer.current_epoch < self.freeze_epochs
        for encoder in module.model.encoders.values():
            if not encoder.trainable:
                continue
            groups = encoder.layer_groups()
            n_train = 0 if warming else len(groups) if self.unfreeze_layers is None else self.unfreeze_layers
            for i, group in enumerate(groups):
                for p in group:
                    p.requires_grad_(i >= len(groups) - n_train)
