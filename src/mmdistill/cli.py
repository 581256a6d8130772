"""The `mmdistill` command line.

Exit codes: 0 success, 2 bad config or data (one line on stderr, no traceback), 1 anything
else (the traceback is kept: that is a bug for us to fix, not a typo for the user).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mmdistill.environment import prepare_process
from mmdistill.errors import UserError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment config (YAML or JSON)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.student.lr=3e-4 (repeatable)")


def _add_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-teacher-cache", action="store_true",
                        help="run the frozen teacher at every KD step instead of caching its outputs "
                             "(same as --set cache.teacher=false)")


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + (["cache.teacher=false"] if getattr(args, "no_teacher_cache", False) else [])


def cmd_run(args: argparse.Namespace) -> int:
    from mmdistill.distributed import is_writer
    from mmdistill.preflight import load_config
    from mmdistill.run.experiment import run_experiment, summary_table

    config = load_config(args.config, _overrides(args))
    if args.smoke:
        from mmdistill.config.smoke import smoke_config

        config = smoke_config(config)
    results = run_experiment(config, overwrite=args.overwrite)
    if is_writer():  # under DDP every rank ran the command; one reports
        print(summary_table(results))
        print(f"results: {config.run_dir / 'results.json'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mmdistill.cache.images import load_checked_data
    from mmdistill.data.checks import check_images, summary
    from mmdistill.preflight import check_models, load_config

    config = load_config(args.config, args.overrides)
    data = load_checked_data(config)
    checked = check_images(config, data)
    check_models(config, data)
    print(summary(config, data, checked))
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from mmdistill.data.demo import write_demo_data

    counts = write_demo_data(args.kind, args.dir, seed=args.seed)
    print(f"wrote {args.kind} data to {args.dir}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmdistill.compress import compress_run

    from mmdistill.tracking import RunTrackers

    results = compress_run(args.run_dir, args.overrides)
    RunTrackers.update_finished(Path(args.run_dir), results)
    print(f"results: {Path(args.run_dir) / 'results.json'} (compressed), table: {Path(args.run_dir) / 'compress.md'}")
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    from mmdistill.losses.catalog import describe_presets, describe_terms

    print("LOSS TERMS (objective.terms: [{term, weight, params}])\n")
    print(describe_terms())
    print("\nPRESETS (objective.preset)\n")
    print(describe_presets())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mmdistill.sweep.runner import run_sweep

    return run_sweep(args.config, _overrides(args), dry_run=args.dry_run, report=not args.no_report)


def cmd_extract(args: argparse.Namespace) -> int:
    from mmdistill.preflight import load_config
    from mmdistill.run.extract import extract_embeddings

    config = load_config(args.config, args.overrides)
    if args.smoke:
        from mmdistill.config.smoke import smoke_config

        config = smoke_config(config)
    for split, path in extract_embeddings(config).items():
        print(f"{split}: {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mmdistill.sweep.report import make_report

    make_report(args.dir, tsne=False if args.no_tsne else None)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mmdistill.predict.command import run_predict

    run_predict(args.source, args.input, model=args.model, out=args.out, batch_size=args.batch_size,
                workers=args.workers, strict=args.strict, image_root=args.image_root, progress=not args.no_progress)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from mmdistill.cache.inventory import format_table, list_entries, prune, resolve_cache_dir

    cache_dir = resolve_cache_dir(args.dir)
    if args.older_than is None:
        print(format_table(list_entries(cache_dir)))
        return 0
    removed, kept = prune(cache_dir, args.older_than, dry_run=args.dry_run)
    print(format_table(removed))
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} entries (damaged, or unused for over {args.older_than:g} days); kept {len(kept)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdistill", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train teacher, KD student and baseline; write the run directory")
    _add_config_args(run)
    run.add_argument("--overwrite", action="store_true", help="replace a finished run with the same name")
    run.add_argument("--smoke", action="store_true",
                     help="tiny random-init backbones, one short epoch per stage: checks a recipe's wiring in seconds")
    _add_cache_args(run)
    run.set_defaults(func=cmd_run)
    validate = sub.add_parser("validate", help="check config and data (every image decoded) without training")
    _add_config_args(validate)
    validate.set_defaults(func=cmd_validate)
    losses = sub.add_parser("losses", help="list every loss term and preset with its parameters and formula")
    losses.set_defaults(func=cmd_losses)
    demo = sub.add_parser("demo-data", help="write a small generated dataset")
    demo.add_argument("kind", help="dataset kind (demo)")
    demo.add_argument("dir", help="directory to write")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo_data)
    compress = sub.add_parser("compress", help="prune, quantize (int8) and export (ONNX) a run's student; "
                                               "score and time every result")
    compress.add_argument("run_dir", help="a finished run directory (<output_dir>/<experiment_name>)")
    compress.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override the run's config, e.g. --set compress.sparsity=0.7 "
                               "--set data.root=data/demo (repeatable)")
    compress.set_defaults(func=cmd_compress)
    sweep = sub.add_parser("sweep", help="run every variant of the config's sweep grid with every seed (resumable); "
                                         "aggregate and report")
    _add_config_args(sweep)
    sweep.add_argument("--dry-run", action="store_true",
                       help="validate every variant and print what would run (and the sbatch script for slurm)")
    sweep.add_argument("--no-report", action="store_true", help="skip aggregation and report at the end")
    _add_cache_args(sweep)
    sweep.set_defaults(func=cmd_sweep)
    extract = sub.add_parser("extract", help="write the teacher's embeddings of every split (data.source: "
                                             "embeddings) for feature-KD runs to train against")
    _add_config_args(extract)
    extract.add_argument("--smoke", action="store_true", help="tiny random-init teacher of the same family")
    extract.set_defaults(func=cmd_extract)
    report = sub.add_parser("report", help="write report.md and report.html for a sweep or a run directory")
    report.add_argument("dir", help="a sweep directory (<output_dir>/<experiment>) or one run directory")
    report.add_argument("--no-tsne", action="store_true", help="skip the t-SNE of teacher and student embeddings")
    report.set_defaults(func=cmd_report)
    predict = sub.add_parser("predict", help="apply a run's student (or any of its compressed models, or an "
                                              "ONNX file compress wrote) to a table, a folder of images or an image")
    predict.add_argument("source", help="a run directory, or an .onnx file written by `mmdistill compress`")
    predict.add_argument("input", help="a table (CSV, JSONL, parquet) with the columns the model reads, a folder of "
                                       "images (searched recursively), or one image")
    predict.add_argument("--model", help="fp32 (the trained student), best (the default int8 model compress chose; "
                                         "the default when there is one), teacher, or a compressed model's name")
    predict.add_argument("--out", default="predictions.csv",
                         help="output file: .csv (default predictions.csv), .parquet or .jsonl; - for CSV on stdout")
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--workers", type=int, help="processes decoding the inputs (default: cores, at most 4)")
    predict.add_argument("--image-root", help="folder relative image paths of a table start from (default: the "
                                              "table's folder)")
    predict.add_argument("--strict", action="store_true", help="stop at the first input that cannot be read (exit 2)")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)
    cache = sub.add_parser("cache", help="list the caches' stores with size and last use; remove the unused ones")
    cache.add_argument("dir", help="a cache directory (cache.dir) or an output_dir holding cache/")
    cache.add_argument("--older-than", type=float, metavar="DAYS",
                       help="remove entries no run has read or written for more than DAYS days (and damaged ones)")
    cache.add_argument("--dry-run", action="store_true", help="with --older-than: list what would go, remove nothing")
    cache.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    prepare_process()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished epochs are in metrics.csv and the best checkpoints so far are kept",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
