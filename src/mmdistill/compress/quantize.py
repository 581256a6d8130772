"""PyTorch int8 quantization of a TensorStudent, on CPU.

- `dynamic`: torch.ao.quantization.quantize_dynamic on nn.Linear: int8 weights, activations
  quantized on the fly per batch. Convs stay float, so for a CNN student it saves little time.
- `static_fx`: FX graph mode (prepare_fx / convert_fx, the x86 backend). Conv+BN+ReLU are
  fused, observers calibrated on train samples, then convs, linears and LayerNorm run in int8;
  what has no int8 kernel (GELU, flatten) runs in float between dequantize / quantize nodes
  that convert_fx inserts.

torch 2.14 still ships both (with a deprecation note pointing at torchao); PT2E moved to torchao.
Quantized kernels have no deterministic variant: run a quantized model inside
`measure.nondeterministic()` in a process where a deterministic Lightning run switched
`torch.use_deterministic_algorithms` on (their CPU results are reproducible all the same).
A quantized model is saved as its state_dict (torch.save) and loaded with weights_only=True into
the same model rebuilt from the run's config: nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from mmdistill.compress.measure import nondeterministic
from mmdistill.compress.tensor_model import TensorStudent
from mmdistill.io import atomic_path

BACKEND = "x86"


def _quiet() -> None:
    warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*deprecated.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")


def dynamic(model: TensorStudent) -> nn.Module:
    """int8 weights for every nn.Linear; the rest unchanged (a copy: `model` is untouched)."""
    _quiet()
    torch.backends.quantized.engine = BACKEND
    with nondeterministic():
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _prepared(model: TensorStudent, example: tuple[torch.Tensor, ...]) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    _quiet()
    torch.backends.quantized.engine = BACKEND
    # the task logits are joined in float: a quantized cat would force one scale on heads whose
    # outputs have their own ranges
    mapping = get_default_qconfig_mapping(BACKEND).set_object_type(torch.cat, None)
    return prepare_fx(copy.deepcopy(model).eval(), mapping, example)


@torch.no_grad()
def static_fx(model: TensorStudent, calibration: Iterable[tuple[torch.Tensor, ...]]) -> nn.Module:
    """FX static int8: observers see the calibration batches, then convert_fx."""
    from torch.ao.quantization.quantize_fx import convert_fx

    batches = list(calibration)
    prepared = _prepared(model, batches[0])
    for inputs in batches:
        prepared(*inputs)
    with nondeterministic():
        return convert_fx(prepared)


def save(model: nn.Module, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load(kind: str, float_model: TensorStudent, path: Path, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """Rebuild the `kind` ("dynamic" | "static_fx") structure around `float_model` and load the
    saved int8 state into it (weights_only=True)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    state = torch.load(path, map_location="cpu", weights_only=True)
    with nondeterministic():
        if kind == "dynamic":
            model = dynamic(float_model)
        elif kind == "static_fx":
            with warnings.catch_warnings():  # observers that saw no data: their values are replaced below
                warnings.simplefilter("ignore")
                model = convert_fx(_prepared(float_model, example))
        else:
            raise ValueError(f"unknown quantization kind {kind!r}")
        model.load_state_dict(state)
    return model.eval()
