"""IJK <-> RAS geometry against SimpleITK's own index/physical-point transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry, SliceAxes, check_pixel_inside, normalize_box, roi_corners_ras
from SAMFusionLib.imaging.io import read_volume


def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# LPS direction matrices as SimpleITK stores them. diag(-1, -1, 1) is how a RAS-ordered file reads.
DIRECTIONS = {
    "lps_identity": np.eye(3),
    "ras_stored": np.diag([-1.0, -1.0, 1.0]),
    "flipped_j_k": np.diag([1.0, -1.0, -1.0]),
    "oblique": rotation([1, 2, 3], 27.0),
}


def sitk_volume(direction: np.ndarray, shape_kji=(12, 20, 30), spacing=(0.7, 1.3, 2.5), origin=(10.0, -20.0, 5.0)):
    image = sitk.GetImageFromArray(np.zeros(shape_kji, np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(direction.ravel()))
    return image


@pytest.mark.parametrize("name", DIRECTIONS)
def test_ijk_to_ras_matches_simpleitk(name, tmp_path):
    image = sitk_volume(DIRECTIONS[name])
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(image, str(path))
    _, geometry, _ = read_volume(path)
    rng = np.random.default_rng(0)
    for ijk in rng.uniform(-0.5, [29.5, 19.5, 11.5], size=(20, 3)):
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint(tuple(ijk)))
        ras_expected = lps * [-1, -1, 1]
        np.testing.assert_allclose(geometry.ijk_to_ras_points(ijk)[0], ras_expected, atol=1e-6)
        np.testing.assert_allclose(geometry.ras_to_ijk(ras_expected)[0], ijk, atol=1e-6)
    np.testing.assert_allclose(geometry.spacing_mm, [0.7, 1.3, 2.5], atol=1e-9)


def test_to_lps_round_trip():
    direction = DIRECTIONS["oblique"]
    geometry = ImageGeometry.from_lps((0.7, 1.3, 2.5), (10, -20, 5), direction, (12, 20, 30))
    spacing, origin, direction_out = geometry.to_lps()
    np.testing.assert_allclose(spacing, (0.7, 1.3, 2.5))
    np.testing.assert_allclose(origin, (10, -20, 5))
    np.testing.assert_allclose(np.reshape(direction_out, (3, 3)), direction, atol=1e-12)


def test_slice_axes_cut_the_expected_planes():
    volume = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # (k, j, i)
    axial, coronal, sagittal = SliceAxes(2), SliceAxes(1), SliceAxes(0)
    assert axial.take(volume, 3).shape == (5, 6)  # rows j, columns i
    assert coronal.take(volume, 2).shape == (4, 6)  # rows k, columns i
    assert sagittal.take(volume, 1).shape == (4, 5)  # rows k, columns j
    assert (axial.x_axis, axial.y_axis) == (0, 1)
    assert (sagittal.x_axis, sagittal.y_axis) == (1, 2)
    xy, position = coronal.split(np.array([[1.0, 2.0, 3.0]]))
    assert xy.tolist() == [[1.0, 3.0]] and position.tolist() == [2.0]
    with pytest.raises(SamFusionError, match="slice axis"):
        SliceAxes(3)


def test_box_corners_in_any_order_give_the_same_box():
    expected = [10, 20, 30, 40]
    for box in ([10, 20, 30, 40], [30, 40, 10, 20], [10, 40, 30, 20], [30, 20, 10, 40]):
        assert normalize_box(box).tolist() == expected


def test_rotated_roi_corners():
    axes = rotation([0, 0, 1], 90)
    corners = roi_corners_ras([1, 2, 3], [4, 2, 6], axes)
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(0), [0, 0, 0], atol=1e-9)  # the 4 mm edge now runs along A
    np.testing.assert_allclose(corners.max(0), [2, 4, 6], atol=1e-9)


def test_pixel_bounds_are_pixel_edges():
    check_pixel_inside(np.array([[-0.5, -0.5], [9.5, 4.5]]), height=5, width=10)
    with pytest.raises(SamFusionError, match=r"\(10.6, 2\) lies outside the 10x5 image"):
        check_pixel_inside(np.array([[10.6, 2]]), height=5, width=10)
