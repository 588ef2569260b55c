"""The paper's registration loss and its companions, in torch (differentiable).

Match_Loss (paper, section 3.3): ``mean |Sobel(A) - Sobel(B)|`` over the N pixels. Sobel(X) is
the Sobel response of X. ``mode="vector"`` (default) compares both directional responses,
(1/N) sum |Sx(A) - Sx(B)| + |Sy(A) - Sy(B)|. ``mode="magnitude"`` compares the edge-strength
maps, (1/N) sum | |S(A)| - |S(B)| |. The vector form is used on distance maps, whose gradient
magnitude is 1 almost everywhere, so only the direction carries information there.

It is applied to SAM masks, which have the same contrast in both modalities. Each mask becomes a
clipped signed distance map (``soft_mask``): its Sobel response points across the contour up to
``radius_mm`` away, which gives a capture range of that radius instead of one pixel.

The optional intensity term is the normalised gradient field (NGF) distance,
1 - mean((grad A . grad B)^2 / ((|grad A|^2 + e^2)(|grad B|^2 + e^2))), which ignores contrast and
polarity. A raw Sobel difference on intensities does not.
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.errors import SamFusionError


def sobel(image):
    """(B, 1, H, W) -> (B, 2, H, W) Sobel responses (d/dx, d/dy), replicate-padded.

    The 3 x 3 kernels [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] and its transpose, applied separably
    (smooth [1, 2, 1] along one axis, difference [-1, 0, 1] along the other) with tensor slices:
    the same numbers as a conv2d, and with its backward pass 5-8x faster on the CPU at 200-400 px.
    """
    import torch
    import torch.nn.functional as F

    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    smooth_y = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]  # (H, W + 2)
    smooth_x = padded[..., :, :-2] + 2 * padded[..., :, 1:-1] + padded[..., :, 2:]  # (H + 2, W)
    return torch.cat([smooth_y[..., 2:] - smooth_y[..., :-2], smooth_x[..., 2:, :] - smooth_x[..., :-2, :]], 1)


def match_loss(a, b, mode: str = "vector", weight=None, grad_a=None):
    """Match_Loss between two (B, 1, H, W) maps; scalar tensor. ``weight`` (B, 1, H, W) restricts the mean.
    ``grad_a``: ``sobel(a)`` when already known (a fixed image's, computed once per level)."""
    ga, gb = sobel(a) if grad_a is None else grad_a, sobel(b)
    if mode == "vector":
        difference = (ga - gb).abs().sum(1, keepdim=True)
    elif mode == "magnitude":
        difference = (ga.pow(2).sum(1, keepdim=True).sqrt() - gb.pow(2).sum(1, keepdim=True).sqrt()).abs()
    else:
        raise SamFusionError(f"unknown Match_Loss mode {mode!r}: use vector or magnitude")
    if weight is None:
        return difference.mean()
    return (difference * weight).sum() / weight.sum().clamp(min=1e-6)


def ngf_loss(a, b, epsilon: float = 1e-2, weight=None, grad_a=None):
    """NGF distance in [0, 1] between two (B, 1, H, W) images; contrast- and polarity-invariant.
    ``grad_a``: ``sobel(a)`` when already known."""
    ga, gb = sobel(a) if grad_a is None else grad_a, sobel(b)
    dot = (ga * gb).sum(1, keepdim=True)
    norm = (ga.pow(2).sum(1, keepdim=True) + epsilon**2) * (gb.pow(2).sum(1, keepdim=True) + epsilon**2)
    alignment = dot.pow(2) / norm
    if weight is None:
        return 1.0 - alignment.mean()
    return 1.0 - (alignment * weight).sum() / weight.sum().clamp(min=1e-6)


def soft_mask(mask: np.ndarray, spacing_mm: float, radius_mm: float, clip: bool = True) -> np.ndarray:
    """(H, W) bool -> (H, W) float32 signed distance / ``radius_mm``: negative inside, positive outside.

    Clipped to [-1, 1] by default. Unclipped (``clip=False``), its Sobel response is the contour's
    normal field everywhere, which a pixel of erosion or dilation (a constant offset of the
    distance) does not change: the mask term then carries no erosion/dilation bias.
    """
    import cv2

    mask = np.asarray(mask, bool)
    if not mask.any():
        raise SamFusionError("a mask is empty: the target was not found in one of the images")
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    signed = (outside - inside + np.where(mask, 0.5, -0.5)) * spacing_mm / radius_mm
    return (np.clip(signed, -1.0, 1.0) if clip else signed).astype(np.float32)
