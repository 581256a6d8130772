"""mmdistill: train a multimodal teacher and distill it into a small, fast student.

    model = mmdistill.load("runs/demo", model="best")   # or "fp32", "teacher", a compressed model, an .onnx file
    model.classes                                       # {task: [class, ...]}
    model.predict(["a.png", "b.png"])                   # {task: probabilities}
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(source, model=None):
    """A trained or compressed model ready to apply (imported lazily: the CLI need not load torch
    to parse its arguments); see mmdistill.predict.model."""
    from mmdistill.predict import load as load_model

    return load_model(source, model)
