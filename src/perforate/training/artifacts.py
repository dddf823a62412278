"""Files a training run leaves behind, each written atomically (temp file + ``os.replace``).

``history.csv`` (one row per epoch), ``architectures.csv`` (one row per neuron cycle: the
paper's "best test scores" table), ``summary.json``, ``training.png`` and ``checkpoint/``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import atomic_write_text
from .plotting import plot_training

#: Fixed columns of ``history.csv`` (extra scores passed to ``Tracker.step`` follow them).
HISTORY_COLUMNS = ("epoch", "phase", "cycle", "dendrites", "params", "train", "val", "test",
                   "lr", "corr", "seconds", "event")
#: Fixed columns of ``architectures.csv`` (``<extra>_at_best_val`` columns follow them).
ARCHITECTURE_COLUMNS = ("cycle", "dendrites", "params", "epochs", "dendrite_epochs",
                        "best_epoch", "best_val", "test_at_best_val", "train_at_best_val",
                        "improved", "kept", "seconds")

HISTORY_FILE = "history.csv"
ARCHITECTURES_FILE = "architectures.csv"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "training.png"
CHECKPOINT_DIR = "checkpoint"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Write `rows` under `columns` (missing values and None as empty cells, bools as 0/1)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings (for tests and analysis)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON (non-finite floats become null)."""
    return atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def write_run_artifacts(tracker: Any, out_dir: str | Path, *, plot: bool = True) -> Path:
    """Write history, architectures, summary (and the plot) of `tracker` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extras = list(tracker.records.extra_names)
    write_csv(out / HISTORY_FILE, tracker.records.history, [*HISTORY_COLUMNS, *extras])
    write_csv(out / ARCHITECTURES_FILE, tracker.records.architectures,
              [*ARCHITECTURE_COLUMNS, *(f"{e}_at_best_val" for e in extras)])
    summary = tracker.summary()
    settings = summary.get("settings")
    if isinstance(settings, dict) and settings.get("out_dir") is not None:  # nothing absolute
        summary["settings"] = {**settings, "out_dir": os.path.relpath(
            os.path.abspath(settings["out_dir"]), os.path.abspath(out))}
    write_json(out / SUMMARY_FILE, summary)
    if plot:
        plot_training(tracker, out / PLOT_FILE)
    return out
