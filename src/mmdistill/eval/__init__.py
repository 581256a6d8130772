"""Evaluation: per-task metrics from collected predictions, and the plots of a run."""
