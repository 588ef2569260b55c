"""Shape-based interpolation of a binary mask between two slices (Raya & Udupa, 1990).

Each of the two slices' masks becomes a signed distance map in pixels, positive inside; the slice a
fraction t of the way from A to B gets (1 - t) d_A + t d_B and keeps the pixels where that is
positive. A disc growing from radius 10 to 20 passes through radius 15 half way; a shape that moves
by less than its own size slides across. Two shapes that do not overlap give nothing half way:
the slices are then too far apart for their target. Slicer's "Fill between slices" fills the same
gaps; here it lets the slice-wise segmentation run SAM on every Nth slice only
(``volume.segment_volume``'s ``slice_step``).
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.errors import SamFusionError


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) float32 signed distance of a (H, W) mask: + inside, - outside, zero half way between
    the last pixel in and the first pixel out (so that t = 0 gives the mask back exactly)."""
    import cv2

    inside = mask.astype(np.uint8)
    # DIST_MASK_PRECISE: exact Euclidean distances, so the interpolated outline is round, not octagonal.
    to_outside = cv2.distanceTransform(np.pad(inside, 1), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    to_inside = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(inside > 0, to_outside - 0.5, 0.5 - to_inside).astype(np.float32)


# The masks are interpolated on a grid this many times finer, in a crop around them. On the pixel
# grid itself, a pixel where two outlines differ by one pixel ties half way and falls out, so a
# growing shape lagged: over the phantom kidney and the abdomen CT's kidneys, every second slice
# filled, mean Dice against the truth 0.966 / 0.940 / 0.938 on the pixel grid, 0.981 / 0.959 / 0.955
# here (every fourth: 0.959 / 0.907 / 0.909 against 0.972 / 0.923 / 0.925).
UPSAMPLE = 4


def _finer(mask: np.ndarray) -> np.ndarray:
    """(UPSAMPLE H, UPSAMPLE W) bool: the mask's outline, linearly interpolated, on the finer grid."""
    import cv2

    height, width = mask.shape
    finer = cv2.resize(mask.astype(np.float32), (UPSAMPLE * width, UPSAMPLE * height), interpolation=cv2.INTER_LINEAR)
    return finer > 0.5


def interpolate_masks(mask_a: np.ndarray, mask_b: np.ndarray, fractions) -> list[np.ndarray]:
    """(H, W) bool masks at ``fractions`` (each in [0, 1]; 0 = A, 1 = B) of the way between two (H, W) masks.

    Both masks must be non-empty: an empty slice has no shape to interpolate from. Pixels outside
    the image count as outside the mask, so a mask touching the border shrinks towards it, not past it.
    """
    import cv2

    if mask_a.shape != mask_b.shape:
        raise SamFusionError(f"cannot interpolate between masks of shapes {mask_a.shape} and {mask_b.shape}")
    if not mask_a.any() or not mask_b.any():
        raise SamFusionError("cannot interpolate from an empty mask")
    rows, cols = np.nonzero(mask_a | mask_b)
    height, width = mask_a.shape
    y0, y1, x0, x1 = max(rows.min() - 2, 0), min(rows.max() + 3, height), max(cols.min() - 2, 0), min(cols.max() + 3, width)
    distance_a, distance_b = (signed_distance(_finer(m[y0:y1, x0:x1])) for m in (mask_a, mask_b))
    masks = []
    for t in fractions:
        finer = (((1.0 - t) * distance_a + t * distance_b) > 0).astype(np.float32)
        mask = np.zeros(mask_a.shape, bool)
        mask[y0:y1, x0:x1] = cv2.resize(finer, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA) >= 0.5
        masks.append(mask)
    return masks
