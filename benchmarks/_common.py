"""Benchmark output: one JSON object per line on stdout, nothing else there.

A line is ``{"bench": name, "value": v, "unit": u}``, plus ``baseline`` and ``ratio``
(value / baseline) when the measurement has a reference, plus any extra context.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

__all__ = ["emit", "timed"]


def emit(
    bench: str, value: float, unit: str, *, baseline: float | None = None, **extra: Any
) -> None:
    """Print one result line (values rounded to 4 significant digits)."""
    line: dict[str, Any] = {"bench": bench, "value": _round(value), "unit": unit}
    if baseline is not None:
        line["baseline"] = _round(baseline)
        line["ratio"] = round(value / baseline, 3) if baseline else None
    line.update(extra)
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def timed() -> float:
    """A monotonic high-resolution clock for measurements."""
    return time.perf_counter()


def _round(x: float) -> float:
    return float(f"{x:.4g}")
