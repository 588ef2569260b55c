"""Shape-based interpolation between two slices' masks (``imaging.shape_interpolation``)."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.metrics import dice
from SAMFusionLib.imaging.shape_interpolation import interpolate_masks

ROWS, COLUMNS = np.mgrid[:120, :140]


def disc(x: float, y: float, radius: float) -> np.ndarray:
    return (COLUMNS - x) ** 2 + (ROWS - y) ** 2 <= radius**2


def centroid_xy(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.nonzero(mask)
    return np.array([columns.mean(), rows.mean()])


def test_a_growing_disc_passes_through_the_radii_between():
    small, large = disc(60, 50, 10), disc(60, 50, 22)
    quarter, half, three_quarters = interpolate_masks(small, large, [0.25, 0.5, 0.75])
    for mask, radius in ((quarter, 13), (half, 16), (three_quarters, 19)):
        assert dice(mask, disc(60, 50, radius)) > 0.97, radius
        np.testing.assert_allclose(centroid_xy(mask), [60, 50], atol=0.05)


def test_the_ends_give_the_two_masks_back_exactly():
    a, b = disc(40, 60, 9) | disc(52, 60, 5), disc(47, 58, 14)
    start, end = interpolate_masks(a, b, [0.0, 1.0])
    np.testing.assert_array_equal(start, a)
    np.testing.assert_array_equal(end, b)


def test_a_moving_shape_slides_and_shrinks_only_when_it_moves_far():
    a = disc(50, 60, 15)
    near = interpolate_masks(a, disc(56, 57, 15), [0.5])[0]  # moved by 6.7 px, under half its radius
    np.testing.assert_allclose(centroid_xy(near), [53, 58.5], atol=0.3)
    assert abs(near.sum() / a.sum() - 1) < 0.03
    # Moved by 13.4 px, nearly its radius: half way is the lens where the two overlap, 10 % smaller
    # (measured 0.896); a slice step should be short against how fast the target moves.
    far = interpolate_masks(a, disc(62, 54, 15), [0.5])[0]
    np.testing.assert_allclose(centroid_xy(far), [56, 57], atol=0.3)
    assert 0.85 < far.sum() / a.sum() < 0.93


def test_shapes_that_do_not_overlap_leave_nothing_half_way():
    """Too far apart for their size: the caller (``segment_volume``) takes this as a jump too long."""
    assert not interpolate_masks(disc(30, 60, 8), disc(90, 60, 8), [0.5])[0].any()


def test_a_mask_on_the_border_does_not_wrap_or_spill():
    a, b = disc(0, 60, 20), disc(0, 60, 30)
    middle = interpolate_masks(a, b, [0.5])[0]
    assert dice(middle, disc(0, 60, 25)) > 0.97
    assert not middle[:, 40:].any()


@pytest.mark.parametrize("a, b, message", [
    (disc(60, 50, 10), np.zeros((120, 140), bool), "from an empty mask"),
    (disc(60, 50, 10), np.ones((10, 10), bool), r"masks of shapes \(120, 140\) and \(10, 10\)"),
])
def test_what_cannot_be_interpolated_is_a_clear_error(a, b, message):
    with pytest.raises(SamFusionError, match=message):
        interpolate_masks(a, b, [0.5])
