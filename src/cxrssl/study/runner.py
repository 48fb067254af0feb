"""Run the units of a study, each once: finished units are read back from the run folder.

A unit is one (method, number of labelled images, seed) training-and-evaluation job. Its
result is a JSON file under ``<out>/units/``, written atomically and stamped with the
fingerprint of the settings it depends on, so a re-run after a crash, or with more seeds,
computes only what is missing or what a changed setting made stale.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrssl.files import atomic_open

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One cell of the label-efficiency grid. ``n_labelled`` None means every training image."""

    method: str
    n_labelled: int | None
    seed: int

    @property
    def key(self) -> str:
        k = "all" if self.n_labelled is None else str(self.n_labelled)
        return f"{self.method}__k{k}__seed{self.seed}"


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of JSON-serialisable settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    with atomic_open(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=float)


def _cached(path: Path, stamp: str) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or a partial file from a crash: recompute
    if payload.get("fingerprint") != stamp:
        return None
    result: dict[str, Any] = payload["result"]
    return result


def run_units(
    units: Iterable[Unit],
    compute: Callable[[Unit], dict[str, Any]],
    folder: Path,
    settings: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Compute each unit not already finished under ``folder/units``; return all results.

    Args:
        units: the grid to run, in order.
        compute: trains and evaluates one unit, returning a JSON-serialisable dict.
        folder: the study's output folder.
        settings: everything a unit's result depends on besides the unit itself.
    """
    stamp = fingerprint(settings)
    results: dict[str, dict[str, Any]] = {}
    units = list(units)
    for i, unit in enumerate(units, 1):
        path = folder / "units" / f"{unit.key}.json"
        cached = _cached(path, stamp)
        if cached is not None:
            log.info("[%d/%d] %s: finished earlier, reusing %s", i, len(units), unit.key, path)
            results[unit.key] = cached
            continue
        log.info("[%d/%d] %s: running", i, len(units), unit.key)
        result = compute(unit)
        write_json_atomic(path, {"fingerprint": stamp, "unit": vars(unit), "result": result})
        results[unit.key] = result
    return results
