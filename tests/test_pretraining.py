"""``cxrssl pretrain`` end to end on a few sample images: every method pre-trains and
fine-tunes through ``train-seg --init``; a killed run resumes to the same weights; test
patients are refused; monitoring figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cxrssl.cli.main import main
from cxrssl.data.datasets import sample
from cxrssl.data.pool import PoolError
from cxrssl.ssl import METHODS
from cxrssl.tasks.pretraining import (
    PretrainConfig,
    embedding_spread,
    hold_out,
    pretrain,
    retrieval_accuracy,
)
from cxrssl.train import load_checkpoint

FEATURES = [4, 8, 8, 16, 16]
N_IMAGES = 10


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten sample images with their labels.csv and lung masks, in the folder layout."""
    root = tmp_path_factory.mktemp("pool")
    ds = sample()
    records = ds.records[:N_IMAGES]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for r in records:
        shutil.copy(r.image, root / "images" / r.image.name)
        shutil.copy(r.masks["masks"], root / "masks" / r.image.name)
    lines = (Path(ds.records[0].image).parents[1] / "labels.csv").read_text().splitlines()
    keep = {r.image.name for r in records}
    body = [line for line in lines[1:] if line.split(",")[0] in keep]
    (root / "labels.csv").write_text("\n".join([lines[0], *body]) + "\n")
    return root


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def small(method: str, **kw: object) -> PretrainConfig:
    defaults: dict[str, object] = {
        "method": method,
        "encoder_kwargs": {"features": FEATURES},
        "method_kwargs": {} if method == "medsass" else {"hidden_dim": 16, "proj_dim": 8},
        "size": 32,
        "epochs": 2,
        "batch_size": 4,
        "holdout": 0.3,
        "device": "cpu",
        "progress": False,
        "tensorboard": False,
    }
    return PretrainConfig(**{**defaults, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_pretrains_and_fine_tunes(method: str, pool_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "pre"
    options = json.dumps({} if method == "medsass" else {"hidden_dim": 16, "proj_dim": 8})
    argv = ["pretrain", "--method", method, "--images", str(pool_dir), "--out", str(run)]
    argv += ["--size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    argv += ["--method-options", options, "--no-progress"]
    # The encoder's features go through the Python API's config; the CLI uses the defaults
    # of train-seg's U-Net, so both sides match.
    assert main(argv) == 0
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["extra"]["method"] == method
    assert ckpt["extra"]["crop"] == ("lung-box" if method == "lung-crop" else "none")
    assert any(k.startswith("encoder.") for k in ckpt["state_dict"])
    history = (run / "metrics.csv").read_text()
    assert "val_spread" in history
    assert ("val_retrieval" in history) == (method != "medsass")
    seg = tmp_path / "seg"
    argv = ["train-seg", "--images", str(pool_dir / "images"), "--masks", str(pool_dir / "masks")]
    argv += ["--out", str(seg), "--size", "32", "--epochs", "1", "--folds", "1"]
    argv += [
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--no-progress",
        "--init",
        str(run / "best.pt"),
    ]
    if method == "medsass":
        argv.append("--init-whole")
    assert main(argv) == 0
    assert (seg / "fold_0" / "best.pt").is_file() or any(seg.rglob("best.pt"))


def test_a_crop_set_in_method_options_reaches_the_checkpoint(
    pool_dir: Path, tmp_path: Path
) -> None:
    kwargs = {"hidden_dim": 16, "proj_dim": 8, "crop": True}
    result = pretrain([pool_dir], tmp_path / "pre", small("simclr", epochs=1, method_kwargs=kwargs))
    assert load_checkpoint(result.run_dir / "best.pt")["extra"]["crop"] == "lung-box"


def test_resume_after_a_kill_matches_an_uninterrupted_run(pool_dir: Path, tmp_path: Path) -> None:
    config = small("regional")
    straight = pretrain([pool_dir], tmp_path / "a", config)

    class Killed(Exception):
        pass

    import cxrssl.train.engine as engine

    original = engine.write_history_csv
    calls = {"n": 0}

    def kill_after_first(path: Path, history: list[dict[str, float]]) -> None:
        original(path, history)
        calls["n"] += 1
        if calls["n"] == 1:
            raise Killed

    engine.write_history_csv = kill_after_first  # type: ignore[assignment]
    try:
        with pytest.raises(Killed):
            pretrain([pool_dir], tmp_path / "b", config)
    finally:
        engine.write_history_csv = original
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = pretrain([pool_dir], tmp_path / "b", config, resume=True)
    a = load_checkpoint(straight.run_dir / "last.pt")["state_dict"]
    b = load_checkpoint(resumed.run_dir / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    hist_a = json.loads((tmp_path / "a" / "summary.json").read_text())["last"]
    hist_b = json.loads((tmp_path / "b" / "summary.json").read_text())["last"]
    assert hist_a["val_loss"] == hist_b["val_loss"]


def test_a_pool_with_test_patients_is_refused(pool_dir: Path, tmp_path: Path) -> None:
    patient = sample().records[0].meta.get("patient_id") or sample().patient_ids()[0]
    with pytest.raises(PoolError, match=str(patient)):
        pretrain([pool_dir], tmp_path / "x", small("simclr"), exclude_patients=[str(patient)])
    assert not (tmp_path / "x" / "last.pt").exists()


def test_cli_refuses_test_patients_of_a_split(
    pool_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "split.csv"
    ds = sample()
    first = ds.records[0]
    pid = ds.patient_ids()[0]
    split.write_text(f"file,patient_id,split\n{first.image.name},{pid},test\nother.png,zz,train\n")
    argv = ["pretrain", "--images", str(pool_dir), "--out", str(tmp_path / "r")]
    argv += ["--exclude-split", str(split), "--size", "32", "--epochs", "1", "--device", "cpu"]
    assert main(argv) == 2
    assert str(pid) in capsys.readouterr().err


def test_monitoring_figures() -> None:
    z = torch.randn(16, 8)
    assert retrieval_accuracy(z, z + 0.01 * torch.randn(16, 8)) == 1.0
    assert retrieval_accuracy(z, torch.randn(16, 8)) < 0.5
    assert embedding_spread(torch.randn(512, 8)) == pytest.approx(1.0, abs=0.1)
    assert embedding_spread(torch.ones(64, 8) + 1e-4 * torch.randn(64, 8)) < 0.01


def test_hold_out_takes_whole_patients() -> None:
    ids = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "g"]
    held = hold_out(ids, 0.3, 100, seed=0)
    assert 3 <= held.sum() <= 5
    for pid in set(ids):
        rows = [held[i] for i, p in enumerate(ids) if p == pid]
        assert all(rows) or not any(rows)
