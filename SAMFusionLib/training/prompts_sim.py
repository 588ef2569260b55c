"""Prompts simulated from a ground-truth mask, as SAM was trained: jittered boxes, positive and
negative points, and correction clicks placed in the error region.

All coordinates are pixels (x = column, y = row) of the mask's own grid.
"""

from __future__ import annotations

import numpy as np


def interior_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(2,) a random point well inside ``mask`` (distance to the edge >= half the maximum)."""
    import cv2

    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3)
    ys, xs = np.nonzero(distance >= 0.5 * distance.max())
    pick = rng.integers(len(xs))
    return np.array([xs[pick], ys[pick]], dtype=float)


def negative_point(mask: np.ndarray, rng: np.random.Generator, band_px: int = 15) -> np.ndarray | None:
    """(2,) a point outside ``mask`` within ``band_px`` of it, or None when there is no room."""
    import cv2

    kernel = np.ones((2 * band_px + 1, 2 * band_px + 1), np.uint8)
    ring = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & ~mask
    ys, xs = np.nonzero(ring)
    if len(xs) == 0:
        return None
    pick = rng.integers(len(xs))
    return np.array([xs[pick], ys[pick]], dtype=float)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, fraction: float = 0.1, max_px: float = 20.0) -> np.ndarray:
    """(4,) the mask's box (x0, y0, x1, y1), each side moved by N(0, fraction * side length), capped at ``max_px``."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
    sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    box += np.clip(rng.normal(0, fraction * sides), -max_px, max_px)
    height, width = mask.shape
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def loosened_box(box: np.ndarray, rng: np.random.Generator, shape_hw: tuple[int, int], fraction: float = 0.25, max_px: float = 4.0) -> np.ndarray:
    """(4,) ``box`` with each side pushed outward by U(0, ``fraction``) of its length plus U(0, ``max_px``) px,
    kept inside the image: the margin a user's ROI or a propagated slice's box leaves around the target."""
    sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2)
    push = rng.uniform(0, fraction, 4) * sides + rng.uniform(0, max_px, 4)
    height, width = shape_hw
    return np.clip(box + push * np.array([-1, -1, 1, 1]), 0, [width - 1, height - 1, width - 1, height - 1])


def correction_click(predicted: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """A click in the larger error region: ((2,) point, label 1 for a missed area, 0 for a false one)."""
    missed, false = target & ~predicted, predicted & ~target
    region, label = (missed, 1) if missed.sum() >= false.sum() else (false, 0)
    if not region.any():
        return None
    return interior_point(region, rng), label


def simulate(mask: np.ndarray, rng: np.random.Generator, loose_box_probability: float = 0.0) -> dict:
    """A random prompt for ``mask``: {"points": (N, 2) or None, "labels": (N,) or None, "box": (4,) or None}.

    The mix follows SAM's training: points only, box only, or box plus points. With
    ``loose_box_probability``, that share of the boxes is also loosened (``loosened_box``).
    """
    kind = rng.choice(3, p=[0.45, 0.35, 0.2])
    points, labels = [], []
    if kind in (0, 2):
        points.append(interior_point(mask, rng))
        labels.append(1)
        if kind == 0 and rng.random() < 0.4:
            for _ in range(rng.integers(0, 2)):
                points.append(interior_point(mask, rng))
                labels.append(1)
            negative = negative_point(mask, rng)
            if negative is not None:
                points.append(negative)
                labels.append(0)
    box = jittered_box(mask, rng) if kind in (1, 2) else None
    # No draw when the probability is 0: the recipes without loosening keep their exact prompt sequence.
    if box is not None and loose_box_probability > 0 and rng.random() < loose_box_probability:
        box = loosened_box(box, rng, mask.shape)
    return {
        "points": np.array(points) if points else None,
        "labels": np.array(labels) if labels else None,
        "box": box,
    }
