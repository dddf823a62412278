"""The report's statistics: mean ± std, error reduction, paired comparisons with a control
(sign test and paired t-test) and the one criterion for "beat"."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from perforate.metrics import error_reduction as _reduction

from .rows import Row

#: Significance level of the "beat" verdict (paired t-test, two-sided).
ALPHA = 0.05


def finite(values: Iterable[Any]) -> list[float]:
    """The finite numbers among `values` (None, bools, strings and nan dropped)."""
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1; None with fewer than 2 values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def error_reduction(first: Any, final: Any) -> float | None:
    """``(err_first - err_final) / err_first`` with ``err = 1 - score``; None if a score is
    missing or outside [0, 1]; 0.0 if the first error is 0."""
    if not finite([first]) or not finite([final]):
        return None
    try:
        return _reduction(float(first), float(final))
    except ValueError:
        return None


@dataclass(frozen=True)
class Paired:
    """Paired comparison of a variant's final test with a control's, seed by seed."""

    n: int
    """Seeds where both have a final test score."""
    mean: float | None
    """Mean of (variant - control) in percentage points."""
    std: float | None
    better: int
    worse: int
    sign_p: float | None
    """Two-sided sign test (ties dropped); None with fewer than 2 pairs."""
    t_p: float | None
    """Two-sided paired t-test; None with fewer than 2 pairs or identical differences."""


def paired(rows: Sequence[Row], control_rows: Sequence[Row]) -> Paired:
    """Pair `rows` with `control_rows` by seed and compare their ``final_test``."""
    control = {r["seed"]: r["final_test"] for r in control_rows if finite([r.get("final_test")])}
    pairs = sorted((r["seed"], float(r["final_test"]), float(control[r["seed"]]))
                   for r in rows if r.get("seed") in control and finite([r.get("final_test")]))
    diffs = [100.0 * (a - b) for _, a, b in pairs]
    better = sum(d > 0 for d in diffs)
    worse = sum(d < 0 for d in diffs)
    mean, std = mean_std(diffs)
    sign_p = t_p = None
    if len(pairs) >= 2:
        if better + worse > 0:
            sign_p = float(scipy_stats.binomtest(better, better + worse, 0.5).pvalue)
        if max(diffs) - min(diffs) > 1e-9 * max(1.0, abs(mean or 0.0)):
            # identical differences: the t statistic is undefined (scipy: nan or noise)
            t = scipy_stats.ttest_rel([a for _, a, _ in pairs], [b for _, _, b in pairs])
            t_p = float(t.pvalue) if math.isfinite(t.pvalue) else None
    return Paired(len(pairs), mean, std, better, worse, sign_p, t_p)


def beat(p: Paired) -> bool:
    """The page's one criterion for "beat": mean paired difference > 0 and t-test p < ALPHA."""
    return p.mean is not None and p.mean > 0 and p.t_p is not None and p.t_p < ALPHA


def quartiles(values: Sequence[float]) -> tuple[float, float, float, float, float]:
    """min, Q1, median, Q3, max (numpy's linear interpolation)."""
    lo, q1, med, q3, hi = (float(v) for v in np.percentile(values, [0, 25, 50, 75, 100]))
    return lo, q1, med, q3, hi
