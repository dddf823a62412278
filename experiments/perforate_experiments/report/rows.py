"""The report's input: result rows and failure records read from a results directory,
grouped per experiment and options combination, in the page's fixed order."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import CONTROL, PLAIN_VARIANTS, budget_of, control_of, is_plain  # noqa: F401

logger = logging.getLogger(__name__)

#: Display order of variants (unknown ones follow, sorted by name).
VARIANT_ORDER = ("pb", "pb-cc", "pb-perf", "pb-paper", "pb-head", "pb-backbone",
                 "cc-no-perf", "gd", "restart", "width", "width-cc", "width-perf")
PB = "pb"

Row = dict[str, Any]


def load_rows(results_dir: str | Path, include_quick: bool = False) -> tuple[list[Row], int]:
    """Every result row under `results_dir`, and how many rows of ``*-quick`` folders were
    skipped. Unreadable files are logged and skipped."""
    root = Path(results_dir)
    rows: list[Row] = []
    skipped = 0
    if not root.is_dir():
        logger.warning("no results directory %s", root)
        return rows, 0
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        quick_folder = folder.name.endswith("-quick")
        files = sorted(folder.glob("*/*.json"))
        if quick_folder and not include_quick:
            skipped += len(files)
            continue
        rows += [row for row in map(_read_record, files) if row is not None]
    return rows, skipped


def _read_record(path: Path) -> Row | None:
    """A result row or failure record at ``EXPERIMENT[-quick]/VARIANT/FILE``, with the fields
    its path implies filled in; None (logged) when it cannot be read."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("skipping unreadable %s: %s", path, exc)
        return None
    if not isinstance(record, dict):
        logger.warning("skipping %s: not a JSON object", path)
        return None
    folder = path.parent.parent.name
    record.setdefault("experiment", folder.removesuffix("-quick"))
    record.setdefault("variant", path.parent.name)
    record["quick"] = bool(record.get("quick", folder.endswith("-quick")))
    record.setdefault("options", {})
    return record


def load_failures(results_dir: str | Path, include_quick: bool = False) -> list[Row]:
    """The error records of runs that failed (``*.failed`` beside the rows; see
    `runner.failure_path`), so the page can say which runs are missing and why."""
    paths = sorted(Path(results_dir).glob("*/*/*.failed"))
    records = (_read_record(p) for p in paths
               if include_quick or not p.parent.parent.name.endswith("-quick"))
    return [r for r in records if r is not None]


def variant_sort_key(variant: str) -> tuple[int, str]:
    """Position of `variant` in :data:`VARIANT_ORDER` (unknown variants last, by name)."""
    if variant in VARIANT_ORDER:
        return VARIANT_ORDER.index(variant), ""
    return len(VARIANT_ORDER), variant


def _value_sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0, float(value), ""
    return 1, 0.0, json.dumps(value, sort_keys=True, default=str)


def options_sort_key(options: Mapping[str, Any]) -> tuple[Any, ...]:
    """Options combinations sort by key, then numerically where the values are numbers."""
    return tuple((k, _value_sort_key(options[k])) for k in sorted(options))


def options_id(options: Mapping[str, Any]) -> str:
    return json.dumps(dict(options), sort_keys=True, default=str)


def options_label(options: Mapping[str, Any]) -> str:
    """``"model = mpnn, width = 0.125"`` (``"no options"`` for the empty combination)."""
    if not options:
        return "no options"
    return ", ".join(f"{k} = {options[k]}" for k in sorted(options))


def slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower())
    return "-".join(part for part in keep.split("-") if part) or "all"


def seed_ranges(seeds: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the ``--seeds`` syntax)."""
    out: list[str] = []
    ordered = sorted(set(seeds))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def distinct(rows: Iterable[Row], key: str) -> list[tuple[Any, list[Row]]]:
    """Distinct values of ``row[key]`` (by JSON) with their rows, in JSON order."""
    seen: dict[str, tuple[Any, list[Row]]] = {}
    for row in rows:
        value = row.get(key)
        ident = json.dumps(value, sort_keys=True, default=str)
        seen.setdefault(ident, (value, []))[1].append(row)
    return [seen[k] for k in sorted(seen)]


@dataclass
class Group:
    """The rows of one experiment (quick runs are their own group)."""

    experiment: str
    quick: bool
    rows: list[Row]

    @property
    def title(self) -> str:
        return f"{self.experiment} (quick)" if self.quick else self.experiment

    @property
    def slug(self) -> str:
        return slug(self.experiment + ("-quick" if self.quick else ""))

    def combos(self) -> list[tuple[dict[str, Any], dict[str, list[Row]]]]:
        """[(options, {variant: rows sorted by seed})] in the page's order."""
        by: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
        opts: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            key = options_id(row.get("options") or {})
            opts[key] = dict(row.get("options") or {})
            by[key][row["variant"]].append(row)
        out = []
        for key in sorted(by, key=lambda k: options_sort_key(opts[k])):
            variants = {v: sorted(by[key][v], key=lambda r: r.get("seed", 0))
                        for v in sorted(by[key], key=variant_sort_key)}
            out.append((opts[key], variants))
        return out

    def metric(self) -> str:
        names = sorted({str(r.get("metric")) for r in self.rows if r.get("metric")})
        return " / ".join(names) or "score"
