"""Optimizer and schedule of a stage, with the backbone (the encoders) optionally in its own
parameter group (seed 004: separate learning rate, weight decay and cosine eta_min for the
vision backbone and for the classifier head)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mmdistill.config.schema import StageTraining


def _optimizer(cfg: StageTraining, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_optimizer(model: nn.Module, extra: nn.Module, cfg: StageTraining) -> Any:
    """Everything trainable now is handed to the optimizer, frozen-for-warm-up backbones
    included (they get gradients once unfrozen; until then the optimizer skips them)."""
    encoder_ids = {id(p) for p in model.encoders.parameters()} if cfg.backbone else set()
    trainable = [p for p in list(model.parameters()) + list(extra.parameters()) if p.requires_grad]
    head = [p for p in trainable if id(p) not in encoder_ids]
    groups: list[dict[str, Any]] = [{"params": head, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                     "eta_min": cfg.eta_min}]
    if cfg.backbone:
        backbone = [p for p in trainable if id(p) in encoder_ids]
        groups.append({"params": backbone, "lr": cfg.backbone.lr or cfg.lr,
                       "weight_decay": cfg.backbone.weight_decay if cfg.backbone.weight_decay is not None
                       else cfg.weight_decay, "eta_min": cfg.backbone.eta_min if cfg.backbone.eta_min is not None
                       else cfg.eta_min})
    opt = _optimizer(cfg, [g for g in groups if g["params"]])
    if cfg.scheduler == "cosine" and len(opt.param_groups) == 1:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.eta_min)
    elif cfg.scheduler == "cosine":  # one eta_min per group: the closed form of cosine annealing
        lambdas = [lambda t, lo=g["eta_min"], hi=g["lr"]: (lo + (hi - lo) * (1 + math.cos(math.pi * t / cfg.epochs)) / 2) / hi
                   for g in opt.param_groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
    elif cfg.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
