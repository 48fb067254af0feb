"""``pathology`` (seed 000, option 3): each positive pair's NT-Xent term weighted by
``1 + w * s``, with ``s`` the pair's pathology-candidate score: the mean over its two views of
the soft candidate score (``cxrssl.anatomy.pathology_map`` / 255, in [0, 1], warped with the
view) averaged over the view's lung. Relative weights, as ``mask-weighted``.

The method is only as good as the candidate map: measure it before trusting it (the README
gives the map's pixel AUC against expert lesion masks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from cxrssl.augment import MapKind, View
from cxrssl.ssl.base import ContrastiveMethod


def candidate_share(view: View) -> torch.Tensor:
    """(B,) mean candidate score over the lung of each view (0 where the view shows no lung)."""
    lungs = view.maps["lungs"].float().flatten(1).sum(1)
    candidates = (view.maps["pathology"].float() * view.maps["lungs"]).flatten(1).sum(1)
    return torch.where(lungs > 0, candidates / lungs.clamp(min=1), 0.0)


class Pathology(ContrastiveMethod):
    """Args: ``pathology_weight`` (w), and those of ``ContrastiveMethod``."""

    maps: ClassVar[Mapping[str, MapKind]] = {"lungs": "binary", "pathology": "soft"}

    def __init__(self, pathology_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pathology_weight = pathology_weight

    def pair_weight(self, a: View, b: View) -> torch.Tensor:
        return 1 + self.pathology_weight * (candidate_share(a) + candidate_share(b)) / 2
