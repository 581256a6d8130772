"""Making a trained student ready for the edge: pruning, int8 quantization, ONNX export, and
measured size, speed and test score of every result.

    runfiles      read and check a finished run directory (config, results, checkpoints)
    tensor_model  the student as a plain tensor -> logits module (what FX and ONNX can take)
    prune_unstructured / prune_channels   magnitude pruning: masked weights, removed channels
    finetune      a few epochs of distillation from the run's teacher after pruning
    quantize      PyTorch int8: dynamic (Linear) and static FX graph mode (conv/linear)
    onnx_export   ONNX fp32 export and onnxruntime static int8 (QDQ and QOperator)
    measure       score, parameters, file size, latency and throughput
    report        the compress.md table
    pipeline      `compress_run`: all of the above for one run directory
"""

from __future__ import annotations

__all__ = ["compress_run"]


def compress_run(*args, **kwargs):
    """See mmdistill.compress.pipeline.compress_run (imported lazily: it pulls in onnxruntime)."""
    from mmdistill.compress.pipeline import compress_run as run

    return run(*args, **kwargs)
