"""Study units are computed once: a killed study re-runs only what is missing, and a unit is
reused only for the same settings, data content, code and device."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import cxrssl.study.runner as runner
from cxrssl.study.runner import Unit, fingerprint, run_units

UNITS = [Unit("m", k, s) for k in (5, None) for s in (0, 1)]


class Killed(Exception):
    pass


@pytest.fixture()
def data(tmp_path: Path) -> list[Path]:
    """Two images and their masks, as a data folder."""
    files = []
    for sub in ("images", "masks"):
        (tmp_path / "data" / sub).mkdir(parents=True)
        for i in range(2):
            path = tmp_path / "data" / sub / f"p{i}.png"
            path.write_bytes(f"{sub} {i}".encode())
            files.append(path)
    return files


def _counter(seen: list[str]) -> Any:
    def compute(unit: Unit) -> dict[str, Any]:
        seen.append(unit.key)
        return {"value": unit.seed}

    return compute


def test_killed_study_resumes_without_recomputing(tmp_path: Path, data: list[Path]) -> None:
    calls: list[str] = []

    def dying(unit: Unit) -> dict[str, Any]:
        if len(calls) == 2:
            raise Killed
        calls.append(unit.key)
        return {"value": unit.seed}

    with pytest.raises(Killed):
        run_units(UNITS, dying, tmp_path, {"a": 1}, data=data, device="cpu")
    assert calls == ["m__k5__seed0", "m__k5__seed1"]

    again: list[str] = []
    results = run_units(UNITS, _counter(again), tmp_path, {"a": 1}, data=data, device="cpu")
    assert again == ["m__kall__seed0", "m__kall__seed1"]
    assert results["m__k5__seed1"] == {"value": 1} and len(results) == 4


def test_changed_settings_or_partial_file_recompute(tmp_path: Path, data: list[Path]) -> None:
    seen: list[str] = []
    compute = _counter(seen)
    run_units(UNITS[:1], compute, tmp_path, {"a": 1}, data=data, device="cpu")
    run_units(UNITS[:1], compute, tmp_path, {"a": 2}, data=data, device="cpu")  # stale
    (tmp_path / "units" / "m__k5__seed0.json").write_text('{"finger')  # torn write
    run_units(UNITS[:1], compute, tmp_path, {"a": 2}, data=data, device="cpu")
    assert seen == ["m__k5__seed0"] * 3


def test_changed_data_code_or_device_recompute(
    tmp_path: Path, data: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    out = tmp_path / "out"

    def run(files: list[Path], device: str = "cpu") -> None:
        run_units(UNITS[:1], _counter(seen), out, {"a": 1}, data=files, device=device)

    run(data)
    run(data)  # unchanged: reused
    assert len(seen) == 1
    copy = tmp_path / "copy"  # the same content elsewhere is the same data
    shutil.copytree(tmp_path / "data", copy)
    run([copy / p.relative_to(tmp_path / "data") for p in data])
    assert len(seen) == 1
    data[1].write_bytes(b"images 1, edited")  # one rewritten image
    run(data)
    assert len(seen) == 2
    data[1].rename(data[1].with_name("p9.png"))  # one renamed image
    run([*data[:1], data[1].with_name("p9.png"), *data[2:]])
    assert len(seen) == 3
    run(data[:1] + data[2:] + [data[1].with_name("p9.png")])  # the same files, another order
    assert len(seen) == 4
    run(data[:1] + data[2:] + [data[1].with_name("p9.png")], device="cuda:0")
    assert len(seen) == 5
    monkeypatch.setattr(runner, "source_hash", lambda *modules: "edited")  # another code version
    run(data[:1] + data[2:] + [data[1].with_name("p9.png")], device="cuda:0")
    assert len(seen) == 6


def test_old_or_odd_unit_files_are_recomputed(tmp_path: Path, data: list[Path]) -> None:
    seen: list[str] = []
    path = tmp_path / "units" / "m__k5__seed0.json"
    path.parent.mkdir()
    old = {"fingerprint": fingerprint({"a": 1, "data": "my data"}), "result": {"value": 7}}
    for text in (json.dumps(old), "[1, 2]", json.dumps({"fingerprint": "x"})):
        path.write_text(text)
        run_units(UNITS[:1], _counter(seen), tmp_path, {"a": 1}, data=data, device="cpu")
    assert seen == ["m__k5__seed0"] * 3
    payload = json.loads(path.read_text())
    assert payload["provenance"]["device"] == "cpu" and payload["result"] == {"value": 0}


def test_fingerprint_is_order_independent() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
