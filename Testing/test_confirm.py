"""A registration that missed only the mask Dice threshold, confirmed (or not) by an independent one."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.registration.confirm import MIN_CONFIRMED_DICE, confirmed, disagreement_mm
from SAMFusionLib.registration.register import RegistrationOptions, RegistrationResult
from SAMFusionLib.registration.transforms2d import Transform2D
from SAMFusionLib.registration.verdict import quality_check

GRID = Grid2D.isotropic((96, 128), 1.5)  # 1.5 mm pixels: the tolerance is one pixel, 1.5 mm
SHIFT_MM = np.array([6.0, -4.5])  # the moving image's target lies here relative to the fixed one's


def ellipse(centre_xy, keep_fraction=1.0) -> np.ndarray:
    """(96, 128) bool: an ellipse of half-axes 30 x 18 px, its right part cut off beyond ``keep_fraction`` of its width."""
    rows, columns = np.mgrid[:96, :128]
    x, y = columns - centre_xy[0], rows - centre_xy[1]
    inside = (x / 30.0) ** 2 + (y / 18.0) ** 2 <= 1
    return inside & (x <= -30 + 60 * keep_fraction)


FIXED_MASK = ellipse((60, 45))
MOVING_CENTRE = np.array([60, 45]) + SHIFT_MM / 1.5


def result_for(shift_mm, moving_mask) -> RegistrationResult:
    """A linear registration fixed -> moving translating by ``shift_mm``, with its real quality verdict."""
    transform = Transform2D(np.zeros(2), shift_mm)
    sitk_transform = transform.to_sitk(GRID, False)
    passed, reason, figures = quality_check(FIXED_MASK, GRID, moving_mask, GRID, sitk_transform, transform, RegistrationOptions())
    return RegistrationResult(transform, sitk_transform, passed, reason, {**figures, "passed": passed, "reason": reason})


def test_disagreement_is_the_largest_distance_over_the_region():
    shifted = sitk.TranslationTransform(2, (1.5, 2.0))
    assert disagreement_mm(sitk.AffineTransform(2), shifted, GRID, FIXED_MASK) == pytest.approx(2.5)
    # A rotation by 1 degree about the origin: farthest from it is the region's far corner.
    rotation = sitk.Euler2DTransform((0.0, 0.0), np.radians(1.0))
    rows, columns = np.nonzero(FIXED_MASK)
    farthest_mm = np.hypot(columns * 1.5, rows * 1.5).max()
    assert disagreement_mm(sitk.AffineTransform(2), rotation, GRID, FIXED_MASK) == pytest.approx(farthest_mm * 2 * np.sin(np.radians(0.5)), rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        disagreement_mm(shifted, shifted, GRID, np.zeros_like(FIXED_MASK))


def test_an_exact_registration_of_a_poor_mask_is_confirmed_by_an_independent_one():
    half_mask = ellipse(MOVING_CENTRE, keep_fraction=0.45)  # a segmentation that found 45 % of the target's width
    on_masks = result_for(SHIFT_MM, half_mask)
    assert not on_masks.passed and on_masks.reason.startswith("mask Dice after registration")
    assert MIN_CONFIRMED_DICE <= on_masks.report["dice_after"] < 0.7
    independent = result_for(SHIFT_MM + [0.6, -0.8], ellipse(MOVING_CENTRE))  # 1 mm off everywhere
    assert independent.passed

    result = confirmed(on_masks, independent, FIXED_MASK, GRID, half_mask, GRID, RegistrationOptions(), "the prompt boxes")
    assert result is not None and result.passed and result.report["passed"]
    assert result.sitk_transform is on_masks.sitk_transform  # the result on the masks is kept, not the other one
    assert result.report["confirmed_by"] == "the prompt boxes"
    assert result.report["confirmation_distance_mm"] == pytest.approx(1.0, abs=1e-6)
    assert result.report["confirmation_tolerance_mm"] == 1.5
    assert result.reason.startswith("mask Dice after registration") and "agrees with it within 1.00 mm" in result.reason


def test_no_confirmation_beyond_one_pixel_below_the_dice_floor_or_for_other_failures():
    half_mask = ellipse(MOVING_CENTRE, keep_fraction=0.45)
    on_masks = result_for(SHIFT_MM, half_mask)
    two_pixels_off = result_for(SHIFT_MM + [3.0, 0.0], ellipse(MOVING_CENTRE))
    assert two_pixels_off.passed
    assert confirmed(on_masks, two_pixels_off, FIXED_MASK, GRID, half_mask, GRID, RegistrationOptions(), "x") is None
    assert on_masks.report["confirmation_distance_mm"] == pytest.approx(3.0)  # measured, and kept in the report

    exact = result_for(SHIFT_MM, ellipse(MOVING_CENTRE))
    sliver = ellipse(MOVING_CENTRE, keep_fraction=0.2)
    on_sliver = result_for(SHIFT_MM, sliver)
    assert on_sliver.report["dice_after"] < MIN_CONFIRMED_DICE
    assert confirmed(on_sliver, exact, FIXED_MASK, GRID, sliver, GRID, RegistrationOptions(), "x") is None

    # Failed for another reason than the Dice threshold (here the prompts), or the other one failed too.
    other = result_for(SHIFT_MM, half_mask)
    other.reason = other.report["reason"] = "the CT's target prompt maps 56 mm from the X-ray's (allowed 31 mm)"
    assert confirmed(other, exact, FIXED_MASK, GRID, half_mask, GRID, RegistrationOptions(), "x") is None
    assert confirmed(on_masks, on_masks, FIXED_MASK, GRID, half_mask, GRID, RegistrationOptions(), "x") is None
