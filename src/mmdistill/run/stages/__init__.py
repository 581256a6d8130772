"""The stages of a run, in the order they run; each reads what earlier stages left in the
`RunContext` and writes its own files into the run directory.

    teacher    trains the teacher (or loads `teacher.checkpoint`, or probes precomputed embeddings)
    student    distills the teacher into the student
    baseline   the same student on the supervised loss alone (or copied from the cache)
    report     confusion matrices, curves, t-SNE / UMAP maps, and results.json
    compress   prunes, quantizes and exports the student (when the config has `compress:`)

A new stage (a teacher assistant, predicting a held-out set) is one more class here and one
more entry in `run/experiment.py`'s list.

Each stage leaves a record when it finishes (`stages/<name>.json`: its results, and what it
added to results.json), so a re-run of the same command restores it instead of running it
again (`restore`: the record, and the models later stages need, from its checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, ClassVar

from mmdistill.run.context import RunContext
from mmdistill.train.fit import StageResult


class Stage:
    """One step of a run; its module's docstring says what it reads and what it writes."""

    name: ClassVar[str]

    def run(self, run: RunContext) -> None:
        raise NotImplementedError

    def finished(self, run: RunContext) -> dict[str, Any] | None:
        """This stage's record when an earlier attempt of the run finished it."""
        return run.dir.stage_record(self.name)

    def run_and_record(self, run: RunContext) -> None:
        """Run the stage, then record its result and what it added to results.json."""
        before = {k: json.dumps(v, sort_keys=True, default=str) for k, v in run.results.items()}
        self.run(run)
        added = {k: v for k, v in run.results.items() if json.dumps(v, sort_keys=True, default=str) != before.get(k)}
        result = run.stages.get(self.name)
        if result is not None:
            run.trackers.end_stage(self.name, result.dev, result.test, result.best_epoch)
        run.dir.write_stage_record(self.name, {"result": asdict(result) if result is not None else None,
                                               "results": added})
        run.dir.drop_last_checkpoint(self.name)  # the record replaces it

    def restore(self, run: RunContext, record: dict[str, Any]) -> None:
        """Take a finished stage's record back (stages that leave models later stages read
        reload them too)."""
        if record.get("result") is not None:
            run.stages[self.name] = StageResult(**record["result"])
        run.results.update(record.get("results", {}))
