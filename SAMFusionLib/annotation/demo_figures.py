"""Figures of a model on the validation split of ``../shared/data`` (never the training split).

- Kidney stones (CT crops with YOLO boxes): one positive point at the centre of each ground-truth
  box. A hit is when the bounding box of the mask component under the point has IoU >= 0.5 with
  the ground-truth box. Figure: hit rate.
- Lungs (chest X-rays with manual masks): one box per lung from the ground-truth mask. Figure:
  mean Dice over lungs.
The classical baselines are Otsu in a window around the point (stones) and Otsu in the box
(lungs), keeping the component under the point or the largest one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from SAMFusionLib.imaging.metrics import dice

PointSegmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (grey image, (x, y)) -> mask
BoxSegmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (grey image, (x0, y0, x1, y1)) -> mask


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in continuous pixel coordinates."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def component_box_under(mask: np.ndarray, point_xy: np.ndarray) -> np.ndarray | None:
    """Pixel-edge box (x0, y0, x1, y1) of the mask component containing (or nearest to) the point."""
    import cv2

    if not mask.any():
        return None
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    x, y = int(round(point_xy[0])), int(round(point_xy[1]))
    label = labels[min(max(y, 0), mask.shape[0] - 1), min(max(x, 0), mask.shape[1] - 1)]
    if label == 0:
        ys, xs = np.nonzero(labels)
        label = labels[ys[np.argmin((xs - x) ** 2 + (ys - y) ** 2)], xs[np.argmin((xs - x) ** 2 + (ys - y) ** 2)]]
    ys, xs = np.nonzero(labels == label)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def stone_hit_rate(segment: PointSegmenter, split: str = "val") -> dict:
    from SAMFusionLib.cases.shared_data import kidney_stone_cases

    hits, total = 0, 0
    for case in kidney_stone_cases(split):
        for box in case.boxes:
            # Boxes are pixel edges; SAM's coordinates put integers at pixel centres (half a pixel in).
            centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]) - 0.5
            found = component_box_under(segment(case.image, centre), centre)
            hits += int(found is not None and box_iou(found, box) >= 0.5)
            total += 1
    return {"targets": total, "hit_rate": hits / total if total else 0.0}


def lung_dice(segment: BoxSegmenter, split: str = "val") -> dict:
    from SAMFusionLib.cases.shared_data import chest_xray_cases

    scores = []
    for case in chest_xray_cases(split):
        for lung in case.lungs:
            ys, xs = np.nonzero(lung)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], float)
            scores.append(dice(segment(case.image, box), lung))
    return {"targets": len(scores), "mean_dice": float(np.mean(scores)) if scores else 0.0}


def otsu_component(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, bright: bool, point=None) -> np.ndarray:
    import cv2

    mask = np.zeros(image.shape, bool)
    crop = image[y0:y1, x0:x1]
    if crop.size == 0 or crop.min() == crop.max():
        return mask
    _, chosen = cv2.threshold(crop, 0, 1, (cv2.THRESH_BINARY if bright else cv2.THRESH_BINARY_INV) + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(chosen.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask
    label = 0
    if point is not None:
        label = labels[int(np.clip(point[1] - y0, 0, crop.shape[0] - 1)), int(np.clip(point[0] - x0, 0, crop.shape[1] - 1))]
    if label == 0:
        label = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask[y0:y1, x0:x1] = labels == label
    return mask


def otsu_point_baseline(image: np.ndarray, point_xy: np.ndarray, window: int = 32) -> np.ndarray:
    """Classical stone baseline: Otsu (bright) in a window around the point."""
    height, width = image.shape
    x, y = int(round(point_xy[0])), int(round(point_xy[1]))
    return otsu_component(image, max(x - window, 0), max(y - window, 0), min(x + window, width), min(y + window, height), True, point_xy)


def otsu_box_baseline(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Classical lung baseline: Otsu (dark) in the box, the largest component."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return otsu_component(image, x0, y0, x1 + 1, y1 + 1, False)


def sam_segmenters(model, zoom: str = "auto") -> tuple[PointSegmenter, BoxSegmenter]:
    """Point and box segmenters of a loaded model through the engine (embedding cache, zoom)."""
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.sam.zoom import predict_zoomed

    segmenter = Segmenter(model)

    def rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[:, :, None], 3, axis=2)

    def by_point(image, point):
        return predict_zoomed(segmenter, rgb(image), np.asarray(point)[None], np.array([1]), None, zoom).mask

    def by_box(image, box):
        return predict_zoomed(segmenter, rgb(image), None, None, np.asarray(box), zoom).mask

    return by_point, by_box


def figure_table(model) -> dict:
    """Stone hit rate and lung Dice of ``model`` (with and without zoom) and of the classical baselines."""
    rows = {}
    for name, zoom in (("model, zoom on", "on"), ("model, no zoom", "off")):
        by_point, by_box = sam_segmenters(model, zoom)
        rows[name] = {"stones": stone_hit_rate(by_point), "lungs": lung_dice(by_box)}
    rows["classical (Otsu)"] = {"stones": stone_hit_rate(otsu_point_baseline), "lungs": lung_dice(otsu_box_baseline)}
    return rows


def format_figures(rows: dict) -> str:
    """The figure table as Markdown."""
    lines = [
        "Validation split of ../shared/data (never trained on)",
        "",
        "| method | stones: hit rate (1 point, IoU >= 0.5) | lungs: mean Dice (1 box per lung) |",
        "|---|---|---|",
    ]
    for name, row in rows.items():
        stones, lungs = row["stones"], row["lungs"]
        lines.append(f"| {name} | {stones['hit_rate']:.3f} ({stones['targets']} stones) | {lungs['mean_dice']:.3f} ({lungs['targets']} lungs) |")
    return "\n".join(lines)
