"""A 2D image placed in 3D RAS: the X-ray, a CT projection, a fused result.

Slicer shows a 2D image as a single-slice volume; its IJK->RAS matrix places the pixel grid in
3D. Registration works in a 2D physical frame per image (``Grid2D``). ``Plane`` links the two:

- in-plane unit axes ``x_ras`` (along columns) and ``y_ras`` (along rows), normal n = x x y;
- the 2D frame's coordinates of a RAS point p are (u, v) = (p . x, p . y), and its offset from the
  plane is w = p . n - depth, where depth = origin . n;
- so the 2D frame is the RAS frame rotated by R = [x y n]: no translation, no scaling.

A 2D transform T (fixed frame -> moving frame, ITK's resampling direction) between two planes
then becomes the 3D map  p -> R_m T3 R_f^T p, where T3 applies T to (u, v) and moves w from the
fixed plane's depth to the moving one's (``linear_from_fixed_ras``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.grid2d import Grid2D

# Slice axes must be orthogonal to this tolerance (cosine of the angle between them).
ORTHOGONAL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Plane:
    """Attributes:
    shape_hw: (rows, columns).
    spacing_mm: (2,) column spacing, row spacing.
    origin_ras: (3,) centre of pixel (0, 0).
    x_ras, y_ras: (3,) unit vectors along increasing column and increasing row.
    """

    shape_hw: tuple[int, int]
    spacing_mm: np.ndarray
    origin_ras: np.ndarray
    x_ras: np.ndarray
    y_ras: np.ndarray

    @staticmethod
    def from_geometry(geometry: ImageGeometry) -> Plane:
        """The plane of a single-slice volume's geometry (shape (1, rows, columns))."""
        if geometry.shape_kji[0] != 1:
            raise SamFusionError(f"a 2D image must have exactly one slice, got {geometry.shape_kji[0]}")
        columns = geometry.ijk_to_ras[:3, 0]
        rows = geometry.ijk_to_ras[:3, 1]
        spacing = np.array([np.linalg.norm(columns), np.linalg.norm(rows)])
        if np.any(spacing <= 0):
            raise SamFusionError("the 2D image has a zero pixel spacing")
        x_ras, y_ras = columns / spacing[0], rows / spacing[1]
        if abs(float(x_ras @ y_ras)) > ORTHOGONAL_TOLERANCE:
            raise SamFusionError("the 2D image's row and column axes are not orthogonal (sheared geometry)")
        return Plane(tuple(geometry.shape_kji[1:]), spacing, geometry.ijk_to_ras[:3, 3].copy(), x_ras, y_ras)

    @property
    def normal_ras(self) -> np.ndarray:
        return np.cross(self.x_ras, self.y_ras)

    @property
    def depth_mm(self) -> float:
        """Signed distance of the plane from the RAS origin along its normal."""
        return float(self.origin_ras @ self.normal_ras)

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) R = [x y n]: columns are the frame's axes in RAS."""
        return np.c_[self.x_ras, self.y_ras, self.normal_ras]

    def geometry(self) -> ImageGeometry:
        """The single-slice volume geometry (1, rows, columns); the slice axis is the unit normal."""
        ijk_to_ras = np.eye(4)
        ijk_to_ras[:3, 0] = self.x_ras * self.spacing_mm[0]
        ijk_to_ras[:3, 1] = self.y_ras * self.spacing_mm[1]
        ijk_to_ras[:3, 2] = self.normal_ras
        ijk_to_ras[:3, 3] = self.origin_ras
        return ImageGeometry(ijk_to_ras, (1, *self.shape_hw))

    def grid(self) -> Grid2D:
        """The 2D physical frame used by registration: (u, v) = (p . x, p . y), identity direction."""
        origin = np.array([self.origin_ras @ self.x_ras, self.origin_ras @ self.y_ras])
        return Grid2D(tuple(self.shape_hw), self.spacing_mm.astype(float), origin, np.eye(2))

    def ras_to_pixel(self, points_ras: np.ndarray, tolerance_mm: float | None = None) -> np.ndarray:
        """(N, 3) RAS points -> (N, 2) continuous pixel (x = column, y = row).

        Raises when a point lies farther than ``tolerance_mm`` (default: half the mean pixel
        size) from the plane: such a prompt was placed on some other image.
        """
        points = np.atleast_2d(np.asarray(points_ras, float))
        offset = points - self.origin_ras
        off_plane = np.abs(offset @ self.normal_ras)
        tolerance = 0.5 * float(self.spacing_mm.mean()) if tolerance_mm is None else tolerance_mm
        if np.any(off_plane > tolerance):
            worst = int(np.argmax(off_plane))
            raise SamFusionError(f"prompt {worst + 1} lies {off_plane[worst]:.1f} mm off the X-ray's plane (allowed {tolerance:.1f} mm)")
        return np.c_[offset @ self.x_ras / self.spacing_mm[0], offset @ self.y_ras / self.spacing_mm[1]]

    def pixel_to_ras(self, points_xy: np.ndarray) -> np.ndarray:
        """(N, 2) pixel (x, y) -> (N, 3) RAS points on the plane."""
        points = np.atleast_2d(np.asarray(points_xy, float))
        return self.origin_ras + np.outer(points[:, 0] * self.spacing_mm[0], self.x_ras) + np.outer(points[:, 1] * self.spacing_mm[1], self.y_ras)


def linear_from_fixed_ras(fixed: Plane, moving: Plane, matrix_2d: np.ndarray, translation_2d: np.ndarray) -> np.ndarray:
    """(4, 4) RAS map: fixed plane points -> moving plane points, for the 2D affine u' = M u + t.

    The out-of-plane offset w is kept, so the map is defined (and invertible) in all of 3D.
    """
    frame = np.eye(4)
    frame[:2, :2] = matrix_2d
    frame[:2, 3] = translation_2d
    frame[2, 3] = moving.depth_mm - fixed.depth_mm
    to_fixed_frame = np.eye(4)
    to_fixed_frame[:3, :3] = fixed.rotation.T
    from_moving_frame = np.eye(4)
    from_moving_frame[:3, :3] = moving.rotation
    return from_moving_frame @ frame @ to_fixed_frame
