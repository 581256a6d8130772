"""What every data source produces: records that remember where they came from.

A record keeps its `origin` ("metadata_train.csv line 12") so every later error about it
(unreadable image, unknown label) can name the file and row the user has to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    origin: str
    values: dict[str, Any]
    labels: dict[str, Any]


@dataclass
class SplitRecords:
    """The records of the three splits, plus the file each split came from."""

    splits: dict[str, list[Record]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    # column -> embedding size, from a source that knows it even when no record has one
    embedding_sizes: dict[str, int] = field(default_factory=dict)
