"""Physical geometry of 2D images in ITK's own frame (no RAS flip: registration stays in ITK space).

Index (x = column, y = row) -> physical p = origin + D diag(spacing) (x, y), as SimpleITK defines it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError


@dataclass(frozen=True)
class Grid2D:
    shape_hw: tuple[int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray

    @staticmethod
    def from_sitk(image) -> Grid2D:
        if image.GetDimension() != 2:
            raise SamFusionError(f"expected a 2D image, got {image.GetDimension()}D")
        width, height = image.GetSize()
        return Grid2D((height, width), np.array(image.GetSpacing(), float), np.array(image.GetOrigin(), float),
                      np.array(image.GetDirection(), float).reshape(2, 2))

    @staticmethod
    def isotropic(shape_hw: tuple[int, int], spacing_mm: float) -> Grid2D:
        return Grid2D(tuple(shape_hw), np.array([spacing_mm, spacing_mm]), np.zeros(2), np.eye(2))

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        return self.direction @ np.diag(self.spacing)

    def to_physical(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) continuous indices (x, y) -> (N, 2) physical points."""
        return np.atleast_2d(xy) @ self.index_to_physical_matrix.T + self.origin

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) physical points -> (N, 2) continuous indices (x, y)."""
        return (np.atleast_2d(points) - self.origin) @ np.linalg.inv(self.index_to_physical_matrix).T

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical axis-aligned bounding box (min, max) of the pixel area."""
        height, width = self.shape_hw
        corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5]])
        physical = self.to_physical(corners)
        return physical.min(0), physical.max(0)

    def with_shape(self, shape_hw: tuple[int, int]) -> Grid2D:
        """The grid of ``shape_hw`` pixels over the same physical extent: the new pixels tile the old
        image edge to edge, so spacing grows by W / W' (and H / H') and the first pixel centre moves
        by half the growth."""
        height, width = self.shape_hw
        growth = np.array([width / shape_hw[1], height / shape_hw[0]])
        return Grid2D(tuple(shape_hw), self.spacing * growth, self.origin + self.direction @ (self.spacing * (growth - 1) / 2), self.direction)

    def apply_to(self, image) -> None:
        """Give a SimpleITK 2D image this geometry."""
        image.SetSpacing(tuple(float(s) for s in self.spacing))
        image.SetOrigin(tuple(float(o) for o in self.origin))
        image.SetDirection(tuple(float(d) for d in self.direction.ravel()))


def resample_onto(image: np.ndarray, grid: Grid2D, target: Grid2D, transform, nearest: bool = False) -> np.ndarray:
    """(H, W) ``image`` on ``grid`` resampled onto ``target`` through ``transform`` (a SimpleITK
    transform mapping target points to ``grid`` points, ITK's resampling direction); linear, or
    nearest for masks; 0 outside. The result keeps the image's dtype."""
    import SimpleITK as sitk

    source = sitk.GetImageFromArray(np.ascontiguousarray(image))
    grid.apply_to(source)
    reference = sitk.Image(target.shape_hw[1], target.shape_hw[0], source.GetPixelID())
    target.apply_to(reference)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.GetArrayFromImage(sitk.Resample(source, reference, transform, interpolator, 0.0))


def downsampled(image: np.ndarray, grid: Grid2D, max_side: int, mask: bool = False) -> tuple[np.ndarray, Grid2D]:
    """An (H, W) image (or bool mask) area-averaged so that its longer side is at most ``max_side``
    pixels, with the grid that covers the same physical extent (as it is, when already small enough).

    The grid is ``Grid2D.with_shape``'s. A mask keeps the pixels at least half covered (or, for a
    target smaller than one new pixel, those it touches).
    """
    import cv2

    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image, grid
    scale = max(height, width) / max_side
    new_width, new_height = max(1, round(width / scale)), max(1, round(height / scale))
    coarse = grid.with_shape((new_height, new_width))
    resized = cv2.resize(np.asarray(image, np.float32), (new_width, new_height), interpolation=cv2.INTER_AREA)
    if not mask:
        return resized, coarse
    kept = resized >= 0.5
    return (kept if kept.any() else resized > 0), coarse
