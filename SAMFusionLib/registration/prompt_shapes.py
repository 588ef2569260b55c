"""The user's prompts as geometry on the registration planes.

The CT's ROI and the X-ray's box mark the same target in both images. Projected onto the CT's
projection plane (the fixed frame), they serve two purposes in the pipeline: checking that a
registration brings the CT's target onto the X-ray's (``pipeline.check_prompts_agree``), and,
when SAM's masks fail, standing in for them as the target's shape (an ellipse inscribed in each box).
"""

from __future__ import annotations

import numpy as np


def to_fixed_plane(points_ras: np.ndarray, plane, perspective=None) -> np.ndarray:
    """(N, 3) RAS points -> (N, 2) physical (u, v) on the fixed ``plane``, projected the way the CT
    was: straight along the plane's normal (parallel), or along the ray from the source."""
    points = np.atleast_2d(np.asarray(points_ras, float))
    if perspective is not None:
        source = perspective.source_ras
        along = ((plane.origin_ras - source) @ plane.normal_ras) / ((points - source) @ plane.normal_ras)
        points = source + along[:, None] * (points - source)
    return np.c_[points @ plane.x_ras, points @ plane.y_ras]


def inscribed_ellipse(shape_hw: tuple[int, int], box_xyxy: np.ndarray) -> np.ndarray:
    """(H, W) bool: the ellipse inscribed in the pixel box (x0, y0, x1, y1) (either corner order)."""
    import cv2

    box = np.asarray(box_xyxy, float)
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    mask = np.zeros(shape_hw, np.uint8)
    centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
    axes = (max(int(round((x1 - x0) / 2)), 1), max(int(round((y1 - y0) / 2)), 1))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def prompt_box_masks(roi_corners_ras: np.ndarray | None, xray_box_xyxy: np.ndarray | None, fixed, xray_shape_hw: tuple[int, int],
                     perspective=None) -> tuple[np.ndarray, np.ndarray] | None:
    """(fixed mask, X-ray mask): ellipses inscribed in the CT ROI's projection (its bounding box on
    the fixed plane) and in the X-ray's box; None without both boxes, or when either ellipse is empty.

    ``fixed``: the ``radiograph.Radiograph`` the registration uses as its fixed image.
    """
    if roi_corners_ras is None or xray_box_xyxy is None:
        return None
    corners_px = fixed.plane.grid().to_index(to_fixed_plane(roi_corners_ras, fixed.plane, perspective))
    box_px = np.r_[corners_px.min(0), corners_px.max(0)]
    fixed_mask = inscribed_ellipse(fixed.image.shape, box_px)
    xray_mask = inscribed_ellipse(xray_shape_hw, xray_box_xyxy)
    if not fixed_mask.any() or not xray_mask.any():
        return None
    return fixed_mask, xray_mask
