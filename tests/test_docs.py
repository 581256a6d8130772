"""The docs stay true: every config key docs/from-the-seeds.md tells a seed's user to set exists
in the schema, so a renamed key cannot leave a translation table pointing at nothing; every
`mmdistill` command the README and docs/ show names a real subcommand, flag, `--set` key, demo
kind and recipe; every link between them leads somewhere; and the README stays short."""

from __future__ import annotations

import argparse
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel

from mmdistill.cli import build_parser
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.demo import DEMO_KINDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
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


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its words) of every `mmdistill ...` in the code of a page: inline code and
    fenced blocks, continued lines joined, `&&` / `;` / `|` chains split."""
    found = []
    for fenced, inline in re.findall(r"```[a-z]*\n(.*?)```|`([^`\n]+)`", text, re.S):
        block = fenced or inline
        for part in re.split(r"&&|;|\||\n", block.replace("\\\n", " ")):
            match = re.search(r"(?:^|[\s/])mmdistill\s+([a-z][a-z-]*)(.*)", part.split("#")[0])
            if match:
                found.append((match.group(1), [w.strip("'\"") for w in match.group(2).split()]))
    return found


def _key_exists(key: str) -> bool:
    """A config key; a sweep grid's own keys are config keys (`sweep.grid.objective.preset`)."""
    return _exists(ExperimentConfig, key.removeprefix("sweep.grid.").split("."))


def _command_problems(sub: str, words: list[str], parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    if sub not in parsers:
        return [f"no subcommand {sub}"]
    flags = {flag for action in parsers[sub]._actions for flag in action.option_strings}
    problems = [f"{sub} has no {w}" for w in words if w.startswith("--") and w.split("=")[0] not in flags]
    problems += [f"no config key {w.split('=')[0]}" for prev, w in zip(words, words[1:])
                 if prev == "--set" and "=" in w and not _key_exists(w.split("=")[0])]
    problems += [f"no file {w}" for w in words
                 if re.fullmatch(r"recipes/[\w./-]+\.yaml", w) and not (ROOT / w).is_file()]
    if sub == "demo-data" and words and words[0].islower() and words[0] not in DEMO_KINDS:  # KIND: a placeholder
        problems.append(f"no demo kind {words[0]}")
    return problems


def _parsers() -> dict[str, argparse.ArgumentParser]:
    return {name: parser for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)
            for name, parser in action.choices.items()}


def test_every_command_in_the_readme_and_docs_exists():
    parsers = _parsers()
    commands = [(page.name, sub, words) for page in PAGES for sub, words in _commands(page.read_text())]
    assert len(commands) > 50  # the pages were read
    problems = [f"{name}: mmdistill {sub} {' '.join(words)}: {p}" for name, sub, words in commands
                for p in _command_problems(sub, words, parsers)]
    assert problems == []


def test_the_command_checker_rejects_what_does_not_exist():
    parsers = _parsers()
    assert _commands("run `mmdistill run recipes/demo.yaml --fast`, then\n```\nmmdistill demo-data x D && \\\n"
                     "  mmdistill cache runs --older-than 3  # prune\n```") == [
        ("run", ["recipes/demo.yaml", "--fast"]), ("demo-data", ["x", "D"]), ("cache", ["runs", "--older-than", "3"])]
    assert _command_problems("run", ["recipes/demo.yaml", "--fast"], parsers) == ["run has no --fast"]
    assert _command_problems("run", ["recipes/nope.yaml", "--set", "training.nope=1"], parsers) == [
        "no config key training.nope", "no file recipes/nope.yaml"]
    assert _command_problems("demo-data", ["nope", "D"], parsers) == ["no demo kind nope"]
    assert _command_problems("train", [], parsers) == ["no subcommand train"]


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
            for title in re.findall(r"^#+\s+(.*)$", page.read_text(), re.M)}


def test_every_link_between_the_readme_and_docs_leads_somewhere():
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path) if path else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
                broken.append(f"{page.name}: {link}")
    assert broken == []


def test_the_readme_stays_a_few_screens():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_architecture_page_shows_run_experiment_as_it_is():
    """docs/architecture.md sketches `run_experiment`'s loop: every line of the sketch is a line
    of the function, so the page cannot describe a resume rule the code no longer has."""
    from mmdistill.run.experiment import run_experiment

    page = (DOCS / "architecture.md").read_text()
    sketch = re.search(r"## A run, stage by stage.*?```python\n(.*?)```", page, re.S).group(1)
    code = {line.strip() for line in inspect.getsource(run_experiment).splitlines()}
    lines = [line.split("  #")[0].split(" #")[0].strip() for line in sketch.splitlines()]
    assert len(lines) > 3 and [line for line in lines if line and line not in code] == []
