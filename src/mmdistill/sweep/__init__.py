"""Sweeps: a grid of config variants x seeds, run locally or on SLURM, resumed, aggregated
into statistics and a report.

    grid.py        expand `sweep.grid` into named variant configs, validated up front
    plan.py        the jobs of a sweep: shared teachers, then one run per variant and seed
    jobs.py        one job, in whatever process or node runs it
    executors.py   registry: local (in-process or worker processes), slurm (submitit arrays)
    runner.py      `mmdistill sweep`: plan, skip finished, run, summarize, aggregate, report
    stats.py       mean / std / t confidence interval, paired t-test, Wilcoxon, Cohen's d
    aggregate.py   aggregated_results.json and best_config.yaml from the run directories
    report.py      report.md and a self-contained report.html (figures in figures.py)

What makes two runs (or two teachers) the same is `config/hashing.py`. A sweep runs
`run/experiment.run_experiment` for each job; nothing below `sweep` imports it.
"""
