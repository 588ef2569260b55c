"""The prompts as shapes on the registration planes."""

from __future__ import annotations

import numpy as np

from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.plane import Plane
from SAMFusionLib.registration.prompt_shapes import inscribed_ellipse, prompt_box_masks, to_fixed_plane
from SAMFusionLib.registration.radiograph import Radiograph


def test_inscribed_ellipse_touches_the_box_and_stays_inside():
    mask = inscribed_ellipse((60, 80), np.array([50.0, 40.0, 10.0, 20.0]))  # corners in either order
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 50, 20, 40)
    area = np.pi * 20.5 * 10.5  # semi-axes 20 and 10 px, boundary pixels included
    assert abs(mask.sum() - area) < 0.03 * area


def test_a_roi_projects_onto_the_fixed_plane_where_its_corners_lie():
    # An axial-free plane: a coronal 2D image at y = 5 mm, x to the left, y (rows) down in z.
    geometry = ImageGeometry(np.array([[-2.0, 0, 0, 100.0], [0, 0, 1.0, 5.0], [0, -2.0, 0, 80.0], [0, 0, 0, 1]]), (1, 50, 60))
    plane = Plane.from_geometry(geometry)
    fixed = Radiograph(np.zeros((50, 60), np.float32), np.zeros((50, 60), bool), plane, geometry)
    corners = np.array([[80.0, -30.0, 60.0], [60.0, 40.0, 40.0]])  # x 60..80, z 40..60: columns 10..20, rows 10..20
    np.testing.assert_allclose(plane.grid().to_index(to_fixed_plane(corners, plane)), [[10.0, 10.0], [20.0, 20.0]])
    shapes = prompt_box_masks(corners, np.array([5.0, 6.0, 25.0, 16.0]), fixed, (30, 40))
    assert shapes is not None
    ys, xs = np.nonzero(shapes[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 20, 10, 20)
    assert shapes[1].shape == (30, 40) and shapes[1][11, 15]
    assert prompt_box_masks(None, np.array([5.0, 6.0, 25.0, 16.0]), fixed, (30, 40)) is None  # no CT ROI, no fallback
    assert prompt_box_masks(corners, None, fixed, (30, 40)) is None
