"""Process set-up every entry point shares (the CLI, a sweep's worker process, a SLURM job):
weights and tokenizers come from local files only, and the terminal is kept for our progress
bars and results, not library chatter."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from mmdistill.distributed import is_writer


def prepare_process() -> None:
    """Offline hub, quiet libraries, and mmdistill's own messages (a reused cache, a resumed
    stage) on stderr, one line each."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Experiment ... not found. Creating it."
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    ours = logging.getLogger("mmdistill")
    if not any(isinstance(h, _Stderr) for h in ours.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
        # under DDP every rank runs the command: rank 0 says what happens, the others only warn
        ours.setLevel(logging.INFO if is_writer() else logging.WARNING)


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a message comes (a test's capture, the terminal)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
