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
import torch.distributed as dist
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
        batch: One TI over the whole batch (TP, FP, FN summed over every sample) instead of
            one per sample (MONAI's ``batch``).
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4 / 3,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
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
            batch=batch,
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


class ProjectionHead(nn.Module):
    """The SimCLR projection MLP: ``layers - 1`` blocks of Linear-BN-ReLU, then a Linear.

    Maps pooled encoder features (B, in_dim) to the (B, out_dim) embeddings that
    :class:`NTXentLoss` compares (Chen et al. 2020). The hidden Linear layers have no bias
    (the BatchNorm after them has one).

    Args:
        in_dim: Feature size.
        hidden_dim: Width of the hidden layers.
        out_dim: Embedding size.
        layers: Number of Linear layers, >= 1 (1: a single Linear).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128, layers: int = 2
    ) -> None:
        super().__init__()
        if layers < 1 or min(in_dim, hidden_dim, out_dim) < 1:
            raise LossError(
                f"projection head needs layers >= 1 and positive sizes, got in_dim={in_dim}, "
                f"hidden_dim={hidden_dim}, out_dim={out_dim}, layers={layers}"
            )
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            dim = hidden_dim
        mods.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        if x.ndim != 2:
            raise LossError(f"projection head needs (B, D) features, got {tuple(x.shape)}")
        out: torch.Tensor = self.net(x)
        return out


class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward sums every rank's gradient of the gathered
    tensor and returns this rank's slice (so each copy's gradient reaches its owner).

    The same semantics as ``torch.distributed.nn.functional.all_gather`` (whose backward
    reduce-scatters, or all-to-all + sum, the gradients), which this torch version
    deprecates with a warning on every call; this works on every backend (gloo too)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        x = x.contiguous()
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x)
        return torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


NTXENT_REDUCTIONS = ("mean", "none")


class NTXentLoss(nn.Module):
    """NT-Xent (normalised temperature-scaled cross entropy), the SimCLR loss.

    The 2B embeddings of both views are L2-normalised; each one's positive is the other view
    of the same sample and its negatives are the other 2B - 2 embeddings. The loss of anchor
    k is ``-log(exp(s_kp / t) / sum_{j != k} exp(s_kj / t))``, computed as a cross entropy
    over the similarity matrix with its diagonal masked (Chen et al. 2020, "A Simple
    Framework for Contrastive Learning of Visual Representations", arXiv:2002.05709).

    With ``gather=True`` in a torch.distributed process group of world size W > 1 (B
    samples on every rank, N = W B in all), every rank's 2B local anchors are compared with
    all 2N embeddings of the global batch, gathered with gradient (each gathered copy's
    gradient is summed back to the rank that owns it). The global batch is ordered as one
    process would see ``cat`` of the ranks' batches. Each rank returns the mean over its
    local anchors, so the mean of the ranks' losses is the global loss; the gradient each
    rank gets for its own embeddings is W times its slice of the global loss's gradient,
    and DDP's averaging over ranks (dividing by W) thus yields exactly the single-process
    gradient of the global batch: use the loss as is, with no rescaling. Without a process
    group, or with W = 1, ``gather=True`` is the plain loss.

    Args:
        temperature: t, positive.
        gather: Take negatives from every rank (see above).
    """

    def __init__(self, temperature: float = 0.1, gather: bool = False) -> None:
        super().__init__()
        if temperature <= 0:
            raise LossError(f"NT-Xent temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.gather = gather

    def forward(
        self,
        view0: torch.Tensor,
        view1: torch.Tensor,
        weight: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """The loss of the local anchors.

        Args:
            view0: embeddings of the first view, (B, D).
            view1: embeddings of the second view, (B, D).
            weight: optional per-sample weights (B,); both anchors of sample i get
                weight[i]. With ``"mean"`` the result is the weighted mean of the anchor
                losses; gathered, ``W * sum_local(w l) / sum_global(w)`` (this rank's share
                of the global weighted mean, so DDP's gradient is again exact; the global
                weight sum is all-reduced without gradient).
            reduction: ``"mean"`` (a scalar) or ``"none"``: the (2B,) losses of the view0
                anchors then the view1 anchors, multiplied by their weights if given.
        """
        if reduction not in NTXENT_REDUCTIONS:
            raise LossError(
                f"NT-Xent reduction must be one of {NTXENT_REDUCTIONS}, got {reduction!r}"
            )
        distributed = self.gather and _distributed()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        b = view0.shape[0] if view0.ndim else 0
        if view0.ndim != 2 or view0.shape != view1.shape or b * world < 2 or b < 1:
            raise LossError(
                f"NT-Xent needs two (B, D) views with B >= 2, got {tuple(view0.shape)} "
                f"and {tuple(view1.shape)}"
            )
        if weight is not None and weight.shape != (b,):
            raise LossError(f"NT-Xent weight must be ({b},), got {tuple(weight.shape)}")
        z0, z1 = F.normalize(view0, dim=1), F.normalize(view1, dim=1)
        anchors = torch.cat([z0, z1])  # (2B, D)
        n = b * world
        if distributed:
            both = _GatherWithGrad.apply(torch.stack([z0, z1], 1))  # (N, 2, D)
            candidates = torch.cat([both[:, 0], both[:, 1]])  # (2N, D)
        else:
            candidates = anchors
        # (2B, 2N) in float32 even under autocast (bf16 costs the gradient ~2 %)
        dtype = torch.promote_types(anchors.dtype, torch.float32)
        sim = anchors.to(dtype) @ candidates.to(dtype).T / self.temperature
        local = torch.arange(b, device=sim.device) + rank * b  # global index of view0 anchors
        own = torch.cat([local, local + n])  # each anchor's own column
        pos = torch.cat([local + n, local])  # its other view's column
        sim = sim.masked_fill(F.one_hot(own, 2 * n).bool(), float("-inf"))
        if weight is None and reduction == "mean":
            return F.cross_entropy(sim, pos)
        losses = F.cross_entropy(sim, pos, reduction="none")  # (2B,)
        if weight is None:
            return losses
        w = torch.cat([weight, weight]).to(sim.dtype)
        if reduction == "none":
            return w * losses
        if distributed:
            total = w.sum().detach().clone()
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            return world * (w * losses).sum() / total
        return (w * losses).sum() / w.sum()


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


class _PositiveBatchesOnly(nn.Module):
    """``loss(input, target)`` where the batch's target has a positive pixel, else 0 (with a
    zero gradient; no host synchronisation)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value: torch.Tensor = self.loss(input, target)
        return torch.where(target.sum() > 0, value, torch.zeros_like(value))


class LesionLoss(CombinedLoss):
    """The lesion loss of seed 004: Tversky + focal Tversky + weighted BCE.

    Components (each logged unweighted in ``last_components``; a weight of 0 leaves a
    component out altogether, neither computed nor logged: the loss ablation):

    - ``tversky``: ``1 - TI`` with TI = TP / (TP + alpha FP + beta FN) on sigmoid
      probabilities, TP, FP and FN summed over the whole batch (MONAI ``TverskyLoss`` with
      ``batch=True``). Per image, a lesion-free image would score TI ~ 0 whatever is
      predicted (0 / epsilon: a constant with a vanishing gradient); pooled over the batch,
      its false positives count against the batch's lesions, which is what precision needs.
    - ``focal_tversky``: ``(1 - TI) ** gamma`` of the same pooled TI, the seed's formula:
      gamma 2 makes nearly solved batches weigh less, the hard ones more. (In
      :class:`FocalTverskyLoss`'s convention, Abraham & Khan's, the exponent is ``1 / gamma``:
      this is ``FocalTverskyLoss(gamma=1 / gamma, batch=True)``.)
    - ``weighted_bce``: :class:`WeightedBCELoss` with ``pos_weight = clamp(pos_weight_factor
      * negative pixels / positive pixels, 1, max_pos_weight)`` per batch (100 and 1000).

    A batch without a positive pixel: both Tversky terms are 0 there (there is no lesion to
    overlap, and TI would be ~0 whatever is predicted), and the BCE's pos_weight is
    ``max_pos_weight``, which weighs nothing as no pixel is positive; so the batch is trained
    by the plain BCE of its negatives, pushing every pixel towards background.

    Everything is computed in float32 (pooled sums over a batch of 512 px images are not safe
    in half precision).

    Args:
        tversky_weight: Weight of ``tversky``.
        focal_tversky_weight: Weight of ``focal_tversky``.
        weighted_bce_weight: Weight of ``weighted_bce``.
        alpha: Weight of false positives in TI.
        beta: Weight of false negatives in TI.
        gamma: Exponent of ``1 - TI`` in the focal term (> 0).
        pos_weight_factor: Multiplier of the negative / positive pixel ratio.
        max_pos_weight: Cap of the BCE's pos_weight.

    Raises:
        LossError: Every weight 0, a negative weight, or a bad gamma or pos_weight setting.
    """

    def __init__(
        self,
        tversky_weight: float = 0.4,
        focal_tversky_weight: float = 0.3,
        weighted_bce_weight: float = 0.3,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 2.0,
        pos_weight_factor: float = 100.0,
        max_pos_weight: float = 1000.0,
    ) -> None:
        if gamma <= 0:
            raise LossError(f"lesion loss gamma must be positive, got {gamma}")
        weights = {
            "tversky": float(tversky_weight),
            "focal_tversky": float(focal_tversky_weight),
            "weighted_bce": float(weighted_bce_weight),
        }
        if min(weights.values()) < 0 or not any(weights.values()):
            raise LossError(f"lesion loss weights must be >= 0, not all 0; got {weights}")
        build: dict[str, Callable[[], nn.Module]] = {
            "tversky": lambda: _PositiveBatchesOnly(
                TverskyLoss(sigmoid=True, alpha=alpha, beta=beta, batch=True)
            ),
            "focal_tversky": lambda: _PositiveBatchesOnly(
                FocalTverskyLoss(alpha, beta, 1 / gamma, batch=True)
            ),
            "weighted_bce": lambda: WeightedBCELoss(pos_weight_factor, max_pos_weight),
        }
        super().__init__({k: (build[k](), w) for k, w in weights.items() if w})

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar weighted sum for logits ``input`` (B, 1, H, W) and ``target`` (B, 1, H, W)."""
        return super().forward(input.float(), target.float())


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
    "lesion": LesionLoss,  # seed 004: pooled Tversky + focal Tversky (gamma 2) + BCE x100
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
