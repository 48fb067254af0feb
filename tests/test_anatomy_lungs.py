"""Lung methods: input handling, left/right convention, accuracy on the sample and real data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import cxrssl
from cxrssl.anatomy import METHODS, AnatomyError, lung_mask, lung_masks, rules
from cxrssl.anatomy._image import as_uint8
from cxrssl.anatomy.baselines import otsu_lungs, seed_lungs
from cxrssl.anatomy.quality import mask_quality
from cxrssl.anatomy.trace import trace_path

SAMPLE = Path(cxrssl.__file__).parent / "data" / "sample"


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * float(np.count_nonzero(a & b)) / max(total, 1)


@pytest.fixture(scope="module")
def sample_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.name for p in (SAMPLE / "images").glob("*.png"))[::6]
    return [
        (_read(SAMPLE / "images" / n), (_read(SAMPLE / "masks" / n) > 127).astype(np.uint8))
        for n in names
    ]


def test_as_uint8_round_trips_float_and_stretches_dim_images() -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(as_uint8(img.astype(np.float32) / 255), img)
    dim = np.linspace(0, 0.01, 100, dtype=np.float32).reshape(10, 10)  # 12 bits read as 16
    assert as_uint8(dim).max() == 255
    with pytest.raises(AnatomyError, match=r"expected a 2-D \(H, W\) image, got shape \(2, 3, 4\)"):
        as_uint8(np.zeros((2, 3, 4), np.float32))


def test_methods_registry_and_unknown_method() -> None:
    assert {"otsu", "seed", "default"} <= set(METHODS)
    with pytest.raises(AnatomyError, match=r"unknown lung method 'nope'; choose from"):
        lung_mask(np.zeros((32, 32), np.uint8), "nope")


def test_default_beats_seed_on_the_sample(sample_pairs: list) -> None:
    default = [dice(lung_mask(img), truth) for img, truth in sample_pairs]
    seed = [dice(lung_mask(img, "seed"), truth) for img, truth in sample_pairs]
    assert np.mean(default) > 0.78
    assert np.mean(default) > np.mean(seed) + 0.1


def test_left_lung_is_on_the_image_right(sample_pairs: list) -> None:
    img = sample_pairs[0][0]
    masks = lung_masks(img)
    for m in (masks.left, masks.right, masks.both):
        assert m.shape == img.shape and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1}
    assert not np.any(masks.left & masks.right)
    assert np.array_equal(masks.both, masks.left | masks.right)
    assert np.nonzero(masks.left)[1].mean() > np.nonzero(masks.right)[1].mean()
    assert 0.0 < masks.quality <= 1.0


def test_float_input_gives_the_uint8_result(sample_pairs: list) -> None:
    img = sample_pairs[1][0]
    assert np.array_equal(lung_mask(img.astype(np.float32) / 255), lung_mask(img))


@pytest.mark.parametrize("shape", [(8, 8), (3, 500), (700, 40), (1, 1)])
def test_odd_shapes_give_a_mask_of_the_same_shape(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    for method in METHODS:
        assert lung_masks(img, method).both.shape == shape


def test_frame_band_with_a_one_pixel_edge_line_is_cut_off(sample_pairs: list) -> None:
    # Digitised film (JSRT): a uniform white band along the bottom, and a 1 px dark line
    # down the film edge that crosses it. The band is still frame, not image content.
    img = sample_pairs[0][0]
    h, w = img.shape
    framed = np.vstack([img, np.full((h // 8, w), 254, np.uint8)])
    framed[:, 0] = 20
    assert rules._content_box(framed)[1] <= h + 8
    plain = img.copy()
    plain[:, 0] = 20
    masks = lung_masks(framed).both
    assert masks[h:].sum() == 0
    assert dice(masks[:h], lung_mask(plain)) > 0.95


def test_constant_image_gives_empty_masks_and_zero_quality() -> None:
    masks = lung_masks(np.full((64, 64), 90, np.uint8))
    assert masks.both.sum() == 0 and masks.quality == 0.0


def test_quality_flags_one_sided_and_accepts_two_lungs() -> None:
    right = np.zeros((100, 100), np.uint8)
    left = np.zeros((100, 100), np.uint8)
    right[20:80, 10:45] = 1
    left[20:80, 55:90] = 1
    assert mask_quality(right, left) == pytest.approx(1.0)
    assert mask_quality(right, np.zeros_like(left)) == 0.0
    tiny = np.zeros_like(left)
    tiny[20:25, 60:65] = 1
    assert mask_quality(right, tiny) < 0.1


def test_seed_baselines_are_binary_with_two_components() -> None:
    img = _read(SAMPLE / "images" / sorted(p.name for p in (SAMPLE / "images").iterdir())[0])
    assert set(np.unique(otsu_lungs(img))) <= {0, 1}
    n, _ = cv2.connectedComponents(seed_lungs(img))
    assert n - 1 <= 2


def test_trace_path_follows_a_valley_and_respects_the_step() -> None:
    cost = np.ones((6, 10), np.float32)
    cost[np.arange(6), [1, 2, 3, 4, 5, 6]] = 0
    assert trace_path(cost, 1, 0.01).tolist() == [1, 2, 3, 4, 5, 6]
    cost[5] = 1
    cost[5, 0] = -0.5  # tempting but six positions away
    path = trace_path(cost, 1, 0.01)
    assert np.abs(np.diff(path)).max() <= 1
    assert path[:5].tolist() == [1, 2, 3, 4, 5]


def test_diaphragm_cut_skips_edges_high_in_the_lung_and_sits_above_the_dome() -> None:
    """The trace starts DIAPHRAGM_START down the lung: an edge in its upper part is ignored."""
    lung = np.zeros((100, 40), np.uint8)
    lung[10:90, 5:35] = 1  # rows 10..89: the search starts at row 10 + 0.75 * 79 = 69
    edge = np.zeros((100, 40), np.float32)
    edge[60] = 3.0  # a strong edge in the lung (say the lower heart border), below its middle
    edge[75] = 2.0  # the diaphragm
    out = rules._cut_below_diaphragm(lung, edge)
    bottom = int(np.flatnonzero(out.any(axis=1))[-1])
    assert bottom == 75 + int(np.floor(rules.DIAPHRAGM_OFFSET))
    assert out[10:bottom, 5:35].all()
    weak = rules._cut_below_diaphragm(lung, edge * (0.9 * rules.DIAPHRAGM_EDGE / 2.0))
    assert np.array_equal(weak, lung)  # no clear edge: the lung keeps its bottom


@pytest.mark.realdata
def test_default_meets_the_target_on_generalblockchain(shared_data: Path) -> None:
    folder = shared_data / "ieee8023_generalblockchain"
    scores = []
    for path in sorted((folder / "images").glob("*.png")):
        truth = (_read(folder / "masks" / path.name) > 127).astype(np.uint8)
        scores.append(dice(lung_mask(_read(path)), truth))
    assert len(scores) == 100
    assert np.mean(scores) >= 0.85
    assert min(scores) >= 0.5


def test_quality_with_image_prefers_masks_on_dark_lungs() -> None:
    """Given the image, the same plausible shapes score lower where they sit off the lungs."""
    image = _read(sorted((SAMPLE / "images").glob("*.png"))[0])
    masks = lung_masks(image)
    good = mask_quality(masks.right, masks.left, image)
    assert 0.0 < good <= 1.0 and masks.quality == good
    shift = image.shape[0] // 3  # the same two masks moved down onto the abdomen
    right, left = np.roll(masks.right, shift, axis=0), np.roll(masks.left, shift, axis=0)
    assert mask_quality(right, left, image) < 0.5 * good
    assert mask_quality(right, np.zeros_like(left), image) == 0.0


def test_quality_rank_correlates_with_dice_on_the_sample() -> None:
    """The image checks make the quality predict Dice better than the shape checks alone."""
    scores, full, shape = [], [], []
    for path in sorted((SAMPLE / "images").glob("*.png")):
        image = _read(path)
        truth = _read(SAMPLE / "masks" / path.name) > 127
        masks = lung_masks(image)
        scores.append(dice(masks.both.astype(bool), truth))
        full.append(masks.quality)
        shape.append(mask_quality(masks.right, masks.left))

    def rho(q: list[float]) -> float:
        ranks = [np.argsort(np.argsort(np.asarray(v), kind="stable")) for v in (q, scores)]
        return float(np.corrcoef(*ranks)[0, 1])

    assert rho(full) > 0.55 and rho(full) > rho(shape) + 0.2
