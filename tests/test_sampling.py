"""The rows the report's maps and the probes look at (mmdistill/eval/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmdistill.eval.sampling import sample_rows


@pytest.mark.parametrize("samples", [0, None, 50, 80])
def test_zero_null_or_at_least_the_split_is_every_row(samples):
    assert sample_rows(50, samples, seed=1, strata=np.arange(50) % 3) is None


def test_a_draw_is_k_distinct_sorted_rows_fixed_by_the_seed():
    labels = np.random.default_rng(0).integers(0, 4, 1000)
    rows = sample_rows(1000, 100, seed=5, strata=labels)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and np.all(np.diff(rows) > 0)
    assert rows.dtype == np.int64 and rows.min() >= 0 and rows.max() < 1000
    np.testing.assert_array_equal(rows, sample_rows(1000, 100, seed=5, strata=labels))
    assert not np.array_equal(rows, sample_rows(1000, 100, seed=6, strata=labels))
    plain = sample_rows(1000, 100, seed=-5)  # unstratified; a negative seed is a seed too
    assert len(np.unique(plain)) == 100 and not np.array_equal(plain, sample_rows(1000, 100, seed=5))


def test_each_class_gets_its_share_and_a_rare_class_is_kept():
    labels = np.repeat([0, 1, 2, 3], [600, 300, 97, 3])
    counts = np.bincount(labels[sample_rows(1000, 100, seed=2, strata=labels)], minlength=4)
    assert counts.sum() == 100
    assert counts[3] == 1  # 0.3 of a row by its share; one, so it is on the map and in the probe
    assert abs(counts[0] - 60) <= 1 and abs(counts[1] - 30) <= 1 and abs(counts[2] - 10) <= 1
    # fewer rows than classes: shares only
    assert len(sample_rows(1000, 2, seed=2, strata=labels)) == 2


def test_negative_or_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="-1"):
        sample_rows(10, -1, seed=0)
    with pytest.raises(ValueError, match="one stratum per row"):
        sample_rows(10, 3, seed=0, strata=[0, 1])
