"""Statistics over seeds, with scipy doing the arithmetic.

`describe`: mean, sample std (ddof=1), 95% confidence interval of the mean from Student's t
(n - 1 degrees of freedom), n. `paired`: two variants on the seeds they share, as a paired
t-test and a Wilcoxon signed-rank test, with Cohen's d of the paired differences
(d_z = mean(diff) / std(diff, ddof=1)). Anything undefined (one seed, all differences zero)
is None, so results stay valid JSON. `holm`: Holm-Bonferroni adjusted p-values for a family
of tests (a sweep compares many variants; unadjusted, some p < 0.05 appears by chance).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    a = np.asarray(values, dtype=float)
    n = int(a.size)
    out: dict[str, Any] = {"mean": _num(a.mean()) if n else None, "std": None, "ci95": None, "n": n,
                           "values": [float(v) for v in a]}
    if n >= 2:
        std = float(a.std(ddof=1))
        out["std"] = std
        if std == 0.0:
            out["ci95"] = [float(a.mean()), float(a.mean())]
        else:
            lo, hi = stats.t.interval(confidence, n - 1, loc=a.mean(), scale=std / math.sqrt(n))
            out["ci95"] = [float(lo), float(hi)]
    return out


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """a - b on matched seeds: mean difference, paired t-test, Wilcoxon signed-rank, Cohen's d."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples need the same length ({x.size} vs {y.size})")
    diff = x - y
    n = int(diff.size)
    out: dict[str, Any] = {"n": n, "mean_diff": _num(diff.mean()) if n else None, "t": None, "p_ttest": None,
                           "w": None, "p_wilcoxon": None, "cohens_d": None, "identical": bool(n and not diff.any())}
    if n < 2 or out["identical"]:
        return out
    sd = float(diff.std(ddof=1))
    out["cohens_d"] = _num(diff.mean() / sd) if sd > 0 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant differences, tiny samples: scipy warns, we report None
        t = stats.ttest_rel(x, y)
        out["t"], out["p_ttest"] = _num(t.statistic), _num(t.pvalue)
        try:
            w = stats.wilcoxon(x, y)
            out["w"], out["p_wilcoxon"] = _num(w.statistic), _num(w.pvalue)
        except ValueError:
            pass
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the input's order: the k-th smallest of m is
    multiplied by m - k + 1, kept monotone and capped at 1 (reject where adjusted < alpha
    controls the family-wise error rate). Undefined p-values (None) are left out of the family."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out
