"""Which rows of a split the report's maps and the probes look at (`logging.plot_samples`,
`logging.probe_samples`).

A t-SNE of a million points takes hours and a probe fit on a million rows holds them all, so
both look at a fixed-size random draw instead; the draw is made from the labels alone, before
any model runs, so only the drawn rows are ever embedded (`collect_features(rows=...)`).

The draw is a function of (the stratifying labels, the size, the seed) only: every model of a
run gets the same rows, so their maps are of the same samples, and a resumed or re-reported
run draws them again identically.

It is stratified by one task's labels (the first task: the one the maps are coloured by):
each class gets its share of the draw (largest remainders), so the class mix of the draw is
the split's up to rounding rather than up to sampling noise, and every class present gets at
least one row when the draw has room for one per class. A class absent from the draw would
be missing from a map's legend, and a probe fit without it could never predict it. Within a
class, rows are drawn uniformly without replacement; the other tasks' mixes hold in
expectation.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _generator(seed: int) -> np.random.Generator:
    # numpy refuses negative seeds; a config's seed may be one. Two's complement keeps them distinct.
    return np.random.default_rng(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)


def sample_rows(n: int, samples: Optional[int], seed: int,
                strata: Optional[Sequence[int] | np.ndarray] = None) -> Optional[np.ndarray]:
    """Sorted int64 indices of `samples` of `n` rows, or None for every row (`samples` 0 or
    None, or at least `n`). `strata`: one label per row to stratify by (see the module)."""
    if samples is not None and samples < 0:
        raise ValueError(f"a sample size is a count of rows, 0 or null for all, got {samples}")
    if not samples or samples >= n:
        return None
    rng = _generator(seed)
    if strata is None:
        return np.sort(rng.choice(n, size=samples, replace=False)).astype(np.int64)
    strata = np.asarray(strata)
    if len(strata) != n:
        raise ValueError(f"one stratum per row: got {len(strata)} for {n} rows")
    classes, inverse = np.unique(strata, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    # each class's share, rounded by largest remainders so the quotas add up to `samples`
    exact = samples * counts / n
    quota = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: samples - int(quota.sum())]] += 1
    # one row for every class when there is room, taken from the largest quotas
    if samples >= len(classes):
        for k in np.flatnonzero(quota == 0):
            quota[int(np.argmax(quota))] -= 1
            quota[k] = 1
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])  # each class's rows
    picked = [rng.choice(rows, size=int(q), replace=False) for rows, q in zip(members, quota) if q > 0]
    return np.sort(np.concatenate(picked)).astype(np.int64)
