"""Run the units of a study, each once: finished units are read back from the run folder.

A unit is one (method, number of labelled images, seed) training-and-evaluation job. Its
result is a JSON file under ``<out>/units/``, written atomically and stamped with the
fingerprint of what it depends on: the settings, the data's content (``file_manifest``: name,
size and SHA-1 of every file), the code (``cxrssl.__version__`` and the source hash of every
cxrssl module a unit runs, ``UNIT_CODE`` and what it imports: editing the report does not
recompute units), the torch version and the device. A re-run after a crash, or with more seeds,
computes only what is missing or what a change made stale; a file with an older stamp, or
none, is simply recomputed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import cxrssl
from cxrssl.files import atomic_open
from cxrssl.provenance import file_manifest, fingerprint, modules_of, source_hash

log = logging.getLogger(__name__)
UNIT_CODE = ("cxrssl.study.units",)  # the modules that compute a unit (and their imports)


@dataclass(frozen=True)
class Unit:
    """One cell of a label-efficiency grid: ``n_labelled`` images (None: every training
    image), or a ``fraction`` of the training patients' labels."""

    method: str
    n_labelled: int | None
    seed: int
    fraction: float | None = None

    @property
    def key(self) -> str:
        if self.fraction is not None:
            return f"{self.method}__f{self.fraction:g}__seed{self.seed}"
        k = "all" if self.n_labelled is None else str(self.n_labelled)
        return f"{self.method}__k{k}__seed{self.seed}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    with atomic_open(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=float)


def provenance(
    data: Iterable[str | Path], device: str, code: Sequence[str] = UNIT_CODE
) -> dict[str, str]:
    """What every unit depends on besides its settings (hashes the data files, once).

    Args:
        data: every file the units read (images and masks), in the order they are used.
        device: the resolved device, e.g. ``"cpu"`` or ``"cuda:0"``.
        code: the modules that compute a unit (their imports are followed).
    """
    return {
        "data": file_manifest(data),
        "cxrssl": cxrssl.__version__,
        "code": source_hash(modules_of(tuple(code))),
        "torch": torch.__version__,
        "device": device,
    }


def _cached(path: Path, stamp: str) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # absent, or a partial file from a crash: recompute
    if not isinstance(payload, dict) or payload.get("fingerprint") != stamp:
        return None
    result = payload.get("result")
    return result if isinstance(result, dict) else None


def run_units(
    units: Iterable[Unit],
    compute: Callable[[Unit], dict[str, Any]],
    folder: Path,
    settings: Mapping[str, Any],
    *,
    data: Iterable[str | Path],
    device: str,
    code: Sequence[str] = UNIT_CODE,
    bar: Any | None = None,
    label: str = "",
) -> dict[str, dict[str, Any]]:
    """Compute each unit not already finished under ``folder/units``; return all results.

    Args:
        units: the grid to run, in order.
        compute: trains and evaluates one unit, returning a JSON-serialisable dict.
        folder: the study's output folder.
        settings: the configuration a unit's result depends on besides the unit itself.
        data: every file the units read (images and masks); their content, not their
            names or folder, goes into the stamp.
        device: the resolved device the units run on.
        code: the modules that compute a unit (default: segmentation units).
        bar: a ``tqdm`` bar over the study's units: it shows the running unit's name, and a
            finished unit leaves its total (so the ETA counts only work still to do);
            without one, a log line per unit.
        label: what the bar shows before a unit's key (e.g. ``"pre-training "``).

    Raises:
        OSError: a data file cannot be read.
    """
    origin = provenance(data, device, code)
    stamp = fingerprint({"settings": dict(settings), **origin})
    results: dict[str, dict[str, Any]] = {}
    units = list(units)
    for i, unit in enumerate(units, 1):
        path = folder / "units" / f"{unit.key}.json"
        cached = _cached(path, stamp)
        if cached is not None:
            results[unit.key] = cached
            if bar is None:
                log.info("[%d/%d] %s: finished earlier, reusing %s", i, len(units), unit.key, path)
            else:
                bar.total -= 1
                bar.refresh()
            continue
        if bar is None:
            log.info("[%d/%d] %s: running", i, len(units), unit.key)
        else:
            bar.set_postfix_str(f"{label}{unit.key}", refresh=True)
        result = compute(unit)
        payload = {"fingerprint": stamp, "provenance": origin, "unit": vars(unit)}
        write_json_atomic(path, {**payload, "result": result})
        results[unit.key] = result
        if bar is not None:
            bar.update(1)
    return results
