"""Structured pruning that makes the model physically smaller: whole conv output channels are
removed, and every layer that reads them (BatchNorm, the next conv's input channels, the
projection after global pooling) is rebuilt with fewer channels.

Which channels go: per conv, those with the smallest magnitude, |BN scale| * ||filter||_1,
i.e. the L1 norm of the filter after its BatchNorm is folded in. Every shrinkable conv loses
the fraction `channel_sparsity` of its output channels (at least one channel stays).

What can be shrunk: an image backbone that is a straight chain, found by tracing it with
torch.fx, of Conv2d (groups=1), BatchNorm2d, element-wise activations, dropout and pooling,
optionally ending in global pooling + flatten (the built-in tiny_cnn, and any plain
Conv-BN-ReLU stack). Anything else (residual additions as in ResNets, depthwise or grouped
convs, attention, a text encoder) raises CannotShrink with the reason, and compression goes on
without this model. The plan (conv -> channels kept) is stored in the checkpoint's metadata,
so `rebuild` can recreate the architecture before its weights are loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx
from torch import nn

from mmdistill.models.encoders import ImageEncoder
from mmdistill.models.net import MultiModalNet

PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Identity, nn.Dropout,
                nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d)
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class CannotShrink(Exception):
    """The architecture is not a chain this module knows how to cut channels out of."""


@dataclass
class ConvSite:
    """A conv whose output channels may be cut, with the layers that read those channels."""

    conv: str                 # qualified name inside the backbone
    bn: str | None            # BatchNorm2d right after it
    next_conv: str | None     # the next conv in the chain (its input channels follow)
    feeds_output: bool        # the backbone's pooled output is this conv's channels


def _is_flatten(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten)


def conv_chain(backbone: nn.Module) -> list[ConvSite]:
    """The shrinkable convs of a chain-shaped backbone, in order; raises CannotShrink."""
    try:
        graph = torch.fx.symbolic_trace(backbone).graph
    except Exception as exc:
        raise CannotShrink(f"the backbone cannot be traced with torch.fx ({type(exc).__name__})") from None
    nodes = [n for n in graph.nodes if n.op not in ("placeholder", "output")]
    previous = next(n for n in graph.nodes if n.op == "placeholder")
    kinds: list[tuple[str, str | None]] = []  # (kind, module name) along the chain
    for node in nodes:
        if list(node.all_input_nodes) != [previous] or len(previous.users) != 1:
            raise CannotShrink(f"{node.name}: not a plain chain of layers (a branch or residual addition)")
        previous = node
        if _is_flatten(node):
            kinds.append(("flatten", None))
            continue
        if node.op != "call_module":
            raise CannotShrink(f"{node.name}: operation {node.target} is not one channel pruning handles")
        module = backbone.get_submodule(node.target)
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise CannotShrink(f"{node.target}: grouped/depthwise conv (groups={module.groups})")
            kinds.append(("conv", node.target))
        elif isinstance(module, nn.BatchNorm2d):
            kinds.append(("bn", node.target))
        elif isinstance(module, GLOBAL_POOLS):
            if module.output_size not in (1, (1, 1)):
                raise CannotShrink(f"{node.target}: adaptive pooling to {module.output_size}, not global")
            kinds.append(("global_pool", node.target))
        elif isinstance(module, PASS_THROUGH):
            kinds.append(("pass", node.target))
        else:
            raise CannotShrink(f"{node.target}: {type(module).__name__} is not a layer channel pruning handles")
    sites: list[ConvSite] = []
    convs = [i for i, (kind, _) in enumerate(kinds) if kind == "conv"]
    for j, i in enumerate(convs):
        end = convs[j + 1] if j + 1 < len(convs) else len(kinds)
        between = kinds[i + 1:end]
        bns = [name for kind, name in between if kind == "bn"]
        if len(bns) > 1:
            raise CannotShrink(f"{kinds[i][1]}: more than one BatchNorm before the next conv")
        if bns and between[0][0] != "bn":
            raise CannotShrink(f"{bns[0]}: BatchNorm not right after its conv")
        last = j + 1 == len(convs)
        tail = [kind for kind, _ in between]
        feeds_output = last and "global_pool" in tail and tail[-1] in ("flatten", "global_pool")
        if "flatten" in tail and not last:
            raise CannotShrink("flatten before the last conv")
        if last and not feeds_output:
            continue  # its channels leave as a feature map: keep them
        sites.append(ConvSite(conv=str(kinds[i][1]), bn=bns[0] if bns else None,
                              next_conv=None if last else str(kinds[convs[j + 1]][1]), feeds_output=feeds_output))
    if not sites:
        raise CannotShrink("no conv layer whose output channels can be removed")
    return sites


def channel_importance(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    """|BN scale| * L1 norm of each output filter: the filter's magnitude after BN folding."""
    norm = conv.weight.detach().abs().flatten(1).sum(1)
    if bn is not None and bn.affine and bn.track_running_stats:
        norm = norm * (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))
    return norm


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` where `name` is, in the train/eval mode of the module it replaces."""
    module.train(root.get_submodule(name).training)
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _slim_conv(conv: nn.Conv2d, keep_in: torch.Tensor, keep_out: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(len(keep_in), len(keep_out), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new.weight.data = conv.weight.data[keep_out][:, keep_in].clone()
    if conv.bias is not None:
        new.bias.data = conv.bias.data[keep_out].clone()
    return new


def _slim_bn(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight.data = bn.weight.data[keep].clone()
        new.bias.data = bn.bias.data[keep].clone()
    if bn.track_running_stats:
        new.running_mean.data = bn.running_mean.data[keep].clone()
        new.running_var.data = bn.running_var.data[keep].clone()
        new.num_batches_tracked.data = bn.num_batches_tracked.data.clone()
    return new


def _slim_linear_inputs(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep), linear.out_features, bias=linear.bias is not None)
    new.weight.data = linear.weight.data[:, keep].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data.clone()
    return new


Chooser = Callable[[str, nn.Conv2d, nn.BatchNorm2d | None], torch.Tensor]


@torch.no_grad()
def _shrink_encoder(model: MultiModalNet, modality: str, choose: Chooser) -> dict[str, int]:
    encoder = model.encoders[modality]
    backbone = encoder.backbone
    sites = conv_chain(backbone)
    plan: dict[str, int] = {}
    keep_in: torch.Tensor | None = None
    pending_in: dict[str, torch.Tensor] = {}
    for site in sites:
        conv = backbone.get_submodule(site.conv)
        bn = backbone.get_submodule(site.bn) if site.bn else None
        keep_in = pending_in.pop(site.conv, torch.arange(conv.in_channels))
        keep_out = torch.sort(choose(site.conv, conv, bn)).values
        _replace(backbone, site.conv, _slim_conv(conv, keep_in, keep_out))
        if bn is not None:
            _replace(backbone, site.bn, _slim_bn(bn, keep_out))
        if site.next_conv is not None:
            pending_in[site.next_conv] = keep_out
        if site.feeds_output:
            projection = model.projections[modality]
            projection[0] = _slim_linear_inputs(projection[0], keep_out).train(projection[0].training)
            encoder.out_dim = len(keep_out)
            if hasattr(backbone, "num_features"):
                backbone.num_features = len(keep_out)
        plan[site.conv] = len(keep_out)
    for name, keep in pending_in.items():  # the last conv kept its outputs; its inputs shrink
        conv = backbone.get_submodule(name)
        _replace(backbone, name, _slim_conv(conv, keep, torch.arange(conv.out_channels)))
    return plan


def shrinkable_encoders(model: MultiModalNet) -> list[str]:
    return [m for m in model.modalities if isinstance(model.encoders[m], ImageEncoder) and model.encoders[m].trainable]


def prune_channels(model: MultiModalNet, channel_sparsity: float) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Remove the fraction `channel_sparsity` of output channels of every shrinkable conv.
    Returns (plan {modality: {conv: channels kept}}, notes on encoders left as they were);
    raises CannotShrink when no encoder of the model can be shrunk."""

    def choose(name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
        keep = max(1, int(round(conv.out_channels * (1 - channel_sparsity))))
        return torch.topk(channel_importance(conv, bn), keep).indices

    plan: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    for modality in model.modalities:
        if modality not in shrinkable_encoders(model):
            notes.append(f"encoders.{modality}: {type(model.encoders[modality]).__name__} "
                         f"({'frozen' if not getattr(model.encoders[modality], 'trainable', True) else 'not an image CNN'}) "
                         "kept whole")
            continue
        try:
            plan[modality] = _shrink_encoder(model, modality, choose)
        except CannotShrink as exc:
            notes.append(f"encoders.{modality}: {exc}; kept whole")
    if not plan:
        raise CannotShrink("; ".join(notes) or "no encoder to shrink")
    return plan, notes


def rebuild(model: MultiModalNet, plan: dict[str, dict[str, int]]) -> MultiModalNet:
    """Give a freshly built student the shape a pruning plan left (weights to be loaded next)."""
    for modality, convs in plan.items():
        _shrink_encoder(model, modality, lambda name, conv, bn: torch.arange(convs.get(name, conv.out_channels)))
    return model


def plan_to_metadata(plan: dict[str, dict[str, int]]) -> str:
    return json.dumps(plan, sort_keys=True)


def plan_from_metadata(text: str) -> dict[str, dict[str, int]]:
    return {m: {k: int(v) for k, v in convs.items()} for m, convs in json.loads(text).items()}


def conv_widths(model: MultiModalNet) -> dict[str, list[int]]:
    """Output channels of each conv, per image encoder (for the report)."""
    return {m: [c.out_channels for c in model.encoders[m].modules() if isinstance(c, nn.Conv2d)]
            for m in model.modalities if isinstance(model.encoders[m], ImageEncoder)}
