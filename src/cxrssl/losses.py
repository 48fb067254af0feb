"""Segmentation losses (MONAI's where it has them) and the NT-Xent contrastive loss.

One vocabulary, MONAI's: segmentation losses take ``forward(input, target)`` with ``input``
the logits (B, 1, H, W) and ``target`` the mask (B, 1, H, W) as float {0, 1}; the sigmoid
is applied inside. SSL losses take ``forward(view0, view1)``. Build them by name with
:func:`get_loss`; the names and defaults are in :data:`LOSSES`.

Tversky weights follow MONAI: ``alpha`` weighs false positives, ``beta`` false negatives
(Abraham & Khan 2019 name them the other way round).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss, TverskyLoss
from torch import nn

from cxrssl.errors import CxrsslError


class LossError(CxrsslError, ValueError):
    """A loss name or argument that cannot be used."""


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss, mean over samples of ``(1 - TI) ** (1 / gamma)``.

    TI is MONAI's per-sample Tversky index, TP / (TP + alpha FP + beta FN), on sigmoid
    probabilities. With ``gamma`` > 1 the exponent is below 1, which raises the loss and its
    gradient on samples that are already well segmented (Abraham & Khan 2019, "A novel
    focal Tversky loss function with improved attention U-Net for lesion segmentation",
    arXiv:1810.07842, best gamma 4/3).

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        gamma: focal parameter; the exponent is 1 / gamma.
        smooth_nr: added to the numerator of TI.
        smooth_dr: added to the denominator of TI.
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4 / 3,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise LossError(f"focal Tversky gamma must be positive, got {gamma}")
        self.gamma = gamma
        self.tversky = TverskyLoss(
            sigmoid=True,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            reduction="none",
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits ``input`` (B, 1, H, W) against ``target`` (B, 1, H, W)."""
        one_minus_ti = self.tversky(input, target)  # (B, C, 1, 1)
        # clamp: d/dx x**(1/gamma) is infinite at 0 when gamma > 1.
        return one_minus_ti.clamp_min(1e-6).pow(1 / self.gamma).mean()


class WeightedBCELoss(nn.Module):
    """BCE on logits with ``pos_weight`` set per batch from the class ratio.

    ``pos_weight = clamp(factor * negatives / positives, 1, max_pos_weight)``, computed from
    the batch's target without gradient; a batch without positives gets ``max_pos_weight``
    (it then weighs nothing, as no term is positive).

    Args:
        factor: multiplier of the negative/positive pixel ratio.
        max_pos_weight: upper bound of the weight.
    """

    def __init__(self, factor: float = 1.0, max_pos_weight: float = 100.0) -> None:
        super().__init__()
        if factor <= 0 or max_pos_weight < 1:
            raise LossError(
                f"weighted BCE needs factor > 0 and max_pos_weight >= 1, "
                f"got {factor} and {max_pos_weight}"
            )
        self.factor = factor
        self.max_pos_weight = max_pos_weight

    @torch.no_grad()
    def pos_weight(self, target: torch.Tensor) -> torch.Tensor:
        """The weight of positive pixels for this ``target`` (B, 1, H, W); a 0-dim tensor."""
        pos = target.sum()
        ratio = (target.numel() - pos) / pos * self.factor  # inf when pos == 0
        return ratio.clamp(1.0, self.max_pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar mean loss of logits ``input`` (B, 1, H, W) against ``target`` (B, 1, H, W)."""
        return F.binary_cross_entropy_with_logits(
            input, target, pos_weight=self.pos_weight(target).to(input.dtype)
        )


class CombinedLoss(nn.Module):
    """Weighted sum of named losses that keeps each component for logging.

    ``forward`` returns the total (a scalar with gradient). After each call
    ``last_components`` maps every name to its unweighted, detached 0-dim tensor (no device
    sync: call ``.item()`` when logging).

    Args:
        components: name -> (loss module, weight).
    """

    def __init__(self, components: Mapping[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        if not components:
            raise LossError("a combined loss needs at least one component")
        self.parts = nn.ModuleDict({k: m for k, (m, _) in components.items()})
        self.weights = {k: float(w) for k, (_, w) in components.items()}
        self.last_components: dict[str, torch.Tensor] = {}

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar weighted sum of the components for ``input`` (B, 1, H, W) logits."""
        values = {k: m(input, target) for k, m in self.parts.items()}
        self.last_components = {k: v.detach() for k, v in values.items()}
        total = torch.zeros((), dtype=input.dtype, device=input.device)
        for k, v in values.items():
            total = total + self.weights[k] * v
        return total


class NTXentLoss(nn.Module):
    """NT-Xent (normalised temperature-scaled cross entropy), the SimCLR loss.

    The 2B embeddings of both views are L2-normalised; each one's positive is the other view
    of the same sample and its negatives are the other 2B - 2 embeddings. The loss of anchor
    k is ``-log(exp(s_kp / t) / sum_{j != k} exp(s_kj / t))``, computed as a cross entropy
    over the similarity matrix with its diagonal masked (Chen et al. 2020, "A Simple
    Framework for Contrastive Learning of Visual Representations", arXiv:2002.05709).

    Args:
        temperature: t, positive.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise LossError(f"NT-Xent temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(
        self, view0: torch.Tensor, view1: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scalar loss.

        Args:
            view0: embeddings of the first view, (B, D).
            view1: embeddings of the second view, (B, D).
            weight: optional per-sample weights (B,); both anchors of sample i get weight[i]
                and the result is the weighted mean of the 2B anchor losses.
        """
        if view0.ndim != 2 or view0.shape != view1.shape or view0.shape[0] < 2:
            raise LossError(
                f"NT-Xent needs two (B, D) views with B >= 2, got {tuple(view0.shape)} "
                f"and {tuple(view1.shape)}"
            )
        b = view0.shape[0]
        z = F.normalize(torch.cat([view0, view1]), dim=1)
        sim = z @ z.T / self.temperature
        eye = torch.eye(2 * b, dtype=torch.bool, device=sim.device)
        sim = sim.masked_fill(eye, float("-inf"))
        pos = torch.arange(2 * b, device=sim.device).roll(b)  # k -> k + B, k + B -> k
        if weight is None:
            return F.cross_entropy(sim, pos)
        if weight.shape != (b,):
            raise LossError(f"NT-Xent weight must be ({b},), got {tuple(weight.shape)}")
        w = torch.cat([weight, weight]).to(sim.dtype)
        return (w * F.cross_entropy(sim, pos, reduction="none")).sum() / w.sum()


def combined_loss(
    tversky_weight: float = 0.4,
    focal_tversky_weight: float = 0.3,
    weighted_bce_weight: float = 0.3,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 4 / 3,
    pos_weight_factor: float = 1.0,
    max_pos_weight: float = 100.0,
) -> CombinedLoss:
    """The default combined recipe: Tversky + focal Tversky + weighted BCE.

    Components and weights follow the lesion-segmentation seed (0.4 / 0.3 / 0.3, alpha 0.3
    on FP, beta 0.7 on FN). The seed's 100x pos_weight multiplier is not the default: a
    large pos_weight pushes toward high recall and low precision, the failure it meant to
    fix; pass ``pos_weight_factor`` to change it.
    """
    return CombinedLoss(
        {
            "tversky": (TverskyLoss(sigmoid=True, alpha=alpha, beta=beta), tversky_weight),
            "focal_tversky": (FocalTverskyLoss(alpha, beta, gamma), focal_tversky_weight),
            "weighted_bce": (
                WeightedBCELoss(pos_weight_factor, max_pos_weight),
                weighted_bce_weight,
            ),
        }
    )


def _dice(**kw: Any) -> nn.Module:
    return DiceLoss(**{"sigmoid": True, **kw})


def _bce_dice(**kw: Any) -> nn.Module:
    return DiceCELoss(**{"sigmoid": True, **kw})


def _tversky(**kw: Any) -> nn.Module:
    return TverskyLoss(**{"sigmoid": True, "alpha": 0.3, "beta": 0.7, **kw})


def _focal(**kw: Any) -> nn.Module:
    return FocalLoss(**{"gamma": 2.0, "use_softmax": False, **kw})


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice": _dice,  # MONAI DiceLoss(sigmoid=True)
    "bce_dice": _bce_dice,  # MONAI DiceCELoss(sigmoid=True): Dice + BCE with logits
    "tversky": _tversky,  # MONAI TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)
    "focal_tversky": FocalTverskyLoss,
    "focal": _focal,  # MONAI FocalLoss(gamma=2), sigmoid inside
    "weighted_bce": WeightedBCELoss,
    "combined": combined_loss,
    "ntxent": NTXentLoss,
}


def get_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build a loss by name; ``kwargs`` go to its constructor (MONAI's argument names).

    Raises:
        LossError: unknown name (the message lists the valid ones) or bad arguments.
    """
    if name not in LOSSES:
        raise LossError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**kwargs)
    except LossError:
        raise
    except (TypeError, ValueError) as e:
        raise LossError(f"loss {name!r}: {e}") from e
