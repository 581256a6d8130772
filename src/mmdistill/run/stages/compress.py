"""The compress stage (when the config has a `compress:` block): the trained student pruned,
quantized to int8 and exported to ONNX, each result scored on test and timed.

Reads: checkpoints/student_best.safetensors (and the teacher's, to fine-tune after pruning),
results.json. Writes: compressed/, compress.md, and the `compressed` entry of results.json.

Under DDP only rank 0 compresses, on one device: the models are small, the latencies are of one
process on one device, and a pruned student's short fine-tune is not worth a process group.
"""

from __future__ import annotations

from mmdistill.compress import compress_run
from mmdistill.distributed import is_writer, one_device, solo
from mmdistill.run.context import RunContext
from mmdistill.run.stages import Stage


class CompressStage(Stage):
    name = "compress"

    def run(self, run: RunContext) -> None:
        if not is_writer():
            return
        with solo():  # the other ranks are done: no barrier or gather may wait for them
            run.results = compress_run(run.dir.path, config=one_device(run.config), data=run.data)

    def finished(self, run: RunContext) -> dict | None:
        return {} if "compressed" in run.results else None

    def run_and_record(self, run: RunContext) -> None:
        self.run(run)  # results.json's `compressed` entry is its record

    def restore(self, run: RunContext, record: dict) -> None:
        pass
