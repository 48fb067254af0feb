"""Binary segmentation for the training engine: loss with deep supervision, batched
augmentation, validation with threshold tuning, post-processing and test-time flips."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrssl.augment import AugmentConfig, MapKind, augment_view, patch_boxes
from cxrssl.errors import CxrsslError
from cxrssl.metrics import batch_metrics

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(2, 19))  # 0.10 ... 0.90
# Lesion losses weigh a positive pixel up to 1000 times a negative one (seed 004's weighted
# BCE), which moves the optimal probabilities of small lesions up towards 1 (a BCE alone:
# logit + log(pos_weight)); their threshold is searched up to 0.999.
HIGH_THRESHOLDS = (*THRESHOLDS, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
POSTPROCESS = ("none", "lungs", "largest")
DEFAULT_AUGMENT = AugmentConfig()
PATCH_FOREGROUND = 1 / 3  # share of training patches centred on foreground (nnU-Net's)


def as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] -> float32 in [0, 1]; float input passes through."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def tune_threshold(
    probs: torch.Tensor,
    masks: torch.Tensor,
    target_sensitivity: float | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> tuple[float, float]:
    """The probability threshold with the best mean Dice over the images that hold a finding,
    or the highest one whose pooled pixel sensitivity reaches ``target_sensitivity``.

    Images whose reference is empty do not enter the choice: a threshold that blanks them out
    earns nothing (under the old rule each blank image scored Dice 1 and pulled the threshold
    up). Their false positives are what the image-level ``clear`` figure reports.

    Args:
        probs: (N, 1, H, W) probabilities.
        masks: (N, 1, H, W) {0, 1} reference.
        target_sensitivity: None for best Dice.
        thresholds: The candidates, ascending.

    Returns:
        (threshold, mean Dice at that threshold over the images with a finding; NaN if none).
    """
    truth = masks.bool()
    finding = truth.flatten(1).any(1)
    dices, sens = [], []
    for t in thresholds:
        pred = probs >= t
        dices.append(batch_metrics(pred[finding], truth[finding])["dice"].mean())
        sens.append((pred & truth).sum() / truth.sum().clamp_min(1))
    dice = torch.stack(dices)
    if target_sensitivity is None:
        best = int(torch.argmax(torch.nan_to_num(dice, nan=-1.0)))
    else:
        ok = torch.nonzero(torch.stack(sens) >= target_sensitivity).flatten()
        best = int(ok[-1]) if len(ok) else 0
    return float(thresholds[best]), float(dice[best])


def postprocess(mask: np.ndarray, mode: str) -> np.ndarray:
    """Clean a binary mask (H, W) uint8: ``"lungs"`` keeps the two largest connected parts
    (dropping any under 10 % of the largest) and fills their holes; ``"largest"`` keeps the
    largest part; ``"none"`` returns the mask as it is."""
    if mode == "none" or not mask.any():
        return mask
    if mode not in POSTPROCESS:
        raise CxrsslError(f"unknown post-processing {mode!r}; choose one of {POSTPROCESS}")
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(areas)[::-1][: 2 if mode == "lungs" else 1]
    keep = [i + 1 for i in order if areas[i] >= 0.1 * areas[order[0]]]
    out = np.isin(labels, keep).astype(np.uint8)
    if mode == "lungs":
        contours, _ = cv2.findContours(out, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


@torch.no_grad()
def predict_probs(
    models: Sequence[nn.Module], images: torch.Tensor, tta: bool = False
) -> torch.Tensor:
    """Mean sigmoid probability of ``models`` (each in eval mode), optionally averaged with
    the horizontally flipped input's (flipped back).

    Args:
        models: One model or a fold ensemble.
        images: (B, C, H, W) uint8 or float in [0, 1].

    Returns:
        (B, 1, H, W) float32 probabilities.
    """
    x = as_float(images)
    total = torch.zeros((), device=x.device)
    for model in models:
        total = total + torch.sigmoid(model(x).float())
        if tta:
            total = total + torch.sigmoid(model(x.flip(-1)).float()).flip(-1)
    return total / (len(models) * (2 if tta else 1))


class SegmentationTask:
    """Binary segmentation for :class:`cxrssl.train.Trainer`.

    Batches are ``(images uint8 (B, C, S, S), masks uint8 (B, 1, S, S))``: C = 1, or the
    image followed by ``prior_channels`` prior maps, which follow the augmentation's geometry
    as soft maps but get no photometric change. Deep-supervision outputs (B, 1 + n, 1, S, S)
    are weighted 1, 1/2, 1/4... (normalised). A loss that keeps ``last_components``
    (``cxrssl.losses.CombinedLoss``) has them logged.

    Args:
        loss: Takes (logits, target) like ``cxrssl.losses``.
        augmentation: Ranges of the batch augmentation; None trains without augmentation.
        target_sensitivity: Tune the threshold for this sensitivity instead of best Dice.
        prior_channels: Trailing input channels that are prior maps, not image.
        pooled_dice: Also report ``dice_pooled``, the Dice of all validation pixels pooled
            at the tuned threshold (1 when neither truth nor prediction has a positive
            pixel): defined on any validation set, and lesion-free images' false positives
            count in it.
        thresholds: The candidate thresholds of the tuning.
        patch: Train on ``patch`` x ``patch`` crops of each input (:func:`patch_boxes`,
            :data:`PATCH_FOREGROUND` of them around foreground), cut in the same warp as the
            augmentation; validation sees whole inputs. None: whole inputs.
    """

    def __init__(
        self,
        loss: nn.Module,
        augmentation: AugmentConfig | None = DEFAULT_AUGMENT,
        target_sensitivity: float | None = None,
        prior_channels: int = 0,
        pooled_dice: bool = False,
        thresholds: Sequence[float] = THRESHOLDS,
        patch: int | None = None,
    ) -> None:
        self.loss = loss
        self.thresholds = tuple(thresholds)
        self.augmentation = augmentation
        self.target_sensitivity = target_sensitivity
        self.prior_channels = int(prior_channels)
        self.pooled_dice = pooled_dice
        self.patch = patch

    def _augment(
        self, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, size = None, None
        if self.patch:
            boxes = patch_boxes(masks, self.patch, PATCH_FOREGROUND, generator)
            size = (self.patch, self.patch)
        if self.augmentation is None:
            assert boxes is not None
            cut = [
                (slice(None), slice(y0, y1), slice(x0, x1))
                for x0, y0, x1, y1 in boxes.int().tolist()
            ]
            return (
                torch.stack([images[i][c] for i, c in enumerate(cut)]),
                torch.stack([masks[i][c] for i, c in enumerate(cut)]),
            )
        k = self.prior_channels
        maps: dict[str, tuple[torch.Tensor, MapKind]] = {"masks": (masks, "binary")}
        if k:
            maps["prior"] = (images[:, -k:], "soft")
        view = augment_view(
            images[:, : images.shape[1] - k], maps, generator, self.augmentation, boxes, size
        )
        image = torch.cat([view.image, view.maps["prior"]], 1) if k else view.image
        return image, view.maps["masks"]

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim == 4:
            out: torch.Tensor = self.loss(logits, target)
            return out
        weights = [0.5**i for i in range(logits.shape[1])]
        total = sum(w * self.loss(logits[:, i], target) for i, w in enumerate(weights))
        return total / sum(weights)

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Augment, forward, loss; components of the main output when the loss has them."""
        images, masks = as_float(batch[0]), batch[1].float()
        if self.augmentation is not None or self.patch:
            images, masks = self._augment(images, masks, generator)
        loss = self._loss(model(images), masks)
        parts = getattr(self.loss, "last_components", {})
        return loss, {k: v.detach().float() for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """Loss, Dice/IoU at 0.5 (mean over images where defined: both masks empty is left
        out), the tuned threshold with its Dice (``dice_tuned``), and with ``pooled_dice``
        the pooled ``dice_pooled``."""
        probs, masks, losses = [], [], []
        for images, target in batches:
            logits = model(as_float(images)).float()
            losses.append(self.loss(logits, target.float()) * len(images))
            probs.append(torch.sigmoid(logits))
            masks.append(target)
        p, m = torch.cat(probs), torch.cat(masks)
        at_half = batch_metrics(p >= 0.5, m.bool())
        threshold, tuned = tune_threshold(p, m, self.target_sensitivity, self.thresholds)
        out = {
            "loss": float(torch.stack(losses).sum() / len(p)),
            "dice": float(at_half["dice"].nanmean()),
            "iou": float(at_half["iou"].nanmean()),
            "dice_tuned": tuned,
            "threshold": threshold,
        }
        if self.pooled_dice:
            pred, truth = p >= threshold, m.bool()
            total = int(pred.sum() + truth.sum())
            out["dice_pooled"] = 2 * float((pred & truth).sum()) / total if total else 1.0
        return out

    @torch.no_grad()
    def overlays(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Up to 4 validation images side by side (3, S, 4 S): prediction in red, truth in
        green (overlap yellow), the prior (if any) in blue, over the grey image."""
        images, masks = as_float(batch[0][:4]), batch[1][:4].float()
        pred = (torch.sigmoid(model(images).float()) >= 0.5).float()
        grey = images[:, :1] * 0.6
        blue = grey + 0.4 * images[:, -1:] if self.prior_channels else grey
        rgb = torch.cat([grey + 0.4 * pred, grey + 0.4 * masks, blue], 1)
        return {"val/overlay": torch.cat(list(rgb), dim=2).clamp(0, 1)}


def resize_probs(probs: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 1, size, size), bilinear."""
    return F.interpolate(probs, size=(size, size), mode="bilinear", align_corners=False)
