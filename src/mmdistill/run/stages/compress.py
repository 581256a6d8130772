"""The compress stage (when the config has a `compress:` block): the trained student pruned,
quantized to int8 and exported to ONNX, each result scored on test and timed.

Reads: checkpoints/student_best.safetensors (and the teacher's, to fine-tune after pruning),
results.json. Writes: compressed/, compress.md, and the `compressed` entry of results.json.
"""

from __future__ import annotations

from mmdistill.compress import compress_run
from mmdistill.run.context import RunContext
from mmdistill.run.stages import Stage


class CompressStage(Stage):
    name = "compress"

    def run(self, run: RunContext) -> None:
        run.results = compress_run(run.dir.path, config=run.config, data=run.data)
