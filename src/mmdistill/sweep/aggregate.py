"""A sweep's run directories -> aggregated_results.json (and best_config.yaml).

Per variant and metric (score, accuracy, loss, per-task headline F1, macro F1, accuracy, AUROC,
per-class F1; dev and test; each compressed model's score, size, latency and speed-up;
teacher, KD student and baseline): mean, std, 95% CI, n over seeds. Per pair of variants, on
the seeds both finished: paired t-test, Wilcoxon and Cohen's d per metric. Per variant, the
gain of the KD student over the baseline student of the same run (paired by seed). A run
counts only when its results.json holds the config hash the sweep planned for it, so a stale
result of an older config is never mixed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from mmdistill.io import write_json_atomic, write_text_atomic
from mmdistill.sweep.grid import Variant
from mmdistill.sweep.stats import describe, holm, paired

ROLES = ("teacher", "student", "baseline")
# what a compressed student costs and scores (results.json `compressed.<model>`), per model
COMPRESSED_KEYS = ("score", "file_bytes", "latency_ms_batch1", "speedup_batch1", "throughput_batch32", "agreement",
                   "params", "nonzero_params")
SPLITS = ("dev", "test")
MANIFEST = "sweep.json"
AGGREGATED = "aggregated_results.json"
BEST_CONFIG = "best_config.yaml"


@dataclass
class RunRecord:
    variant: str
    seed: int
    dir: Path
    results: Optional[dict[str, Any]] = None
    error: Optional[str] = None     # why it is not finished, when we know

    @property
    def finished(self) -> bool:
        return self.results is not None


def flatten_metrics(results: dict[str, Any]) -> dict[str, float]:
    """`student.test.score`, `student.test.tasks.finding.f1`,
    `student.test.tasks.finding.f1_per_class.vertical_mild`, ...: dotted paths into results.json
    (a value that is not a number, such as the F1 of a class absent from a split, is left out)."""
    out: dict[str, float] = {}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    for role in ROLES:
        for split in SPLITS:
            m = (results.get(role) or {}).get(split)
            if not m:
                continue
            for key in ("score", "accuracy", "loss"):
                if number(m.get(key)):
                    out[f"{role}.{split}.{key}"] = float(m[key])
            for task, tm in m.get("tasks", {}).items():
                prefix = f"{role}.{split}.tasks.{task}"
                for key in ("f1", "f1_macro", "accuracy", "auroc"):
                    if number(tm.get(key)):
                        out[f"{prefix}.{key}"] = float(tm[key])
                for cls, value in (tm.get("f1_per_class") or {}).items():
                    if number(value):
                        out[f"{prefix}.f1_per_class.{cls}"] = float(value)
    for model, entry in (results.get("compressed") or {}).items():  # `compress:` block or `mmdistill compress`
        for key in COMPRESSED_KEYS:
            if number(entry.get(key)):
                out[f"compressed.{model}.{key}"] = float(entry[key])
    for key, value in (results.get("timing") or {}).items():
        out[f"timing.{key}"] = float(value)
    return out


def lookup(results: dict[str, Any], dotted: str) -> Optional[float]:
    """A number at a dotted path into results.json; keys may contain dots themselves
    (a task named `Description.Modality`), so the longest matching key wins at each level."""
    node: Any = results
    rest = dotted
    while rest:
        if not isinstance(node, dict):
            return None
        key = next((k for k in sorted(node, key=len, reverse=True) if rest == k or rest.startswith(k + ".")), None)
        if key is None:
            return None
        node, rest = node[key], rest[len(key) + 1:]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def _last_error_line(run_dir: Path) -> Optional[str]:
    try:
        lines = [l for l in (run_dir / "error.log").read_text().splitlines() if l.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def _read_results(run_dir: Path, expected_hash: Optional[str]) -> tuple[Optional[dict], Optional[str]]:
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None, _last_error_line(run_dir) or "not run yet, or interrupted"
    if expected_hash is not None and results.get("config_hash") != expected_hash:
        return None, _last_error_line(run_dir) or "results.json is from another config (stale hash)"
    return results, None


def load_manifest(sweep_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((Path(sweep_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def collect_runs(sweep_dir: Path) -> tuple[Optional[dict[str, Any]], list[RunRecord]]:
    """The planned runs of sweep.json (finished or not), or, without it, every
    <variant>/seed_<n>/results.json found."""
    sweep_dir = Path(sweep_dir)
    manifest = load_manifest(sweep_dir)
    records = []
    if manifest is not None:
        for run in manifest["runs"]:
            run_dir = sweep_dir / run["variant"] / f"seed_{run['seed']}"
            results, error = _read_results(run_dir, run.get("config_hash"))
            records.append(RunRecord(run["variant"], int(run["seed"]), run_dir, results, error))
        return manifest, records
    for path in sorted(sweep_dir.glob("*/seed_*/results.json")):
        if path.parts[-3].startswith("_"):
            continue
        results, error = _read_results(path.parent, None)
        seed = int(path.parent.name.removeprefix("seed_")) if path.parent.name[5:].isdigit() else 0
        records.append(RunRecord(path.parts[-3], seed, path.parent, results, error))
    return None, records


def variant_order(manifest: Optional[dict[str, Any]], records: list[RunRecord]) -> list[str]:
    names = [v["name"] for v in manifest["variants"]] if manifest else []
    for record in records:
        if record.variant not in names:
            names.append(record.variant)
    return names


def select_best(per_variant: dict[str, dict[str, Any]], metric: str, mode: str) -> Optional[dict[str, Any]]:
    scored = [(name, v["metrics"][metric]) for name, v in per_variant.items() if metric in v["metrics"]]
    if not scored:
        return None
    pick = max if mode == "max" else min
    name, stat = pick(scored, key=lambda item: item[1]["mean"])
    return {"variant": name, "metric": metric, "mode": mode, "mean": stat["mean"], "std": stat["std"], "n": stat["n"]}


def aggregate(sweep_dir: Path, write: bool = True) -> dict[str, Any]:
    """Statistics of every finished run under `sweep_dir`; writes aggregated_results.json and,
    when the sweep's manifest is there and a best variant exists, best_config.yaml."""
    sweep_dir = Path(sweep_dir)
    manifest, records = collect_runs(sweep_dir)
    tune = (manifest or {}).get("tune") or {"metric": "student.dev.score", "mode": "max"}
    overrides = {v["name"]: v["overrides"] for v in (manifest or {}).get("variants", [])}
    per_seed: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        if record.finished:
            flat = flatten_metrics(record.results)
            if tune["metric"] not in flat and lookup(record.results, tune["metric"]) is not None:
                flat[tune["metric"]] = lookup(record.results, tune["metric"])
            per_seed.setdefault(record.variant, {})[record.seed] = flat

    variants: dict[str, dict[str, Any]] = {}
    for name in variant_order(manifest, records):
        runs = per_seed.get(name, {})
        seeds = sorted(runs)
        keys = list(dict.fromkeys(k for s in seeds for k in runs[s]))
        metrics = {k: describe([runs[s][k] for s in seeds if k in runs[s]]) for k in keys}
        gain = {}
        for key in keys:
            if not key.startswith("student."):
                continue
            base_key = "baseline." + key.removeprefix("student.")
            both = [s for s in seeds if key in runs[s] and base_key in runs[s]]
            if both:
                kd, base = [runs[s][key] for s in both], [runs[s][base_key] for s in both]
                gain[key.removeprefix("student.")] = describe([a - b for a, b in zip(kd, base)]) | {
                    "seeds": both, "test": paired(kd, base)}
        variants[name] = {"overrides": overrides.get(name, {}), "seeds": seeds,
                          "runs": {str(r.seed): str(r.dir) for r in records if r.variant == name and r.finished},
                          "metrics": metrics, "kd_gain": gain}

    comparisons: dict[str, Any] = {}
    names = [n for n in variants if variants[n]["seeds"]]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(per_seed[a]) & set(per_seed[b]))
            if len(shared) < 1:
                continue
            keys = [k for k in variants[a]["metrics"] if k in variants[b]["metrics"] and not k.startswith("timing.")]
            tests = {}
            for key in keys:
                seeds = [s for s in shared if key in per_seed[a][s] and key in per_seed[b][s]]
                tests[key] = paired([per_seed[a][s][key] for s in seeds], [per_seed[b][s][key] for s in seeds])
            comparisons[f"{a} vs {b}"] = {"a": a, "b": b, "seeds": shared, "metrics": tests}

    _adjust_for_many_tests([g["test"] for v in variants.values() for g in v["kd_gain"].values()],
                           [g for v in variants.values() for g in v["kd_gain"]])
    _adjust_for_many_tests([t for c in comparisons.values() for t in c["metrics"].values()],
                           [k for c in comparisons.values() for k in c["metrics"]])
    best = select_best(variants, tune["metric"], tune["mode"])
    out = {
        "experiment": (manifest or {}).get("experiment", sweep_dir.name),
        "sweep_dir": str(sweep_dir),
        "seeds": (manifest or {}).get("seeds", sorted({r.seed for r in records})),
        "tune": tune,
        "best": best,
        "variants": variants,
        "comparisons": comparisons,
        "unfinished": [{"variant": r.variant, "seed": r.seed, "dir": str(r.dir), "error": r.error}
                       for r in records if not r.finished],
    }
    if write:
        write_json_atomic(sweep_dir / AGGREGATED, out)
        if manifest and best:
            write_best_config(sweep_dir, manifest, best)
    return out


def write_best_config(sweep_dir: Path, manifest: dict[str, Any], best: dict[str, Any]) -> Path:
    from mmdistill.sweep.plan import best_config

    variant = Variant(best["variant"], next(v["overrides"] for v in manifest["variants"] if v["name"] == best["variant"]))
    tree = best_config(manifest["base"], variant, manifest["experiment"])
    std = f" ± {best['std']:.4f}" if best["std"] is not None else ""
    header = (f"# Best variant of sweep {manifest['experiment']} ({manifest['config']}): {variant.name}\n"
              f"# {variant.label()}\n"
              f"# by {best['metric']} ({best['mode']}): {best['mean']:.4f}{std} over {best['n']} seed(s)\n"
              f"# Run it with: mmdistill run {Path(sweep_dir) / BEST_CONFIG}\n")
    path = Path(sweep_dir) / BEST_CONFIG
    write_text_atomic(path, header + yaml.safe_dump(tree, sort_keys=False))
    return path


def _adjust_for_many_tests(tests: list[dict[str, Any]], metrics: list[str]) -> None:
    """Adds `p_holm` to each paired test: Holm-Bonferroni over the tests of the same metric
    (every variant's KD gain on test score is one family, every pair of variants another)."""
    for metric in set(metrics):
        family = [t for t, m in zip(tests, metrics) if m == metric]
        for test, adjusted in zip(family, holm([t["p_ttest"] for t in family])):
            test["p_holm"] = adjusted
