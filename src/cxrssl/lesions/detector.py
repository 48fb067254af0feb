"""The candidate classifier: a standardised logistic regression over candidate features,
and beside it a ridge regression of the nodule's diameter (log mm, fitted on the candidates
that hit a nodule) that sizes each detection.

Gradient boosting and a small MLP scored no better than it on JSRT (CPM within 0.01 in
patient cross-validation, 124 nodules), and a linear model saves as plain numbers: the file
is JSON, never a pickle, so loading a detector from elsewhere runs no code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrssl import __version__
from cxrssl.errors import DatasetError
from cxrssl.files import write_text_atomic
from cxrssl.lesions import candidates as cand
from cxrssl.lesions.candidates import FEATURE_NAMES, PRIOR_FEATURE_NAMES, Candidates
from cxrssl.lesions.froc import FP_RATES
from cxrssl.lesions.points import Point

KIND = "cxrssl nodule detector"
REGULARISATION = 1.0  # inverse L2 strength (scikit-learn's C) on standardised features
SIZE_RIDGE = 10.0  # L2 strength of the diameter regression on standardised features
SIZE_MM = (3.0, 60.0)  # a predicted diameter is kept within these (mm)


def feature_names(prior: bool) -> list[str]:
    """The detector's input columns: the candidate features, then the prior's, if any."""
    return list(FEATURE_NAMES) + (list(PRIOR_FEATURE_NAMES) if prior else [])


def candidate_settings() -> dict[str, Any]:
    """The candidate finder's constants, stored with a detector so a change is caught."""
    names = ("WORK_MM", "SIGMAS_MM", "BACKGROUND_MM", "NMS_MM", "LUNG_MARGIN_MM")
    return {n: list(v) if isinstance(v, tuple) else v for n in names for v in [getattr(cand, n)]}


@dataclass
class Detector:
    """A fitted candidate classifier. ``score`` maps features to probabilities."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    size_coef: list[float]
    size_intercept: float
    pixel_mm: float
    n_candidates: int
    prior: bool = False
    search_mm: float = 0.0  # with a prior: how far from it candidates were searched
    feature_names: list[str] = field(default_factory=lambda: list(FEATURE_NAMES))
    settings: dict[str, Any] = field(default_factory=candidate_settings)
    thresholds: dict[str, float] = field(default_factory=dict)  # FPs/image -> score, from CV
    version: str = __version__

    def _z(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, np.float64) - self.mean) / self.scale

    def score(self, features: np.ndarray) -> np.ndarray:
        """(n,) probabilities of being a nodule for (n, F) candidate features."""
        return 1.0 / (1.0 + np.exp(-(self._z(features) @ np.asarray(self.coef) + self.intercept)))

    def diameter_mm(self, features: np.ndarray) -> np.ndarray:
        """(n,) the diameter (mm) of the nodule each candidate would be, within ``SIZE_MM``."""
        log_mm = self._z(features) @ np.asarray(self.size_coef) + self.size_intercept
        return np.clip(np.exp(np.clip(log_mm, -10, 10)), *SIZE_MM)

    def _ranked(self, file: str, found: Candidates, pixel_mm: float | None) -> list[Any]:
        """(candidate index, detection) pairs, highest score first."""
        if not len(found):
            return []
        scores = self.score(found.features)
        sizes = self.diameter_mm(found.features) / (pixel_mm or self.pixel_mm)
        x, y = found.xy[:, 0], found.xy[:, 1]
        return [
            (i, Point(file, float(x[i]), float(y[i]), float(sizes[i]), score=float(scores[i])))
            for i in np.argsort(-scores, kind="stable")
        ]

    def detections(
        self, file: str, found: Candidates, pixel_mm: float | None = None
    ) -> list[Point]:
        """The candidates of ``file`` as scored detections, highest score first, sized by
        the diameter regression (in pixels of ``pixel_mm``, default the training one's)."""
        return [d for _, d in self._ranked(file, found, pixel_mm)]

    def picks(self, file: str, found: Candidates, pixel_mm: float | None = None) -> list[Point]:
        """With a prior: the best-scoring candidate in each part of the search region, the
        nodule the prior points to (whatever its score: the prior says one is there)."""
        if found.region is None:
            raise DatasetError("picks need candidates searched around a prior")
        best: dict[int, Point] = {}
        for i, d in self._ranked(file, found, pixel_mm):
            best.setdefault(int(found.region[i]), d)
        return list(best.values())

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps({"kind": KIND, **asdict(self)}, indent=1) + "\n")


def fit_detector(
    features: np.ndarray,
    labels: np.ndarray,
    pixel_mm: float,
    n_candidates: int,
    diameters_px: np.ndarray | None = None,
    prior: bool = False,
    search_mm: float = 0.0,
) -> Detector:
    """Fit the classifier on (n, F) candidate features and their 0/1 labels, and the size
    regression on the diameters (px) of the nodules the positive candidates hit.

    Args:
        diameters_px: (n,) the hit nodule's diameter per candidate (NaN for a negative);
            None: no sizes known, so every detection is sized 10 mm.
        prior: the features end with :data:`PRIOR_FEATURE_NAMES`.
        search_mm: with a prior, how far from it the candidates were searched.

    Raises:
        DatasetError: no positive or no negative candidate to learn from.
    """
    from sklearn.linear_model import LogisticRegression, Ridge

    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or x.shape[1] != len(feature_names(prior)):
        raise DatasetError(
            f"{x.shape[-1]} candidate features for a detector of "
            f"{len(feature_names(prior))} ({'with' if prior else 'without'} a prior)"
        )
    if len(np.unique(y)) < 2:
        raise DatasetError(
            f"cannot fit a nodule detector: {int(y.sum())} of {len(y)} candidates hit a nodule "
            "(some must, and some must not)"
        )
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    model = LogisticRegression(C=REGULARISATION, max_iter=5000).fit(z, y)
    pos = y == 1
    if diameters_px is None:
        log_mm = np.full(int(pos.sum()), math.log(10.0))
    else:
        log_mm = np.log(np.asarray(diameters_px, np.float64)[pos] * pixel_mm)
    size = Ridge(alpha=SIZE_RIDGE).fit(z[pos], log_mm)
    return Detector(
        mean.tolist(),
        scale.tolist(),
        model.coef_[0].tolist(),
        float(model.intercept_[0]),
        size.coef_.tolist(),
        float(size.intercept_),
        float(pixel_mm),
        int(n_candidates),
        prior,
        float(search_mm),
        feature_names(prior),
    )


def _hits(found: Candidates, truth: Sequence[Point]) -> np.ndarray:
    """(n_truth, n_candidates) bool: the candidate's centre lies within the nodule's radius
    (the FROC's hit rule)."""
    xy = found.xy.reshape(-1, 2)
    return np.array(
        [np.hypot(xy[:, 0] - t.x, xy[:, 1] - t.y) <= t.radius_px for t in truth], bool
    ).reshape(len(truth), len(xy))


def label_candidates(found: Candidates, truth: Sequence[Point]) -> np.ndarray:
    """1 for each candidate that hits a truth nodule, else 0."""
    return np.any(_hits(found, truth), axis=0).astype(np.int64)


def hit_diameters(found: Candidates, truth: Sequence[Point]) -> np.ndarray:
    """(n,) the diameter (px) of the truth nodule each candidate hits (the nearest, when
    several), NaN for a candidate that hits none."""
    out = np.full(len(found), np.nan)
    if not truth or not len(found):
        return out
    xy = found.xy.reshape(-1, 2)
    dist = np.array([np.hypot(xy[:, 0] - t.x, xy[:, 1] - t.y) for t in truth])
    dist[~_hits(found, truth)] = np.inf
    near = dist.argmin(axis=0)
    hit = np.isfinite(dist.min(axis=0))
    out[hit] = np.array([2 * t.radius_px for t in truth])[near[hit]]
    return out


def nodules_hit(found: Candidates, truth: Sequence[Point]) -> int:
    """How many of the ``truth`` nodules some candidate hits."""
    return int(np.any(_hits(found, truth), axis=1).sum())


def _numbers(path: Path, raw: dict[str, Any], key: str, n: int) -> list[float]:
    value = raw.get(key)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) and abs(v) < LIMIT for v in value)
    ):
        raise DatasetError(f"{path}: malformed detector: {key!r} must be {n} finite numbers")
    return [float(v) for v in value]


def _number(path: Path, raw: dict[str, Any], key: str, lo: float, hi: float) -> float:
    value = raw.get(key)
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not (lo <= value <= hi)  # NaN fails too
    ):
        raise DatasetError(f"{path}: malformed detector: {key!r} must be a number in [{lo}, {hi}]")
    return float(value)


LIMIT = 1e6  # no weight, mean or scale of a fitted detector comes near this
MAX_CANDIDATES = 10_000
MAX_PIXEL_MM = 5.0
MAX_SEARCH_MM = 500.0


def load_detector(path: str | Path) -> Detector:
    """Read a detector written by :meth:`Detector.save`: every field is checked (types,
    lengths, ranges) before use, since the file may come from anywhere.

    Raises:
        DatasetError: a missing or malformed file, one of another kind, or one made with
            other candidate features or settings than this cxrssl's (retrain it).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "detector.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such detector file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DatasetError(f"{path}: not a detector file ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise DatasetError(f"{path}: not a {KIND} (train one with cxrssl train-detector)")
    known = {"kind", *Detector.__dataclass_fields__}
    if set(raw) != known:
        odd = sorted(set(raw) ^ known)
        if raw.get("version") != __version__:
            raise DatasetError(
                f"{path}: made by cxrssl {raw.get('version')!r} (fields {odd} differ); retrain "
                "it with this version's cxrssl train-detector"
            )
        raise DatasetError(f"{path}: malformed detector: missing or unknown fields {odd}")
    prior = raw["prior"]
    if not isinstance(prior, bool):
        raise DatasetError(f"{path}: malformed detector: 'prior' must be true or false")
    names = feature_names(prior)
    if raw["feature_names"] != names or raw["settings"] != candidate_settings():
        raise DatasetError(
            f"{path}: made for other candidate features or settings (cxrssl "
            f"{raw['version']!r}); retrain it with this version's cxrssl train-detector"
        )
    n = len(names)
    thresholds = raw["thresholds"]
    if not isinstance(thresholds, dict):
        raise DatasetError(f"{path}: malformed detector: 'thresholds' must be an object")
    rates = {f"{r:g}" for r in FP_RATES}
    for key in thresholds:
        if key not in rates:
            raise DatasetError(f"{path}: malformed detector: no operating point {key!r}")
        _number(path, thresholds, key, 0.0, 1.0)
    n_candidates = raw["n_candidates"]
    if not isinstance(n_candidates, int) or isinstance(n_candidates, bool):
        raise DatasetError(f"{path}: malformed detector: 'n_candidates' must be an integer")
    _number(path, raw, "n_candidates", 1, MAX_CANDIDATES)
    scale = _numbers(path, raw, "scale", n)
    if min(scale) <= 0:
        raise DatasetError(f"{path}: malformed detector: 'scale' must be positive")
    return Detector(
        mean=_numbers(path, raw, "mean", n),
        scale=scale,
        coef=_numbers(path, raw, "coef", n),
        intercept=_number(path, raw, "intercept", -LIMIT, LIMIT),
        size_coef=_numbers(path, raw, "size_coef", n),
        size_intercept=_number(path, raw, "size_intercept", -LIMIT, LIMIT),
        pixel_mm=_number(path, raw, "pixel_mm", 1e-3, MAX_PIXEL_MM),
        n_candidates=n_candidates,
        prior=prior,
        search_mm=_number(path, raw, "search_mm", 0.0, MAX_SEARCH_MM if prior else 0.0),
        feature_names=names,
        settings=candidate_settings(),
        thresholds={k: float(v) for k, v in thresholds.items()},
        version=str(raw["version"]),
    )
