"""`mmdistill predict` and `mmdistill.load`: a run's student (or any compressed model, or a bare
ONNX file) applied to new data with exactly the run's preprocessing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmdistill
from conftest import tiny_config, write_config
from mmdistill.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def run_dir(demo_root, tmp_path_factory):
    """A run whose student is compressed to ONNX (fp32, int8) and FX int8."""
    out = tmp_path_factory.mktemp("predict")
    raw = tiny_config(demo_root, out / "runs", text_teacher=True)
    raw["training"]["student"].update(epochs=4)
    raw["training"]["baseline"] = False
    raw["logging"]["plots"] = False
    raw["compress"] = {"methods": ["onnx", "int8_static"], "finetune_epochs": 0, "repeats": 3, "warmup": 1,
                       "calibration_samples": 32}
    assert main(["run", str(write_config(out / "c.yaml", raw))]) == 0
    return out / "runs" / "tiny"


def _predict(capsys, *args):
    code = main(["predict", *map(str, args), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _printed(out: str) -> dict[str, float]:
    """The metrics table predict prints: {task F1, task accuracy, score}."""
    values = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] not in ("task",):
            values[f"{parts[0]}.f1"], values[f"{parts[0]}.accuracy"] = float(parts[1]), float(parts[3])
        if parts and parts[0] == "score":
            values["score"] = float(parts[1])
    return values


def test_the_fp32_student_on_its_own_test_split_reproduces_results_json(run_dir, demo_root, tmp_path, capsys):
    code, out, err = _predict(capsys, run_dir, demo_root / "test.csv", "--model", "fp32", "--out", tmp_path / "p.csv")
    assert code == 0, err
    results = json.loads((run_dir / "results.json").read_text())["student"]["test"]
    printed = _printed(out)
    assert printed["score"] == pytest.approx(results["score"], abs=5e-5)
    for task, m in results["tasks"].items():
        assert printed[f"{task}.f1"] == pytest.approx(m["f1"], abs=5e-5)
        assert printed[f"{task}.accuracy"] == pytest.approx(m["accuracy"], abs=5e-5)
    rows = _rows(tmp_path / "p.csv")
    assert len(rows) == 32 and rows[0]["id"].endswith("test.csv line 2")
    probs = [float(rows[0][f"finding_prob_{c}"]) for c in results["tasks"]["finding"]["classes"]]
    assert sum(probs) == pytest.approx(1, abs=1e-5) and 0 <= float(rows[0]["urgent_prob"]) <= 1
    # exactly the run's numbers, AUROC included (a ranking of every sample's probability)
    model = mmdistill.load(run_dir, model="fp32")
    from mmdistill.predict.command import label_metrics, predict_items
    from mmdistill.predict.inputs import read_input

    items, labelled = read_input(demo_root / "test.csv", model.card)
    logits, errors = predict_items(model, items, workers=0, progress=False)
    metrics, _ = label_metrics(model.card, items, logits, errors)
    assert labelled and metrics["score"] == results["score"]
    assert {t: m["auroc"] for t, m in metrics["tasks"].items()} == {t: m["auroc"] for t, m in results["tasks"].items()}


@pytest.mark.parametrize("name", ["best", "int8_static_fx", "onnx_int8_qdq"])
def test_a_compressed_model_scores_what_compress_recorded(run_dir, demo_root, tmp_path, capsys, name):
    results = json.loads((run_dir / "results.json").read_text())
    entries = results["compressed"]
    entry = next(e for e in entries.values() if e.get("default_int8")) if name == "best" else entries[name]
    code, out, err = _predict(capsys, run_dir, demo_root / "test.csv", "--model", name, "--out", tmp_path / "q.csv")
    assert code == 0, err
    assert _printed(out)["score"] == pytest.approx(entry["score"], abs=5e-5)
    fp32 = mmdistill.load(run_dir, "fp32").predict([{"image": str(demo_root / r["image"])} for r in
                                                   _rows(demo_root / "test.csv")])
    rows = _rows(tmp_path / "q.csv")
    same = [np.mean([r["finding"] == fp32_class for r, fp32_class in
                     zip(rows, np.array(results["tasks"]["finding"]["classes"])[fp32["finding"].argmax(1)])]),
            np.mean([(r["urgent"] == "1") == (p > 0.5) for r, p in zip(rows, fp32["urgent"])])]
    assert np.mean(same) == pytest.approx(entry["agreement"], abs=1e-9)  # the agreement compress recorded


def test_a_folder_gives_predictions_for_the_good_images_and_an_error_for_the_bad(run_dir, demo_root, tmp_path,
                                                                               capsys):
    folder = tmp_path / "inbox"
    (folder / "deeper").mkdir(parents=True)
    rgb = np.asarray(Image.open(demo_root / "images" / "test_0000.png").convert("RGB"))
    Image.fromarray(rgb).convert("L").save(folder / "gray.jpg")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(folder / "deeper" / "sixteen.png")
    assert Image.open(folder / "deeper" / "sixteen.png").mode.startswith("I;16")
    (folder / "broken.png").write_bytes((demo_root / "images" / "test_0001.png").read_bytes()[:60])
    code, out, err = _predict(capsys, run_dir, folder, "--out", tmp_path / "f.csv", "--model", "fp32")
    assert code == 0
    rows = {Path(r["id"]).name: r for r in _rows(tmp_path / "f.csv")}
    assert set(rows) == {"gray.jpg", "sixteen.png", "broken.png"}
    assert rows["gray.jpg"]["error"] == rows["sixteen.png"]["error"] == ""
    assert rows["gray.jpg"]["finding"] and rows["sixteen.png"]["finding"]
    assert "cannot read image" in rows["broken.png"]["error"] and rows["broken.png"]["finding"] == ""
    assert "1 of 3 input(s) could not be predicted" in err and "broken.png" in err

    code, out, err = _predict(capsys, run_dir, folder, "--out", tmp_path / "g.csv", "--strict", "--workers", "0")
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.csv").exists()


def test_bad_sources_and_inputs_exit_2_naming_what_is_missing(run_dir, demo_root, tmp_path, capsys):
    code, _, err = _predict(capsys, tmp_path / "nowhere", demo_root / "test.csv")
    assert code == 2 and "nowhere: run directory not found" in err
    table = tmp_path / "t.csv"
    table.write_text("picture,finding\nimages/test_0000.png,horizontal_mild\n")
    code, _, err = _predict(capsys, run_dir, table)
    assert code == 2 and "missing column 'image'" in err
    code, _, err = _predict(capsys, run_dir, demo_root / "test.csv", "--model", "nope")
    assert code == 2 and "no model 'nope'" in err and "int8_static_fx" in err
    code, _, err = _predict(capsys, run_dir, demo_root / "images", "--model", "teacher")
    assert code == 2 and "reads image (image), report (text)" in err  # the teacher needs its text too


def test_bad_rows_of_a_table_are_errors_and_a_table_without_a_column_exits_2(run_dir, demo_root, tmp_path, capsys):
    """JSONL rows may differ: a row without the image column, with a missing file or an empty
    path is an error in its row; a column that no row has is the table's fault (exit 2)."""
    table = tmp_path / "rows.jsonl"
    good = str(demo_root / "images" / "test_0000.png")
    rows = [{"image": good}, {"report": "no image"}, {"image": str(tmp_path / "gone.png")}, {"image": " "}]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = _predict(capsys, run_dir, table, "--model", "fp32", "--out", tmp_path / "p.jsonl",
                              "--workers", "0")
    assert code == 0, err
    written = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["error"] == "" for r in written] == [True, False, False, False]
    assert "missing column 'image'" in written[1]["error"] and "gone.png" in written[2]["error"]
    assert "empty image path" in written[3]["error"] and written[3]["finding"] == ""
    assert "3 of 4 input(s) could not be predicted" in err and "rows.jsonl line 2" in err

    table.write_text("".join(json.dumps({"picture": good}) + "\n" for _ in range(2)))
    code, _, err = _predict(capsys, run_dir, table, "--model", "fp32", "--out", tmp_path / "q.jsonl")
    assert code == 2 and "missing column 'image'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q.jsonl").exists()


def test_output_as_parquet_jsonl_or_csv_on_stdout(run_dir, demo_root, tmp_path, capsys):
    """The same rows whatever the format; with `-` stdout holds the CSV alone, the metrics go
    to stderr."""
    import pyarrow.parquet as pq

    head = (demo_root / "test.csv").read_text().splitlines()[:4]
    table = tmp_path / "three.csv"
    table.write_text("\n".join(head) + "\n")
    (tmp_path / "images").symlink_to(demo_root / "images")
    args = (run_dir, table, "--model", "fp32", "--workers", "0")
    assert _predict(capsys, *args, "--out", tmp_path / "p.csv")[0] == 0
    expected = _rows(tmp_path / "p.csv")
    assert list(expected[0]) == ["id", "finding", *[f"finding_prob_{c}" for c in mmdistill.load(run_dir, "fp32")
                                                   .classes["finding"]], "urgent", "urgent_prob", "error"]
    assert _predict(capsys, *args, "--out", tmp_path / "p.parquet")[0] == 0
    assert _predict(capsys, *args, "--out", tmp_path / "p.jsonl")[0] == 0
    code, out, err = _predict(capsys, *args, "--out", "-")
    assert code == 0 and "score" in err and "score" not in out
    as_csv = list(csv.DictReader(out.splitlines()))
    for other in (pq.read_table(tmp_path / "p.parquet").to_pylist(),
                  [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()], as_csv):
        assert [{k: str(v) for k, v in r.items()} for r in other] == expected


def test_a_run_directory_missing_files_exits_2_in_one_line(run_dir, demo_root, tmp_path, capsys):
    """A run directory filled file by file: each missing piece is named in one line."""
    import shutil

    partial, image = tmp_path / "partial", demo_root / "images" / "test_0000.png"
    partial.mkdir()
    steps = [("config.yaml", "fp32", "results.json missing"), ("results.json", "fp32", "student checkpoint missing"),
             ("checkpoints", "int8_static_fx", "compressed model file missing")]
    for present, model, message in steps:
        copy = shutil.copytree if (run_dir / present).is_dir() else shutil.copy
        copy(run_dir / present, partial / present)
        code, _, err = _predict(capsys, partial, image, "--model", model, "--out", tmp_path / "x.csv")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_run_applies_where_its_training_inputs_are_gone(run_dir, demo_root, tmp_path):
    """Moved to another machine: the periodic checkpoint it resumed from rotated away, its timm
    student's initial weights (pretrained, a local checkpoint) absent. The run's own
    checkpoint is all the student needs."""
    import shutil

    import yaml

    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.models.build import build_net
    from mmdistill.models.checkpoints import save_weights
    from mmdistill.predict.model import RunModels, applying_config

    moved = tmp_path / "moved"
    (moved / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "results.json", moved)
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    raw["training"]["student"]["resume_from"] = str(tmp_path / "rotated" / "student_epoch2.ckpt")
    raw["student"]["encoders"]["image"] = {"type": "timm", "name": "test_efficientnet", "pretrained": True,
                                           "checkpoint": str(tmp_path / "gone" / "weights.safetensors")}
    (moved / "config.yaml").write_text(yaml.safe_dump(raw))
    net = build_net(ExperimentConfig.model_validate(applying_config(raw)), "student", RunModels(run_dir).tasks())
    save_weights(net, moved / "checkpoints" / "student_best.safetensors")
    image = demo_root / "images" / "test_0000.png"
    probs = mmdistill.load(moved, "fp32").predict(image)
    assert probs["finding"].shape == (1, 4) and np.isfinite(probs["urgent"]).all()


def test_every_onnx_file_describes_itself(run_dir):
    """Each ONNX file compress wrote carries the card: input names (the graph's), size,
    channel order, mean/std as results.json records them, and the tasks' classes."""
    import onnxruntime as ort

    results = json.loads((run_dir / "results.json").read_text())
    onnx_entries = [e for e in results["compressed"].values() if e["format"] == "onnx"]
    assert len(onnx_entries) >= 3  # fp32, int8 QDQ, int8 QOperator
    for entry in onnx_entries:
        session = ort.InferenceSession(str(run_dir / entry["file"]), providers=["CPUExecutionProvider"])
        card = json.loads(session.get_modelmeta().custom_metadata_map["mmdistill"])
        assert [i["name"] for i in card["inputs"]] == [i.name for i in session.get_inputs()] == ["image"]
        spec = card["inputs"][0]
        assert spec["size"] == [16, 16] and spec["channels"] == [3] and card["channel_order"] == "RGB"
        assert (spec["mean"], spec["std"]) == (results["image_stats"]["image"]["mean"],
                                               results["image_stats"]["image"]["std"])
        assert {t["name"]: t["classes"] for t in card["tasks"]} == {t: m["classes"] for t, m in results["tasks"].items()}


def test_the_teacher_predicts_from_a_table_with_its_text(run_dir, demo_root, tmp_path, capsys):
    code, out, err = _predict(capsys, run_dir, demo_root / "test.csv", "--model", "teacher", "--out", tmp_path / "t.csv")
    assert code == 0, err
    teacher = json.loads((run_dir / "results.json").read_text())["teacher"]["test"]
    assert _printed(out)["score"] == pytest.approx(teacher["score"], abs=5e-5)


def test_a_bare_onnx_file_needs_nothing_but_itself(run_dir, demo_root, tmp_path, capsys):
    results = json.loads((run_dir / "results.json").read_text())
    onnx_file = run_dir / results["compressed"]["onnx_int8_qdq"]["file"]
    alone = tmp_path / "alone.onnx"
    alone.write_bytes(onnx_file.read_bytes())  # away from its run directory
    code, out, err = _predict(capsys, alone, demo_root / "test.csv", "--out", tmp_path / "o.csv")
    assert code == 0, err
    assert _printed(out)["score"] == pytest.approx(results["compressed"]["onnx_int8_qdq"]["score"], abs=5e-5)
    model = mmdistill.load(alone)
    assert model.classes == {t: m["classes"] for t, m in results["tasks"].items()}
    assert model.card.inputs[0].size == [16, 16] and model.card.inputs[0].mean == results["image_stats"]["image"]["mean"]


def test_the_python_api(run_dir, demo_root):
    model = mmdistill.load(run_dir)  # the default: the int8 model compress chose
    entries = json.loads((run_dir / "results.json").read_text())["compressed"]
    assert entries[model.name].get("default_int8")
    paths = [demo_root / "images" / f"test_000{i}.png" for i in range(3)]
    probs = model.predict(paths)
    assert probs["finding"].shape == (3, 4) and probs["urgent"].shape == (3,)
    np.testing.assert_allclose(probs["finding"].sum(1), 1, atol=1e-5)
    with Image.open(paths[0]) as image:
        one = model.predict(image)
    np.testing.assert_allclose(one["finding"][0], probs["finding"][0], atol=1e-6)
    with pytest.raises(mmdistill.errors.UserError, match="input 0 .*cannot read image"):
        model.predict(["missing.png"])


def test_the_readme_snippet_runs_on_plain_onnxruntime(run_dir, demo_root, tmp_path):
    """The README's code, which uses onnxruntime, PIL and numpy only, run as written."""
    code = README.read_text().split("<!-- onnx-snippet -->")[1].split("```python")[1].split("```")[0]
    results = json.loads((run_dir / "results.json").read_text())
    onnx_file = run_dir / results["compressed"]["onnx_int8_qdq"]["file"]
    image = demo_root / "images" / "test_0003.png"
    code = code.replace('"student_int8_qdq.onnx"', repr(str(onnx_file))).replace('"photo.png"', repr(str(image)))
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    expected = mmdistill.load(onnx_file).predict(image)
    assert len(code.strip().splitlines()) <= 15
    for task, probs in scope["probabilities"].items():
        np.testing.assert_allclose(probs, expected[task][0], atol=0.05)  # PIL's resize, not mmdistill's


def test_export_is_the_models_own_forward(demo_root):
    """normalize_projections and complete masking are part of what is exported."""
    import torch

    from mmdistill.compress.tensor_model import tensor_student
    from mmdistill.config.schema import EmbeddingModality, ImageModality, ModelSpec
    from mmdistill.models.net import MultiModalNet, TaskInfo

    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4]}, "text": {"type": "mlp"}},
                                     "projection_dim": 8, "normalize_projections": True,
                                     "masking": {"complete": "text"}})
    mods = {"image": ImageModality(kind="image", column="i", size=8), "text": EmbeddingModality(kind="embedding", column="t")}
    tasks = [TaskInfo("y", "multiclass", ("a", "b", "c")), TaskInfo("z", "binary", ("0", "1"))]
    net = MultiModalNet(spec, mods, tasks, {"text": 5}).eval()
    x = {"image": torch.randn(4, 3, 8, 8), "text": torch.randn(4, 5)}
    out = net(x)
    flat = tensor_student(net)(x["image"], x["text"])
    torch.testing.assert_close(flat[:, :3], out.logits["y"])
    torch.testing.assert_close(flat[:, 3], out.logits["z"])
    noisy = tensor_student(net)(x["image"], torch.randn(4, 5) * 100)  # text is masked: it cannot matter
    torch.testing.assert_close(noisy, flat)


def test_the_default_int8_model_is_chosen_on_dev(run_dir):
    entries = json.loads((run_dir / "results.json").read_text())["compressed"]
    assert all("dev_score" in e for e in entries.values())
    notes = (run_dir / "compress.md").read_text()
    assert re.search(r"within 0\.01 of the fp32 dev score|none is within 0\.01 of the fp32 dev score", notes)
