"""Statistics against scipy on fixed numbers, and aggregation of hand-written run directories."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from conftest import tiny_config
from mmdistill.sweep.aggregate import aggregate, flatten_metrics, lookup
from mmdistill.sweep.stats import describe, paired

A = [0.912, 0.884, 0.905, 0.931, 0.897]
B = [0.871, 0.880, 0.862, 0.902, 0.855]


def test_describe_matches_scipy():
    d = describe(A)
    assert d["n"] == 5 and d["values"] == A
    assert d["mean"] == pytest.approx(np.mean(A))
    assert d["std"] == pytest.approx(np.std(A, ddof=1))
    lo, hi = sps.t.interval(0.95, df=4, loc=np.mean(A), scale=sps.sem(A))
    assert d["ci95"] == pytest.approx([lo, hi])
    # three seeds, the seed-002 default: t with 2 degrees of freedom, wide interval
    d3 = describe([0.938, 0.880, 0.947])
    half = sps.t.ppf(0.975, 2) * np.std([0.938, 0.880, 0.947], ddof=1) / math.sqrt(3)
    assert d3["ci95"][1] - d3["mean"] == pytest.approx(half)


def test_describe_edge_cases_stay_json():
    assert describe([0.5]) == {"mean": 0.5, "std": None, "ci95": None, "n": 1, "values": [0.5]}
    assert describe([0.5, 0.5])["ci95"] == [0.5, 0.5]
    assert describe([])["mean"] is None
    json.dumps(describe([0.5]), allow_nan=False)


def test_paired_matches_scipy():
    p = paired(A, B)
    t = sps.ttest_rel(A, B)
    w = sps.wilcoxon(A, B)
    diff = np.subtract(A, B)
    assert p["n"] == 5
    assert p["mean_diff"] == pytest.approx(diff.mean())
    assert p["t"] == pytest.approx(t.statistic) and p["p_ttest"] == pytest.approx(t.pvalue)
    assert p["w"] == pytest.approx(w.statistic) and p["p_wilcoxon"] == pytest.approx(w.pvalue)
    assert p["cohens_d"] == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert p["p_ttest"] < 0.05 and not p["identical"]
    assert paired(B, A)["cohens_d"] == pytest.approx(-p["cohens_d"])


def test_paired_edge_cases():
    same = paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])  # a shared teacher compared with itself
    assert same["identical"] and same["p_ttest"] is None and same["p_wilcoxon"] is None and same["mean_diff"] == 0
    one = paired([0.5], [0.4])
    assert one["n"] == 1 and one["mean_diff"] == pytest.approx(0.1) and one["p_ttest"] is None
    constant = paired([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every seed +0.1: no variance, d undefined
    assert constant["cohens_d"] is None
    json.dumps([same, one, constant], allow_nan=False)
    with pytest.raises(ValueError):
        paired([1, 2], [1])


def _metrics(score: float, f1: tuple[float, float]) -> dict:
    return {"score": score, "tasks": {"finding": {"f1": score, "f1_macro": score, "accuracy": score + 0.01,
                                                  "f1_per_class": {"a": f1[0], "b": f1[1]}, "classes": ["a", "b"], "n": 10}}}


def _write_run(run_dir, seed, student, baseline, teacher=0.95, config_hash="h"):
    run_dir.mkdir(parents=True)
    results = {"experiment": "x", "seed": seed, "config_hash": config_hash}
    for role, score in (("teacher", teacher), ("student", student), ("baseline", baseline)):
        results[role] = {"dev": _metrics(score - 0.01, (score, score)), "test": _metrics(score, (score, score - 0.1)),
                         "best_epoch": 1}
    results["timing"] = {"total": 10.0}
    results["tasks"] = {"finding": {"type": "multiclass", "classes": ["a", "b"]}}
    (run_dir / "results.json").write_text(json.dumps(results))


def _fake_sweep(root, demo_root, tune=None):
    """Two variants x three seeds on disk, with a sweep.json as `mmdistill sweep` writes it."""
    student = {"preset-kd": [0.80, 0.82, 0.78], "preset-kl_bce": [0.86, 0.85, 0.84]}
    baseline = [0.75, 0.70, 0.76]
    runs = []
    for variant, scores in student.items():
        for seed, s, b in zip((1, 2, 3), scores, baseline):
            _write_run(root / variant / f"seed_{seed}", seed, s, b, config_hash=f"{variant}-{seed}")
            runs.append({"variant": variant, "seed": seed, "dir": str(root / variant / f"seed_{seed}"),
                         "config_hash": f"{variant}-{seed}", "teacher_dir": None})
    runs.append({"variant": "preset-kd", "seed": 4, "dir": str(root / "preset-kd" / "seed_4"), "config_hash": "never",
                 "teacher_dir": None})
    (root / "preset-kd" / "seed_4").mkdir()
    (root / "preset-kd" / "seed_4" / "error.log").write_text("Traceback ...\nRuntimeError: out of memory\n")
    base = tiny_config(demo_root, root.parent)
    manifest = {"experiment": "x", "config": "sweep.yaml", "seeds": [1, 2, 3, 4], "grid": {}, "tsne": False,
                "tune": tune or {"metric": "student.dev.score", "mode": "max"}, "base": base,
                "variants": [{"name": v, "overrides": {"objective.preset": v.removeprefix("preset-")}} for v in student],
                "teachers": [], "runs": runs}
    (root / "sweep.json").write_text(json.dumps(manifest))
    return student, baseline


def test_aggregate_statistics_comparisons_and_kd_gain(tmp_path, demo_root):
    root = tmp_path / "x"
    student, baseline = _fake_sweep(root, demo_root)
    agg = aggregate(root)
    assert json.loads((root / "aggregated_results.json").read_text()) == json.loads(json.dumps(agg))
    kd = agg["variants"]["preset-kd"]
    assert kd["seeds"] == [1, 2, 3]
    s = kd["metrics"]["student.test.score"]
    assert s["mean"] == pytest.approx(np.mean(student["preset-kd"])) and s["n"] == 3
    assert s["std"] == pytest.approx(np.std(student["preset-kd"], ddof=1))
    assert s["ci95"] == pytest.approx(list(sps.t.interval(0.95, 2, loc=np.mean(student["preset-kd"]),
                                                          scale=sps.sem(student["preset-kd"]))))
    assert "baseline.test.tasks.finding.f1_per_class.b" in kd["metrics"]
    assert "teacher.dev.tasks.finding.accuracy" in kd["metrics"]
    gain = kd["kd_gain"]["test.score"]
    diffs = np.subtract(student["preset-kd"], baseline)
    assert gain["mean"] == pytest.approx(diffs.mean()) and gain["seeds"] == [1, 2, 3]
    assert gain["test"]["p_ttest"] == pytest.approx(sps.ttest_rel(student["preset-kd"], baseline).pvalue)
    comp = agg["comparisons"]["preset-kd vs preset-kl_bce"]
    assert comp["seeds"] == [1, 2, 3]
    t = comp["metrics"]["student.test.score"]
    assert t["p_ttest"] == pytest.approx(sps.ttest_rel(student["preset-kd"], student["preset-kl_bce"]).pvalue)
    assert t["p_wilcoxon"] == pytest.approx(sps.wilcoxon(student["preset-kd"], student["preset-kl_bce"]).pvalue)
    assert comp["metrics"]["teacher.test.score"]["identical"]
    # Holm-Bonferroni over each family: the smallest p of m tests is multiplied by m
    gains = [v["kd_gain"]["test.score"]["test"] for v in agg["variants"].values() if v["kd_gain"]]
    smallest = min(gains, key=lambda g: g["p_ttest"])
    assert len(gains) >= 2 and smallest["p_holm"] == pytest.approx(min(1.0, len(gains) * smallest["p_ttest"]))
    assert all(g["p_holm"] >= g["p_ttest"] for g in gains)
    pairs = [c["metrics"]["student.test.score"] for c in agg["comparisons"].values()]
    first = min(pairs, key=lambda t: t["p_ttest"])
    assert first["p_holm"] == pytest.approx(min(1.0, len(pairs) * first["p_ttest"]))
    assert agg["best"]["variant"] == "preset-kl_bce" and agg["best"]["metric"] == "student.dev.score"
    assert agg["unfinished"] == [{"variant": "preset-kd", "seed": 4, "dir": str(root / "preset-kd" / "seed_4"),
                                  "error": "RuntimeError: out of memory"}]
    json.dumps(agg, allow_nan=False)


def test_stale_results_are_not_counted(tmp_path, demo_root):
    root = tmp_path / "x"
    _fake_sweep(root, demo_root)
    path = root / "preset-kd" / "seed_1" / "results.json"
    path.write_text(path.read_text().replace('"config_hash": "preset-kd-1"', '"config_hash": "old"'))
    agg = aggregate(root)
    assert agg["variants"]["preset-kd"]["seeds"] == [2, 3]
    assert {"variant": "preset-kd", "seed": 1} in [{k: u[k] for k in ("variant", "seed")} for u in agg["unfinished"]]


def test_tune_mode_min_and_best_config_loads(tmp_path, demo_root):
    from mmdistill.preflight import load_config

    root = tmp_path / "x"
    _fake_sweep(root, demo_root, tune={"metric": "student.test.tasks.finding.f1_per_class.b", "mode": "min"})
    agg = aggregate(root)
    assert agg["best"]["variant"] == "preset-kd" and agg["best"]["mode"] == "min"
    text = (root / "best_config.yaml").read_text()
    assert text.startswith("# Best variant of sweep x") and "objective.preset=kd" in text
    config = load_config(root / "best_config.yaml")
    assert config.objective.preset == "kd" and config.experiment_name == "x_best" and config.sweep is None
    assert yaml.safe_load(text)["seed"] == 7


def test_flatten_and_lookup_paths():
    results = {"student": {"dev": _metrics(0.5, (0.4, 0.6)), "test": _metrics(0.6, (0.5, 0.7))},
               "compress": {"int8": {"test": {"score": 0.55}}}, "tasks": {}}
    flat = flatten_metrics(results)
    assert flat["student.test.tasks.finding.f1_per_class.b"] == 0.7
    assert lookup(results, "student.test.score") == 0.6
    assert lookup(results, "compress.int8.test.score") == 0.55  # any number in results.json can be tuned on
    assert lookup({"a.b": {"c": 1}}, "a.b.c") == 1.0  # keys with dots (task names) resolve
    assert lookup(results, "student.test.nothing") is None


def test_report_tables_bold_the_best_and_star_significant_differences(tmp_path, demo_root):
    import base64

    from mmdistill.sweep.report import make_report

    root = tmp_path / "x"
    _fake_sweep(root, demo_root)
    make_report(root, log=lambda line: None)
    md = (root / "report.md").read_text()
    # KD student test score: kl_bce 0.85 ± 0.01 is best; kd 0.80 ± 0.02 is worse on every seed (paired p = 0.038)
    scores = md.split("## Test scores")[1].split("\n## ")[0]
    row = {line.split(" | ")[0].strip("| "): line for line in scores.splitlines() if line.startswith("| preset-")}
    assert "**0.8500 ± 0.0100**" in row["preset-kl_bce"]
    assert "| 0.8000 ± 0.0200\\* |" in row["preset-kd"]
    assert "Best variant by `student.dev.score` (max): **preset-kl_bce**" in md
    assert "preset-kd seed 4: RuntimeError: out of memory" in md
    html = (root / "report.html").read_text()
    assert "<b>0.8500 ± 0.0100</b>" in html and "0.8000 ± 0.0200<sup>*</sup>" in html
    src = html.split("src='data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(src).startswith(b"\x89PNG\r\n\x1a\n")


def test_compressed_students_are_aggregated_over_seeds(tmp_path, demo_root):
    """Seed 002's question, what does the edge student cost: every compressed model's score,
    size and latency with its mean and 95% CI over seeds, per variant, in the report too."""
    from mmdistill.sweep.report import make_report

    root = tmp_path / "x"
    _fake_sweep(root, demo_root)
    latency = {1: 0.70, 2: 0.74, 3: 0.72}
    for variant in ("preset-kd", "preset-kl_bce"):
        for seed in (1, 2, 3):
            path = root / variant / f"seed_{seed}" / "results.json"
            results = json.loads(path.read_text())
            results["compressed"] = {
                "fp32": {"score": 0.8, "file_bytes": 4_970_000, "latency_ms_batch1": 3.3, "speedup_batch1": 1.0},
                "onnx_int8_qdq": {"score": 0.79 + seed / 1000, "file_bytes": 1_300_000,
                                  "latency_ms_batch1": latency[seed], "speedup_batch1": 3.3 / latency[seed],
                                  "agreement": 0.99, "default_int8": True}}
            path.write_text(json.dumps(results))
    agg = aggregate(root)
    stat = agg["variants"]["preset-kd"]["metrics"]["compressed.onnx_int8_qdq.latency_ms_batch1"]
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(0.72) and stat["ci95"][0] < 0.72 < stat["ci95"][1]
    assert agg["variants"]["preset-kd"]["metrics"]["compressed.onnx_int8_qdq.score"]["mean"] == pytest.approx(0.792)
    make_report(root, log=lambda line: None)
    md = (root / "report.md").read_text()
    table = md.split("## Compressed students")[1].split("\n## ")[0]
    assert "| preset-kd | onnx_int8_qdq | 3 | 0.7920 ± 0.0010 |" in table and "| 0.720 ± 0.020 |" in table
    assert "| 1.30 ± 0.00 | [1.3000, 1.3000] |" in table  # the file size with its spread and CI, in MB


def test_holm_adjustment_matches_hand_computed_values():
    from mmdistill.sweep.stats import holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.04 -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.5, 0.2]) == [None, pytest.approx(0.5), pytest.approx(0.4)]  # undefined: not in the family
    assert holm([0.6, 0.7]) == [1.0, 1.0]
