"""Study units are computed once: a killed study re-runs only what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cxrssl.study.runner import Unit, fingerprint, run_units

UNITS = [Unit("m", k, s) for k in (5, None) for s in (0, 1)]


class Killed(Exception):
    pass


def test_killed_study_resumes_without_recomputing(tmp_path: Path) -> None:
    calls: list[str] = []

    def dying(unit: Unit) -> dict[str, Any]:
        if len(calls) == 2:
            raise Killed
        calls.append(unit.key)
        return {"value": unit.seed}

    with pytest.raises(Killed):
        run_units(UNITS, dying, tmp_path, {"a": 1})
    assert calls == ["m__k5__seed0", "m__k5__seed1"]

    again: list[str] = []

    def compute(unit: Unit) -> dict[str, Any]:
        again.append(unit.key)
        return {"value": unit.seed}

    results = run_units(UNITS, compute, tmp_path, {"a": 1})
    assert again == ["m__kall__seed0", "m__kall__seed1"]
    assert results["m__k5__seed1"] == {"value": 1} and len(results) == 4


def test_changed_settings_or_partial_file_recompute(tmp_path: Path) -> None:
    seen: list[str] = []

    def compute(unit: Unit) -> dict[str, Any]:
        seen.append(unit.key)
        return {}

    run_units(UNITS[:1], compute, tmp_path, {"a": 1})
    run_units(UNITS[:1], compute, tmp_path, {"a": 2})  # stale fingerprint
    (tmp_path / "units" / "m__k5__seed0.json").write_text('{"finger')  # torn write
    run_units(UNITS[:1], compute, tmp_path, {"a": 2})
    assert seen == ["m__k5__seed0"] * 3


def test_fingerprint_is_order_independent() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
