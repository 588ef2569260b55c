"""Detection scoring as the paper reports it (precision, recall, F1, accuracy) and bootstrap intervals.

Boxes are (x0, y0, x1, y1) pixel edges. Matching: predictions in descending score order each take
the unmatched ground-truth box of highest IoU, if that IoU >= the threshold (0.5); a second
prediction on an already matched target (a duplicate) is a false positive, as in the COCO and
PASCAL VOC protocols. Image-level accuracy: an image is "positive" (e.g. stone present) when it has
a ground-truth box, predicted positive when it has a detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from SAMFusionLib.annotation.demo_figures import box_iou
from SAMFusionLib.imaging.metrics import precision_recall_f1


@dataclass(frozen=True)
class ImageCounts:
    true_positives: int
    false_positives: int
    false_negatives: int
    truth_positive: bool  # the image has at least one ground-truth target
    predicted_positive: bool  # the image has at least one detection


def match_image(predicted: Sequence[np.ndarray], scores: Sequence[float], truth: Sequence[np.ndarray], threshold: float = 0.5) -> ImageCounts:
    """Greedy score-ordered matching of one image's detections to its ground-truth boxes."""
    order = np.argsort(-np.asarray(scores, float), kind="stable") if len(predicted) else []
    matched = [False] * len(truth)
    true_positives = 0
    for index in order:
        best, best_iou = -1, threshold
        for target, box in enumerate(truth):
            if matched[target]:
                continue
            overlap = box_iou(np.asarray(predicted[index], float), np.asarray(box, float))
            if overlap >= best_iou:
                best, best_iou = target, overlap
        if best >= 0:
            matched[best] = True
            true_positives += 1
    return ImageCounts(true_positives, len(predicted) - true_positives, len(truth) - true_positives, len(truth) > 0, len(predicted) > 0)


def detection_figures(images: Sequence[ImageCounts]) -> dict[str, float]:
    """Precision, recall, F1 over all targets, and image-level accuracy."""
    tp = sum(c.true_positives for c in images)
    fp = sum(c.false_positives for c in images)
    fn = sum(c.false_negatives for c in images)
    precision, recall, f1 = precision_recall_f1(tp, fp, fn)
    accuracy = float(np.mean([c.truth_positive == c.predicted_positive for c in images])) if images else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy, "tp": tp, "fp": fp, "fn": fn, "images": len(images)}


def bootstrap_interval(items: Sequence, statistic: Callable[[Sequence], float], samples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``items`` resampled with replacement.

    Items are the independent units (images for detection, targets for prompted scores).
    """
    if len(items) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        picks = rng.integers(0, len(items), len(items))
        values.append(statistic([items[i] for i in picks]))
    low, high = np.nanpercentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(low), float(high)
