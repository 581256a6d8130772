"""mmdistill: train a multimodal teacher and distill it into a small, fast student."""

__version__ = "0.1.0"
