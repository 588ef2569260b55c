"""``report.png``: one picture to check a run by eye.

Top row: the CT slice through the first prompt (prompts, SAM mask), the X-ray (prompts, SAM
mask), the CT projection (projected mask). Bottom row: checkerboards of projection and X-ray
before registration (the X-ray simply stretched onto the projection's pixels) and after, and the
fused image. Positive points are green, negative red, boxes yellow, masks cyan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
from SAMFusionLib.imaging.overlay import overlay
from SAMFusionLib.pipeline import PipelineResult

PANEL_PX = 256
GREEN, RED, YELLOW, CYAN = (0, 200, 0), (0, 0, 255), (0, 220, 255), (255, 255, 0)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """(H, W) image alternating square tiles of ``a`` and ``b`` (same shape)."""
    height, width = a.shape
    side = max(1, min(height, width) // tiles)
    rows, columns = np.mgrid[0:height, 0:width]
    return np.where(((rows // side + columns // side) % 2) == 0, a, b)


def _panel(image_bgr: np.ndarray, title: str) -> np.ndarray:
    import cv2

    height, width = image_bgr.shape[:2]
    scale = PANEL_PX / max(height, width)
    resized = cv2.resize(image_bgr, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((PANEL_PX + 22, PANEL_PX, 3), np.uint8)
    canvas[22 : 22 + resized.shape[0], : resized.shape[1]] = resized
    cv2.putText(canvas, title, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def _draw_prompts(canvas: np.ndarray, points_xy: np.ndarray, labels: np.ndarray, box, scale: int) -> None:
    import cv2

    for (x, y), label in zip(np.asarray(points_xy).reshape(-1, 2), np.asarray(labels).reshape(-1)):
        cv2.circle(canvas, (int(round(x * scale)), int(round(y * scale))), 3, GREEN if label == 1 else RED, -1)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v * scale)) for v in box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), YELLOW, 1)


def _ct_panel(result: PipelineResult, scale: int) -> np.ndarray:
    inputs = result.inputs
    geometry = inputs.ct_geometry
    prompts = inputs.ct_prompts
    if len(prompts.points_ras):
        anchor = geometry.ras_to_ijk(prompts.points_ras[np.argmax(prompts.labels == 1)])[0]
    else:
        anchor = geometry.ras_to_ijk(prompts.roi_corners_ras.mean(0, keepdims=True))[0]
    k = int(np.clip(round(anchor[2]), 0, geometry.shape_kji[0] - 1))
    canvas = overlay(inputs.ct_kji[k].astype(np.float32), [result.ct_mask_kji[k].astype(bool)], scale)
    on_slice = [i for i, p in enumerate(geometry.ras_to_ijk(prompts.points_ras)) if round(p[2]) == k] if len(prompts.points_ras) else []
    points = geometry.ras_to_ijk(prompts.points_ras)[on_slice, :2] if on_slice else np.zeros((0, 2))
    box = None
    if prompts.roi_corners_ras is not None:
        corners = geometry.ras_to_ijk(prompts.roi_corners_ras)[:, :2]
        box = np.r_[corners.min(0), corners.max(0)]
    _draw_prompts(canvas, points, np.asarray(prompts.labels)[on_slice], box, scale)
    return _panel(canvas, f"CT slice k={k}: prompts, SAM mask")


def render_report(result: PipelineResult) -> np.ndarray:
    """The report picture of a pipeline run, (rows, columns, 3) uint8 BGR."""
    import cv2

    inputs = result.inputs
    scale = 2
    xray = overlay(inputs.xray, [result.xray_mask], scale)
    _draw_prompts(xray, inputs.xray_prompts.points_xy, inputs.xray_prompts.labels, inputs.xray_prompts.box_xyxy, scale)
    fixed = result.fixed.image
    projection = overlay(fixed, [result.fixed.mask], 1)
    height, width = fixed.shape
    stretched = cv2.resize(_grey(inputs.xray), (width, height), interpolation=cv2.INTER_AREA)
    verdict = result.registration.report
    top = [
        _ct_panel(result, scale),
        _panel(xray, "X-ray: prompts, SAM mask"),
        _panel(projection, "CT projection: projected mask"),
    ]
    bottom = [
        _panel(cv2.cvtColor(checkerboard(fixed, stretched).astype(np.uint8), cv2.COLOR_GRAY2BGR), "before registration"),
        _panel(cv2.cvtColor(checkerboard(fixed, result.xray_registered).astype(np.uint8), cv2.COLOR_GRAY2BGR),
               f"after: Dice {verdict.get('dice_after', float('nan')):.2f} {'PASS' if verdict['passed'] else 'FAIL'}"
               + (" (on the boxes)" if verdict.get("reference") == "prompt boxes" else "")
               + (" (boxes agree)" if verdict.get("confirmed_by") else "")),
        _panel(cv2.cvtColor(np.clip(result.fused, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR), "fused"),
    ]
    return np.vstack([np.hstack(top), np.hstack(bottom)])


def _grey(image: np.ndarray) -> np.ndarray:
    """Any grey image to 0..255 float32 by its robust range (as the pipeline registers it)."""
    return to_sam_rgb(image, resolve_range(image, "auto"))[..., 0].astype(np.float32)


def write_report_png(result: PipelineResult, path: Path) -> None:
    import cv2

    if not cv2.imwrite(str(path), render_report(result)):
        raise SamFusionError(f"cannot write {path}")
