"""Markdown and number formatting of the results page (deterministic: fixed formats)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .stats import mean_std

NA = "n/a"


def fmt_p(p: float | None) -> str:
    """p-values: 3 decimals, scientific below 0.001, "n/a" when not computable."""
    if p is None:
        return NA
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_mean_std(mean: float | None, std: float | None, *, signed: bool = False,
                 scale: float = 1.0) -> str:
    """``"95.25 ± 0.31"`` (``± n/a`` with one value, ``n/a`` with none)."""
    if mean is None:
        return NA
    m = f"{mean * scale:+.2f}" if signed else f"{mean * scale:.2f}"
    return f"{m} ± {NA}" if std is None else f"{m} ± {std * scale:.2f}"


def fmt_pct(values: Sequence[float], signed: bool = False) -> str:
    """Scores in [0, 1] as percent mean ± std."""
    return fmt_mean_std(*mean_std(values), signed=signed, scale=100.0)


def fmt_number(value: Any) -> str:
    """A generic number: thousands separators from 1000, 2 decimals from 1, else 4 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (abs(value) >= 1000 and float(value).is_integer()):
        return f"{value:,.0f}"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.2f}"
    return f"{value:.4g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], body: Sequence[Sequence[Any]],
             align: Sequence[str] | None = None) -> list[str]:
    """A Markdown table (first column left-aligned, the others right-aligned by default)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in body]
    return lines


def render_value(value: Any, indent: int = 0) -> list[str]:
    """A nested dict/list as a Markdown bullet list (keys sorted)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            v = value[key]
            if isinstance(v, (Mapping, list, tuple)) and v and not _is_flat_list(v):
                lines.append(f"{pad}- `{key}`:")
                lines += render_value(v, indent + 1)
            else:
                lines.append(f"{pad}- `{key}`: {scalar(v)}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, (Mapping, list, tuple)) and v and not _is_flat_list(v):
                lines.append(f"{pad}- [{i}]:")
                lines += render_value(v, indent + 1)
            else:
                lines.append(f"{pad}- {scalar(v)}")
    else:
        lines.append(f"{pad}- {scalar(value)}")
    return lines


def _is_flat_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(
        not isinstance(v, (Mapping, list, tuple)) for v in value)


def scalar(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(scalar(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> ``{"a / b / [0]": leaf}`` in insertion order."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for key, v in value.items():
            out.update(flatten(v, f"{prefix} / {key}" if prefix else str(key)))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix} / [{i}]" if prefix else f"[{i}]"))
    else:
        out[prefix or "value"] = value
    return out


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
