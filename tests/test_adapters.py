"""Dataset adapters on small generated trees in each documented layout, and on the real data."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.data.adapters import covid_collection, jsrt, load, montgomery, nih, shenzhen
from cxrssl.data.datasets import DatasetWarning
from cxrssl.data.splits import check_no_leak, make_split
from cxrssl.errors import DatasetError, ImageReadError
from cxrssl.io import write_mask

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_ROWS = [  # name, findings, patient
    ("00000001_000.png", "Cardiomegaly", "1"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1"),
    ("00000002_000.png", "No Finding", "2"),
    ("00000003_000.png", "Hernia", "3"),
    ("00000003_001.png", "Effusion|Infiltration|Hernia", "3"),
    ("00000004_000.png", "No Finding", "4"),
    ("00000005_000.png", "Mass|Nodule", "5"),
    ("00000006_000.png", "No Finding", "6"),
]


def _png(path: Path, shape: tuple[int, int] = (16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, shape[0] * shape[1]).reshape(shape).astype(np.uint8)
    assert cv2.imwrite(str(path), ramp)
    return path


def _half_mask(path: Path, shape: tuple[int, int] = (16, 16), right: bool = False) -> Path:
    mask = np.zeros(shape, np.uint8)
    if right:
        mask[4:12, shape[1] // 2 + 1 : -1] = 1
    else:
        mask[4:12, 1 : shape[1] // 2 - 1] = 1
    write_mask(path, mask)
    return path


def _nih_tree(root: Path, gz: bool = True) -> Path:
    lines = [NIH_HEADER] + [
        f"{name},{findings},0,{pid},50,M,PA,2500,2048,0.143,0.143"
        for name, findings, pid in NIH_ROWS
    ]
    text = "\n".join(lines) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    if gz:
        (root / "Data_Entry_2017_v2020.csv.gz").write_bytes(gzip.compress(text.encode()))
    else:
        (root / "Data_Entry_2017.csv").write_text(text)
    for i, (name, _, _) in enumerate(NIH_ROWS[:6]):  # the last two rows have no image
        _png(root / f"images_00{1 + i % 2}" / "images" / name)
    test = {"00000003_000.png", "00000003_001.png", "00000006_000.png"}
    (root / "test_list.txt").write_text("\n".join(sorted(test)) + "\n")
    rest = [name for name, _, _ in NIH_ROWS if name not in test]
    (root / "train_val_list.txt").write_text("\n".join(rest) + "\n")
    return root


def test_nih_official_layout_labels_and_lists(tmp_path: Path) -> None:
    root = _nih_tree(tmp_path / "nih")
    with pytest.warns(DatasetWarning, match=r"2 of 8 rows have no image .* kept 6"):
        ds = nih.load(root)
    assert len(ds) == 6 and ds.label_names == nih.FINDINGS
    assert ds.records[0].image == root / "images_001" / "images" / "00000001_000.png"
    assert ds.records[1].image.parent.parent.name == "images_002"
    assert ds.patient_ids() == ["1", "1", "2", "3", "3", "4"]
    row = dict(zip(ds.label_names, ds.labels()[4].tolist(), strict=True))
    assert {k for k, v in row.items() if v == 1} == {"Effusion", "Infiltration", "Hernia"}
    assert ds.records[0].meta["view"] == "PA" and ds.records[3].meta["official_split"] == "test"
    assert ds[0]["image"].shape == (16, 16)
    full = nih.load(root, require_images=False)
    assert len(full) == 8 and full.records[7].image == root / "images" / "00000006_000.png"
    counts = nih.finding_counts(full)
    assert list(counts)[:14] == list(nih.FINDINGS) and list(counts)[-1] == "No Finding"
    assert counts["Hernia"] == 2 and counts["Cardiomegaly"] == 2 and counts["No Finding"] == 3
    side = nih.official_split(full, val=0.3, seed=0)
    assert [s for s, r in zip(side, full.records, strict=True) if r.patient_id == "3"] == [
        "test",
        "test",
    ]
    assert "val" in side.tolist() and "train" in side.tolist()
    check_no_leak(full.patient_ids(), side)


def test_nih_plain_csv_and_errors(tmp_path: Path) -> None:
    root = _nih_tree(tmp_path / "nih", gz=False)
    assert nih.find_csv(root).name == "Data_Entry_2017.csv"
    assert len(nih.load(root, require_images=False)) == 8
    with pytest.raises(DatasetError, match=r"none of the 8 images of Data_Entry_2017\.csv found"):
        nih.load(root, images_dir=tmp_path)
    with pytest.raises(DatasetError, match=r"missing: NIH image folder not found"):
        nih.load(root, images_dir=tmp_path / "missing")
    (root / "Data_Entry_2017.csv").write_text(NIH_HEADER + "\nx.png,Cancer,0,9,1,M,PA,1,1,1,1\n")
    with pytest.raises(DatasetError, match=r"line 2: unknown finding\(s\) \['Cancer'\]"):
        nih.load(root, require_images=False)
    with pytest.raises(DatasetError, match=r"no Data_Entry_2017\*\.csv"):
        nih.find_csv(tmp_path)


@pytest.mark.realdata
def test_nih_full_table_counts_and_patient_split(shared_data: Path) -> None:
    ds = nih.load(shared_data / "nih_chestxray14_sample", require_images=False)
    assert len(ds) == 112_120
    assert len(set(ds.patient_ids())) == 30_805
    counts = nih.finding_counts(ds)
    assert counts["Infiltration"] == 19_894 and counts["Effusion"] == 13_317
    assert counts["Hernia"] == 227 and counts["No Finding"] == 60_361
    assert counts["Atelectasis"] == 11_559 and counts["Nodule"] == 6_331
    start = time.perf_counter()
    side = make_split(ds.patient_ids(), ds.labels(), val=0.1, test=0.2, seed=0)
    check_no_leak(ds.patient_ids(), side, ds.files())
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"split of 112,120 rows took {elapsed:.1f} s"
    patients = {
        k: {p for p, s in zip(ds.patient_ids(), side, strict=True) if s == k}
        for k in ("train", "val", "test")
    }
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    assert not patients["train"] & patients["val"]
    assert (side == "test").mean() == pytest.approx(0.2, abs=0.02)
    with pytest.warns(DatasetWarning, match=r"112068 of 112120 rows have no image"):
        staged = nih.load(shared_data / "nih_chestxray14_sample")
    assert (len(staged), len(set(staged.patient_ids()))) == (52, 23)


def _montgomery(root: Path) -> Path:
    base = root / "MontgomerySet"
    readings = {
        "MCUCXR_0001_0": "Patient's Sex: F\nPatient's Age: 040Y\nnormal\n",
        "MCUCXR_0002_1": "Patient's Sex: M\nPatient's Age: 052Y\nright upper lobe cavity\n",
    }
    for stem, text in readings.items():
        _png(base / "CXR_png" / f"{stem}.png")
        _half_mask(base / "ManualMask" / "leftMask" / f"{stem}.png", right=True)
        _half_mask(base / "ManualMask" / "rightMask" / f"{stem}.png")
        (base / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (base / "ClinicalReadings" / f"{stem}.txt").write_text(text)
    return root


def test_montgomery_layout(tmp_path: Path) -> None:
    ds = load("montgomery", _montgomery(tmp_path))
    assert len(ds) == 2 and ds.root == tmp_path / "MontgomerySet"
    assert ds.patient_ids() == ["MCUCXR_0001_0", "MCUCXR_0002_1"]
    assert ds.labels()[:, 0].tolist() == [0.0, 1.0] and ds.label_names == ("Tuberculosis",)
    assert ds.records[1].meta == {"sex": "M", "age": "52", "reading": "right upper lobe cavity"}
    assert ds.mask_names == ("masks_left", "masks_right", "masks")
    masks = ds[0]["masks"]
    np.testing.assert_array_equal(masks["masks"], masks["masks_left"] | masks["masks_right"])
    assert masks["masks_left"][:, 8:].sum() == masks["masks_left"].sum()  # image right
    with pytest.raises(DatasetError, match=r"no CXR_png folder"):
        montgomery.load(tmp_path / "MontgomerySet" / "ManualMask")


def test_clinical_readings_formats(tmp_path: Path) -> None:
    path = tmp_path / "r.txt"
    path.write_text("female  28yrs\nPTB in the left upper field\n")
    assert montgomery.read_clinical(path) == {
        "sex": "F", "age": "28", "reading": "PTB in the left upper field"
    }  # fmt: skip
    assert montgomery.read_clinical(tmp_path / "none.txt") == {"sex": "", "age": "", "reading": ""}


def test_shenzhen_layout_with_separate_masks(tmp_path: Path) -> None:
    base = tmp_path / "ChinaSet_AllFiles"
    for stem in ("CHNCXR_0001_0", "CHNCXR_0002_1"):
        _png(base / "CXR_png" / f"{stem}.png")
        (base / "ClinicalReadings").mkdir(parents=True, exist_ok=True)
        (base / "ClinicalReadings" / f"{stem}.txt").write_text("male 35yrs\nnormal\n")
    ds = shenzhen.load(tmp_path)
    assert len(ds) == 2 and ds.mask_names == () and ds.records[0].meta["age"] == "35"
    _half_mask(tmp_path / "mask" / "CHNCXR_0001_0_mask.png")
    ds = shenzhen.load(tmp_path)
    assert ds.mask_names == ("masks",) and ds.missing_masks() == {"masks": ["CHNCXR_0002_1.png"]}
    assert ds[0]["masks"]["masks"].sum() > 0 and ds.labels()[:, 0].tolist() == [0.0, 1.0]
    with pytest.raises(DatasetError, match=r"elsewhere: Shenzhen mask folder not found"):
        shenzhen.load(base, masks=tmp_path / "elsewhere")


def _scr_mask(path: Path, mask: np.ndarray) -> Path:
    """SCR masks are palette GIFs; written with Pillow when installed (OpenCV's GIF writer
    dithers), else as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from PIL import Image
    except ImportError:
        write_mask(path.with_suffix(".png"), mask)
        return path.with_suffix(".png")
    Image.fromarray(mask * np.uint8(255)).convert("P").save(path)
    return path


def test_jsrt_raw_images_and_scr_masks(tmp_path: Path) -> None:
    raw = np.zeros(jsrt.RAW_SHAPE, ">u2")
    raw[:, 1024:] = 4095  # right half dark on film
    (tmp_path / "All247images").mkdir()
    for stem in ("JPCLN001", "JPCNN002"):
        raw.tofile(tmp_path / "All247images" / f"{stem}.IMG")
    lung = np.zeros((1024, 1024), np.uint8)
    lung[200:800, 100:450] = 1
    for fold, stem in (("fold1", "JPCLN001"), ("fold2", "JPCNN002")):
        for structure in ("left lung", "right lung", "heart"):
            _scr_mask(
                tmp_path / "scr" / "scratch" / fold / "masks" / structure / f"{stem}.gif", lung
            )
    image = jsrt.read_jsrt(tmp_path / "All247images" / "JPCLN001.IMG")
    assert image.shape == (1024, 1024) and image.dtype == np.float32
    assert image[0, 0] == pytest.approx(1.0) and image[0, -1] == pytest.approx(0.0)
    ds = load("jsrt", tmp_path, scr=tmp_path / "scr")
    assert ds.files() == ["JPCLN001.IMG", "JPCNN002.IMG"]
    assert ds.labels()[:, 0].tolist() == [1.0, 0.0] and ds.patient_ids() == ["JPCLN001", "JPCNN002"]
    assert ds.mask_names == ("masks_left", "masks_right", "masks_heart", "masks")
    item = ds[1]
    assert item["image"].shape == (1024, 1024)
    np.testing.assert_array_equal(item["masks"]["masks_heart"], lung)
    np.testing.assert_array_equal(item["masks"]["masks"], lung)
    (tmp_path / "All247images" / "JPCLN001.IMG").write_bytes(b"\x00" * 100)
    with pytest.raises(ImageReadError, match=r"JPCLN001\.IMG: 100 bytes; a JSRT image is"):
        jsrt.read_jsrt(tmp_path / "All247images" / "JPCLN001.IMG")


def _covid_tree(data: Path) -> Path:
    _png(data / "ieee8023_v7labs" / "images" / "a.png")
    _png(data / "covid" / "images" / "b.png")
    root = data / "covid"
    (root / "labels.csv").write_text(
        "image_relpath,patient_id,finding,patient_group_id,view\n"
        'ieee8023_v7labs/images/a.png,339,"COVID-19, ARDS",285,PA\n'
        "covid/images/b.png,12,No Finding,12,AP\n"
        "covid/images/gone.png,13,SARS,13,AP\n"
    )
    return root


def test_ieee8023_classification_table(tmp_path: Path) -> None:
    with pytest.warns(DatasetWarning, match=r"1 image\(s\) not found, rows dropped: "):
        ds = covid_collection.load(_covid_tree(tmp_path))
    assert ds.files() == ["a.png", "b.png"]
    assert ds.patient_ids() == ["285", "12"]  # the merged patient group
    assert ds.label_names == ("ARDS", "COVID-19", "SARS")
    assert ds.labels().tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert ds.records[0].meta["patient_id"] == "339"


def test_ieee8023_mask_folder_layout(tmp_path: Path) -> None:
    root = tmp_path / "ieee8023_generalblockchain"
    _png(root / "images" / "x.png")
    _half_mask(root / "masks" / "x.png")
    _half_mask(root / "masks_lesion" / "x.png")
    (root / "labels.csv").write_text("filename,patient_id,has_ggo,finding\nx.png,39,1,COVID-19\n")
    ds = covid_collection.load(root)
    assert ds.mask_names == ("masks", "masks_lesion") and ds.label_names == ()
    assert ds.patient_ids() == ["39"] and ds.records[0].meta["has_ggo"] == "1"
    with pytest.raises(DatasetError, match=r"nowhere[/\\]labels\.csv: ieee8023 labels table"):
        covid_collection.load(tmp_path / "nowhere")


@pytest.mark.realdata
def test_ieee8023_real_folders(shared_data: Path) -> None:
    v7 = covid_collection.load(shared_data / "ieee8023_v7labs")
    gb = covid_collection.load(shared_data / "ieee8023_generalblockchain")
    covid = covid_collection.load(shared_data / "ieee8023_covid_chestxray_labels")
    assert (len(v7), len(set(v7.patient_ids()))) == (427, 257)
    assert (len(gb), len(set(gb.patient_ids()))) == (100, 73)
    assert (len(covid), len(set(covid.patient_ids()))) == (530, 312)
    assert covid.label_counts()["COVID-19"] == 428  # 416 COVID-19 + 12 "COVID-19, ARDS"
    assert not any(v7.missing_masks().values())


def test_unknown_layout_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset layout 'chexpert'; known: \['folder'"):
        load("chexpert", tmp_path)
