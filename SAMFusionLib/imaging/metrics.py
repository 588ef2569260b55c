"""Segmentation metrics on boolean masks (any shape; both arguments must have the same shape)."""

from __future__ import annotations

import numpy as np

from SAMFusionLib.errors import SamFusionError


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise SamFusionError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return a, b


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2 |A ∩ B| / (|A| + |B|); 1.0 when both are empty."""
    a, b = _pair(a, b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """|A ∩ B| / |A ∪ B|; 1.0 when both are empty."""
    a, b = _pair(a, b)
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def precision_recall_f1(true_positives: int, false_positives: int, false_negatives: int) -> tuple[float, float, float]:
    """Detection precision, recall and F1 from counts; each is 0.0 where its denominator is 0."""
    precision = true_positives / (true_positives + false_positives) if true_positives + false_positives else 0.0
    recall = true_positives / (true_positives + false_negatives) if true_positives + false_negatives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def tre_mm(points_a: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Target registration error: (N,) Euclidean distances between corresponding (N, D) points in mm."""
    a, b = np.asarray(points_a, float), np.asarray(points_b, float)
    if a.shape != b.shape:
        raise SamFusionError(f"point sets differ in shape: {a.shape} vs {b.shape}")
    return np.linalg.norm(a - b, axis=-1)
