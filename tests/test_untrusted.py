"""Untrusted inputs: DICOM patient tags never reach an output, configs load with a safe YAML
loader, CSV paths cannot leave the data root, and images over the pixel limit are refused
before they are decoded."""

from __future__ import annotations

import gzip
import logging
import shutil
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrssl import io as cxr_io
from cxrssl.cli.main import main
from cxrssl.data.adapters import covid_collection
from cxrssl.data.datasets import sample
from cxrssl.errors import CxrsslError, DatasetError, ImageReadError
from cxrssl.io import read_gray8, read_image, read_mask
from cxrssl.study.config import StudyConfig, load_settings

PATIENT_TAGS = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-SECRET-123",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-SECRET-9",
    "InstitutionName": "SECRET HOSPITAL",
}
SECRETS = [v.encode() for v in PATIENT_TAGS.values()]
N_FILMS = 12


# ------------------------------------------------------------------ patient data


def _write_dicom(path: Path, pixels: np.ndarray, tags: dict[str, str] = PATIENT_TAGS) -> None:
    """A 12-bit MONOCHROME2 DICOM of ``pixels`` carrying the patient ``tags``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/f<i>.dcm`` (sample radiographs), ``masks/f<i>.png`` and ``labels.csv``."""
    root = tmp_path_factory.mktemp("films")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rows = ["filename,patient,sick"]
    for i, record in enumerate(sample().records[:N_FILMS]):
        image = read_gray8(record.image)
        _write_dicom(root / "images" / f"f{i}.dcm", image)
        mask = read_mask(record.masks["masks"], image.shape)
        cv2.imwrite(str(root / "masks" / f"f{i}.png"), mask * np.uint8(255))
        rows.append(f"f{i}.dcm,p{i},{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    assert b"PID-SECRET-123" in (root / "images" / "f0.dcm").read_bytes()
    return root


def _contents(path: Path) -> Iterator[bytes]:
    """The file's bytes and whatever it holds compressed: zip members (checkpoints, .npz),
    gzip data, and PNG chunk data (text chunks and pixels, inflated)."""
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                yield name.encode()
                yield archive.read(name)
    elif data.startswith(b"\x1f\x8b"):
        yield gzip.decompress(data)
    elif data.startswith(b"\x89PNG"):
        yield from _png_chunks(data)


def _png_chunks(data: bytes) -> Iterator[bytes]:
    pos, idat = 8, b""
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat += body
        elif kind in (b"zTXt", b"iTXt"):
            text = body.split(b"\x00", 1)[-1]
            for start in range(len(text)):  # the compressed stream follows a few header bytes
                try:
                    yield zlib.decompress(text[start:])
                    break
                except zlib.error:
                    continue
        pos += 12 + length
    if idat:
        yield zlib.decompress(idat)


def _leaks(folders: list[Path], texts: list[str]) -> list[str]:
    """Where a patient tag's value appears: a file below ``folders`` or a captured text."""
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            for chunk in _contents(path):
                found += [f"{path}: {s!r}" for s in SECRETS if s in chunk]
    for i, text in enumerate(texts):
        found += [f"captured text {i}: {s!r}" for s in SECRETS if s in text.encode()]
    return found


def test_the_leak_scan_finds_tags_inside_compressed_files(tmp_path: Path) -> None:
    secret = SECRETS[1]
    with zipfile.ZipFile(tmp_path / "best.pt", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("data.pkl", b"x" * 100 + secret)
    (tmp_path / "events.gz").write_bytes(gzip.compress(secret))
    _, png = cv2.imencode(".png", np.zeros((4, 4), np.uint8))
    text = b"Comment\x00\x00" + zlib.compress(secret)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + b"\x00" * 4
    (tmp_path / "x.png").write_bytes(png.tobytes()[:33] + chunk + png.tobytes()[33:])
    found = _leaks([tmp_path], ["a log line"])
    assert [f.split(":")[0] for f in found] == [
        str(tmp_path / n) for n in ("best.pt", "events.gz", "x.png")
    ]


def sizes(images: Path) -> Iterator[tuple[int, tuple[int, int]]]:
    """(index, (height, width)) of every other film ``f<index>.dcm``."""
    for i in range(0, N_FILMS, 2):
        h, w = read_gray8(images / f"f{i}.dcm").shape
        yield i, (h, w)


def test_patient_tags_never_reach_any_output(
    dicoms: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every command that reads images, on DICOMs carrying patient tags: no tag value in any
    written file (text, PNG chunks, TensorBoard events, checkpoints, caches), in stdout,
    stderr, log records or warnings."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRSSL_CACHE_DIR", str(cache))
    caplog.set_level(logging.DEBUG)
    images, masks, out = dicoms / "images", dicoms / "masks", tmp_path / "out"
    small = ["--size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    seg, cls = str(out / "seg"), str(out / "cls")
    options = '{"hidden_dim": 16, "proj_dim": 8}'
    points = tmp_path / "points.csv"  # a nodule in every other film, near the right lung
    points.write_text(
        "filename,x,y,diameter_px\n"
        + "".join(f"f{i}.dcm,{0.3 * w:.0f},{0.45 * h:.0f},12\n" for i, (h, w) in sizes(images))
    )
    commands = [
        ["masks", "lungs", str(images), str(out / "lungs"), "--overlays", str(out / "ov")],
        ["data", "info", str(dicoms)],
        ["train-seg", "--images", str(images), "--masks", str(masks), "--out", seg, *small,
         "--folds", "1", "--no-progress"],
        ["predict", seg, str(images), str(out / "pred"), "--device", "cpu"],
        ["pretrain", "--method", "simclr", "--images", str(dicoms), "--out", str(out / "pre"),
         *small, "--method-options", options, "--no-progress"],
        ["train-cls", "--images", str(dicoms), "--label-columns", "sick", "--out", cls, *small,
         "--val-fraction", "0.25", "--test-fraction", "0.25", "--no-progress", "--no-explain"],
        ["predict-cls", cls, str(images), str(out / "probs.csv"), "--explain",
         str(out / "cams"), "--device", "cpu", "--no-progress"],
        ["grow-masks", str(images), str(points), str(out / "grown")],
        ["simulate-nodules", str(images), str(masks), str(out / "sim")],
        ["train-lesion", "--images", str(images), "--points", str(points), "--priors", "heatmap",
         "--out", str(out / "lesion"), *small, "--folds", "2", "--encoder", "unet",
         "--no-progress"],
    ]  # fmt: skip
    texts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for argv in commands:
            code = main(argv)
            printed = capfd.readouterr()
            texts += [printed.out, printed.err]
            assert code == 0, (argv[0], printed.err[-2000:])
    texts += [r.getMessage() for r in caplog.records]
    texts += [str(w.message) for w in caught]
    assert (out / "lungs" / "f0.png").is_file() and (out / "ov" / "f0.png").is_file()
    assert (out / "pred" / "f0.png").is_file() and (out / "probs.csv").is_file()
    assert any(out.rglob("events.out.tfevents.*")) and any(out.rglob("best.pt"))
    assert any((out / "cams").iterdir())
    assert (out / "grown" / "f0.png").is_file() and (out / "sim" / "points.csv").is_file()
    assert (out / "lesion" / "detections.csv").is_file()
    # The check can find a leak: the inputs hold every secret.
    assert len(_leaks([images], [])) >= len(SECRETS)
    assert _leaks([out, cache], texts) == []


def test_invalid_patient_tags_are_never_parsed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Malformed patient tags (a bad birth date, an over-long name) are never parsed or shown:
    reading such a file logs and warns nothing that holds their values."""
    bad = {"PatientBirthDate": "BAD-19700101", "PatientName": "X" * 80 + "DOE^JANE"}
    path = tmp_path / "bad.dcm"
    image = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (20, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns (and logs) while writing them
        _write_dicom(path, image, {**PATIENT_TAGS, **bad})
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(path).shape == (20, 30)
    texts = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert _leaks([], texts) == []


# ------------------------------------------------------------------ safe YAML


def test_yaml_config_with_a_python_object_tag_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = tmp_path / "study.yaml"
    config.write_text(f'seeds: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(CxrsslError, match=r"study\.yaml: cannot read the study config"):
        load_settings(config, StudyConfig)
    assert not marker.exists()


# ------------------------------------------------------------------ CSV paths


def _ieee_table(tmp_path: Path, relpath: str) -> Path:
    """``data/covid/labels.csv`` with one good row then a row naming ``relpath``."""
    root = tmp_path / "data" / "covid"
    (tmp_path / "data" / "images").mkdir(parents=True)
    for name, record in zip(("a.png", "b.png"), sample().records, strict=False):
        shutil.copy(record.image, tmp_path / "data" / "images" / name)
    root.mkdir()
    (root / "labels.csv").write_text(
        "image_relpath,finding,patient_group_id\n"
        "images/a.png,Pneumonia,1\n"
        f"{relpath},No Finding,2\n"
    )
    return root


@pytest.mark.parametrize(
    "relpath",
    ["../../etc/passwd", "/etc/passwd", "images/../../outside.png", "..", "C:\\Windows\\x.png"],
)
def test_csv_path_leaving_the_data_root_is_refused(tmp_path: Path, relpath: str) -> None:
    root = _ieee_table(tmp_path, relpath)
    with pytest.raises(DatasetError, match=r"labels\.csv: line 3: image_relpath .* is outside"):
        covid_collection.load(root)


def test_csv_path_inside_the_data_root_is_read(tmp_path: Path) -> None:
    root = _ieee_table(tmp_path, "./images/../images/b.png")
    dataset = covid_collection.load(root)
    assert [r.image.name for r in dataset.records] == ["a.png", "b.png"]


# ------------------------------------------------------------------ pixel limit


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR (8-bit grey) claiming ``width`` x ``height``, a tiny IDAT
    and IEND: a file of under 100 bytes that would need ``width * height`` bytes decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_claiming_a_huge_size_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(50_000, 50_000))

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoding was attempted")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    pattern = r"bomb\.png: image of 50000 x 50000 = 2,500,000,000 pixels .* 100,000,000"
    for reader in (read_image, read_gray8, read_mask):
        with pytest.raises(ImageReadError, match=pattern):
            reader(bomb)


def test_pixel_limit_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png, jpeg, tiff, dicom = (tmp_path / f"x.{s}" for s in ("png", "jpg", "tif", "dcm"))
    image = np.tile(np.arange(0, 240, 8, dtype=np.uint8), (20, 1))  # 20 x 30 = 600 pixels
    for path in (png, jpeg, tiff):
        cv2.imwrite(str(path), image)
    _write_dicom(dicom, image)
    for path in (png, jpeg, tiff, dicom):
        assert read_image(path).shape == (20, 30)
    monkeypatch.setenv("CXRSSL_MAX_PIXELS", "599")
    for path in (png, jpeg, tiff, dicom):
        with pytest.raises(ImageReadError, match=rf"x\.{path.suffix[1:]}: image of 30 x 20 = 600"):
            read_image(path)
    monkeypatch.setenv("CXRSSL_MAX_PIXELS", "600")
    assert read_gray8(png).shape == (20, 30)
    monkeypatch.setenv("CXRSSL_MAX_PIXELS", "lots")
    with pytest.raises(ImageReadError, match="CXRSSL_MAX_PIXELS='lots' is not a positive"):
        read_image(png)
    monkeypatch.delenv("CXRSSL_MAX_PIXELS")
    monkeypatch.setattr(cxr_io, "MAX_PIXELS", 100)
    with pytest.raises(ImageReadError, match="over the limit of 100 pixels"):
        read_image(jpeg)
