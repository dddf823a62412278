"""``perforate report DIR``: one Markdown results page (plus PNGs) from a sweep's result rows.

Reads every ``DIR/<experiment>[-quick]/<variant>/seed-<S>[__k-v...].json`` row written by
:func:`perforate_experiments.train.run_one` (``*-quick`` folders only with
``include_quick=True``) and writes, per experiment and options combination, a table of every
variant with paired comparisons against the **restart control on the same seeds** (algorithm.md,
"Controls every accuracy claim needs"), a plain verdict on PB vs the restart and width
controls, and the figures of the paper it reproduces (Figure 7 boxes for the ablation,
parameters vs AUC for PhysioNet, per-seed first vs final for the others).

Modules, one job each: `rows` (reading and grouping the rows), `stats` (the numbers),
`figures` (the PNGs), `markdown` (formatting) and `page` (the page and `build_report`).

The page is deterministic: the same rows give the same bytes (no timestamps; fixed variant
order; fixed number formats). Scores are shown as percentages with 2 decimals and paired
differences in percentage points.
"""

from __future__ import annotations

from .page import build_report, verdict
from .rows import load_failures, load_rows
from .stats import paired

__all__: list[str] = ["build_report", "load_failures", "load_rows", "paired", "verdict"]
