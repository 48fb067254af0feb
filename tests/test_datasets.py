"""Folder datasets on small generated trees and on the built-in sample."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxrssl.data.datasets import DatasetWarning, FolderDataset, Record, sample
from cxrssl.errors import DatasetError, ImageReadError
from cxrssl.io import write_mask


def _image(path: Path, shape: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.linspace(0, 255, shape[0] * shape[1]).reshape(shape).astype(np.uint8)
    assert cv2.imwrite(str(path), ramp)
    return path


def _mask(path: Path, shape: tuple[int, int] = (12, 10), rows: slice = slice(2, 6)) -> Path:
    mask = np.zeros(shape, np.uint8)
    mask[rows] = 1
    write_mask(path, mask)
    return path


def _tree(tmp_path: Path) -> Path:
    """a.png, b.jpg, c.png; masks for a (png) and b (png for a jpg); masks_left for a only."""
    for name in ("a.png", "b.jpg", "c.png"):
        _image(tmp_path / "images" / name)
    _mask(tmp_path / "masks" / "a.png")
    _mask(tmp_path / "masks" / "b.png")
    _mask(tmp_path / "masks_left" / "a_mask.png")
    (tmp_path / "masks" / "notes.txt").write_text("not a mask")
    return tmp_path


def test_sample_has_90_images_of_48_patients_with_lung_masks() -> None:
    ds = sample()
    assert len(ds) == 90
    assert len({p for p in ds.patient_ids() if p}) == 48
    assert ds.mask_names == ("masks", "masks_left", "masks_right")
    assert all(not missing for missing in ds.missing_masks().values())
    assert "n=90, patients=48" in repr(ds)
    item = ds[0]
    assert item["image"].dtype == np.float32 and item["image"].ndim == 2
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    union = item["masks"]["masks"]
    assert union.shape == item["image"].shape and union.dtype == np.uint8
    both = item["masks"]["masks_left"] | item["masks"]["masks_right"]
    assert (both == union).mean() > 0.95
    assert item["path"] == ds.records[0].image and item["patient_id"] == ds.records[0].patient_id


def test_masks_match_by_stem_across_suffixes_and_missing_ones_are_listed(tmp_path: Path) -> None:
    ds = FolderDataset.from_folder(_tree(tmp_path))
    assert ds.files() == ["a.png", "b.jpg", "c.png"]
    assert ds.mask_names == ("masks", "masks_left")
    a, b, c = ds.records
    assert a.masks == {
        "masks": tmp_path / "masks/a.png",
        "masks_left": tmp_path / "masks_left/a_mask.png",
    }
    assert b.masks == {"masks": tmp_path / "masks/b.png"}
    assert c.masks == {}
    assert ds.missing_masks() == {"masks": ["c.png"], "masks_left": ["b.jpg", "c.png"]}
    item = ds[1]
    assert set(item["masks"]) == {"masks"} and item["masks"]["masks"][3].tolist() == [1] * 10


def test_explicit_mask_folders_by_name(tmp_path: Path) -> None:
    ds = FolderDataset.from_folder(_tree(tmp_path), masks={"lungs": "masks_left"})
    assert ds.mask_names == ("lungs",)
    assert list(ds.records[0].masks) == ["lungs"]
    with pytest.raises(DatasetError, match=r"masks_heart: mask folder not found"):
        FolderDataset.from_folder(tmp_path, masks=["masks_heart"])


def test_mask_without_image_is_reported(tmp_path: Path) -> None:
    _mask(_tree(tmp_path) / "masks" / "zz.png")
    with pytest.warns(DatasetWarning, match=r"masks: 1 mask file\(s\) match no image: zz\.png"):
        FolderDataset.from_folder(tmp_path)


def test_duplicate_stems_are_refused_naming_both_files(tmp_path: Path) -> None:
    _image(_tree(tmp_path) / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"two files with the stem 'a': a\.jpg and a\.png"):
        FolderDataset.from_folder(tmp_path)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere: dataset folder not found"):
        FolderDataset.from_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty[/\\]images: folder not found"):
        FolderDataset.from_folder(tmp_path / "empty")


def test_labels_csv_gives_patients_labels_meta_and_warns_on_mismatch(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "labels.csv").write_text(
        "Image Index,Patient ID,Effusion,Mass,age,note\n"
        "a.png,p1,1,0,40,x\n"
        "b.jpg,p1,,1.0,41,y\n"
        "gone.png,p2,0,0,50,z\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = FolderDataset.from_folder(tmp_path)
    messages = sorted(str(w.message) for w in caught if w.category is DatasetWarning)
    assert len(messages) == 2
    assert messages[0].endswith("1 image(s) have no row: c.png")
    assert messages[1].endswith("1 row(s) match no image: gone.png")
    assert ds.label_names == ("Effusion", "Mass")  # age (40, 41...) is not binary
    assert ds.patient_ids() == ["p1", "p1", None]
    assert ds.records[0].meta == {"age": "40", "note": "x"}
    labels = ds.labels()
    assert labels.shape == (3, 2) and labels.dtype == np.float32
    assert labels[0].tolist() == [1.0, 0.0] and math.isnan(labels[1, 0]) and labels[1, 1] == 1
    assert np.isnan(labels[2]).all()
    assert ds.label_counts() == {"Effusion": 1, "Mass": 1}
    np.testing.assert_array_equal(ds[1]["labels"], labels[1])


def test_labels_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    _tree(tmp_path)
    table = tmp_path / "labels.csv"
    table.write_text("filename,Mass\na.png,yes\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: line 2: label 'Mass' is 'yes'"):
        FolderDataset.from_folder(tmp_path, label_columns=["Mass"])
    table.write_text("name,Mass\na.png,1\n")
    with pytest.raises(DatasetError, match=r"labels\.csv: no file column"):
        FolderDataset.from_folder(tmp_path)
    table.write_text("filename,Mass\na.png,1\na.png,0\n")
    with pytest.raises(DatasetError, match=r"line 3: a second row for image 'a'"):
        FolderDataset.from_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"other\.csv: labels table not found"):
        FolderDataset.from_folder(tmp_path, labels_csv="other.csv")


def test_mask_of_another_size_is_refused_on_read(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", shape=(5, 5))
    ds = FolderDataset.from_folder(tmp_path)
    with pytest.raises(ImageReadError, match=r"a\.png: mask is 5x5 but its image is 12x10"):
        ds[0]


def test_subset_keeps_names_and_accepts_boolean_masks(tmp_path: Path) -> None:
    ds = FolderDataset.from_folder(_tree(tmp_path))
    picked = ds.subset([2, 0])
    assert picked.files() == ["c.png", "a.png"]
    assert picked.mask_names == ds.mask_names and picked.root == ds.root
    assert ds.subset(np.array([False, True, False])).files() == ["b.jpg"]
    with pytest.raises(IndexError, match=r"boolean mask of shape \(2,\) for 3 records"):
        ds.subset(np.array([True, False]))


def test_records_unions_and_duplicate_names(tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png")
    left = _mask(tmp_path / "l.png", rows=slice(0, 3))
    right = _mask(tmp_path / "r.png", rows=slice(8, 10))
    record = Record(image, "p", {"masks_left": left, "masks_right": right}, {"Nodule": 1.0})
    ds = FolderDataset([record], mask_unions={"masks": ("masks_left", "masks_right")})
    assert ds.mask_names == ("masks_left", "masks_right", "masks")
    union = ds[0]["masks"]["masks"]
    assert union.sum() == 5 * 10 and union[:3].all() and union[8:10].all()
    assert ds.label_names == ("Nodule",)
    with pytest.raises(DatasetError, match=r"two images share the file name 'x\.png'"):
        FolderDataset([record, Record(tmp_path / "sub" / "x.png")])
