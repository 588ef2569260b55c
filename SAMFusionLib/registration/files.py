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
from SAMFusionLib.imaging.atomic import output_files
from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.imaging.io import Image2D, check_distinct, check_output_path, grey_array, read_image_2d
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


def _resampled(moving: Image2D, fixed: Image2D, transform, png: bool):
    """The moving image (grey) resampled onto the fixed grid; PNG output clamped to 0..255 bytes."""
    import SimpleITK as sitk

    source = moving.reference
    if source.GetNumberOfComponentsPerPixel() > 1:
        source = sitk.GetImageFromArray(grey_array(moving))
        source.CopyInformation(moving.reference)
    resampled = sitk.Resample(sitk.Cast(source, sitk.sitkFloat32), fixed.reference, transform, sitk.sitkLinear, 0.0)
    return sitk.Cast(sitk.Clamp(resampled, sitk.sitkFloat32, 0, 255), sitk.sitkUInt8) if png else resampled


def register_files(fixed_path: Path, moving_path: Path, out_transform: Path, fixed_mask: Path | None = None,
                   moving_mask: Path | None = None, transform: str = "nonrigid", out_resampled: Path | None = None,
                   out_report: Path | None = None) -> RegistrationResult:
    """Register two image files and write the transform (+ resampled image, + JSON report).

    All outputs are written under temporary names and committed together at the end: a failure
    anywhere leaves every file that existed before as it was.
    """
    import SimpleITK as sitk

    out_transform = check_output_path(out_transform, TRANSFORM_SUFFIXES)
    if out_resampled is not None:
        check_output_path(out_resampled, IMAGE_SUFFIXES)
    if out_report is not None:
        check_output_path(out_report, (".json",))
    check_distinct([out_transform, out_resampled, out_report], [fixed_path, moving_path, fixed_mask, moving_mask])
    fixed, moving = read_image_2d(fixed_path), read_image_2d(moving_path)
    fixed_grid, moving_grid = Grid2D.from_sitk(fixed.reference), Grid2D.from_sitk(moving.reference)
    result = register_2d(
        grey_array(fixed), fixed_grid, grey_array(moving), moving_grid,
        _mask(fixed_mask, fixed.array.shape[:2], "fixed"), _mask(moving_mask, moving.array.shape[:2], "moving"),
        RegistrationOptions(transform=transform),
    )
    with output_files(out_transform, out_resampled, out_report) as (transform_tmp, resampled_tmp, report_tmp):
        sitk.WriteTransform(result.sitk_transform, str(transform_tmp))
        if resampled_tmp is not None:
            image = _resampled(moving, fixed, result.sitk_transform, out_resampled.name.lower().endswith(".png"))
            sitk.WriteImage(image, str(resampled_tmp), True)
        if report_tmp is not None:
            report_tmp.write_text(json.dumps(result.report, indent=2))
    return result
