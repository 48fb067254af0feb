"""FROC of nodule detections: sensitivity against false positives per image.

Matching, per image (by file stem):

- a detection hits a truth nodule when its centre lies within the nodule's radius
  (distance <= ``diameter_px / 2``); it may hit two overlapping nodules;
- each nodule counts once, with the score of its highest-scoring hit; further detections
  hitting an already-hit nodule are neither true nor false positives (the LUNA16 convention),
  counted in ``n_duplicates``;
- every detection hitting no nodule is a false positive.

Sweeping the score threshold (a detection is kept when its score >= the threshold) traces the
curve. The sensitivity at a rate is the best one reached with at most that many false
positives per image; CPM is its mean over the rates. ``n_images`` is the number of images the
detector ran on, with or without nodules or detections: every one counts in "per image".

Breakdowns (:func:`by_group`) take the nodules of one group as the truth and keep the false
positives of all images (the standard way): detections hitting a nodule of another group are
ignored. The 95 % CI comes from a percentile bootstrap over images (seeded).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl.errors import DatasetError
from cxrssl.files import write_bytes_atomic
from cxrssl.lesions.points import Point, by_stem
from cxrssl.metrics import _check_ci, _interval, _resample_counts

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
SIZE_GROUPS = ("<10 mm", "10-20 mm", "20-30 mm", ">=30 mm")
SUBTLETY_GROUPS = tuple(f"subtlety {s}" for s in range(1, 6))
CONTRAST_EDGES = (0.10, 0.15, 0.20)  # simulated peak added brightness (cxrssl simulate-nodules)
CONTRAST_GROUPS = ("contrast <0.10", "contrast 0.10-0.15", "contrast 0.15-0.20", "contrast >=0.20")
_CHUNK = 2_000_000  # values per bootstrap chunk


@dataclass(frozen=True, eq=False)
class Froc:
    """A FROC analysis. ``sensitivity``, ``ci_low``, ``ci_high`` and ``thresholds`` (the
    score threshold of that operating point; inf: keep nothing) are given at each of
    ``rates`` (FPs per image); the curve arrays start at (0 FPs, sensitivity 0, inf)."""

    rates: tuple[float, ...]
    sensitivity: tuple[float, ...]
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    thresholds: tuple[float, ...]
    cpm: float
    cpm_low: float
    cpm_high: float
    curve_fp_per_image: np.ndarray
    curve_sensitivity: np.ndarray
    curve_threshold: np.ndarray
    n_nodules: int
    n_found: int  # nodules hit at the lowest threshold
    n_images: int
    n_detections: int
    n_false_positives: int
    n_duplicates: int
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (NaN and inf as None)."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, (tuple, np.ndarray)):
                out[name] = [_plain(v) for v in np.asarray(value, np.float64).tolist()]
            else:
                out[name] = _plain(value)
        return out


def _plain(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


@dataclass(frozen=True)
class _Matched:
    """Nodule best scores (NaN: never hit) and false positives, with their image codes."""

    nodule_score: np.ndarray
    nodule_image: np.ndarray
    fp_score: np.ndarray
    fp_image: np.ndarray
    n_images: int
    n_detections: int
    n_duplicates: int


def _match(detections: Sequence[Point], truth: Sequence[Point], n_images: int) -> _Matched:
    for d in detections:
        if d.score is None or not math.isfinite(d.score):
            raise DatasetError(
                f"{d.file}: the detection at ({d.x:g}, {d.y:g}) has no score "
                "(give binary detections the score 1)"
            )
    dets = by_stem(detections)
    nodules: dict[str, list[int]] = {}
    for i, p in enumerate(truth):
        nodules.setdefault(p.stem, []).append(i)
    stems = sorted(set(dets) | set(nodules))
    if n_images < 1 or n_images < len(stems):
        raise DatasetError(
            f"n_images is {n_images} but the detections and truth name {len(stems)} images"
        )
    nodule_score = np.full(len(truth), np.nan)
    nodule_image = np.zeros(len(truth), np.int64)
    fp_score: list[float] = []
    fp_image: list[int] = []
    duplicates = 0
    for code, stem in enumerate(stems):
        ds, idx = dets.get(stem, []), np.array(nodules.get(stem, []), np.int64)
        ns = [truth[i] for i in idx]
        nodule_image[idx] = code
        score = np.array([d.score for d in ds], np.float64)
        if not ns:
            fp_score.extend(score.tolist())
            fp_image.extend([code] * len(ds))
            continue
        dx = np.array([d.x for d in ds])[:, None] - np.array([p.x for p in ns])[None, :]
        dy = np.array([d.y for d in ds])[:, None] - np.array([p.y for p in ns])[None, :]
        hit = np.hypot(dx, dy) <= np.array([p.radius_px for p in ns])[None, :]
        if ds:
            best = np.where(hit, score[:, None], -np.inf).max(axis=0)
            nodule_score[idx] = np.where(hit.any(axis=0), best, np.nan)
            # The detection each hit nodule counts (the first of its best), the rest duplicates.
            counted = {
                int(np.flatnonzero(hit[:, j] & (score == best[j]))[0])
                for j in np.flatnonzero(hit.any(axis=0))
            }
            duplicates += int(hit.any(axis=1).sum()) - len(counted)
        miss = ~hit.any(axis=1)
        fp_score.extend(score[miss].tolist())
        fp_image.extend([code] * int(miss.sum()))
    return _Matched(
        nodule_score,
        nodule_image,
        np.array(fp_score, np.float64),
        np.array(fp_image, np.int64),
        n_images,
        len(detections),
        duplicates,
    )


def _at_rates(
    tp_cum: np.ndarray, fp_cum: np.ndarray, limits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For (B, T) cumulative TP/FP counts over descending thresholds: the TP count and the
    number of thresholds kept at each FP limit, (B, R) each (0 kept: nothing detected)."""
    kept = (fp_cum[:, :, None] <= limits[None, None, :]).sum(axis=1)
    padded = np.concatenate([np.zeros((tp_cum.shape[0], 1)), tp_cum], axis=1)
    return np.take_along_axis(padded, kept, axis=1), kept


def _froc(
    m: _Matched,
    keep: np.ndarray,
    rates: Sequence[float],
    n_boot: int,
    seed: int,
    ci: float,
) -> Froc:
    """The FROC of the nodules ``keep`` (bool over the truth) with all false positives."""
    rates_a = np.asarray(rates, np.float64)
    if rates_a.size == 0 or bool((rates_a <= 0).any()):
        raise DatasetError(f"FP-per-image rates must be positive numbers, got {list(rates)}")
    n_img = m.n_images
    limits = rates_a * n_img + 1e-9
    found = keep & ~np.isnan(m.nodule_score)
    n_nodules = int(keep.sum())
    tp_s, fp_s = m.nodule_score[found], m.fp_score
    # Events (TPs and FPs) by descending score; a threshold ends each run of equal scores.
    score = np.concatenate([tp_s, fp_s])
    is_tp = np.concatenate([np.ones(tp_s.size, bool), np.zeros(fp_s.size, bool)])
    image = np.concatenate([m.nodule_image[found], m.fp_image])
    order = np.argsort(-score, kind="stable")
    score, is_tp, image = score[order], is_tp[order], image[order]
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True)) if score.size else score
    ends = ends.astype(np.int64)
    thr = score[ends]
    tp_cum = np.cumsum(is_tp)[ends].astype(np.float64)[None, :]
    fp_cum = np.cumsum(~is_tp)[ends].astype(np.float64)[None, :]
    tp_at, kept = _at_rates(tp_cum, fp_cum, limits)
    denom = n_nodules if n_nodules else math.nan
    sens = tp_at[0] / denom
    thresholds = np.concatenate([[math.inf], thr])[kept[0]]
    low = high = np.full(rates_a.size, math.nan)
    cpm_low = cpm_high = math.nan
    if n_boot and n_nodules:
        _check_ci(n_boot, ci)
        boot = _boot(is_tp, image, ends, m.nodule_image[keep], n_img, limits, n_boot, seed)
        bounds = np.array([_interval(boot[:, r], ci) for r in range(rates_a.size)])
        low, high = bounds[:, 0], bounds[:, 1]
        cpm_low, cpm_high = _interval(boot.mean(axis=1), ci)
    return Froc(
        rates=tuple(float(r) for r in rates_a),
        sensitivity=tuple(float(s) for s in sens),
        ci_low=tuple(float(v) for v in low),
        ci_high=tuple(float(v) for v in high),
        thresholds=tuple(float(t) for t in thresholds),
        cpm=float(sens.mean()),
        cpm_low=cpm_low,
        cpm_high=cpm_high,
        curve_fp_per_image=np.concatenate([[0.0], fp_cum[0] / n_img]),
        curve_sensitivity=np.concatenate([[0.0], tp_cum[0] / denom]),
        curve_threshold=np.concatenate([[math.inf], thr]),
        n_nodules=n_nodules,
        n_found=int(found.sum()),
        n_images=n_img,
        n_detections=m.n_detections,
        n_false_positives=int(fp_s.size),
        n_duplicates=m.n_duplicates,
        n_boot=n_boot if n_nodules else 0,
    )


def _boot(
    is_tp: np.ndarray,
    image: np.ndarray,
    ends: np.ndarray,
    nodule_image: np.ndarray,
    n_images: int,
    limits: np.ndarray,
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Sensitivity at each limit in ``n_boot`` resamples of the images, (n_boot, R); NaN
    where a resample holds no nodule. A drawn image brings its nodules and detections."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, limits.size))
    chunk = max(1, _CHUNK // max(is_tp.size, n_images, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        w = _resample_counts(np.arange(n_images), n_images, b, rng)
        ev = w[:, image]
        tp_cum = np.cumsum(ev * is_tp, axis=1)[:, ends]
        fp_cum = np.cumsum(ev * ~is_tp, axis=1)[:, ends]
        tp_at, _ = _at_rates(tp_cum, fp_cum, limits)
        n = w[:, nodule_image].sum(axis=1)
        out[start : start + b] = np.divide(
            tp_at, n[:, None], out=np.full_like(tp_at, np.nan), where=n[:, None] > 0
        )
    return out


def froc(
    detections: Sequence[Point],
    truth: Sequence[Point],
    n_images: int,
    fps_per_image: Sequence[float] = FP_RATES,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> Froc:
    """FROC of ``detections`` (Points with a score) against ``truth`` nodules.

    Args:
        detections: the detector's output on ``n_images`` images.
        truth: the nodules of those images (an image without a row has none).
        n_images: the number of images the detector ran on.
        fps_per_image: the rates at which to read the sensitivity.
        n_boot: bootstrap resamples of the images for the CIs; 0 skips them (NaN CIs).
        seed: seed of the resampling.
        ci: coverage of the interval.

    Raises:
        DatasetError: a detection without a score, ``n_images`` below the number of images
            named, rates that are not positive.
    """
    m = _match(detections, truth, n_images)
    return _froc(m, np.ones(len(truth), bool), fps_per_image, n_boot, seed, ci)


def by_group(
    detections: Sequence[Point],
    truth: Sequence[Point],
    n_images: int,
    key: Callable[[Point], str | None],
    fps_per_image: Sequence[float] = FP_RATES,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    order: Sequence[str] = (),
) -> dict[str, Froc]:
    """A FROC per group of nodules (``key``; None leaves a nodule out of every group), with
    the false positives of all images; detections hitting another group's nodule are
    ignored. Groups come in ``order``, then the others sorted; empty groups are absent."""
    m = _match(detections, truth, n_images)
    labels = [key(p) for p in truth]
    present = {g for g in labels if g is not None}
    names = [g for g in order if g in present] + sorted(present - set(order))
    groups = np.array(["" if g is None else g for g in labels], dtype=object)
    return {g: _froc(m, groups == g, fps_per_image, n_boot, seed, ci) for g in names}


def size_group(pixel_mm: float) -> Callable[[Point], str]:
    """A ``key`` for :func:`by_group`: the nodule's diameter bin in mm (:data:`SIZE_GROUPS`)."""

    def key(p: Point) -> str:
        mm = round(p.diameter_px * pixel_mm, 6)  # 10 mm read at 0.35 mm/px stays 10 mm
        return SIZE_GROUPS[int(np.searchsorted([10.0, 20.0, 30.0], mm, side="right"))]

    return key


def subtlety_group(p: Point) -> str | None:
    """A ``key`` for :func:`by_group`: ``subtlety N`` (JSRT 1-5), None where unknown."""
    return None if p.subtlety is None else f"subtlety {p.subtlety}"


def contrast_group(p: Point) -> str | None:
    """A ``key`` for :func:`by_group`: the bin (:data:`CONTRAST_GROUPS`) of a simulated
    nodule's ``contrast`` column; None where the truth has none (real nodules)."""
    raw = p.extra.get("contrast", "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return CONTRAST_GROUPS[int(np.searchsorted(CONTRAST_EDGES, value, side="right"))]


def plot_froc(
    result: Froc, path: Path, groups: Mapping[str, Froc] | None = None, title: str = "FROC"
) -> None:
    """The FROC curve (log FPs per image) with the sensitivity and CI at each rate, and one
    dashed curve per group; a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = min(result.rates) / 1.5
    top = max(result.rates)  # the curve beyond 4x the highest rate tells a reader nothing
    hi = min(max(top, float(result.curve_fp_per_image[-1])), 4 * top) * 1.5
    fig, ax = plt.subplots(figsize=(6, 4.5))

    def curve(r: Froc, **style: Any) -> None:
        x = np.append(np.maximum(r.curve_fp_per_image, lo), hi)
        y = np.append(r.curve_sensitivity, r.curve_sensitivity[-1])
        ax.step(x, y, where="post", **style)

    curve(result, color="black", linewidth=1.8, label=f"all (CPM {result.cpm:.3f})")
    sens, low, high = (np.asarray(v) for v in (result.sensitivity, result.ci_low, result.ci_high))
    has_ci = np.isfinite(low) & np.isfinite(high)
    yerr = np.where(has_ci, [sens - low, high - sens], 0.0)
    ax.errorbar(result.rates, sens, yerr=yerr, fmt="o", color="black", capsize=3)
    for name, r in (groups or {}).items():
        curve(r, linestyle="--", linewidth=1.0, label=f"{name} (n={r.n_nodules})")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(result.rates, [_rate_label(r) for r in result.rates])
    ax.minorticks_off()
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title}: {result.n_nodules} nodules, {result.n_images} images")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _rate_label(rate: float) -> str:
    """``0.125`` -> ``"1/8"``; 1 and above as they are."""
    if 0 < rate < 1 and float(1 / rate).is_integer():
        return f"1/{int(1 / rate)}"
    return f"{rate:g}"
