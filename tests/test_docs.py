"""The docs stay true: every config key docs/from-the-seeds.md tells a seed's user to set exists
in the schema, so a renamed key cannot leave a translation table pointing at nothing."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel

from mmdistill.config.schema import ExperimentConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTIONS = set(ExperimentConfig.model_fields)
RESULTS_PATH = re.compile(r"^(teacher|student|baseline)\.(dev|test)\.")
FILE = re.compile(r"\.(md|json|csv|png|npy|yaml)$")


def _exists(tp: Any, parts: list[str]) -> bool:
    """Whether the dotted `parts` lead somewhere in type `tp` (a pydantic model, dict, union)."""
    if not parts or tp is Any:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _exists(args[0], parts)
    if origin is Union:
        return any(_exists(a, parts) for a in args if a is not type(None))
    if origin is dict:
        return _exists(args[1], parts[1:])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(parts[0])
        return field is not None and _exists(field.annotation, parts[1:])
    return False


def _our_keys(text: str) -> list[str]:
    keys = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        ours = line.strip("|").split(" | ")[-1]
        for key in re.findall(r"`([a-z_]+(?:\.[A-Za-z_<>{},]+)+)`", ours):
            key = key.replace("<stage>", "student").replace("{rgb,ir}", "rgb")
            if key.split(".")[0] in SECTIONS and not RESULTS_PATH.match(key) and not FILE.search(key):
                keys.append(key)
    return keys


def test_every_key_the_seed_translation_names_exists():
    keys = _our_keys((DOCS / "from-the-seeds.md").read_text())
    assert len(keys) > 60  # the tables were read
    missing = [k for k in keys if not _exists(ExperimentConfig, k.split("."))]
    assert missing == []


def test_the_checker_rejects_a_key_that_does_not_exist():
    assert not _exists(ExperimentConfig, "training.student.learning_rate".split("."))
    assert _exists(ExperimentConfig, "data.modalities.image.size".split("."))


def _row(text: str, seed_key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {seed_key} |"))


def test_seed_settings_we_support_are_translated_not_marked_missing():
    """A row written before a feature existed must not go on telling the seed's user it is
    missing: seed 004's W&B project has had a tracker since trackers came (issue 16)."""
    text = (DOCS / "from-the-seeds.md").read_text()
    row = _row(text, "`wandb_project`")
    assert "`logging.wandb.project`" in row and "not yet" not in row
    assert _exists(ExperimentConfig, "logging.wandb.project".split("."))
