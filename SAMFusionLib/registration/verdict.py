"""The registration's verdict and the measures behind it: how well two masks and two images agree
after a transform, and whether a result passes its quality check.

Masks and images are (H, W) arrays on their own ``Grid2D``; transforms are SimpleITK transforms
mapping fixed points to moving points (ITK's resampling convention). These measures also choose
between the affine and the non-rigid result in ``register_2d``.
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.imaging.grid2d import Grid2D, resample_onto
from SAMFusionLib.registration.match_loss import match_loss_against, sobel, soft_mask
from SAMFusionLib.registration.transforms2d import Transform2D


def gradient_correlation_after(fixed: np.ndarray, fixed_grid: Grid2D, moving: np.ndarray, moving_grid: Grid2D, sitk_transform,
                               moving_field: np.ndarray | None = None) -> float:
    """|gradient correlation| of the fixed image and the warped moving one over their overlap.

    The mean of the normalised cross-correlations of the Sobel x and y derivatives, on fixed pixels
    that the moving image covers (its ``moving_field``, (H, W) bool, when given: the exposed part),
    eroded by 2 px, so that its border is no edge. 0 without overlap.
    """
    import cv2

    warped = resample_onto(np.asarray(moving, np.float32), moving_grid, fixed_grid, sitk_transform)
    exposed = np.ones_like(moving, np.float32) if moving_field is None else moving_field.astype(np.float32)
    covered = cv2.erode((resample_onto(exposed, moving_grid, fixed_grid, sitk_transform, nearest=True) > 0).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if covered.sum() < 16:
        return 0.0
    correlations = []
    for dx, dy in ((1, 0), (0, 1)):
        a = cv2.Sobel(np.asarray(fixed, np.float32), cv2.CV_32F, dx, dy)[covered]
        b = cv2.Sobel(warped, cv2.CV_32F, dx, dy)[covered]
        a, b = a - a.mean(), b - b.mean()
        correlations.append(float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12)))
    return abs(float(np.mean(correlations)))


def mask_mismatch(fixed_mask, fixed_grid: Grid2D, moving_mask, moving_grid: Grid2D, sitk_transform, radius_mm: float,
                  max_offset_px: float = 2.0) -> float:
    """Match_Loss of the fixed mask and the warped moving one, minimised over a uniform offset of the
    moving contour (-max_offset_px..max_offset_px): a mask's uniform erosion or dilation is not a misfit."""
    spacing = float(fixed_grid.spacing.mean())
    fixed_gradient = sobel(soft_mask(fixed_mask, spacing, radius_mm))
    moved = resample_onto(soft_mask(moving_mask, float(moving_grid.spacing.mean()), radius_mm, clip=False), moving_grid, fixed_grid, sitk_transform)
    offsets = np.linspace(-max_offset_px, max_offset_px, 9 if max_offset_px > 0 else 1) * spacing / radius_mm
    return min(match_loss_against(fixed_gradient, np.clip(moved + o, -1, 1)) for o in offsets)


def warp_mask(mask: np.ndarray, grid: Grid2D, reference_grid: Grid2D, sitk_transform) -> np.ndarray:
    """Resample a moving (H, W) bool mask onto the fixed grid through the fixed->moving transform."""
    return resample_onto(mask.astype(np.uint8), grid, reference_grid, sitk_transform, nearest=True).astype(bool)


# Fixed and moving images of one anatomy differ in physical size by their fields of view and the
# X-ray's magnification (1.1-1.5x); a factor above this means a spacing is wrong.
MAX_SIZE_RATIO = 10.0


def physical_size_ratio(a: Grid2D, b: Grid2D) -> float:
    """The larger of the two images' ratios of physical width and of physical height (>= 1)."""
    size_a = np.asarray(a.shape_hw[::-1], float) * a.spacing
    size_b = np.asarray(b.shape_hw[::-1], float) * b.spacing
    return float(np.max(np.maximum(size_a / size_b, size_b / size_a)))


def quality_check(fixed_mask, fixed_grid, moving_mask, moving_grid, sitk_transform, transform: Transform2D, options) -> tuple[bool, str, dict]:
    """Pass/fail with its reason, and the figures behind it."""
    import SimpleITK as sitk

    from SAMFusionLib.imaging.metrics import dice

    summary = transform.summary()
    scale = float(np.exp(summary["log_scale"]))
    if fixed_mask is None:
        # Without masks only the transform's own plausibility can be checked; images whose physical
        # sizes differ by far more than any X-ray magnification almost always carry a wrong spacing.
        ratio = physical_size_ratio(fixed_grid, moving_grid)
        if ratio > MAX_SIZE_RATIO:
            return False, f"the images' physical sizes differ {ratio:.3g}x (pixel spacings {fixed_grid.spacing.mean():.3g} and {moving_grid.spacing.mean():.3g} mm): check their spacing", {}
        ok = 0.5 < scale < 2.0
        return ok, "intensity-only registration: no mask check possible" if ok else f"implausible scale {scale:.2f}", {}
    identity = sitk.AffineTransform(2)
    warped_before = warp_mask(moving_mask, moving_grid, fixed_grid, identity)
    warped_after = warp_mask(moving_mask, moving_grid, fixed_grid, sitk_transform)
    radius = options.radius_px * float(fixed_grid.spacing.mean())
    fixed_gradient = sobel(soft_mask(fixed_mask, float(fixed_grid.spacing.mean()), radius))

    def loss_of(warped: np.ndarray) -> float:
        if not warped.any():
            return float("inf")
        return match_loss_against(fixed_gradient, soft_mask(warped, float(fixed_grid.spacing.mean()), radius), options.match_mode)

    figures = {
        "dice_before": round(dice(fixed_mask, warped_before), 4),
        "dice_after": round(dice(fixed_mask, warped_after), 4),
        "match_loss_before": round(loss_of(warped_before), 5),
        "match_loss_after": round(loss_of(warped_after), 5),
    }
    if not warped_after.any():
        return False, "the moving mask maps outside the fixed image", figures
    if not 0.5 < scale < 2.0:
        return False, f"implausible scale {scale:.2f}", figures
    if figures["dice_after"] < options.min_dice:
        return False, f"mask Dice after registration {figures['dice_after']:.3f} < {options.min_dice}", figures
    if figures["match_loss_after"] > figures["match_loss_before"] + 1e-6 and figures["dice_after"] < figures["dice_before"]:
        return False, "registration made the match worse than no registration", figures
    if isinstance(sitk_transform, sitk.CompositeTransform):
        field = sitk.DisplacementFieldTransform(sitk_transform.GetNthTransform(1)).GetDisplacementField()
        jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
        figures["min_jacobian"] = round(float(jacobian.min()), 4)
        if jacobian.min() <= 0:
            return False, "the non-rigid field folds (Jacobian determinant <= 0)", figures
    return True, f"mask Dice {figures['dice_after']:.3f} >= {options.min_dice}", figures
