"""CT inputs on generated volumes: NIfTI and DICOM reading, orientation, 2.5D stacks, 3-D
nodule masks from centres and DRRs."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from cxrssl.cli.main import main
from cxrssl.errors import CxrsslError, DatasetError, ImageReadError
from cxrssl.io import read_image, read_mask
from cxrssl.lesions.drr import drr, drr_layout, drr_mask, project_point
from cxrssl.lesions.points import Point
from cxrssl.lesions.volume import (
    Volume,
    grow_nodule,
    read_volume,
    stack_25d,
    volume_masks,
    window,
    world_to_index,
    write_nifti,
)

SHAPE = (24, 64, 64)
SPACING = (2.5, 1.0, 1.0)  # z, y, x mm
NODULE = (12, 30, 46)  # (z, y, x) index: in the left lung (x grows to the patient's left)
NODULE_MM = 10.0
SECRET = "DOE^SECRET"


def std_affine(origin: tuple[float, float, float] = (-31.5, -31.5, 100.0)) -> np.ndarray:
    """Index (z, y, x) -> LPS for the standard orientation: z inferior, y posterior, x left."""
    a = np.zeros((4, 4))
    a[0, 2], a[1, 1], a[2, 0] = SPACING[2], SPACING[1], -SPACING[0]
    a[:3, 3] = origin
    a[3, 3] = 1
    return a


def chest(right_lung: bool = True, nodule: bool = True) -> np.ndarray:
    """A body of soft tissue (40 HU), air lungs (-850), a posterior spine (700), a nodule."""
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    zm, ym, xm = (z - 12) * SPACING[0], y - 31.5, x - 31.5
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[(ym / 28) ** 2 + (xm / 30) ** 2 <= 1] = 40
    for side in (-14, 14) if right_lung else (14,):  # -14: the patient's right
        hu[((xm - side) / 10) ** 2 + ((ym + 2) / 18) ** 2 + (zm / 25) ** 2 <= 1] = -850
    hu[(ym - 20) ** 2 + xm**2 <= 36] = 700
    if nodule:
        hu[sphere()] = 30
    noise = np.random.default_rng(0).normal(0, 15, SHAPE).astype(np.float32)
    return hu + noise * (hu > -1000)


def sphere() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    zc, yc, xc = NODULE
    r2 = ((z - zc) * SPACING[0]) ** 2 + (y - yc) ** 2 + (x - xc) ** 2
    return r2 <= (NODULE_MM / 2) ** 2


def volume(array: np.ndarray | None = None) -> Volume:
    return Volume(chest() if array is None else array, SPACING, Path("chest.nii"), std_affine())


def one_line(error: pytest.ExceptionInfo[CxrsslError], name: str) -> None:
    text = str(error.value)
    assert "\n" not in text and name in text, text


# ------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_nifti_round_trip(tmp_path: Path, name: str) -> None:
    hu = chest()
    write_nifti(tmp_path / name, hu, std_affine())
    v = read_volume(tmp_path / name)
    assert v.array.dtype == np.float32 and v.array.shape == SHAPE
    np.testing.assert_array_equal(v.array, hu)
    np.testing.assert_allclose(v.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(v.affine, std_affine(), atol=1e-5)
    assert v.path == tmp_path / name and "chest" not in repr(v) and "24x64x64" in repr(v)


def test_scaled_int16_nifti(tmp_path: Path) -> None:
    hu = chest()
    write_nifti(tmp_path / "ct.nii.gz", hu, std_affine(), dtype="int16", slope=0.5, inter=-1024)
    data = gzip.decompress((tmp_path / "ct.nii.gz").read_bytes())
    assert struct.unpack_from("<h", data, 70)[0] == 4  # int16 on disk
    v = read_volume(tmp_path / "ct.nii.gz")
    assert np.abs(v.array - hu).max() <= 0.25 + 1e-3


def test_big_endian_nifti(tmp_path: Path) -> None:
    hu = chest()
    write_nifti(tmp_path / "le.nii", hu, std_affine(), dtype="int16", slope=0.5, inter=-1024)
    data = bytearray((tmp_path / "le.nii").read_bytes())
    fields = [(0, "i"), (40, "8h"), (70, "2h"), (76, "8f"), (108, "3f"), (252, "2h")]
    for offset, fmt in [*fields, (256, "6f"), (280, "12f")]:
        struct.pack_into(">" + fmt, data, offset, *struct.unpack_from("<" + fmt, data, offset))
    voxels = np.frombuffer(bytes(data[352:]), "<i2").astype(">i2").tobytes()
    (tmp_path / "be.nii").write_bytes(bytes(data[:352]) + voxels)
    np.testing.assert_array_equal(
        read_volume(tmp_path / "be.nii").array, read_volume(tmp_path / "le.nii").array
    )


def _reoriented(hu: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The chest stored in other layouts (array, its LPS affine)."""
    z, y, x = (n - 1 for n in SHAPE)
    std = std_affine()
    # RAS+ (nibabel's canonical): i to the right, j anterior, k superior; axes (k, j, i).
    ras = np.zeros((4, 4))
    ras[:3, 0], ras[:3, 1], ras[:3, 2] = -std[:3, 0], -std[:3, 1], -std[:3, 2]
    ras[:, 3] = std @ [z, y, x, 1]
    # Sagittal slices: axes (x, z, y) of the standard array, unflipped.
    sag = std[:, [2, 0, 1, 3]]
    return [(hu[::-1, ::-1, ::-1], ras), (hu.transpose(2, 0, 1), sag)]


def test_other_layouts_are_read_in_the_standard_orientation(tmp_path: Path) -> None:
    hu = chest()
    for n, (array, affine) in enumerate(_reoriented(hu)):
        path = tmp_path / f"ct{n}.nii"
        write_nifti(path, array, affine)
        v = read_volume(path)
        np.testing.assert_array_equal(v.array, hu)
        np.testing.assert_allclose(v.affine, std_affine(), atol=1e-4)
        # The same through the qform alone (sform_code 0).
        data = bytearray(path.read_bytes())
        struct.pack_into("<h", data, 254, 0)
        path.write_bytes(bytes(data))
        np.testing.assert_array_equal(read_volume(path).array, hu)
        np.testing.assert_allclose(read_volume(path).affine, std_affine(), atol=1e-4)
    assert world_to_index(v, *(std_affine() @ [*NODULE, 1])[:3]) == pytest.approx(NODULE)


def _patched(tmp_path: Path, name: str, offset: int, fmt: str, *values: int) -> Path:
    write_nifti(tmp_path / "ok.nii", chest(), std_affine())
    data = bytearray((tmp_path / "ok.nii").read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    (tmp_path / name).write_bytes(bytes(data))
    return tmp_path / name


@pytest.mark.parametrize(
    ("offset", "fmt", "values", "problem"),
    [
        (252, "<2h", (0, 0), "no orientation"),
        (40, "<5h", (4, 64, 64, 24, 3), "only 3-D"),
        (70, "<h", 32, "datatype 32"),
        (0, "<i", 540, "NIfTI-2"),
        (344, "<4s", b"ni1\x00", "pairs"),
    ],
)
def test_unsupported_nifti_is_refused(
    tmp_path: Path, offset: int, fmt: str, values: object, problem: str
) -> None:
    args = values if isinstance(values, tuple) else (values,)
    path = _patched(tmp_path, "bad.nii", offset, fmt, *args)
    with pytest.raises(ImageReadError, match=problem) as err:
        read_volume(path)
    one_line(err, "bad.nii")


def test_corrupt_and_truncated_files_give_one_line_errors(tmp_path: Path) -> None:
    write_nifti(tmp_path / "ok.nii", chest(), std_affine())
    write_nifti(tmp_path / "ok.nii.gz", chest(), std_affine())
    (tmp_path / "cut.nii").write_bytes((tmp_path / "ok.nii").read_bytes()[:50_000])
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "ok.nii.gz").read_bytes()[:5_000])
    (tmp_path / "junk.nii").write_bytes(b"not a volume at all" * 40)
    (tmp_path / "short.nii").write_bytes(b"\x5c\x01")
    (tmp_path / "x.mhd").write_text("ObjectType = Image\n")
    cases = {
        "cut.nii": "truncated",
        "cut.nii.gz": "truncated",
        "junk.nii": "not a NIfTI-1",
        "short.nii": "truncated NIfTI header",
        "x.mhd": "not a volume",
        "missing.nii": "not found",
    }
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as err:
            read_volume(tmp_path / name)
        one_line(err, name)


def test_voxel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_nifti(tmp_path / "ct.nii", chest(), std_affine())
    monkeypatch.setenv("CXRSSL_MAX_VOXELS", "90000")
    with pytest.raises(ImageReadError, match="over the limit of 90,000") as err:
        read_volume(tmp_path / "ct.nii")
    one_line(err, "ct.nii")
    monkeypatch.setenv("CXRSSL_MAX_VOXELS", "lots")
    with pytest.raises(CxrsslError, match="CXRSSL_MAX_VOXELS"):
        read_volume(tmp_path / "ct.nii")


# ------------------------------------------------------------------ DICOM


def write_series(
    folder: Path, hu: np.ndarray, series: str | None = None, prefix: str = "img"
) -> list[Path]:
    """One CT slice per file, in shuffled file order, InstanceNumber reversed, with a
    patient name; slope 2 and intercept -1024 (raw = (HU + 1024) / 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    std = std_affine()
    order = list(range(hu.shape[0]))
    random.Random(1).shuffle(order)
    paths = []
    for n, z in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.SeriesInstanceUID = SECRET, "PID-SECRET-7", series
        ds.InstanceNumber = z + 1 if z % 2 else hu.shape[0] - z  # useless for sorting
        ds.ImagePositionPatient = [float(v) for v in (std @ [z, 0, 0, 1])[:3]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.PixelData = np.rint((hu[z] + 1024) / 2).astype(np.uint16).tobytes()
        paths.append(folder / f"{prefix}{n:03d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_dicom_series_is_read_in_position_order(tmp_path: Path) -> None:
    hu = chest()
    write_series(tmp_path / "series", hu)
    (tmp_path / "series" / "notes.txt").write_text("not a slice")
    v = read_volume(tmp_path / "series")
    assert v.shape == SHAPE
    assert np.abs(v.array - hu).max() <= 1.0 + 1e-3  # raw values store HU / 2
    np.testing.assert_allclose(v.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(v.affine, std_affine(), atol=1e-6)
    assert SECRET not in repr(v) and "SECRET" not in repr(vars(v))


def test_patient_tags_never_reach_outputs(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    write_series(tmp_path / "series", chest())
    points = tmp_path / "points.csv"
    points.write_text(f"file,x,y,z,diameter_mm\nseries,{NODULE[2]},{NODULE[1]},{NODULE[0]},10\n")
    out = tmp_path / "out"
    assert main(["drr", str(tmp_path / "series"), str(out / "drr.png"), "--size", "64", "64"]) == 0
    assert main(["ct-stacks", str(tmp_path / "series"), str(points), str(out / "stacks")]) == 0
    printed = capfd.readouterr()
    assert read_image(out / "drr.png").shape == (64, 64)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files
    for text in [printed.out, printed.err, *(p.read_bytes().decode("latin-1") for p in files)]:
        assert "SECRET" not in text


def test_inconsistent_series_are_refused(tmp_path: Path) -> None:
    hu = chest()[:4]
    paths = write_series(tmp_path / "dup", hu)
    paths[0].rename(tmp_path / "dup" / "copy.dcm")
    (tmp_path / "dup" / "again.dcm").write_bytes((tmp_path / "dup" / "copy.dcm").read_bytes())
    write_series(tmp_path / "two", hu[:2])
    write_series(tmp_path / "two", hu[2:], prefix="other")
    uid = generate_uid()
    write_series(tmp_path / "mixed", hu[:2], series=uid)
    write_series(tmp_path / "mixed", hu[2:3, :32], series=uid, prefix="small")
    write_series(tmp_path / "cut", hu)
    cut = tmp_path / "cut" / "img001.dcm"
    cut.write_bytes(cut.read_bytes()[:-3000])
    (tmp_path / "empty").mkdir()
    cases = {
        "dup": "same position",
        "two": "holds 2 series",
        "mixed": "mixed slice sizes",
        "cut": "truncated|unreadable",
        "empty": "0 DICOM",
    }
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as err:
            read_volume(tmp_path / name)
        one_line(err, name)
        assert "SECRET" not in str(err.value)


# ------------------------------------------------------------------ 2.5D and masks


def test_window_and_stacks() -> None:
    np.testing.assert_allclose(window(np.array([-1350.0, -600, 150, 500])), [0, 0.5, 1, 1])
    np.testing.assert_allclose(window(np.array([40.0]), 40, 400), [0.5])
    array = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 3), np.float32)
    s = stack_25d(array, 3)
    assert s.shape == (5, 3, 2, 3) and s.dtype == np.float32
    assert s[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
    assert stack_25d(array, 5)[0, :, 1, 2].tolist() == [0, 0, 0, 1, 2]
    np.testing.assert_array_equal(stack_25d(array, 1)[:, 0], array)
    np.testing.assert_array_equal(stack_25d(array, 3, [4, 0]), s[[4, 0]])
    with pytest.raises(CxrsslError, match="odd"):
        stack_25d(array, 2)


def test_nodule_mask_grown_in_3d_matches_the_sphere() -> None:
    pytest.importorskip("cxrssl.lesions.grow")
    v = volume()
    z, y, x = NODULE
    point = Point("chest.nii", x, y, NODULE_MM / SPACING[2], z=z)
    mask = volume_masks(v, [point])
    truth = sphere()
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    dice = 2 * (mask.astype(bool) & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.85, dice
    grown = grow_nodule(v, point)
    assert grown.method == "grown" and np.array_equal(grown.mask, mask)
    # Nothing to grow (plain lung): a ball of the diameter, in mm, on the anisotropic grid.
    faint = v.array.copy()
    faint[9:16, 22:39, 38:55] = -850
    ball = grow_nodule(volume(faint), point)
    assert ball.method == "ball" and abs(ball.mask.sum() / truth.sum() - 1) < 0.2
    with pytest.raises(DatasetError, match="no z"):
        volume_masks(v, [Point("chest.nii", x, y, 4)])
    with pytest.raises(DatasetError, match="outside"):
        volume_masks(v, [Point("chest.nii", x, y, 4, z=40)])


# ------------------------------------------------------------------ DRR


def test_drr_bright_bone_dark_lungs_and_the_nodule() -> None:
    v = volume()
    image = drr(v)
    assert image.shape == (60, 64) and image.dtype == np.float32  # 24 x 2.5 mm, 64 x 1 mm
    assert 0 <= image.min() and image.max() <= 1
    row, col = project_point(v, *NODULE)
    assert (row, col) == pytest.approx((NODULE[0] * 2.5 + 0.75, NODULE[2]))
    r, c = round(row), round(col)
    spine, lung = image[r, 30:34].mean(), image[r, 14:22].mean()
    assert spine > lung + 0.2 and image[r, 0] == 0  # air outside the body is black
    # The nodule: brighter than the mirror point in the right lung, and than above it.
    assert image[r, c] > image[r, 63 - c] + 0.05 and image[r, c] > image[r - 10, c] + 0.05


def test_patients_left_is_on_the_image_right(tmp_path: Path) -> None:
    """A chest with only its left lung, stored as RAS+ NIfTI and as a DICOM series."""
    hu = chest(right_lung=False, nodule=False)
    write_nifti(tmp_path / "ras.nii", *_reoriented(hu)[0])
    write_series(tmp_path / "series", hu)
    for path in (tmp_path / "ras.nii", tmp_path / "series"):
        row = drr(read_volume(path))[30]
        assert row[40:52].mean() < row[12:24].mean() - 0.1  # the lung is dark on the right


def test_drr_layout_and_footprint_align_with_project_point() -> None:
    v = volume()
    image = drr(v, pixel_mm=0.5, shape=(160, 100))  # 120 x 128 px field, cropped across
    lay = drr_layout(v.shape, v.spacing, 0.5, (160, 100))
    assert image.shape == (160, 100) and (lay.inner_height, lay.inner_width) == (120, 128)
    assert (lay.top, lay.left) == (20, -14) and image[:20].max() == 0
    fitted = drr_layout(v.shape, v.spacing, None, (128, 128))
    assert fitted.pixel_mm == 0.5 and (fitted.inner_height, fitted.inner_width) == (120, 128)
    foot = drr_mask(sphere().astype(np.uint8), SPACING, 0.5, (160, 100))
    rows, cols = np.nonzero(foot)
    row, col = project_point(v, *NODULE, pixel_mm=0.5, shape=(160, 100))
    assert abs(rows.mean() - row) < 0.6 and abs(cols.mean() - col) < 0.6
    assert (cols.max() - cols.min() + 1) * 0.5 == pytest.approx(NODULE_MM, abs=1.5)
    thick = drr_mask(sphere().astype(np.uint8), SPACING, thickness=True)
    assert thick.max() == pytest.approx(NODULE_MM, abs=1.5)


def test_ct_stacks_cli(tmp_path: Path) -> None:
    pytest.importorskip("cxrssl.lesions.grow")
    write_nifti(tmp_path / "chest.nii.gz", chest(), std_affine())
    points = tmp_path / "points.csv"
    z, y, x = NODULE
    points.write_text(f"file,x,y,z,diameter_mm\nchest.nii.gz,{x},{y},{z},10\nother,1,1,1,4\n")
    out = tmp_path / "out"
    assert main(["ct-stacks", str(tmp_path / "chest.nii.gz"), str(points), str(out)]) == 0
    rows = (out / "slices.csv").read_text().splitlines()[1:]
    slices = [int(r.split(",")[2]) for r in rows]
    assert z in slices and len(slices) <= 7
    stack = np.load(out / f"chest_z{z:04d}.npy")
    assert stack.shape == (3, 64, 64)
    np.testing.assert_allclose(stack[1], window(chest()[z]))
    mask = read_mask(out / f"chest_z{z:04d}_mask.png")
    assert mask[y, x] == 1
    nodules = (out / "nodules.csv").read_text().splitlines()
    assert len(nodules) == 2 and ",grown," in nodules[1]
    assert main(["ct-stacks", str(tmp_path / "nothing.nii"), str(points), str(out)]) == 2
