"""Tests of cxrssl.io: every format and bit depth read to the expected grey levels (float and
8-bit readers agree), DICOM orientation and windowing, one ImageReadError per bad input from
both readers, quiet reading of the real data."""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from cxrssl.errors import ImageReadError
from cxrssl.io import (
    IMAGE_SUFFIXES,
    is_image_file,
    read_gray8,
    read_image,
    read_mask,
    write_mask,
)

# ---------------------------------------------------------------- fixture writers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(rows: np.ndarray, color_type: int, bit_depth: int = 8, extra: tuple = ()) -> bytes:
    """A PNG written by hand (OpenCV cannot write palettes, grey+alpha or iCCP chunks).

    ``rows`` holds the packed scanline bytes, shape (H, row bytes); ``width`` is derived.
    """
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    width = rows.shape[1] * 8 // (bit_depth * samples)
    header = struct.pack(">IIBBBBB", width, rows.shape[0], bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    body = b"".join(_chunk(kind, data) for kind, data in extra)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + body
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def _encode(suffix: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(suffix, image, list(params))
    assert ok
    return buf.tobytes()


def _with_sbit(png: bytes, *bits: int) -> bytes:
    """``png`` with an sBIT chunk (one value per sample: grey, or R, G, B) after IHDR."""
    assert png[12:16] == b"IHDR"
    return png[:33] + _chunk(b"sBIT", bytes(bits)) + png[33:]


def _png16(values: np.ndarray, *sbit: int) -> bytes:
    """A 16-bit PNG of ``values`` as stored (no shifting), with an sBIT chunk when given."""
    png = _encode(".png", values.astype(np.uint16))
    return _with_sbit(png, *sbit) if sbit else png


def _iccp_chunk() -> tuple[bytes, bytes]:
    """An iCCP chunk holding a bogus RGB profile: libpng warns about it on stderr."""
    profile = bytearray(132)
    profile[0:4] = struct.pack(">I", 132)
    profile[12:24] = b"mntrRGB XYZ "
    profile[36:40] = b"acsp"
    return b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(bytes(profile))


def _dicom(
    path: Path,
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    syntax: UID = ExplicitVRLittleEndian,
    **elements: object,
) -> Path:
    """Write a single- or multi-frame DICOM with ``pixels`` as its stored values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[:2] if photometric == "RGB" else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = elements.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if syntax.is_compressed:
        ds.PixelData = encapsulate([b"these bytes are no compressed image"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------- raster formats

_GREY = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)
# Pure colours and their BT.601 grey levels (cv2 rounds 0.299 R + 0.587 G + 0.114 B).
_BGR = np.array([[[0, 0, 0], [255, 255, 255], [0, 0, 255]], [[0, 255, 0], [255, 0, 0], [128] * 3]])
_BGR_GREY = np.array([[0, 255, 76], [150, 29, 128]]) / 255
_12BIT = np.array([[0, 1000, 4095]])  # a 12-bit detector's values
_PALETTE = bytes([0, 0, 0, 255, 255, 255, 255, 0, 0, 128, 128, 128])  # RGB entries

RASTER_CASES: dict[str, tuple[str, Callable[[], bytes], np.ndarray]] = {
    "png-grey-8": (".png", lambda: _encode(".png", _GREY), _GREY / 255),
    "png-grey-16": (".png", lambda: _encode(".png", _GREY.astype(np.uint16) * 257), _GREY / 255),
    # 12-bit samples stored unshifted, as sBIT says: divided by 4095, like DICOM BitsStored.
    "png-grey-16-sbit-unshifted": (
        ".png",
        lambda: _png16(_12BIT, 12),
        _12BIT / 4095,
    ),
    # 12-bit samples scaled up to 16 bits (left bit replication, as the PNG spec says).
    "png-grey-16-sbit-scaled-up": (
        ".png",
        lambda: _png16((_12BIT << 4) | (_12BIT >> 8), 12),
        _12BIT / 4095,
    ),
    # Without sBIT, 16 bits are 16 bits, whatever the maximum: one window for every file.
    "png-grey-16-no-sbit-12-bit-values": (".png", lambda: _png16(_12BIT), _12BIT / 65535),
    "png-grey-16-invalid-sbit-ignored": (".png", lambda: _png16(_12BIT, 17), _12BIT / 65535),
    "png-rgb-16-sbit-unshifted": (
        ".png",
        lambda: _with_sbit(_encode(".png", _BGR.astype(np.uint16) * 16), 12, 12, 12),
        _BGR_GREY * 255 * 16 / 4095,
    ),
    "png-grey-1bit": (
        ".png",
        lambda: _png(np.array([[0b10100000]], np.uint8), color_type=0, bit_depth=1),
        np.array([[1, 0, 1, 0, 0, 0, 0, 0]]),
    ),
    "png-rgb": (".png", lambda: _encode(".png", _BGR.astype(np.uint8)), _BGR_GREY),
    "png-rgb-16": (".png", lambda: _encode(".png", _BGR.astype(np.uint16) * 257), _BGR_GREY),
    "png-rgba-alpha-dropped": (
        ".png",
        lambda: _encode(".png", np.dstack([_BGR, np.full((2, 3), 9)]).astype(np.uint8)),
        _BGR_GREY,
    ),
    "png-grey-alpha": (
        ".png",
        lambda: _png(np.array([[10, 0, 200, 255]], np.uint8), color_type=4),
        np.array([[10, 200]]) / 255,
    ),
    "png-palette": (
        ".png",
        lambda: _png(np.array([[0, 1, 2, 3]], np.uint8), 3, extra=((b"PLTE", _PALETTE),)),
        np.array([[0, 255, 76, 128]]) / 255,
    ),
    "png-palette-transparency": (
        ".png",
        lambda: _png(
            np.array([[0, 1, 2, 3]], np.uint8),
            3,
            extra=((b"PLTE", _PALETTE), (b"tRNS", bytes([0, 255, 7]))),
        ),
        np.array([[0, 255, 76, 128]]) / 255,
    ),
    "jpeg-grey": (
        ".jpg",
        lambda: _encode(".jpg", _GREY, cv2.IMWRITE_JPEG_QUALITY, 100),
        _GREY / 255,
    ),
    "jpeg-colour": (
        ".jpeg",
        lambda: _encode(
            ".jpg",
            np.kron(_BGR, np.ones((8, 8, 1))).astype(np.uint8),
            cv2.IMWRITE_JPEG_QUALITY,
            100,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        ),
        np.kron(_BGR_GREY, np.ones((8, 8))),
    ),
    "tiff-8": (".tif", lambda: _encode(".tif", _GREY), _GREY / 255),
    "tiff-16": (".tiff", lambda: _encode(".tiff", _GREY.astype(np.uint16) * 257), _GREY / 255),
    "tiff-16-12-bit-values": (
        ".tif",
        lambda: _encode(".tif", _12BIT.astype(np.uint16)),
        _12BIT / 65535,
    ),
    "tiff-float-unit-kept": (
        ".tif",
        lambda: _encode(".tif", np.array([[0.25, 0.5, 0.75]], np.float32)),
        np.array([[0.25, 0.5, 0.75]]),
    ),
    "tiff-float-stretched": (
        ".tif",
        lambda: _encode(".tif", np.array([[-100.0, 0.0, 300.0]], np.float32)),
        np.array([[0, 0.25, 1]]),
    ),
    "tiff-int16-stretched": (
        ".tif",
        lambda: _encode(".tif", np.array([[-5, 0, 15]], np.int16)),
        np.array([[0, 0.25, 1]]),
    ),
    "bmp-grey": (".bmp", lambda: _encode(".bmp", _GREY), _GREY / 255),
    "bmp-colour": (".bmp", lambda: _encode(".bmp", _BGR.astype(np.uint8)), _BGR_GREY),
}


@pytest.mark.parametrize("case", RASTER_CASES)
def test_read_image_formats(case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    suffix, make, expected = RASTER_CASES[case]
    path = tmp_path / f"image{suffix}"
    path.write_bytes(make())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(path)
    assert image.dtype == np.float32
    assert image.shape == expected.shape
    tolerance = 2.5 / 255 if suffix in (".jpg", ".jpeg") else 0.6 / 255
    np.testing.assert_allclose(image, expected, atol=tolerance)
    assert capfd.readouterr().err == ""


def _gray8_of(image: np.ndarray) -> np.ndarray:
    """The 8-bit image ``read_gray8`` must return for ``read_image``'s ``image``."""
    return np.round(image * 255).astype(np.uint8)


@pytest.mark.parametrize("case", RASTER_CASES)
def test_read_gray8_is_read_image_rounded(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    suffix, make, _ = RASTER_CASES[case]
    path = tmp_path / f"image{suffix}"
    data = make()
    path.write_bytes(data)
    expected = _gray8_of(read_image(path))
    for gray in (read_gray8(path), read_gray8(str(path), data)):
        assert gray.dtype == np.uint8
        np.testing.assert_array_equal(gray, expected)
    assert capfd.readouterr().err == ""


def test_read_gray8_of_every_8_bit_level_and_colour_chunks(tmp_path: Path) -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "levels.png"
    path.write_bytes(_png(levels, color_type=0, extra=(_iccp_chunk(), (b"gAMA", b"\0\0\xb1\x8f"))))
    np.testing.assert_array_equal(read_gray8(path), levels)  # the 8-bit values, untouched
    np.testing.assert_array_equal(_gray8_of(read_image(path)), levels)  # float round trip
    colour = tmp_path / "colour.png"
    bgr = np.dstack([levels, levels[::-1], levels.T]).copy()
    colour.write_bytes(_encode(".png", bgr))
    np.testing.assert_array_equal(read_gray8(colour), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))


FILMS = {
    "png-sbit-12": lambda v: _png16(v, 12),
    "png-no-sbit": lambda v: _png16(v),
    "tiff": lambda v: _encode(".tif", v.astype(np.uint16)),
}


@pytest.mark.parametrize("kind", FILMS)
def test_two_films_from_one_scanner_share_one_scale(kind: str, tmp_path: Path) -> None:
    # Two films from one 12-bit scanner, one using its whole range and one not: the same
    # raw value must be the same grey level in both (no scaling by the image's maximum).
    bright = np.array([[0, 500, 1000, 4095]])
    dim = np.array([[0, 500, 1000, 2000]])
    paths = [tmp_path / f"{name}.{'tif' if kind == 'tiff' else 'png'}" for name in ("a", "b")]
    for path, film in zip(paths, (bright, dim), strict=True):
        path.write_bytes(FILMS[kind](film))
    a, b = (read_image(path) for path in paths)
    np.testing.assert_array_equal(a[0, :3], b[0, :3])
    ga, gb = (read_gray8(path) for path in paths)
    np.testing.assert_array_equal(ga[0, :3], gb[0, :3])
    full = 4095 if kind == "png-sbit-12" else 65535
    np.testing.assert_allclose(b, dim / full, atol=1e-6)


def test_dark_16_bit_file_without_sbit_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cxrssl.io

    monkeypatch.setattr(cxrssl.io, "_warned_dark_16", [])
    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(_png16(_12BIT))
        read_image(tmp_path / f"{name}.png")
    (tmp_path / "c.png").write_bytes(_png16(_12BIT, 12))
    read_image(tmp_path / "c.png")
    warned = [r.getMessage() for r in caplog.records if "sBIT" in r.getMessage()]
    assert len(warned) == 1
    assert "a.png: 16-bit image whose values fit in 12 bits, without an sBIT chunk" in warned[0]


def test_unicode_path_and_uppercase_suffix(tmp_path: Path) -> None:
    path = tmp_path / "röntgen 胸部" / "IMAGE.PNG"
    path.parent.mkdir()
    path.write_bytes(_encode(".png", _GREY))
    assert is_image_file(path)
    np.testing.assert_allclose(read_image(path), _GREY / 255, atol=1e-6)


def test_iccp_profile_is_read_quietly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = _png(_GREY, color_type=0, extra=(_iccp_chunk(),))
    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # the fixture is real:
    assert "iCCP" in capfd.readouterr().err  # plain libpng complains
    path = tmp_path / "profile.png"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(path)
    np.testing.assert_allclose(image, _GREY / 255, atol=1e-6)
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------------- DICOM

_STORED = np.array([[0, 1000, 2000], [3000, 4000, 4095]], np.uint16)


def test_dicom_monochrome1_is_the_inverse_of_monochrome2(tmp_path: Path) -> None:
    m2 = read_image(_dicom(tmp_path / "m2.dcm", _STORED, "MONOCHROME2", BitsStored=12))
    m1 = read_image(_dicom(tmp_path / "m1.dcm", _STORED, "MONOCHROME1", BitsStored=12))
    np.testing.assert_allclose(m2, (_STORED - 0) / 4095, atol=1e-6)  # no window: min-max
    assert m2[1, 2] == 1 and m2[0, 0] == 0  # MONOCHROME2: high stored value is bright
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)  # MONOCHROME1: high value is dark


def test_dicom_16_bit_signed_min_max(tmp_path: Path) -> None:
    stored = np.array([[-1000, 0], [1000, 3000]], np.int16)
    image = read_image(_dicom(tmp_path / "s.dcm", stored))
    np.testing.assert_allclose(image, (stored + 1000) / 4000, atol=1e-6)


def test_dicom_rescale_slope_intercept_applied(tmp_path: Path) -> None:
    flipped = _dicom(tmp_path / "r.dcm", _STORED, RescaleSlope=-1, RescaleIntercept=4095)
    np.testing.assert_allclose(read_image(flipped), 1 - _STORED / 4095, atol=1e-6)


def test_dicom_window_after_rescale_clips(tmp_path: Path) -> None:
    stored = np.array([[0, 512, 1024], [1536, 2048, 2048]], np.uint16)  # -> -1024 .. 3072
    # LINEAR window, PS3.3 C.11.2.1.2: centre 1024.5 and width 2049 map 0 -> 0, 2048 -> 1.
    images = {
        photometric: read_image(
            _dicom(
                tmp_path / f"{photometric}.dcm",
                stored,
                photometric,
                RescaleSlope=2,
                RescaleIntercept=-1024,
                WindowCenter=1024.5,
                WindowWidth=2049,
            )
        )
        for photometric in ("MONOCHROME1", "MONOCHROME2")
    }
    expected = np.array([[0, 0, 0.5], [1, 1, 1]])
    np.testing.assert_allclose(images["MONOCHROME2"], expected, atol=1e-6)
    np.testing.assert_allclose(images["MONOCHROME1"], 1 - expected, atol=1e-6)


def test_dicom_voi_lut_scaled_by_its_output_range(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "US", [0, 100, 200, 4000])  # LUT Data, 12 bits in a 16-bit LUT
    stored = np.array([[0, 1], [2, 9]], np.uint16)  # 9 is past the table: last entry
    image = read_image(_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[item]))
    np.testing.assert_allclose(image, np.array([[0, 0.025], [0.05, 1]]), atol=1e-6)


def test_dicom_rgb_becomes_grey(tmp_path: Path) -> None:
    rgb = _BGR[:, :, ::-1].astype(np.uint8).copy()
    image = read_image(_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    np.testing.assert_allclose(image, _BGR_GREY, atol=0.6 / 255)


def test_read_gray8_of_dicom_is_read_image_rounded(tmp_path: Path) -> None:
    files = [
        _dicom(tmp_path / "m1.dcm", _STORED, "MONOCHROME1", BitsStored=12),
        _dicom(tmp_path / "win.dcm", _STORED, WindowCenter=2000, WindowWidth=3000),
        _dicom(tmp_path / "rgb.dcm", _BGR[:, :, ::-1].astype(np.uint8).copy(), "RGB"),
        _dicom(tmp_path / "1.2.840.113619.2.55", _STORED),
    ]
    for path in files:
        gray = read_gray8(path)
        assert gray.dtype == np.uint8
        np.testing.assert_array_equal(gray, _gray8_of(read_image(path)))
    np.testing.assert_array_equal(read_gray8(files[0])[1], [68, 6, 0])  # 255 * (1 - x / 4095)


def test_extensionless_dicom_found_by_marker(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "1.2.840.113619.2.55", _STORED)
    plain = _dicom(tmp_path / "IM0001", _STORED)
    (tmp_path / "notes").write_text("x" * 200)
    (tmp_path / "labels.csv").write_text("a,b\n")
    assert is_image_file(path) and is_image_file(plain)
    assert not is_image_file(tmp_path / "notes") and not is_image_file(tmp_path / "labels.csv")
    np.testing.assert_allclose(read_image(path), _STORED / 4095, atol=1e-6)


def test_image_suffixes() -> None:
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} == set(
        IMAGE_SUFFIXES
    )
    assert all(s == s.lower() for s in IMAGE_SUFFIXES)


# -------------------------------------------------------------------- bad inputs


def _png_bytes() -> bytes:
    return _encode(".png", np.tile(np.arange(64, dtype=np.uint8), (32, 1)))


def _jpeg_bytes() -> bytes:
    return _encode(".jpg", np.tile(np.arange(64, dtype=np.uint8) * 4, (32, 1)))


BAD_FILES: dict[str, tuple[str, Callable[[], bytes | None], str]] = {
    "missing": ("x.png", lambda: None, r"x\.png: file not found"),
    "empty": ("x.png", lambda: b"", r"x\.png: empty file \(0 bytes\)"),
    "text": ("x.png", lambda: b"patient_id,label\n1,0\n", r"not an image \(unrecognised"),
    "text-as-dicom": ("x.dcm", lambda: b"hello " * 50, r"x\.dcm: not a DICOM file"),
    "png-cut-in-idat": ("x.png", lambda: _png_bytes()[:60], r"truncated PNG .*IDAT"),
    "png-cut-before-iend": ("x.png", lambda: _png_bytes()[:-12], r"truncated PNG .*IEND"),
    "png-cut-in-header": ("x.png", lambda: _png_bytes()[:20], r"truncated PNG"),
    "png-corrupt-data": (
        "x.png",
        lambda: (
            _png_bytes()[:33]  # signature and IHDR
            + _chunk(b"IDAT", b"noise")
            + _chunk(b"IEND", b"")
        ),
        r"corrupt PNG data",
    ),
    "jpeg-cut": ("x.jpg", lambda: _jpeg_bytes()[:-40], r"truncated JPEG"),
    "jpeg-cut-eoi-only": ("x.jpg", lambda: _jpeg_bytes()[:-2], r"truncated JPEG"),
    "bmp-cut": ("x.bmp", lambda: _encode(".bmp", _GREY)[:-3], r"truncated BMP"),
    "constant-png": (
        "x.png",
        lambda: _encode(".png", np.full((4, 4), 7, np.uint8)),
        r"x\.png: constant image \(every pixel is 7\)",
    ),
    "nan-tiff": (
        "x.tif",
        lambda: _encode(".tif", np.array([[0, np.nan]], np.float32)),
        r"non-finite values",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_naming_file_and_problem(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    name, make, message = BAD_FILES[case]
    path = tmp_path / name
    data = make()
    if data is not None:
        path.write_bytes(data)
    readers: list[Callable[[], np.ndarray]] = [lambda: read_image(path), lambda: read_gray8(path)]
    if data is not None:
        readers.append(lambda: read_gray8(path, data))
    for read in readers:
        with pytest.raises(ImageReadError, match=message) as info:
            read()
        assert info.value.path == path
        assert str(info.value).startswith(str(path) + ": ")
    if case != "png-corrupt-data":  # libpng reports the bad stream itself
        assert capfd.readouterr().err == ""  # detected before OpenCV prints anything


def test_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"is a directory, not an image file"):
        read_image(tmp_path)


def test_multi_page_tiff_refused(tmp_path: Path) -> None:
    path = tmp_path / "stack.tif"
    assert cv2.imwritemulti(str(path), [_GREY, _GREY, _GREY])
    for read in (read_image, read_gray8):
        with pytest.raises(ImageReadError, match=r"3-D image: multi-page TIFF with 3 pages"):
            read(path)


def test_multi_frame_dicom_refused(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "ct.dcm", np.stack([_STORED, _STORED]), NumberOfFrames=2)
    with pytest.raises(ImageReadError, match=r"3-D image: multi-frame DICOM with 2 frames"):
        read_image(path)


def test_constant_dicom_refused(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "flat.dcm", np.full((3, 3), 500, np.uint16))
    with pytest.raises(ImageReadError, match=r"flat\.dcm: constant image \(every pixel is 500\)"):
        read_image(path)
    with pytest.raises(ImageReadError, match=r"flat\.dcm: constant image \(every pixel is 500\)"):
        read_gray8(path)


def test_truncated_dicom_refused(tmp_path: Path) -> None:
    data = _dicom(tmp_path / "full.dcm", _STORED).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-5])
    with pytest.raises(ImageReadError, match=r"cut\.dcm: DICOM pixel data is truncated"):
        read_image(cut)


def test_compressed_dicom_without_decoder_names_the_fix(tmp_path: Path) -> None:
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = _dicom(tmp_path / "ls.dcm", _STORED, syntax=JPEGLSLossless)
    with pytest.raises(
        ImageReadError,
        match=r"ls\.dcm: compressed DICOM \(JPEG-LS Lossless.*\) needs a decoder: pip install",
    ):
        read_image(path)


def test_compressed_dicom_with_broken_data(tmp_path: Path) -> None:
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder installed here")
    path = _dicom(tmp_path / "j.dcm", _STORED.astype(np.uint8), syntax=JPEGBaseline8Bit)
    with pytest.raises(ImageReadError, match=r"j\.dcm: DICOM pixel data .*cannot be decoded"):
        read_image(path)


# ------------------------------------------------------------------------- masks

MASK_CASES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "0-255": (np.array([[0, 255], [255, 0]], np.uint8), np.array([[0, 1], [1, 0]])),
    "0-1": (np.array([[0, 1], [1, 0]], np.uint8), np.array([[0, 1], [1, 0]])),
    "anti-aliased": (
        np.array([[0, 100, 127, 128, 200, 255]], np.uint8),
        np.array([[0] * 3 + [1] * 3]),
    ),
    "16-bit": (np.array([[0, 32767, 32768, 65535]], np.uint16), np.array([[0, 0, 1, 1]])),
    "16-bit-0-1": (np.array([[0, 1, 1, 0]], np.uint16), np.array([[0, 1, 1, 0]])),
    "red-on-black": (np.array([[[0, 0, 255], [0, 0, 0]]], np.uint8), np.array([[1, 0]])),
    "empty": (np.zeros((2, 3), np.uint8), np.zeros((2, 3))),
}


@pytest.mark.parametrize("case", MASK_CASES)
def test_read_mask_binarises(case: str, tmp_path: Path) -> None:
    stored, expected = MASK_CASES[case]
    path = tmp_path / "m.png"
    path.write_bytes(_encode(".png", stored))
    mask = read_mask(path, shape=expected.shape)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, expected)


def test_read_mask_size_must_match_its_image(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(_encode(".png", np.zeros((256, 200), np.uint8)))
    with pytest.raises(ImageReadError, match=r"m\.png: mask is 256x200 but its image is 256x256"):
        read_mask(path, shape=(256, 256))


def test_read_mask_refuses_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    path.write_bytes(_png_bytes()[:-20])
    with pytest.raises(ImageReadError, match=r"m\.png: truncated PNG"):
        read_mask(path)
    with pytest.raises(ImageReadError, match=r"DICOM masks are not supported"):
        read_mask(_dicom(tmp_path / "m.dcm", _STORED))


def test_write_mask_round_trip_is_atomic(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 1], [0, 0, 1]], np.uint8)
    path = tmp_path / "out" / "m.png"
    write_mask(path, mask)
    write_mask(path, mask.astype(bool))  # overwrite in place
    on_disk = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(on_disk, mask * 255)
    np.testing.assert_array_equal(read_mask(path, shape=(2, 3)), mask)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]  # no temporary left


@pytest.mark.parametrize(
    ("name", "mask", "message"),
    [
        ("m.jpg", np.zeros((2, 2), np.uint8), r"use a \.png"),
        ("m.png", np.array([[0, 255]], np.uint8), r"values must be 0 or 1"),
        ("m.png", np.array([[0.2, 0.9]]), r"2-D bool/integer array"),
        ("m.png", np.zeros((2, 2, 1), np.uint8), r"2-D bool/integer array"),
    ],
)
def test_write_mask_refuses_bad_masks(
    name: str, mask: np.ndarray, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        write_mask(tmp_path / name, mask)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_all_shared_pngs_read_quietly(shared_data: Path, capfd: pytest.CaptureFixture[str]) -> None:
    images = sorted(shared_data.glob("*/images/*.png"))
    masks = sorted(shared_data.glob("*/masks*/*.png"))
    assert len(images) > 700 and len(masks) > 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shapes = {}
        for path in images:
            image = read_image(path)
            assert image.dtype == np.float32
            assert 0 <= image.min() < image.max() <= 1
            np.testing.assert_array_equal(read_gray8(path), _gray8_of(image), err_msg=str(path))
            shapes[path.parent.parent, path.name] = image.shape
        for path in masks:
            mask = read_mask(path, shape=shapes.get((path.parent.parent, path.name)))
            assert mask.max() <= 1
    assert capfd.readouterr().err == ""
