"""ONNX export of a TensorStudent and onnxruntime static int8 quantization.

- `export`: torch.onnx.export with the TorchScript-based exporter (`dynamo=False`: the
  torch.export-based default needs the onnxscript package, which mmdistill does not install),
  opset 17, a dynamic batch axis; inputs are named after the student's modalities and the one
  output `logits` holds the task logits side by side (see tensor_model).
- `quantize_int8`: onnxruntime.quantization.quantize_static after quant_pre_process (shape
  inference and graph optimization: Conv+BN folding), MinMax calibration on train samples,
  int8 per-channel weights and uint8 activations (the U8S8 combination onnxruntime's x86 int8
  kernels are built for; int8 activations in QOperator form fall back to a slow path here), in
  either QDQ form (QuantizeLinear/DequantizeLinear pairs that the runtime fuses into int8
  kernels) or QOperator form (QLinearConv, QLinearMatMul, ...).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from mmdistill.compress.measure import Predictor
from mmdistill.compress.tensor_model import TensorStudent, tensors_of
from mmdistill.io import atomic_path

OPSET = 17


def export(model: TensorStudent, example: tuple[torch.Tensor, ...], path: Path, card: str | None = None) -> None:
    """`card`: the model card (models/card.py) as JSON, stored in the file's metadata."""
    names = list(model.names)
    axes = {name: {0: "batch"} for name in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), example, str(tmp), dynamo=False, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
        if card is not None:
            stamp_card(tmp, card)


def stamp_card(path: Path, card: str) -> None:
    """Store the model card in the ONNX file's metadata_props (key `mmdistill`), so the file says
    which inputs it takes, how to prepare them and what its output columns are."""
    import onnx

    from mmdistill.models.card import METADATA_KEY

    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=card)
    onnx.save(model, str(path))


def _reader(batches: Iterable[dict[str, np.ndarray]]):
    """An onnxruntime CalibrationDataReader over batches of named numpy inputs."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(list(batches))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


def quantize_int8(fp32_path: Path, path: Path, calibration: Iterable[dict[str, np.ndarray]], fmt: str,
                  card: str | None = None) -> None:
    """Static int8 model of `fp32_path` in `fmt` ("qdq" | "qoperator") at `path`, carrying `card`."""
    root = logging.getLogger()  # onnxruntime.quantization warns through the root logger about
    level = root.level          # weights it leaves float (LayerNorm scales); keep the terminal quiet
    root.setLevel(logging.ERROR)
    try:
        _quantize(fp32_path, path, calibration, fmt, card)
    finally:
        root.setLevel(level)


def _quantize(fp32_path: Path, path: Path, calibration: Iterable[dict[str, np.ndarray]], fmt: str,
              card: str | None) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre))
        with atomic_path(path) as tmp:
            out = Path(work) / "int8.onnx"
            quantize_static(str(pre), str(out), _reader(calibration),
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            if card is not None:
                stamp_card(out, card)
            tmp.write_bytes(out.read_bytes())


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predictor(sess: Any, names: list[str]) -> Predictor:
    def predict(inputs: dict[str, Any]) -> torch.Tensor:
        feed = {n: t.numpy() for n, t in zip(names, tensors_of(inputs, names))}
        return torch.from_numpy(sess.run(["logits"], feed)[0])

    return predict


def numpy_batches(batches: Iterable[tuple[torch.Tensor, ...]], names: list[str]) -> list[dict[str, np.ndarray]]:
    return [{n: t.numpy() for n, t in zip(names, inputs)} for inputs in batches]
