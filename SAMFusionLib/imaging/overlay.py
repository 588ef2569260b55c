"""Mask contours drawn over an image, for a quick visual check (``samfusion overlay``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
from SAMFusionLib.imaging.io import check_output_path, read_image_2d

# BGR colours for successive masks: red, green, yellow, cyan, magenta.
COLOURS = [(0, 0, 255), (0, 200, 0), (0, 220, 255), (255, 255, 0), (255, 0, 255)]


def overlay(image: np.ndarray, masks: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """(H, W) or (H, W, 3) image + (H, W) masks -> (scale H, scale W, 3) uint8 BGR with contours."""
    import cv2

    rgb = to_sam_rgb(image, resolve_range(image, "auto"))
    canvas = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST_EXACT)
    for n, mask in enumerate(masks):
        if mask.shape != image.shape[:2]:
            raise SamFusionError(f"mask {n + 1} ({mask.shape[1]}x{mask.shape[0]}) does not match the image ({image.shape[1]}x{image.shape[0]})")
        big = cv2.resize(mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST_EXACT)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, COLOURS[n % len(COLOURS)], 1)
    return canvas


def overlay_files(image_path: Path, mask_paths: list[Path], out: Path, scale: int = 2) -> None:
    import cv2

    out = check_output_path(out, (".png",))
    image = read_image_2d(image_path).array
    masks = [read_image_2d(p).array > 0 for p in mask_paths]
    masks = [m.any(axis=-1) if m.ndim == 3 else m for m in masks]
    if not cv2.imwrite(str(out), overlay(image, masks, scale)):
        raise SamFusionError(f"cannot write {out}")
