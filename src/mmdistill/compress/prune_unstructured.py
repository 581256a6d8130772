"""Unstructured magnitude pruning: the smallest |w| of all conv and linear weights, ranked
together (global L1, torch.nn.utils.prune), set to zero.

The masks stay attached while the pruned student is fine-tuned (the zeros stay zero), then
`make_permanent` folds them into plain weights. The task heads and frozen encoders are left
whole: a head is a few hundred weights that carry the output directly, and a frozen encoder is
never fine-tuned, so its pruning could not be repaired. A dense kernel still multiplies the
zeros, so this makes the model neither smaller on disk nor faster; it shows how much of the
student can go, and the structured pruning in `prune_channels` turns that into speed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from mmdistill.models.net import MultiModalNet

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prunable_weights(model: MultiModalNet) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv/linear outside the heads and frozen encoders."""
    skip: set[int] = {id(m) for m in model.heads.modules()}
    for encoder in model.encoders.values():
        if not getattr(encoder, "trainable", True):
            skip |= {id(m) for m in encoder.modules()}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):  # reads out_proj.weight without calling it
            skip |= {id(m) for m in module.modules()}
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE) and id(m) not in skip]


def apply(model: MultiModalNet, sparsity: float) -> list[tuple[nn.Module, str]]:
    """Mask the fraction `sparsity` of the prunable weights with the smallest magnitude."""
    params = prunable_weights(model)
    if params:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    return params


def make_permanent(params: list[tuple[nn.Module, str]]) -> None:
    """weight = weight_orig * mask, as a plain parameter; the masks and hooks go."""
    for module, name in params:
        if prune.is_pruned(module):
            prune.remove(module, name)


def sparsity(params: list[tuple[nn.Module, str]]) -> float:
    """Fraction of zeros over the given weights."""
    total = sum(getattr(m, n).numel() for m, n in params)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in params)
    return zeros / max(total, 1)


@torch.no_grad()
def prune_unstructured(model: MultiModalNet, amount: float) -> list[tuple[nn.Module, str]]:
    """apply + make_permanent, for callers that do not fine-tune between the two."""
    params = apply(model, amount)
    make_permanent(params)
    return params
