"""Applying a trained or compressed model to new data: `mmdistill predict` and `mmdistill.load`.

    model.py       load a run's model (fp32, teacher, any compressed one) or a bare ONNX file,
                   each with the card that says how to feed it (models/card.py)
    inputs.py      what predict reads: a table, a folder of images, an image
    preprocess.py  items to model inputs exactly as the run prepared its own, in worker processes
    command.py     `mmdistill predict`: predict every item, write one row each, report metrics
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(source: str | Path, model: str | None = None) -> Any:
    """A run directory's model (`fp32`, `best`, `teacher` or a compressed one) or a bare `.onnx`
    file, ready to `.predict(...)`; see mmdistill.predict.model."""
    from mmdistill.predict.model import load as load_model

    return load_model(source, model)
