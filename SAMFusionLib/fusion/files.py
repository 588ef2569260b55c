"""``samfusion fuse`` on files: read two 2D images on one grid (+ optional masks), fuse, write atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.fusion.pyramid import FusionOptions, fuse
from SAMFusionLib.imaging.io import Image2D, atomic_write_image, check_distinct, check_output_path, grey_array, read_image_2d

FUSED_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".png")


def _same_grid(a: Image2D, b: Image2D, what: str) -> None:
    if a.array.shape[:2] != b.array.shape[:2]:
        raise SamFusionError(f"{what} lie on different grids: {a.array.shape[1]}x{a.array.shape[0]} vs {b.array.shape[1]}x{b.array.shape[0]} pixels")
    if not np.allclose(a.geometry.ijk_to_ras, b.geometry.ijk_to_ras, atol=1e-3):
        raise SamFusionError(f"{what} have the same size but different spacing, origin or direction; resample one onto the other first")


def fuse_files(a_path: Path, b_path: Path, out: Path, levels: int = 3, mask_a: Path | None = None, mask_b: Path | None = None,
               base: str = "gradient", threshold: float = 0.75, normalize: str = "auto",
               detail_gain: float = 1.0) -> np.ndarray:
    """Fuse two image files; writes ``out`` with A's geometry and returns the fused (H, W) float32 array."""
    import SimpleITK as sitk

    out = check_output_path(out, FUSED_SUFFIXES)
    check_distinct([out], [a_path, b_path, mask_a, mask_b])
    a, b = read_image_2d(a_path), read_image_2d(b_path)
    _same_grid(a, b, "A and B")
    target = None
    for path in (mask_a, mask_b):
        if path is None:
            continue
        mask = read_image_2d(path)
        if mask.array.shape[:2] != a.array.shape[:2]:
            raise SamFusionError(f"mask {Path(path).name} does not match the images' size")
        target = (mask.array > 0) if target is None else (target | (mask.array > 0))
    if target is not None and not target.any():
        raise SamFusionError("the target masks are empty")
    fused = fuse(grey_array(a), grey_array(b), FusionOptions(levels=levels, match_threshold=threshold, base=base, detail_gain=detail_gain), target, normalize)
    if out.name.lower().endswith(".png"):
        image = sitk.GetImageFromArray(np.clip(np.rint(fused), 0, 255).astype(np.uint8))
    else:
        image = sitk.GetImageFromArray(fused)
        image.CopyInformation(a.reference)
    atomic_write_image(image, out)
    return fused
