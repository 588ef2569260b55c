"""Confirming a registration that missed only its mask-overlap threshold, by an independent one.

The quality check's mask Dice (``verdict.quality_check``, at least 0.7) measures the registration
and the two masks together: when one mask is poor (a faint target on a radiograph), even an exact
alignment stays below the threshold. Measured on the abdomen CT with the default model (seeds 0-3):
three registrations on SAM's masks failed it with mask Dice 0.57-0.67 while landing 0.19-0.54 mm
from the known transform. A second registration that shares nothing with the masks (the user's
prompt boxes) tells a right one from a wrong one: over the target, those three and the prompt
boxes' results were 0.33-0.56 mm apart at most; the demo model's wrong alignments of the same
cases were 98-193 mm apart, and on a clinical-size copy of that CT a result 11.7 mm off, whose
mask Dice (0.503) and prompts had passed, was 15.8 mm from the boxes' result (one pixel: 0.71 mm).

Transforms are SimpleITK transforms mapping fixed points to moving points (ITK's resampling
convention); masks are (H, W) bool on their ``Grid2D``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.registration.register import RegistrationOptions, RegistrationResult
from SAMFusionLib.registration.verdict import quality_check

# Below this mask Dice the masks overlap too little to call the result a registration on them,
# however well it agrees with the other one.
MIN_CONFIRMED_DICE = 0.5
# Enough points to find the largest disagreement over a target: a transform is smooth at this scale.
MAX_POINTS = 4096


def disagreement_mm(a, b, fixed_grid: Grid2D, region: np.ndarray) -> float:
    """Largest distance (mm, in the moving frame) between where transforms ``a`` and ``b`` send the
    fixed pixels of ``region`` ((H, W) bool on ``fixed_grid``); at most MAX_POINTS evenly spaced ones."""
    rows, columns = np.nonzero(region)
    if len(rows) == 0:
        raise ValueError("the region to compare two transforms on is empty")
    pick = np.linspace(0, len(rows) - 1, min(len(rows), MAX_POINTS)).round().astype(int)
    points = fixed_grid.to_physical(np.c_[columns[pick], rows[pick]].astype(float))
    mapped_a = np.array([a.TransformPoint(tuple(map(float, p))) for p in points])
    mapped_b = np.array([b.TransformPoint(tuple(map(float, p))) for p in points])
    return float(np.linalg.norm(mapped_a - mapped_b, axis=1).max())


def confirmed(failed: RegistrationResult, independent: RegistrationResult, fixed_mask: np.ndarray, fixed_grid: Grid2D,
              moving_mask: np.ndarray, moving_grid: Grid2D, options: RegistrationOptions, name: str) -> RegistrationResult | None:
    """``failed`` made to pass, when its only failure is the mask Dice threshold and ``independent``
    (a passed registration on other evidence, called ``name`` in the reason) agrees with it over
    the fixed mask within one pixel of the coarser image; otherwise None.

    Every other check of ``verdict.quality_check`` is run again with the threshold lowered to
    MIN_CONFIRMED_DICE. The report gains ``confirmed_by``, ``confirmation_distance_mm`` and ``confirmation_tolerance_mm``.
    """
    if failed.passed or not independent.passed or not failed.report.get("reason", "").startswith("mask Dice after registration"):
        return None
    lowered = replace(options, min_dice=MIN_CONFIRMED_DICE)
    ok, reason, _ = quality_check(fixed_mask, fixed_grid, moving_mask, moving_grid, failed.sitk_transform, failed.transform, lowered)
    if not ok:
        return None
    distance = disagreement_mm(failed.sitk_transform, independent.sitk_transform, fixed_grid, fixed_mask)
    tolerance = float(max(fixed_grid.spacing.max(), moving_grid.spacing.max()))
    failed.report.update(confirmation_distance_mm=round(distance, 3), confirmation_tolerance_mm=round(tolerance, 3))
    if distance > tolerance:
        return None
    reason = (f"{failed.reason}, but the registration on {name} agrees with it within {distance:.2f} mm over the target "
              f"(allowed {tolerance:.2f} mm, one pixel)")
    report = {**failed.report, "passed": True, "reason": reason, "confirmed_by": name}
    return RegistrationResult(failed.transform, failed.sitk_transform, True, reason, report)
