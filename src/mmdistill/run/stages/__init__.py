"""The stages of a run, in the order they run; each reads what earlier stages left in the
`RunContext` and writes its own files into the run directory.

    teacher    trains the teacher (or loads `teacher.checkpoint`, or probes precomputed embeddings)
    student    distills the teacher into the student
    baseline   the same student on the supervised loss alone (or copied from the cache)
    report     confusion matrices, curves, t-SNE / UMAP maps, and results.json
    compress   prunes, quantizes and exports the student (when the config has `compress:`)

A new stage (a teacher assistant, predicting a held-out set) is one more class here and one
more entry in `run/experiment.py`'s list.
"""

from __future__ import annotations

from typing import ClassVar

from mmdistill.run.context import RunContext


class Stage:
    """One step of a run; its module's docstring says what it reads and what it writes."""

    name: ClassVar[str]

    def run(self, run: RunContext) -> None:
        raise NotImplementedError
