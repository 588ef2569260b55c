"""Image geometry: voxel indices (IJK) <-> physical RAS, and prompts -> pixel coordinates.

Conventions (see the design card):
- Slicer and the prompts are RAS; ITK/SimpleITK and DICOM are LPS. ``lps_to_ras`` is the single
  place where the two meet.
- numpy arrays of volumes are indexed (k, j, i) = (slice, row, column).
- 2D pixel prompts are x = column, y = row, with integer values at pixel centres (SAM's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError

# Flips the first two axes: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class ImageGeometry:
    """Where a voxel grid lies in physical RAS space.

    Attributes:
        ijk_to_ras: (4, 4) float64 homogeneous matrix mapping continuous voxel indices (i, j, k) to
            RAS millimetres. Integer indices are voxel centres.
        shape_kji: the array shape (k, j, i), i.e. (slices, rows, columns).
    """

    ijk_to_ras: np.ndarray
    shape_kji: tuple[int, int, int]

    @staticmethod
    def from_lps(
        spacing_mm: tuple[float, float, float],
        origin_lps: tuple[float, float, float],
        direction_lps: np.ndarray | tuple[float, ...],
        shape_kji: tuple[int, int, int],
    ) -> ImageGeometry:
        """Build from ITK-style metadata (LPS origin, 3x3 direction as 9 numbers or a matrix)."""
        direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction @ np.diag(np.asarray(spacing_mm, dtype=float))
        ijk_to_lps[:3, 3] = np.asarray(origin_lps, dtype=float)
        return ImageGeometry(LPS_TO_RAS @ ijk_to_lps, tuple(int(n) for n in shape_kji))

    @property
    def spacing_mm(self) -> np.ndarray:
        """(3,) voxel size along i, j, k in millimetres."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    def to_lps(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """(spacing_mm, origin_lps, direction_lps as 9 numbers row-major), for SimpleITK."""
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        spacing = self.spacing_mm
        direction = ijk_to_lps[:3, :3] / spacing
        return tuple(spacing), tuple(ijk_to_lps[:3, 3]), tuple(direction.ravel())

    def ras_to_ijk(self, points_ras: np.ndarray) -> np.ndarray:
        """Map (N, 3) RAS points to (N, 3) continuous (i, j, k) indices."""
        points = np.atleast_2d(np.asarray(points_ras, dtype=float))
        homogeneous = np.c_[points, np.ones(len(points))]
        return (np.linalg.inv(self.ijk_to_ras) @ homogeneous.T).T[:, :3]

    def ijk_to_ras_points(self, points_ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous (i, j, k) indices to (N, 3) RAS points."""
        points = np.atleast_2d(np.asarray(points_ijk, dtype=float))
        homogeneous = np.c_[points, np.ones(len(points))]
        return (self.ijk_to_ras @ homogeneous.T).T[:, :3]

    def contains_ijk(self, points_ijk: np.ndarray, margin: float = 0.5) -> np.ndarray:
        """(N,) bool: whether each continuous index lies inside the grid (voxel edges +- margin)."""
        points = np.atleast_2d(points_ijk)
        upper = np.array(self.shape_kji[::-1], dtype=float) - 1.0
        return np.all((points >= -margin) & (points <= upper + margin), axis=1)


@dataclass(frozen=True)
class SliceAxes:
    """How a 2D slice is cut from a (k, j, i) array along one IJK axis.

    ``normal`` is the IJK axis index the slices are taken along (0 = i, 1 = j, 2 = k). The
    remaining two axes, in increasing order, become the slice's x (columns) and y (rows).
    """

    normal: int

    def __post_init__(self) -> None:
        if self.normal not in (0, 1, 2):
            raise SamFusionError(f"slice axis must be 0 (i), 1 (j) or 2 (k), got {self.normal}")

    @property
    def x_axis(self) -> int:
        return [a for a in (0, 1, 2) if a != self.normal][0]

    @property
    def y_axis(self) -> int:
        return [a for a in (0, 1, 2) if a != self.normal][1]

    def numpy_axis(self) -> int:
        """The numpy axis of a (k, j, i) array that this IJK axis indexes."""
        return 2 - self.normal

    def count(self, shape_kji: tuple[int, int, int]) -> int:
        return shape_kji[self.numpy_axis()]

    def take(self, array_kji: np.ndarray, index: int) -> np.ndarray:
        """The (rows, columns) = (y, x) slice at ``index``."""
        return np.take(array_kji, index, axis=self.numpy_axis())

    def put(self, array_kji: np.ndarray, index: int, slice_yx: np.ndarray) -> None:
        """Write a (rows, columns) slice back into the volume in place."""
        selector = [slice(None)] * 3
        selector[self.numpy_axis()] = index
        array_kji[tuple(selector)] = slice_yx

    def split(self, points_ijk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split (N, 3) continuous IJK into ((N, 2) pixel xy, (N,) continuous slice position)."""
        points = np.atleast_2d(points_ijk)
        return points[:, [self.x_axis, self.y_axis]], points[:, self.normal]


def normalize_box(box_xyxy: np.ndarray | list[float]) -> np.ndarray:
    """Return (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, whatever corner order was given."""
    box = np.asarray(box_xyxy, dtype=float).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise SamFusionError("a box needs 4 finite numbers: X0 Y0 X1 Y1")
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def clip_box(box_xyxy: np.ndarray | list[float], height: int, width: int) -> tuple[np.ndarray, bool]:
    """The box (x0, y0, x1, y1) clipped to an image of ``height`` x ``width``, and whether it was clipped.

    Pixel centres are integers, so the image spans [-0.5, width - 0.5] x [-0.5, height - 0.5]; a
    corner beyond that (an exclusive corner at ``width``, an ROI dragged past the edge) is pulled in
    to the outer pixel edge. A box with no area, or none left inside the image, is an error.
    """
    box = normalize_box(box_xyxy)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise SamFusionError(f"box ({box[0]:g}, {box[1]:g}, {box[2]:g}, {box[3]:g}) has no area")
    low, high = np.array([-0.5, -0.5]), np.array([width - 0.5, height - 0.5])
    clipped = np.r_[np.clip(box[:2], low, high), np.clip(box[2:], low, high)]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise SamFusionError(f"box ({box[0]:g}, {box[1]:g}, {box[2]:g}, {box[3]:g}) lies outside the {width}x{height} image")
    return clipped, bool(np.any(clipped != box))


def roi_corners_ras(center_ras: np.ndarray, size_mm: np.ndarray, axes_ras: np.ndarray | None = None) -> np.ndarray:
    """The 8 corners (8, 3) of an ROI box given its RAS centre, edge lengths and (3, 3) axis columns.

    ``axes_ras`` are the ROI's own unit axes as columns (Slicer's ROI may be rotated); identity
    when omitted.
    """
    axes = np.eye(3) if axes_ras is None else np.asarray(axes_ras, dtype=float)
    half = np.asarray(size_mm, dtype=float) / 2.0
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return np.asarray(center_ras, dtype=float) + (signs * half) @ axes.T


def check_pixel_inside(points_xy: np.ndarray, height: int, width: int, what: str = "prompt") -> None:
    """Raise if any (x, y) pixel coordinate lies outside an image of ``height`` x ``width``.

    Pixel centres are integers, so the image covers [-0.5, width - 0.5] x [-0.5, height - 0.5].
    """
    points = np.atleast_2d(np.asarray(points_xy, dtype=float))
    if points.size == 0:
        return
    if not np.all(np.isfinite(points)):
        raise SamFusionError(f"{what} has non-finite coordinates")
    outside = (points[:, 0] < -0.5) | (points[:, 0] > width - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > height - 0.5)
    if np.any(outside):
        x, y = points[np.argmax(outside)]
        raise SamFusionError(f"{what} ({x:g}, {y:g}) lies outside the {width}x{height} image")


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The index (x, y[, z]) of the mask voxel farthest from its border (numpy axes reversed)."""
    import SimpleITK as sitk

    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(sitk.GetImageFromArray(mask.astype(np.uint8)), insideIsPositive=True, useImageSpacing=False))
    return np.array(np.unravel_index(int(np.argmax(distance)), mask.shape)[::-1], float)


def box_of(mask: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) index corners (x, y[, z]) of the mask's bounding box, widened by ``margin``."""
    indices = np.argwhere(mask)[:, ::-1]
    return indices.min(0) - margin, indices.max(0) + margin
