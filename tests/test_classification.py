"""Classification: labels, patient-level fractions, loss masking, Grad-CAM and lung focus,
train-cls / predict-cls end to end on generated radiographs, and the real data when present."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from cxrssl.cli.main import main
from cxrssl.data.adapters import nih
from cxrssl.data.datasets import FolderDataset, Record
from cxrssl.data.pool import open_sources
from cxrssl.errors import DatasetError
from cxrssl.nets.classifier import Classifier
from cxrssl.study.cls_efficiency import ClsStudyConfig, paired_auc, run_cls_efficiency
from cxrssl.tasks.classification import ClsConfig, predict_cls, train_cls
from cxrssl.tasks.cls_data import LabelSet, crop_to_box, draw_fraction, select_labels
from cxrssl.tasks.cls_task import class_losses, macro_auc, positive_weights
from cxrssl.tasks.explain import grad_cam, lung_focus

VERDICTS = ("helps", "hurts", "no measurable difference", "not measured")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _chest(seed: int, sick: bool, size: int = 96) -> np.ndarray:
    """Two dark lung ovals in a bright body; a sick film has a bright blob in one lung."""
    rng = np.random.default_rng(seed)
    h = w = size
    image = np.full((h, w), 30, np.uint8)
    cv2.ellipse(image, (w // 2, h // 2), (w // 2 - 3, h // 2 - 2), 0, 0, 360, 200, -1)
    for side in (-1, 1):
        cv2.ellipse(image, (w // 2 + side * w // 5, h // 2), (w // 8, h // 4), 0, 0, 360, 70, -1)
    if sick:
        side = 1 if rng.random() < 0.5 else -1
        cv2.circle(image, (w // 2 + side * w // 5, h // 2 + int(rng.integers(-8, 9))), 7, 190, -1)
    image = cv2.GaussianBlur(image, (0, 0), 1.5)
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _write_set(root: Path, n: int = 40) -> Path:
    """``root/images/c<i>.png`` and ``root/labels.csv`` (two films per patient)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        sick = (i // 2) % 2 == 1
        cv2.imwrite(str(root / "images" / f"c{i}.png"), _chest(i, sick))
        unknown = "" if i == 3 else str(int(sick))
        rows.append(f"c{i}.png,P{i // 2},{int(sick)},{unknown}\n")
    (root / "labels.csv").write_text("filename,patient_id,sick,sick_copy\n" + "".join(rows))
    return root


@pytest.fixture(scope="module")
def chests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_set(tmp_path_factory.mktemp("cls") / "chests")


def _dataset(labels: list[dict[str, float]]) -> FolderDataset:
    records = [Record(Path(f"x{i}.png"), f"P{i}", labels=r) for i, r in enumerate(labels)]
    return FolderDataset(records, label_names=list(labels[0]))


def test_minus_one_is_unknown_and_other_values_are_refused() -> None:
    ds = _dataset([{"a": 1.0, "b": -1.0}, {"a": 0.0, "b": math.nan}])
    _, labels = select_labels(ds, None)
    assert labels.values[0, 0] == 1 and np.isnan(labels.values[:, 1]).all()
    with pytest.raises(DatasetError, match=r"x0\.png.*label 'a' is 2"):
        select_labels(_dataset([{"a": 2.0}]), None)
    with pytest.raises(DatasetError, match="not found"):
        select_labels(ds, ["c"])


def test_multiclass_keeps_rows_with_exactly_one_class() -> None:
    ds = _dataset([{"a": 1.0, "b": 0.0}, {"a": 1.0, "b": 1.0}, {"a": 0.0, "b": 1.0}])
    kept, labels = select_labels(ds, None, multiclass=True)
    assert kept.files() == ["x0.png", "x2.png"]
    assert labels.targets().tolist() == [0, 1]


def test_label_fraction_is_drawn_by_patient_and_stratified() -> None:
    pids = [f"P{i // 2}" for i in range(400)]
    values = np.array([[float((i // 2) % 4 == 0)] for i in range(400)], np.float32)
    rows = draw_fraction(pids, LabelSet(("a",), values), 0.1, seed=3)
    chosen = {pids[i] for i in rows}
    assert len(chosen) == 20  # 10 % of 200 patients
    assert all(pids[i] in chosen for i in range(400)) is False
    assert sorted(rows) == sorted(i for i in range(400) if pids[i] in chosen)  # whole patients
    assert 0.15 <= values[rows].mean() <= 0.35  # the 25 % prevalence kept
    again = draw_fraction(pids, LabelSet(("a",), values), 0.1, seed=3)
    assert np.array_equal(rows, again)
    with pytest.raises(DatasetError, match="label-fraction"):
        draw_fraction(pids, LabelSet(("a",), values), 0.0, seed=0)


def test_unknown_labels_add_nothing_to_the_loss() -> None:
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    labels = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    weight = torch.tensor([3.0, 1.0])
    got = class_losses(logits, labels, False, weight)

    def bce(x: float, y: float, w: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(w * y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(0.3, 1, 3) + bce(2.0, 0, 3) + bce(0.5, 1, 1)) / 3
    assert float(got) == pytest.approx(expected, rel=1e-5)
    one_hot = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    ce = class_losses(logits, one_hot, True)
    assert float(ce) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0])))
    )


def test_positive_weights_lift_rare_labels_only() -> None:
    labels = np.array([[1, 1], [0, 1], [0, 1], [0, np.nan], [0, 0]], np.float64)
    assert positive_weights(labels).tolist() == [4.0, 1.0]
    assert math.isnan(macro_auc(np.array([[1.0], [1.0]]), np.array([[0.2], [0.3]])))


def test_grad_cam_of_a_pooled_linear_head_is_the_class_activation_map() -> None:
    torch.manual_seed(0)
    net = Classifier("resnet18", 2).eval()
    x = torch.rand(2, 1, 64, 64)
    cam = grad_cam(net, x, [0, 1])
    with torch.no_grad():
        feats = net.features(x)
        direct = torch.einsum("kc,bchw->bkhw", net.fc.weight, feats).clamp_min(0)
        direct = torch.nn.functional.interpolate(direct, size=(64, 64), mode="bilinear")
        direct = direct / direct.flatten(2).amax(-1)[..., None, None].clamp_min(1e-12)
    assert cam.shape == (2, 2, 64, 64)
    assert torch.allclose(cam, direct, atol=1e-5)


def test_lung_focus_counts_mass_inside_lungs_and_box() -> None:
    cam = torch.zeros(1, 1, 10, 10)
    cam[0, 0, 2:4, 2:4] = 1.0  # 4 units inside
    cam[0, 0, 8, 8] = 4.0  # 4 units outside
    lungs = torch.zeros(1, 1, 10, 10)
    lungs[0, 0, :5, :5] = 1
    focus = lung_focus(cam, lungs, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))  # ends exclusive
    assert float(focus["lungs"]) == pytest.approx(0.5)
    assert float(focus["box"]) == pytest.approx(0.5)
    assert float(focus["lung_area"]) == pytest.approx(0.25)


def test_crop_to_box_resamples_the_box_to_the_canvas() -> None:
    image = torch.zeros(1, 1, 64, 64)
    image[..., 16:48, 16:48] = 1.0
    lungs = (image > 0).float()
    out, warped = crop_to_box(image, torch.tensor([[16.0, 16.0, 48.0, 48.0]]), lungs)
    assert out.shape == (1, 1, 64, 64)
    assert float(out[..., 4:-4, 4:-4].min()) > 0.9 and bool((warped[..., 2:-2, 2:-2] == 1).all())


def test_train_and_predict_end_to_end(chests: Path, tmp_path: Path) -> None:
    config = ClsConfig(
        model="resnet18",
        size=64,
        epochs=2,
        batch_size=8,
        epoch_steps=2,
        val_fraction=0.25,
        test_fraction=0.25,
        n_boot=50,
        progress=False,
        tensorboard=False,
        device="cpu",
    )
    out = tmp_path / "run"
    summary = train_cls(
        chests / "images", out, config, chests / "labels.csv", ["sick", "sick_copy"]
    )
    assert set(summary["per_label"]) == {"sick", "sick_copy"}
    assert summary["data"]["images"] == 40 and summary["data"]["positives"]["sick"] == 20
    assert summary["per_label"]["sick"]["n_pos"] + summary["per_label"]["sick"]["n_neg"] == 10
    assert 0 <= summary["lung_focus"]["mean"] <= summary["lung_focus"]["box_mean"] <= 1
    for name in ("roc.png", "reliability.png", "lung_focus.png", "predictions.csv"):
        assert (out / name).stat().st_size > 0
    with (out / "fold_0" / "split.csv").open() as f:
        split = list(csv.DictReader(f))
    sides: dict[str, set[str]] = {}
    for row in split:
        sides.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())  # no patient on two sides
    assert {r["split"] for r in split} == {"train", "val", "test"}
    ckpt = torch.load(out / "fold_0" / "best.pt", weights_only=True)
    assert ckpt["extra"]["temperature"] > 0 and len(ckpt["extra"]["thresholds"]) == 2
    csv_out = tmp_path / "probs.csv"
    result = predict_cls(out, chests / "images", csv_out, explain=tmp_path / "cams", device="cpu")
    with csv_out.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "sick", "sick_copy"] and len(rows) == 41
    assert all(0 <= float(v) <= 1 for r in rows[1:] for v in r[1:])
    assert (tmp_path / "cams" / "c0__sick.png").is_file()
    assert 0 <= result["lung_focus"] <= 1


def test_cli_label_fraction_crop_and_folds(
    chests: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv"
    code = main(
        [
            "train-cls", "--images", str(chests), "--label-columns", "sick", "--out", str(out),
            "--folds", "2", "--val-fraction", "0.25", "--label-fraction", "0.5",
            "--crop", "lung-box", "--size", "64", "--epochs", "1", "--batch-size", "8",
            "--no-progress", "--device", "cpu", "--no-explain",
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "mean AUC" in text and "over folds" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 40 and summary["auc_over_folds"]["n_folds"] == 2
    assert summary["folds"][0]["n_unused"] > 0
    ckpt = torch.load(out / "fold_1" / "best.pt", weights_only=True)
    assert ckpt["extra"]["crop"] == "lung-box"


def test_bad_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train-cls", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_paired_auc_difference_and_verdict() -> None:
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 100)
    patients = [f"P{i // 2}" for i in range(200)]
    good = [y + rng.normal(0, 0.5, 200) for _ in range(3)]
    bad = [y + rng.normal(0, 2.0, 200) for _ in range(3)]
    better = paired_auc(good, bad, y, patients, n_boot=200)
    assert better["mean"] > 0 and better["verdict"] == "helps"
    assert paired_auc(bad, good, y, patients, n_boot=200)["verdict"] == "hurts"
    same = paired_auc(good, good, y, patients, n_boot=50)
    assert same["mean"] == 0 and same["n_patients"] == 100


def test_study_reuses_finished_units(chests: Path, tmp_path: Path) -> None:
    config = ClsStudyConfig(
        labelled=str(chests),
        label_columns=["sick"],
        methods=["simclr"],
        fractions=[1.0],
        seeds=[0, 1],
        size=64,
        classify={"epochs": 1, "batch_size": 8, "val_fraction": 0.25, "explain": False},
        pretrain={"epochs": 1, "batch_size": 8, "holdout": 0.2},
        n_boot=50,
        device="cpu",
    )
    summary = run_cls_efficiency(config, tmp_path / "study")
    assert {p["method"] for p in summary["points"]} == {"scratch", "simclr"}
    (diff,) = summary["differences"]
    assert diff["method"] == "simclr" and diff["verdict"] in VERDICTS
    assert (tmp_path / "study" / "cls_efficiency.png").stat().st_size > 0
    unit = tmp_path / "study" / "units" / "simclr__f1__seed0.json"
    before = unit.stat().st_mtime_ns
    run_cls_efficiency(config, tmp_path / "study")
    assert unit.stat().st_mtime_ns == before  # reused, not recomputed


def test_nih_sample_runs_the_14_finding_path(
    shared_data: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    root = shared_data / "nih_chestxray14_sample"
    config = ClsConfig(
        size=64, epochs=1, epoch_steps=2, batch_size=8, val_fraction=0.2, test_fraction=0.3,
        n_boot=20, progress=False, tensorboard=False, device="cpu",
    )  # fmt: skip
    summary = train_cls(root, tmp_path / "nih", config)
    counts = nih.finding_counts(open_sources(root))
    assert summary["labels"] == list(nih.FINDINGS)  # the official order
    assert summary["data"]["positives"] == {f: counts[f] for f in nih.FINDINGS}
    assert summary["data"]["images"] == 52
    for finding, s in summary["per_label"].items():
        assert s["n_pos"] + s["n_neg"] == summary["n_scored"], finding
        assert np.isnan(s["auc"]) == (s["n_pos"] == 0 or s["n_neg"] == 0)
    with (tmp_path / "nih" / "predictions.csv").open() as f:
        header = next(csv.reader(f))
    assert [h for h in header if h.startswith("prob_")] == [f"prob_{f}" for f in nih.FINDINGS]


def test_multiclass_trains_with_softmax_and_one_column_per_class(
    tmp_path: Path, chests: Path
) -> None:
    table = (chests / "labels.csv").read_text().splitlines()
    rows = ["filename,patient_id,sick,healthy"]
    for line in table[1:]:
        name, pid, sick, _ = line.split(",")
        rows.append(f"{name},{pid},{sick},{1 - int(sick)}")
    labels = tmp_path / "classes.csv"
    labels.write_text("\n".join(rows) + "\n")
    config = ClsConfig(
        size=64, epochs=1, epoch_steps=2, batch_size=8, val_fraction=0.25, n_boot=20,
        multiclass=True, explain=False, progress=False, tensorboard=False, device="cpu",
    )  # fmt: skip
    summary = train_cls(chests / "images", tmp_path / "mc", config, labels, ["sick", "healthy"])
    assert summary["multiclass"] and set(summary["per_label"]) == {"sick", "healthy"}
    with (tmp_path / "mc" / "predictions.csv").open() as f:
        rows_out = list(csv.DictReader(f))
    total = [float(r["prob_sick"]) + float(r["prob_healthy"]) for r in rows_out]
    assert np.allclose(total, 1.0, atol=1e-5)  # softmax over the classes
