"""The MedPix source: the real MedPix 2.0 layout, joins on U_id, errors naming file and line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmdistill.preflight import load_config
from mmdistill.data.dataset import load_data
from mmdistill.data.demo import write_medpix
from mmdistill.errors import UserError

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "medpix_cpu.yaml"
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "MedPix-2-0"


@pytest.fixture(scope="module")
def medpix_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("medpix")
    write_medpix(root, seed=3, sizes={"train": 20, "dev": 8, "test": 8})
    return root


def _load(root: Path):
    return load_data(load_config(RECIPE, [f"data.root={root}"]))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/MedPix-2-0 is not beside this checkout")
def test_real_medpix_2_0_loads_with_published_split_sizes():
    data = _load(REAL)
    assert [len(data.datasets[s]) for s in ("train", "dev", "test")] == [1653, 197, 200]
    tasks = {t.name: t.classes for t in data.tasks}
    assert tasks["modality"] == ("CT", "MR")
    assert tasks["location"] == ("Abdomen", "Head", "Reproductive and Urinary System", "Spine and Muscles", "Thorax")
    first = data.datasets["train"].records[0]
    assert Path(first.values["image"]).name == "MPX1024_synpic40275.png"
    assert first.values["text"].startswith("CT of the chest reveals an obstructing mass")


def test_text_joins_description_and_case_fields(medpix_root):
    record = _load(medpix_root).datasets["dev"].records[0]
    caption, history, findings = record.values["text"].split(" | ")
    assert caption.endswith(".") and history.startswith("Patient") and findings.startswith("Lesion in the")


def _copy(medpix_root, tmp_path) -> Path:
    root = tmp_path / "mp"
    shutil.copytree(medpix_root, root)
    return root


def _edit_descriptions(root: Path, split: str, mutate) -> None:
    path = root / "splitted_dataset" / f"descriptions_{split}.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    mutate(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _error(root) -> str:
    with pytest.raises(UserError) as exc:
        _load(root)
    return str(exc.value)


def test_malformed_line_is_named(medpix_root, tmp_path):
    root = _copy(medpix_root, tmp_path)
    path = root / "splitted_dataset" / "descriptions_dev.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:20]
    path.write_text("\n".join(lines) + "\n")
    assert "descriptions_dev.jsonl line 3: malformed JSON" in _error(root)


def test_image_without_case_is_named(medpix_root, tmp_path):
    root = _copy(medpix_root, tmp_path)
    _edit_descriptions(root, "test", lambda rows: rows[1].update(U_id="MPX0"))
    msg = _error(root)
    assert "descriptions_test.jsonl line 2" in msg and "'MPX0' has no case" in msg


def test_missing_image_is_named(medpix_root, tmp_path):
    root = _copy(medpix_root, tmp_path)
    first = json.loads((root / "splitted_dataset" / "descriptions_train.jsonl").read_text().splitlines()[0])
    (root / "images" / f"{first['image']}.png").unlink()
    msg = _error(root)
    assert "descriptions_train.jsonl line 1" in msg and f"{first['image']}.png" in msg


def test_unseen_location_in_test_is_named(medpix_root, tmp_path):
    root = _copy(medpix_root, tmp_path)
    _edit_descriptions(root, "test", lambda rows: rows[0].update({"Location Category": "Knee"}))
    msg = _error(root)
    assert "descriptions_test.jsonl line 1" in msg and "'Knee'" in msg
