"""Image classification for the training engine: masked, weighted BCE (or cross-entropy for
one class per image), batched augmentation after the optional lung-box crop, validation AUC.

Batches are ``(images uint8 (B, 1, S, S), lungs uint8 (B, 1, S, S), boxes (B, 4), labels
(B, C))`` from :func:`cxrssl.tasks.cls_data.cls_loader`. An unknown label (NaN) adds nothing
to the loss: the BCE of each image and label is weighted by 1 where the label is known and
averaged over the known ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from cxrssl.augment import AugmentConfig, augment_view
from cxrssl.tasks.cls_data import crop_to_box
from cxrssl.tasks.seg_task import DEFAULT_AUGMENT, as_float

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def class_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    multiclass: bool,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over the known labels of a batch.

    Args:
        logits: (B, C).
        labels: (B, C) float 1/0/NaN; one-hot rows for ``multiclass``.
        multiclass: Softmax cross-entropy on the class of each row instead of a BCE per label.
        pos_weight: (C,) weight of the positive term of each label's BCE.
    """
    logits = logits.float()
    if multiclass:
        return F.cross_entropy(logits, torch.nan_to_num(labels).argmax(1))
    known = ~torch.isnan(labels)
    bce = F.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(labels), pos_weight=pos_weight, reduction="none"
    )
    return (bce * known).sum() / known.sum().clamp_min(1)


def positive_weights(labels: np.ndarray, cap: float = 50.0) -> np.ndarray:
    """Per-label weight of the positive BCE term: negatives / positives among the known
    labels for a rare finding, 1 for one that is not rare, at most ``cap``."""
    known = ~np.isnan(labels)
    pos = np.nansum(labels, axis=0)
    neg = known.sum(0) - pos
    ratio = np.divide(neg, pos, out=np.ones_like(pos, dtype=np.float64), where=pos > 0)
    return np.clip(ratio, 1.0, cap).astype(np.float32)


def macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over the labels that have both classes among their known rows (NaN if
    none does)."""
    aucs = []
    for c in range(labels.shape[1]):
        known = ~np.isnan(labels[:, c])
        y = labels[known, c]
        if 0 < y.sum() < y.size:
            aucs.append(float(roc_auc_score(y, scores[known, c])))
    return float(np.mean(aucs)) if aucs else float("nan")


def has_auc(labels: np.ndarray) -> bool:
    """Whether some label has both a positive and a negative known row."""
    return bool(((labels == 1).any(0) & (labels == 0).any(0)).any())


def probabilities(logits: torch.Tensor | np.ndarray, multiclass: bool) -> np.ndarray:
    """Softmax over classes, or a sigmoid per label."""
    t = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    out = torch.softmax(t, 1) if multiclass else torch.sigmoid(t)
    return out.numpy()


class ClassificationTask:
    """Classification for :class:`cxrssl.train.Trainer`.

    Args:
        multiclass: One class per image (softmax) instead of independent labels.
        pos_weight: (C,) positive weights of the BCE (see :func:`positive_weights`).
        augmentation: Ranges of the training augmentation; None trains without.
        crop: Crop every image to its lung box first (seed 000, option 4).
    """

    def __init__(
        self,
        multiclass: bool = False,
        pos_weight: Sequence[float] | None = None,
        augmentation: AugmentConfig | None = DEFAULT_AUGMENT,
        crop: bool = False,
    ) -> None:
        self.multiclass = multiclass
        self.pos_weight = torch.tensor(pos_weight) if pos_weight is not None else None
        self.augmentation = augmentation
        self.crop = crop

    def inputs(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The network input of a batch: float in [0, 1], cropped to the lung box when the
        task crops, augmented when a generator is given (training)."""
        if generator is not None and self.augmentation is not None:
            boxes = batch[2] if self.crop else None
            return augment_view(as_float(batch[0]), {}, generator, self.augmentation, boxes).image
        return self.view(batch)[0]

    def view(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The unaugmented input (float in [0, 1]) and its lungs ({0, 1} float) in the same
        frame: cropped to the lung box when the task crops."""
        images, lungs = as_float(batch[0]), batch[1].float()
        if self.crop:
            return crop_to_box(images, batch[2], lungs)
        return images, lungs

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The task's loss of a batch."""
        weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return class_losses(logits, labels, self.multiclass, weight)

    def training_step(
        self, model: nn.Module, batch: Batch, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Crop, augment, forward, loss."""
        logits = model(self.inputs(batch, generator))
        return self.loss(logits, batch[3]), {}

    @torch.no_grad()
    def logits(self, model: nn.Module, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N, C) and labels (N, C) of every batch, in order."""
        out, labels = [], []
        for batch in batches:
            out.append(model(self.inputs(batch)).float().cpu())
            labels.append(batch[3].float().cpu())
        return torch.cat(out).numpy(), torch.cat(labels).numpy()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch]) -> dict[str, float]:
        """Loss and mean AUC over the labels (``auc``; NaN where no label has both
        classes)."""
        logits, labels = self.logits(model, batches)
        loss = self.loss(torch.from_numpy(logits), torch.from_numpy(labels))
        auc = macro_auc(labels, probabilities(logits, self.multiclass))
        return {"loss": float(loss), "auc": auc}
