"""`mmdistill report DIR`: report.md and a self-contained report.html for a sweep directory
(aggregated again from its runs, so it can be re-run at any time) or for one run directory.

Both files come from the same list of blocks (headings, paragraphs, tables, figures). Tables
show mean ± std over seeds; the best value of each column is bold, and `*` marks a value that
differs from that best one with p < 0.05 (paired t-test on the seeds both finished). Figures
are PNGs: embedded as base64 in report.html, written to report_files/ for report.md.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from mmdistill.errors import UserError
from mmdistill.eval.metrics import SCORE_MEANING
from mmdistill.io import write_bytes_atomic, write_text_atomic
from mmdistill.sweep import figures
from mmdistill.sweep.aggregate import AGGREGATED, BEST_CONFIG, MANIFEST, aggregate, flatten_metrics
from mmdistill.sweep.jobs import error_line

ALPHA = 0.05
FILES_DIR = "report_files"
ROLE_NAMES = {"teacher": "teacher", "student": "KD student", "baseline": "baseline"}


@dataclass
class Cell:
    text: str
    bold: bool = False
    star: bool = False


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]] = field(default_factory=list)


@dataclass
class Figure:
    name: str
    title: str
    png: bytes


Block = tuple[str, Any]  # ("h1" | "h2" | "p" | "ul", text or items), ("table", Table), ("figure", Figure)


# --------------------------------------------------------------------------- formatting


def fmt_stat(stat: Optional[dict[str, Any]], digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("std") is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def fmt_p(p: Optional[float]) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def fmt_num(x: Optional[float], digits: int = 3) -> str:
    return "–" if x is None else f"{x:+.{digits}f}"


def fmt_ci(stat: Optional[dict[str, Any]]) -> str:
    if not stat or not stat.get("ci95"):
        return "–"
    lo, hi = stat["ci95"]
    return f"[{lo:.4f}, {hi:.4f}]"


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, item in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {item}\n")
        elif kind == "p":
            out.append(f"{item}\n")
        elif kind == "ul":
            out.append("\n".join(f"- {line}" for line in item) + "\n")
        elif kind == "table":
            md = lambda c: (f"**{c.text}**" if c.bold else c.text) + ("\\*" if c.star else "")
            out.append("| " + " | ".join(item.header) + " |")
            out.append("|" + "---|" * len(item.header))
            out.extend("| " + " | ".join(md(c) for c in row) + " |" for row in item.rows)
            out.append("")
        elif kind == "figure":
            out.append(f"![{item.title}]({FILES_DIR}/{item.name}.png)\n")
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:0.4em 0 1.2em}
code{background:#f3f3f3;padding:0 3px}figure{margin:0}figcaption{color:#555;font-size:90%}"""


def render_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head><body>"]
    for kind, item in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{e(item)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(item)}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in item) + "</ul>")
        elif kind == "table":
            cell = lambda c: (f"<b>{e(c.text)}</b>" if c.bold else e(c.text)) + ("<sup>*</sup>" if c.star else "")
            head = "".join(f"<th>{e(h)}</th>" for h in item.header)
            body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in item.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(item.png).decode()
            out.append(f"<figure><img alt='{e(item.title)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{e(item.title)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _inline(text: str) -> str:
    """`code` and **bold** in paragraphs, everything else escaped."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def write_report(target: Path, blocks: list[Block], title: str) -> dict[str, Path]:
    files = target / FILES_DIR
    figures = [item for kind, item in blocks if kind == "figure"]
    if figures:
        files.mkdir(exist_ok=True)
    for item in figures:
        write_bytes_atomic(files / f"{item.name}.png", item.png)
    paths = {"md": target / "report.md", "html": target / "report.html"}
    write_text_atomic(paths["md"], render_markdown(blocks))
    write_text_atomic(paths["html"], render_html(blocks, title))
    return paths


# --------------------------------------------------------------------------- shared pieces


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    try:
        with (run_dir / "metrics.csv").open() as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _run_curves(run_dir: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's metrics.csv rows, plus its shared teacher's when the teacher was loaded."""
    rows = _metrics_rows(run_dir)
    if results.get("teacher_checkpoint") and not any(r["stage"] == "teacher" for r in rows):
        teacher_dir = Path(results["teacher_checkpoint"]).parent.parent
        rows = [r for r in _metrics_rows(teacher_dir) if r.get("stage") == "teacher"] + rows
    return rows


def _confusions(runs: list[tuple[Path, dict[str, Any]]], label: str) -> Optional[Figure]:
    """Test confusion matrices per stage and task, summed over the given runs (seeds)."""
    if not runs:
        return None
    tasks = runs[0][1].get("tasks", {})
    items = []
    for stage in ("teacher", "student", "baseline"):
        for task, info in tasks.items():
            total = None
            for run_dir, _ in runs:
                path = run_dir / "confusion" / f"{stage}_{task}_test.npy"
                if path.is_file():
                    matrix = np.load(path)
                    total = matrix if total is None else total + matrix
            if total is not None:
                items.append((f"{ROLE_NAMES[stage]} / {task}", total, list(info["classes"])))
    if not items:
        return None
    seeds = f", summed over {len(runs)} seeds" if len(runs) > 1 else ""
    return Figure("confusion", f"Test confusion matrices of {label}{seeds}",
                  figures.confusion_grid(items, columns=max(1, len(tasks))))


def _tsne(run_dir: Path, label: str, blocks: list[Block]) -> None:
    from mmdistill.sweep.embeddings import fused_vectors, tsne_2d

    try:
        vectors = fused_vectors(run_dir)
        if len(vectors["labels"]) < 5:
            raise ValueError(f"only {len(vectors['labels'])} test samples")
        points = {ROLE_NAMES[r]: tsne_2d(vectors[r]) for r in ("teacher", "student")}
        png = figures.tsne_plot(points, vectors["labels"], vectors["classes"], vectors["task"])
    except Exception as exc:  # noqa: BLE001 - an optional figure must not cost the report
        blocks.append(("p", f"t-SNE skipped for {label} ({error_line(exc)}); the rest of the report is complete."))
        return
    blocks.append(("figure", Figure("tsne", f"t-SNE of the fused vectors of teacher and KD student, "
                                            f"test split, {label} ({run_dir})", png)))


def _column(variants: list[str], stats: dict[str, dict[str, Any]], comparisons: dict[str, Any], key: str,
            higher_is_better: bool = True) -> list[Cell]:
    """One table column: mean ± std per variant; best bold; * where p < 0.05 vs the best."""
    means = {v: stats[v].get(key, {}).get("mean") for v in variants}
    known = [v for v in variants if means[v] is not None]
    best = (max if higher_is_better else min)(known, key=lambda v: means[v]) if known else None
    ties = {v for v in known if means[v] == means[best]} if best else set()
    cells = []
    for v in variants:
        # bold: the best (and any tie), unless every variant has the same value
        cell = Cell(fmt_stat(stats[v].get(key)), bold=v in ties and len(ties) < len(known))
        if best and v not in ties:
            test = (comparisons.get(f"{v} vs {best}") or comparisons.get(f"{best} vs {v}") or {}).get("metrics", {}).get(key)
            cell.star = bool(test and test["p_ttest"] is not None and test["p_ttest"] < ALPHA)
        cells.append(cell)
    return cells


# --------------------------------------------------------------------------- sweep report


def sweep_blocks(sweep_dir: Path, agg: dict[str, Any], tsne: bool) -> list[Block]:
    variants = [v for v, info in agg["variants"].items() if info["seeds"]]
    stats = {v: agg["variants"][v]["metrics"] for v in agg["variants"]}
    comps = agg["comparisons"]
    tune, best = agg["tune"], agg["best"]
    n_runs = sum(len(agg["variants"][v]["seeds"]) for v in agg["variants"])
    blocks: list[Block] = [("h1", f"Sweep report: {agg['experiment']}")]
    blocks.append(("p", f"{len(agg['variants'])} variant(s) x {len(agg['seeds'])} seed(s) ({', '.join(map(str, agg['seeds']))}): "
                        f"{n_runs} run(s) finished, {len(agg['unfinished'])} not. Directory `{sweep_dir}`."))
    if best:
        std = f" ± {best['std']:.4f}" if best["std"] is not None else ""
        blocks.append(("p", f"Best variant by `{tune['metric']}` ({tune['mode']}): **{best['variant']}** "
                            f"({best['mean']:.4f}{std}, n = {best['n']})"
                            + (f"; its config is `{BEST_CONFIG}`." if (sweep_dir / BEST_CONFIG).is_file() else ".")))
    elif variants:
        blocks.append(("p", f"No best variant: `{tune['metric']}` (sweep.tune.metric) is not a number in the finished "
                            f"runs' results.json."))
    if not variants:
        blocks.append(("p", "No finished runs yet."))
    else:
        blocks += _sweep_tables(agg, variants, stats, comps)
    if agg["unfinished"]:
        blocks.append(("h2", "Runs not finished"))
        blocks.append(("ul", [f"{r['variant']} seed {r['seed']}: {r['error'] or 'not run'}" for r in agg["unfinished"]]))
    if variants:
        blocks += _sweep_figures(agg, variants, stats, tsne)
    blocks.append(("p", f"Statistics: mean ± sample std (ddof = 1) over seeds; 95% CI from Student's t; `*`: differs from "
                        f"the bold value of its column with p < {ALPHA} (paired t-test on shared seeds). All numbers "
                        f"are in `{AGGREGATED}`."))
    return blocks


def _sweep_tables(agg, variants, stats, comps) -> list[Block]:
    blocks: list[Block] = []
    first = stats[variants[0]]
    prefix = "student.test.tasks."
    tasks = [k[len(prefix):-len(".f1")] for k in first if k.startswith(prefix) and k.endswith(".f1")
             and ".f1_per_class." not in k]
    roles = [r for r in ("teacher", "student", "baseline") if any(f"{r}.test.score" in stats[v] for v in variants)]
    keys = [f"{r}.test.score" for r in roles] + [f"student.test.tasks.{t}.{m}" for t in tasks for m in ("f1", "accuracy")]
    header = ["variant", "n"] + [f"{ROLE_NAMES[r]} score" for r in roles]
    header += [f"{t} {'F1' if m == 'f1' else 'acc'}" for t in tasks for m in ("f1", "accuracy")]
    columns = [_column(variants, stats, comps, k) for k in keys]
    table = Table(header)
    gains = {v: agg["variants"][v]["kd_gain"].get("test.score") for v in variants}
    if any(gains.values()):
        table.header.append("KD gain")
        column = _column(variants, {v: {"gain": g} if g else {} for v, g in gains.items()}, {}, "gain")
        for v, cell in zip(variants, column):  # here * means: KD student vs its baseline, Holm-adjusted p < 0.05
            p = gains[v]["test"].get("p_holm") if gains[v] else None
            cell.star = p is not None and p < ALPHA
        columns.append(column)
    for i, v in enumerate(variants):
        table.rows.append([Cell(v), Cell(str(len(agg["variants"][v]["seeds"])))] + [col[i] for col in columns])
    blocks += [("h2", "Test scores (mean ± std over seeds)"), ("table", table),
               ("p", f"Score = {SCORE_MEANING}; task columns are the KD student's. KD gain = KD student "
                     "minus baseline student of the same run, `*` there: p < 0.05 (paired t-test over seeds, "
                     "Holm-Bonferroni adjusted over the variants).")]

    tune = agg["tune"]
    metric = tune["metric"]
    sel = Table([f"variant", f"{metric}", "95% CI", "n"])
    col = _column(variants, stats, comps, metric, higher_is_better=tune["mode"] == "max")
    for v, cell in zip(variants, col):
        sel.rows.append([Cell(v), cell, Cell(fmt_ci(stats[v].get(metric))), Cell(str(stats[v].get(metric, {}).get("n", 0)))])
    blocks += [("h2", f"Selection metric ({tune['mode']})"), ("table", sel)]

    class_keys = [k for k in first if k.startswith("student.test.tasks.") and ".f1_per_class." in k]
    if class_keys:
        per_class = Table(["variant"] + [k.removeprefix("student.test.tasks.").replace(".f1_per_class.", ": ")
                                         for k in class_keys])
        cols = [_column(variants, stats, comps, k) for k in class_keys]
        for i, v in enumerate(variants):
            per_class.rows.append([Cell(v)] + [c[i] for c in cols])
        blocks += [("h2", "Per-class F1 of the KD student (test)"), ("table", per_class)]

    blocks += _compressed_table(variants, stats)

    if comps:
        pairs = Table(["A", "B", "seeds", "mean A − B", "p (t-test)", "p (Holm)", "p (Wilcoxon)", "Cohen's d"])
        for comp in comps.values():
            t = comp["metrics"].get("student.test.score")
            if t:
                pairs.rows.append([Cell(comp["a"]), Cell(comp["b"]), Cell(str(t["n"])), Cell(fmt_num(t["mean_diff"], 4)),
                                   Cell(fmt_p(t["p_ttest"])), _holm_cell(t),
                                   Cell(fmt_p(t["p_wilcoxon"])), Cell(fmt_num(t["cohens_d"], 2))])
        blocks += [("h2", "Pairwise comparisons (KD student test score, paired by seed)"), ("table", pairs),
                   ("p", "p (Holm): the t-test's p adjusted by Holm-Bonferroni over all pairs; `*`: below 0.05.")]

    if any(gains.values()):
        gain_table = Table(["variant", "KD − baseline", "95% CI", "p (t-test)", "p (Holm)", "p (Wilcoxon)", "Cohen's d",
                            "seeds"])
        for v in variants:
            g = gains[v]
            if g:
                gain_table.rows.append([Cell(v), Cell(fmt_stat(g)), Cell(fmt_ci(g)), Cell(fmt_p(g["test"]["p_ttest"])),
                                        _holm_cell(g["test"]),
                                        Cell(fmt_p(g["test"]["p_wilcoxon"])), Cell(fmt_num(g["test"]["cohens_d"], 2)),
                                        Cell(str(g["n"]))])
        blocks += [("h2", "What distillation bought (test score, KD student vs baseline student, paired by seed)"),
                   ("table", gain_table)]
    return blocks


def _holm_cell(test: dict[str, Any]) -> Cell:
    p = test.get("p_holm")
    return Cell(fmt_p(p), star=p is not None and p < ALPHA)


def _compressed_table(variants, stats) -> list[Block]:
    """What the edge student costs: per variant and compressed model, test score, file size,
    latency and speed-up at batch 1, each the mean with its 95% CI over seeds."""
    table = Table(["variant", "model", "n", "test score", "score 95% CI", "file (MB)", "file 95% CI (MB)",
                   "latency b=1 (ms)", "latency 95% CI", "speed-up b=1"])
    for v in variants:
        models = list(dict.fromkeys(k.split(".")[1] for k in stats[v] if k.startswith("compressed.")))
        for model in models:
            get = lambda key: stats[v].get(f"compressed.{model}.{key}")
            score, size, latency, speedup = get("score"), get("file_bytes"), get("latency_ms_batch1"), get("speedup_batch1")
            table.rows.append([Cell(v), Cell(model), Cell(str((score or {}).get("n", 0))), Cell(fmt_stat(score)),
                               Cell(fmt_ci(score)), Cell(fmt_stat(_scaled(size, 1e-6), 2)), Cell(fmt_ci(_scaled(size, 1e-6))),
                               Cell(fmt_stat(latency, 3)), Cell(fmt_ci(latency)),
                               Cell("–" if not speedup else f"{speedup['mean']:.2f}x")])
    if not table.rows:
        return []
    return [("h2", "Compressed students (test score, size and CPU latency; mean over seeds)"), ("table", table)]


def _scaled(stat: Optional[dict[str, Any]], factor: float) -> Optional[dict[str, Any]]:
    """A statistic in other units (bytes -> MB): mean, std and CI scale alike."""
    if not stat or stat.get("mean") is None:
        return stat
    return {**stat, "mean": stat["mean"] * factor, "std": None if stat.get("std") is None else stat["std"] * factor,
            "ci95": None if not stat.get("ci95") else [v * factor for v in stat["ci95"]]}


def _sweep_figures(agg, variants, stats, tsne: bool) -> list[Block]:
    blocks: list[Block] = [("h2", "Figures"),
                           ("figure", Figure("scores", "Test score per variant: mean and 95% confidence interval",
                                             figures.score_bars(variants, stats)))]
    curves = {}
    runs_of: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for v in variants:
        for seed, run_dir in agg["variants"][v]["runs"].items():
            results = json.loads((Path(run_dir) / "results.json").read_text())
            runs_of.setdefault(v, []).append((Path(run_dir), results))
            rows = _run_curves(Path(run_dir), results)
            if rows:
                curves.setdefault(v, []).append((int(seed), rows))
    if curves:
        blocks.append(("figure", Figure("curves", "Training curves per variant (every seed; teacher from the shared "
                                                  "teacher run)", figures.training_curves(curves))))
    best = agg["best"]["variant"] if agg["best"] else variants[0]
    confusion = _confusions(runs_of.get(best, []), f"the best variant {best}")
    if confusion:
        blocks.append(("figure", confusion))
    if tsne and runs_of.get(best):
        _tsne(runs_of[best][0][0], f"the best variant {best}", blocks)
    elif not tsne:
        blocks.append(("p", "t-SNE not computed (`sweep.tsne: false` or `--no-tsne`)."))
    return blocks


# --------------------------------------------------------------------------- single run


def run_blocks(run_dir: Path, tsne: bool) -> list[Block]:
    results = json.loads((run_dir / "results.json").read_text())
    flat = flatten_metrics(results)
    roles = [r for r in ("teacher", "student", "baseline") if r in results]
    tasks = list(results.get("tasks", {}))
    blocks: list[Block] = [("h1", f"Run report: {results.get('experiment', run_dir.name)} (seed {results.get('seed')})"),
                           ("p", f"Directory `{run_dir}`.")]
    table = Table(["model", "dev score", "test score"] + [f"{t} {m}" for t in tasks for m in ("F1", "acc")] + ["params"])
    for role in roles:
        row = [Cell(ROLE_NAMES[role]), Cell(f"{flat[f'{role}.dev.score']:.4f}"), Cell(f"{flat[f'{role}.test.score']:.4f}")]
        for t in tasks:
            for m in ("f1", "accuracy"):
                value = flat.get(f"{role}.test.tasks.{t}.{m}")
                row.append(Cell("–" if value is None else f"{value:.4f}"))
        params = results.get("params", {}).get("teacher" if role == "teacher" else "student")
        row.append(Cell(f"{params:,}" if params else "–"))
        table.rows.append(row)
    blocks += [("h2", "Scores"), ("table", table)]
    class_keys = [k.split(".", 1)[1] for k in flat if k.startswith("student.test.tasks.") and ".f1_per_class." in k]
    if class_keys:
        per_class = Table(["model"] + [k.removeprefix("test.tasks.").replace(".f1_per_class.", ": ") for k in class_keys])
        for role in roles:
            per_class.rows.append([Cell(ROLE_NAMES[role])] + [Cell(f"{flat[f'{role}.{k}']:.4f}" if f"{role}.{k}" in flat else "–")
                                                               for k in class_keys])
        blocks += [("h2", "Per-class F1 (test)"), ("table", per_class)]
    blocks.append(("h2", "Figures"))
    rows = _run_curves(run_dir, results)
    if rows:
        blocks.append(("figure", Figure("curves", "Training curves", figures.training_curves({run_dir.name: [(0, rows)]}))))
    confusion = _confusions([(run_dir, results)], "this run")
    if confusion:
        blocks.append(("figure", confusion))
    if tsne and "student" in results:
        _tsne(run_dir, "this run", blocks)
    return blocks


# --------------------------------------------------------------------------- entry point


def is_sweep_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or any(p for p in path.glob("*/seed_*/results.json")
                                               if not p.parts[-3].startswith("_"))


def make_report(target: str | Path, tsne: Optional[bool] = None, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write report.md and report.html into `target` (a sweep or a run directory)."""
    target = Path(target)
    if not target.is_dir():
        raise UserError(f"{target}: directory not found")
    if is_sweep_dir(target):
        agg = aggregate(target)
        if tsne is None:
            tsne = bool(json.loads((target / MANIFEST).read_text()).get("tsne", True)) if (target / MANIFEST).is_file() else True
        blocks, title = sweep_blocks(target, agg, tsne), f"Sweep {agg['experiment']}"
    elif (target / "results.json").is_file():
        blocks, title = run_blocks(target, True if tsne is None else tsne), f"Run {target.name}"
    else:
        raise UserError(f"{target}: neither a run directory (results.json) nor a sweep directory "
                        f"({MANIFEST} or <variant>/seed_<n>/results.json)")
    paths = write_report(target, blocks, title)
    log(f"report: {paths['md']} and {paths['html']}")
    return paths
