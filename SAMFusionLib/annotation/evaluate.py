"""``samfusion evaluate``: measure models the way the paper did, on the user's own labelled images.

Two protocols:

1. **prompted** — each ground-truth target prompts the method once: one positive point (the box
   centre, or the mask's deepest pixel) or the target's box. Per target: a *hit* when the box of
   the predicted component under the point (or of the whole mask, for a box prompt) has IoU >= 0.5
   with the ground-truth box; Dice and IoU against the ground-truth mask where one exists.
   Figures: hit rate, mean Dice, mean IoU; intervals by resampling targets.
2. **automatic** — no prompts: SAM's automatic mask generator (a grid of points) or the classical
   detector proposes regions; a target filter keeps plausible ones (area range in px, mean
   intensity at least a percentile of the image, optionally inside an organ mask); the kept
   regions' boxes are matched to ground-truth boxes at IoU >= 0.5 (``detection``). Figures:
   precision, recall, F1, and image-level accuracy (target present or not), as in the paper's
   tables; intervals by resampling images.

Rows: each model given, and the classical baseline (Otsu in a window or box for prompted;
threshold + connected components for automatic). 95% percentile-bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from SAMFusionLib.annotation.demo_figures import box_iou, component_box_under, otsu_point_baseline
from SAMFusionLib.annotation.detection import ImageCounts, bootstrap_interval, detection_figures, match_image
from SAMFusionLib.annotation.labels_io import Target
from SAMFusionLib.imaging.metrics import dice, iou

CLASSICAL = "classical"


@dataclass(frozen=True)
class TargetFilter:
    """Which automatic proposals count as targets."""

    min_area_px: int = 3
    max_area_px: int = 5000
    min_intensity_percentile: float = 97.0  # mean intensity >= this percentile of the image
    dark: bool = False  # targets darker than their surroundings (percentile taken from below)

    def keep(self, image: np.ndarray, mask: np.ndarray, inside: np.ndarray | None = None) -> bool:
        area = int(mask.sum())
        if not self.min_area_px <= area <= self.max_area_px:
            return False
        if inside is not None and not inside[mask].mean() >= 0.5:
            return False
        mean = float(image[mask].mean())
        if self.dark:
            return mean <= float(np.percentile(image, 100 - self.min_intensity_percentile))
        return mean >= float(np.percentile(image, self.min_intensity_percentile))


@dataclass
class ImageResult:
    name: str
    image: np.ndarray
    targets: list[Target]
    predictions: list[np.ndarray] = field(default_factory=list)  # prompted: one mask per target; automatic: kept masks
    scores: list[float] = field(default_factory=list)
    per_target: list[dict] = field(default_factory=list)
    counts: ImageCounts | None = None


# --- methods ------------------------------------------------------------------------------------

def sam_prompted(model, zoom: str = "auto") -> Callable[[np.ndarray, Target, str], np.ndarray]:
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.sam.zoom import predict_zoomed

    segmenter = Segmenter(model)

    def run(image: np.ndarray, target: Target, prompt: str) -> np.ndarray:
        rgb = np.repeat(image[:, :, None], 3, axis=2)
        if prompt == "box":
            return predict_zoomed(segmenter, rgb, None, None, target.sam_box(), zoom).mask
        if prompt == "points" and len(target.points_xy):
            return predict_zoomed(segmenter, rgb, target.points_xy, target.point_labels, None, zoom).mask
        return predict_zoomed(segmenter, rgb, target.centre_xy()[None], np.array([1]), None, zoom).mask

    return run


def classical_prompted(dark: bool) -> Callable[[np.ndarray, Target, str], np.ndarray]:
    from SAMFusionLib.annotation.demo_figures import otsu_component

    def run(image: np.ndarray, target: Target, prompt: str) -> np.ndarray:
        if prompt == "box":
            x0, y0, x1, y1 = (int(round(v)) for v in target.box())
            return otsu_component(image, x0, y0, x1, y1, not dark)
        point = target.points_xy[0] if prompt == "points" and len(target.points_xy) else target.centre_xy()
        if dark:
            return otsu_point_baseline(255 - image, point)
        return otsu_point_baseline(image, point)

    return run


def sam_automatic(model, points_per_side: int = 16, pred_iou: float = 0.7, stability: float = 0.85) -> Callable[[np.ndarray], list[tuple[np.ndarray, float]]]:
    """SAM's own automatic mask generator (segment_anything) on the model."""
    from segment_anything import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(model.sam, points_per_side=points_per_side, pred_iou_thresh=pred_iou, stability_score_thresh=stability)

    def run(image: np.ndarray):
        records = generator.generate(np.repeat(image[:, :, None], 3, axis=2))
        return [(r["segmentation"].astype(bool), float(r["predicted_iou"])) for r in records]

    return run


def classical_automatic(target_filter: TargetFilter) -> Callable[[np.ndarray], list[tuple[np.ndarray, float]]]:
    """Threshold at the stricter of Otsu's level and the filter's intensity percentile, then
    connected components; score = mean intensity. (Dark targets: the same on the inverted image.)"""
    import cv2

    def run(image: np.ndarray):
        grey = 255 - image if target_filter.dark else image
        otsu, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        level = max(float(otsu), float(np.percentile(grey, target_filter.min_intensity_percentile)))
        count, labels = cv2.connectedComponents((grey > level).astype(np.uint8), connectivity=8)
        regions = [labels == n for n in range(1, count)]
        return [(region, float(grey[region].mean()) / 255.0) for region in regions]

    return run


# --- protocols ----------------------------------------------------------------------------------

def score_prompted(result: ImageResult, masks: list[np.ndarray], prompt: str) -> None:
    result.predictions = masks
    for target, mask in zip(result.targets, masks):
        truth_box = target.box()
        if prompt == "box":
            found = None if not mask.any() else _mask_box(mask)
        else:
            point = target.points_xy[0] if prompt == "points" and len(target.points_xy) else target.centre_xy()
            found = component_box_under(mask, point)
        entry = {"hit": bool(found is not None and box_iou(found, truth_box) >= 0.5)}
        if target.mask is not None:
            entry["dice"], entry["iou"] = dice(mask, target.mask), iou(mask, target.mask)
        result.per_target.append(entry)


def score_automatic(result: ImageResult, proposals: list[tuple[np.ndarray, float]], target_filter: TargetFilter) -> None:
    kept = [(mask, score) for mask, score in proposals if target_filter.keep(result.image, mask)]
    result.predictions = [mask for mask, _ in kept]
    result.scores = [score for _, score in kept]
    result.counts = match_image([_mask_box(m) for m in result.predictions], result.scores, [t.box() for t in result.targets])


def _mask_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def prompted_figures(results: list[ImageResult], samples: int) -> dict:
    entries = [entry for r in results for entry in r.per_target]
    figures = {"targets": len(entries)}
    for key in ("hit", "dice", "iou"):
        values = [float(e[key]) for e in entries if key in e]
        if not values:
            continue
        figures[key] = float(np.mean(values))
        figures[f"{key}_ci"] = bootstrap_interval(values, lambda v: float(np.mean(v)), samples)
    return figures


def automatic_figures(results: list[ImageResult], samples: int) -> dict:
    counts = [r.counts for r in results]
    figures = detection_figures(counts)
    for key in ("precision", "recall", "f1", "accuracy"):
        figures[f"{key}_ci"] = bootstrap_interval(counts, lambda c, key=key: detection_figures(c)[key], samples)
    return figures


# --- the figures ------------------------------------------------------------------------------------

@dataclass
class Evaluation:
    rows: dict[str, dict]  # method -> {"prompted": figures, "automatic": figures}
    failures: list[str]
    examples: dict[str, list[ImageResult]]
    images: int


# --- output -------------------------------------------------------------------------------------

def _cell(figures: dict, key: str) -> str:
    if key not in figures:
        return "-"
    low, high = figures[f"{key}_ci"]
    return f"{figures[key]:.3f} [{low:.3f}, {high:.3f}]"


def format_table(evaluation: Evaluation, title: str, prompt: str) -> str:
    """The paper's table layout (automatic) and the prompted figures, in Markdown."""
    lines = [f"### {title}", "", f"{evaluation.images} images; 95% bootstrap intervals in brackets.", ""]
    if any("automatic" in row for row in evaluation.rows.values()):
        lines += ["Automatic (no prompts), detection at IoU >= 0.5:", "",
                  "| Model | Precision | Recall | F1 score | Accuracy |", "|---|---|---|---|---|"]
        for name, row in evaluation.rows.items():
            if "automatic" in row:
                f = row["automatic"]
                lines.append(f"| {name} | {_cell(f, 'precision')} | {_cell(f, 'recall')} | {_cell(f, 'f1')} | {_cell(f, 'accuracy')} |")
        lines.append("")
    if any("prompted" in row for row in evaluation.rows.values()):
        lines += [f"Prompted (one {prompt} per target):", "", "| Model | Hit rate (IoU >= 0.5) | Dice | IoU | Targets |", "|---|---|---|---|---|"]
        for name, row in evaluation.rows.items():
            if "prompted" in row:
                f = row["prompted"]
                lines.append(f"| {name} | {_cell(f, 'hit')} | {_cell(f, 'dice')} | {_cell(f, 'iou')} | {f['targets']} |")
        lines.append("")
    if evaluation.failures:
        lines += [f"Skipped {len(evaluation.failures)} file(s):", ""] + [f"- {f}" for f in evaluation.failures] + [""]
    return "\n".join(lines)


def _image_score(result: ImageResult) -> float:
    if result.counts is not None:
        c = result.counts
        return 2 * c.true_positives / max(2 * c.true_positives + c.false_positives + c.false_negatives, 1)
    values = [e.get("dice", float(e["hit"])) for e in result.per_target]
    return float(np.mean(values)) if values else 1.0


def overlay_examples(evaluation: Evaluation, per_row: int = 4, size: int = 220) -> np.ndarray:
    """One row per (method, protocol): the worst images first, then the best; ground truth green,
    predictions red; the title gives the image's score."""
    import cv2

    strips = []
    for label, results in evaluation.examples.items():
        ordered = sorted(results, key=_image_score)
        picks = ordered[: per_row // 2] + ordered[::-1][: per_row - per_row // 2]
        tiles = []
        for result in picks:
            canvas = cv2.cvtColor(result.image, cv2.COLOR_GRAY2BGR)
            for target in result.targets:
                if target.mask is not None:
                    contours, _ = cv2.findContours(target.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                    cv2.drawContours(canvas, contours, -1, (0, 200, 0), 1)
                x0, y0, x1, y1 = (int(round(v)) for v in target.box())
                cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 0), 1)
            for mask in result.predictions:
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(canvas, contours, -1, (0, 0, 255), 1)
            scale = size / max(canvas.shape[:2])
            canvas = cv2.resize(canvas, (int(canvas.shape[1] * scale), int(canvas.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            tile = np.zeros((size + 20, size, 3), np.uint8)
            tile[20 : 20 + canvas.shape[0], : canvas.shape[1]] = canvas
            cv2.putText(tile, f"{result.name[:14]} {_image_score(result):.2f}", (3, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
            tiles.append(tile)
        while len(tiles) < per_row:
            tiles.append(np.zeros((size + 20, size, 3), np.uint8))
        header = np.zeros((18, size * per_row, 3), np.uint8)
        cv2.putText(header, f"{label}: worst {per_row // 2}, then best", (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1)
        strips.append(np.vstack([header, np.hstack(tiles)]))
    return np.vstack(strips)
