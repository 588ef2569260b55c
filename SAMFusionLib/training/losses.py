"""SAM's mask losses (the paper's training losses), in torch.

- Focal loss (Lin et al.): FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), averaged over pixels.
- Dice loss: 1 - (2 |X ∩ Y| + 1) / (|X| + |Y| + 1) on sigmoid probabilities, per mask.
SAM combines them 20:1 (focal:dice) and adds an MSE loss on the predicted IoU.
"""

from __future__ import annotations


def focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Mean focal loss per mask. ``logits``, ``targets``: (B, H, W) float; returns (B,).

    ``alpha`` weighs positives (alpha_t = alpha for y = 1, 1 - alpha for y = 0); alpha < 0 disables it.
    """
    import torch.nn.functional as F

    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.flatten(1).mean(1)


def dice_loss(logits, targets, smooth: float = 1.0):
    """Soft Dice loss per mask. ``logits``, ``targets``: (B, H, W); returns (B,)."""
    probabilities = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    intersection = (probabilities * targets).sum(1)
    return 1 - (2 * intersection + smooth) / (probabilities.sum(1) + targets.sum(1) + smooth)


def mask_iou(logits, targets):
    """IoU of the thresholded masks (logit > 0) with the targets, per mask: (B,), no gradient."""
    predicted = (logits > 0).flatten(1).float()
    targets = targets.flatten(1)
    intersection = (predicted * targets).sum(1)
    union = predicted.sum(1) + targets.sum(1) - intersection
    return intersection / union.clamp(min=1)


def sam_loss(
    logits, targets, iou_predictions, focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0, focal_alpha: float = 0.25
):
    """SAM's per-mask loss: 20 * focal + 1 * dice + MSE(predicted IoU, actual IoU); each (B,)."""
    actual_iou = mask_iou(logits.detach(), targets)
    return (
        focal_weight * focal_loss(logits, targets, alpha=focal_alpha)
        + dice_weight * dice_loss(logits, targets)
        + iou_weight * (iou_predictions - actual_iou) ** 2
    )
