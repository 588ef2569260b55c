"""Figures of a model on the validation split of ``../shared/data`` (never the training split).

- Kidney stones (CT crops with YOLO boxes): one positive point at the centre of each ground-truth
  box. A hit is when the bounding box of the mask component under the point has IoU >= 0.5 with
  the ground-truth box. Figure: hit rate.
- Lungs (chest X-rays with manual masks): one box per lung from the ground-truth mask. Figure:
  mean Dice over lungs.
- Kidneys (the abdomen CT on the pipeline's view grid, cranial half of each kidney; the caudal half
  is training data): the pipeline's own slice-wise segmentation (``volume.segment_volume``, with
  propagation) from an ROI around that half (3 voxels of margin) and one positive fiducial at the
  middle slice's interior point. Figure: mean 3D Dice over the two kidneys.
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


def kidney_dice(segmenter) -> dict:
    """Mean 3D Dice of the pipeline's segmentation of each kidney's cranial half from an ROI and one point."""
    from SAMFusionLib.cases.shared_data import kidney_view
    from SAMFusionLib.imaging.geometry import SliceAxes
    from SAMFusionLib.pipeline import PipelineOptions
    from SAMFusionLib.sam.volume import VolumePrompts, segment_volume

    kidneys, options = kidney_view(), PipelineOptions()
    axes = SliceAxes(kidneys.axis)
    scores = {}
    for name, mask in sorted(kidneys.masks.items()):
        indices = kidneys.slices[(name, "val")]
        held_out = np.zeros_like(mask)
        for index in indices:
            axes.put(held_out, index, axes.take(mask, index))
        ks, js, is_ = np.nonzero(held_out)
        low, high = np.array([is_.min(), js.min(), ks.min()]) - 3.0, np.array([is_.max(), js.max(), ks.max()]) + 3.0
        # Slices outside the held-out half stay outside the ROI.
        low[kidneys.axis], high[kidneys.axis] = min(indices) - 0.4, max(indices) + 0.4
        corners_ijk = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
        middle = indices[len(indices) // 2]
        rows, cols = np.nonzero(axes.take(mask, middle))
        point_xy = np.array([cols[len(cols) // 2], rows[len(rows) // 2]], float)
        point_ijk = np.zeros(3)
        point_ijk[axes.x_axis], point_ijk[axes.y_axis], point_ijk[kidneys.axis] = point_xy[0], point_xy[1], middle
        prompts = VolumePrompts(kidneys.grid.ijk_to_ras_points(point_ijk[None]), np.array([1]), kidneys.grid.ijk_to_ras_points(corners_ijk))
        result = segment_volume(segmenter, kidneys.view_kji, kidneys.grid, prompts, slice_axis=kidneys.axis,
                                window=options.ct_window, propagate=options.propagate, zoom=options.zoom)
        scores[name] = dice(result.mask_kji.astype(bool), held_out)
    return {"targets": len(scores), "mean_dice": float(np.mean(list(scores.values()))), **{f"dice_{k}": round(v, 4) for k, v in scores.items()}}


def sam_segmenters(model, zoom: str = "auto", precision: str = "auto") -> tuple[PointSegmenter, BoxSegmenter]:
    """Point and box segmenters of a loaded model through the engine (embedding cache, zoom)."""
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.sam.zoom import predict_zoomed

    segmenter = Segmenter(model, precision=precision)

    def rgb(image: np.ndarray) -> np.ndarray:
        return np.repeat(image[:, :, None], 3, axis=2)

    def by_point(image, point):
        return predict_zoomed(segmenter, rgb(image), np.asarray(point)[None], np.array([1]), None, zoom).mask

    def by_box(image, box):
        return predict_zoomed(segmenter, rgb(image), None, None, np.asarray(box), zoom).mask

    return by_point, by_box


def figure_table(models: list, precision: str = "auto") -> dict:
    """Per model (through the engine, zoom ``auto`` as the pipeline, the image encoder at
    ``precision``): stone hit rate, lung Dice and kidney Dice; and the classical baselines (no
    kidney figure: Otsu has no ROI-only rule for it)."""
    from SAMFusionLib.sam.segmenter import Segmenter

    rows = {}
    for model in models:
        by_point, by_box = sam_segmenters(model, "auto", precision)
        kidneys = Segmenter(model, precision=precision)
        rows[model.model_id] = {"stones": stone_hit_rate(by_point), "lungs": lung_dice(by_box), "kidneys": kidney_dice(kidneys),
                                "encoder": kidneys.precision}
    rows["classical (Otsu)"] = {"stones": stone_hit_rate(otsu_point_baseline), "lungs": lung_dice(otsu_box_baseline)}
    return rows


def format_figures(rows: dict) -> str:
    """The figure table as Markdown."""
    lines = [
        "Validation split of ../shared/data (never trained on)",
        "",
        "| model | encoder | stones: hit rate (1 point, IoU >= 0.5) | lungs: mean Dice (1 box per lung) | kidneys: mean Dice (ROI + 1 point, cranial halves) |",
        "|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        stones, lungs = row["stones"], row["lungs"]
        kidneys = f"{row['kidneys']['mean_dice']:.3f} ({row['kidneys']['targets']} kidneys)" if "kidneys" in row else "-"
        lines.append(f"| {name} | {row.get('encoder', '-')} | {stones['hit_rate']:.3f} ({stones['targets']} stones) | {lungs['mean_dice']:.3f} ({lungs['targets']} lungs) | {kidneys} |")
    return "\n".join(lines)
