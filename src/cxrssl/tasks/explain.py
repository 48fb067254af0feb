"""Does the classifier look at the lungs? Grad-CAM maps and their share inside the lungs.

Grad-CAM (Selvaraju et al., ICCV 2017) of label ``k``: the last stage's feature maps
weighted by the spatial mean of the gradient of logit ``k`` with respect to them, summed
over channels, ReLU, upsampled to the input. The *lung focus* of a map is the share of its
mass inside the rule-based lung fields (and inside the lung box); a map spread evenly over
the canvas scores the lungs' share of the canvas (``lung_area``), the chance level beside
which the focus reads. Real CXR classifiers are known to learn shortcuts (text markers,
devices, the hospital of origin): a low focus is a warning that AUC alone does not give.

Everything is computed in the network's input frame: for a lung-box model that is the
cropped view, so its box share is 1 by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cxrssl.nets.classifier import Classifier
from cxrssl.viz import GREEN, caption, png_bytes


def grad_cam(model: Classifier, x: torch.Tensor, outputs: Sequence[int]) -> torch.Tensor:
    """Grad-CAM of each of ``outputs`` (logit indices) for a batch.

    Args:
        model: The classifier, in eval mode.
        x: (B, 1, H, W) float input.
        outputs: Logit indices.

    Returns:
        (B, K, H, W) float32 maps >= 0, each scaled to a maximum of 1 (all zero where the
        gradient gives nothing).
    """
    with torch.no_grad():
        feats = model.features(x).float()
    with torch.enable_grad():
        feats = feats.detach().requires_grad_(True)
        logits = model.head(feats).float()
        maps = []
        for k in outputs:
            (grad,) = torch.autograd.grad(logits[:, k].sum(), feats, retain_graph=True)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * feats).sum(1)))
    cam = torch.stack(maps, 1).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
    return (cam / peak).clamp(0, 1)


def lung_focus(
    cam: torch.Tensor, lungs: torch.Tensor, boxes: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Share of each map's mass inside the lungs (and the box), and the lungs' area share.

    Args:
        cam: (B, K, H, W) maps >= 0.
        lungs: (B, 1, H, W) {0, 1} lung fields in the same frame.
        boxes: (B, 4) boxes ``(x0, y0, x1, y1)`` in pixels of the frame, or None.

    Returns:
        ``lungs``: (B, K) share inside the lungs (NaN for an all-zero map); ``box``: (B, K)
        share inside the box (only with ``boxes``); ``lung_area``: (B,) the lungs' share of
        the frame.
    """
    mass = cam.flatten(2).sum(-1)
    inside = (cam * lungs.float()).flatten(2).sum(-1)
    nan = torch.full_like(mass, float("nan"))
    out = {
        "lungs": torch.where(mass > 0, inside / mass.clamp_min(1e-12), nan),
        "lung_area": lungs.float().flatten(1).mean(1),
    }
    if boxes is not None:
        h, w = cam.shape[-2:]
        ys = torch.arange(h, device=cam.device)[None, :, None]
        xs = torch.arange(w, device=cam.device)[None, None, :]
        b = boxes.to(cam.device)
        box = (
            (xs >= b[:, 0, None, None])
            & (xs < b[:, 2, None, None])
            & (ys >= b[:, 1, None, None])
            & (ys < b[:, 3, None, None])
        )
        in_box = (cam * box[:, None]).flatten(2).sum(-1)
        out["box"] = torch.where(mass > 0, in_box / mass.clamp_min(1e-12), nan)
    return out


def cam_picture(
    image: np.ndarray, cam: np.ndarray, lungs: np.ndarray, text: str, side: int = 256
) -> np.ndarray:
    """The input with its Grad-CAM as a colour map (JET, 40 % opacity), the lung outline in
    green and a caption: (side, side, 3) uint8 BGR."""
    grey = cv2.resize(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), (side, side))
    heat = cv2.applyColorMap(
        cv2.resize((cam * 255).astype(np.uint8), (side, side)), cv2.COLORMAP_JET
    )
    picture = cv2.addWeighted(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 0.6, heat, 0.4, 0)
    mask = cv2.resize(lungs.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, GREEN, 1, lineType=cv2.LINE_AA)
    caption(picture, text)
    return picture


def montage(pictures: Sequence[np.ndarray], columns: int) -> bytes:
    """Pictures of one size in a grid (black where the last row is short), as PNG bytes."""
    h, w = pictures[0].shape[:2]
    rows = -(-len(pictures) // columns)
    grid = np.zeros((rows * h, columns * w, 3), np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = p
    return png_bytes(grid)
