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

    def finished(self, run: RunContext) -> dict | None:
        return {} if "compressed" in run.results else None

    def run_and_record(self, run: RunContext) -> None:
        self.run(run)  # results.json's `compressed` entry is its record

    def restore(self, run: RunContext, record: dict) -> None:
        pass
