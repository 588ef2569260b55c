"""``samfusion register`` on files: read, register, write transform (+ resampled image, + report).

The transform file maps fixed physical points to moving physical points (ITK convention), so
``sitk.Resample(M, F, T)`` aligns M onto F. A failed quality check still writes the transform
(for inspection); the command then exits with code 3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path
from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.imaging.io import atomic_write_image, check_output_path, grey_array, read_image_2d
from SAMFusionLib.registration.register import RegistrationOptions, RegistrationResult, register_2d

TRANSFORM_SUFFIXES = (".h5", ".tfm", ".hdf5", ".txt")
IMAGE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".png")


def _mask(path: Path | None, image_shape: tuple[int, int], what: str) -> np.ndarray | None:
    if path is None:
        return None
    mask = read_image_2d(path).array
    mask = mask.max(axis=-1) if mask.ndim == 3 else mask
    if mask.shape != image_shape:
        raise SamFusionError(f"the {what} mask {Path(path).name} ({mask.shape[1]}x{mask.shape[0]}) does not match its image ({image_shape[1]}x{image_shape[0]})")
    return mask > 0


def write_transform(transform, path: Path) -> None:
    """Write an ITK transform atomically (temporary file with the same suffix, then rename)."""
    import SimpleITK as sitk

    with atomic_path(path, Path(path).suffix) as tmp:
        sitk.WriteTransform(transform, str(tmp))


def register_files(fixed_path: Path, moving_path: Path, out_transform: Path, fixed_mask: Path | None = None,
                   moving_mask: Path | None = None, transform: str = "nonrigid", out_resampled: Path | None = None,
                   out_report: Path | None = None) -> RegistrationResult:
    import SimpleITK as sitk

    out_transform = check_output_path(out_transform, TRANSFORM_SUFFIXES)
    if out_resampled is not None:
        check_output_path(out_resampled, IMAGE_SUFFIXES)
    if out_report is not None:
        check_output_path(out_report, (".json",))
    fixed, moving = read_image_2d(fixed_path), read_image_2d(moving_path)
    fixed_grid, moving_grid = Grid2D.from_sitk(fixed.reference), Grid2D.from_sitk(moving.reference)
    result = register_2d(
        grey_array(fixed), fixed_grid, grey_array(moving), moving_grid,
        _mask(fixed_mask, fixed.array.shape[:2], "fixed"), _mask(moving_mask, moving.array.shape[:2], "moving"),
        RegistrationOptions(transform=transform),
    )
    written = []
    try:
        write_transform(result.sitk_transform, out_transform)
        written.append(out_transform)
        if out_resampled is not None:
            source = moving.reference
            if source.GetNumberOfComponentsPerPixel() > 1:
                source = sitk.GetImageFromArray(grey_array(moving))
                source.CopyInformation(moving.reference)
            resampled = sitk.Resample(sitk.Cast(source, sitk.sitkFloat32), fixed.reference, result.sitk_transform, sitk.sitkLinear, 0.0)
            if out_resampled.name.lower().endswith(".png"):
                resampled = sitk.Cast(sitk.Clamp(resampled, sitk.sitkFloat32, 0, 255), sitk.sitkUInt8)
            atomic_write_image(resampled, out_resampled)
            written.append(out_resampled)
        if out_report is not None:
            out_report.write_text(json.dumps(result.report, indent=2))
            written.append(out_report)
    except Exception:
        for path in written:  # nothing half-done: all outputs or none
            Path(path).unlink(missing_ok=True)
        raise
    return result
