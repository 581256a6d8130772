"""Backbone warm-up (seed 004's n_warmup_epochs / unfreeze_layers): the encoders stay frozen
for the first epochs while the new projections, fusion and heads settle, then only the last
N layer groups of each encoder are trained, so a pretrained backbone is not wrecked by the
large early gradients of randomly initialised heads.

On one device a frozen parameter has `requires_grad` off (no gradient is computed for it).
Under DDP that cannot change once training started: DDP registers the parameters that need
gradients when it wraps the model, and one unfrozen later would never have its gradient
averaged across ranks, so the ranks' weights would silently drift apart. There every parameter
keeps `requires_grad` and a frozen one has its gradient dropped before the optimizer step
(AdamW then leaves it untouched, weight decay included, exactly as when it is frozen).
"""

from __future__ import annotations

import lightning as L
from torch import nn


class BackboneWarmup(L.Callback):
    def __init__(self, freeze_epochs: int, unfreeze_layers: int | None):
        self.freeze_epochs = freeze_epochs
        self.unfreeze_layers = unfreeze_layers
        self.frozen: list[nn.Parameter] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        warming = trainer.current_epoch < self.freeze_epochs
        distributed = getattr(trainer, "world_size", 1) > 1
        self.frozen = []
        for encoder in module.model.encoders.values():
            if not encoder.trainable:
                continue
            groups = encoder.layer_groups()
            n_train = 0 if warming else len(groups) if self.unfreeze_layers is None else self.unfreeze_layers
            for i, group in enumerate(groups):
                train = i >= len(groups) - n_train
                for p in group:
                    if distributed:
                        if not train:
                            self.frozen.append(p)
                    else:
                        p.requires_grad_(train)

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer) -> None:
        for p in self.frozen:
            p.grad = None
