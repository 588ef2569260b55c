"""One resolution level of the registration: the fixed image's maps pooled to the level's pixel
factor, the moving maps to sample, and the warp of the moving maps through a ``Transform2D``,
with its gradient.

Maps are (H, W) float arrays (soft masks, standardised images) on their ``Grid2D``; sample points
are physical (ITK frame); stacks of maps are (C, H, W) float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.registration.match_loss import sobel
from SAMFusionLib.registration.transforms2d import Transform2D, cubic_weights


def average_pooled(image: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> (ceil(H / factor), ceil(W / factor)): the mean of each factor x factor block; the
    blocks cut by the image's bottom and right edges average the pixels they hold."""
    if factor == 1:
        return np.asarray(image, np.float32)
    height, width = image.shape
    rows, columns = -(-height // factor), -(-width // factor)
    padded = np.zeros((rows * factor, columns * factor), np.float64)
    counts = np.zeros_like(padded)
    padded[:height, :width] = image
    counts[:height, :width] = 1
    blocks = (rows, factor, columns, factor)
    return (padded.reshape(blocks).sum((1, 3)) / counts.reshape(blocks).sum((1, 3))).astype(np.float32)


def bilinear_quads(stack: np.ndarray) -> np.ndarray:
    """(C, H, W) maps -> (H * W, C * 4) float32: for each pixel's cell (the pixel and its right,
    lower and lower-right neighbours, the edge repeated beyond the image), the bilinear
    interpolant's coefficients v00, v01 - v00, v10 - v00, v11 - v10 - v01 + v00, so that a sample
    at (x0 + fx, y0 + fy) is v00 + fx b + fy (c + fx d) and reads one row."""
    padded = np.pad(stack, ((0, 0), (0, 1), (0, 1)), mode="edge")
    v00, v01, v10, v11 = padded[:, :-1, :-1], padded[:, :-1, 1:], padded[:, 1:, :-1], padded[:, 1:, 1:]
    quads = np.stack([v00, v01 - v00, v10 - v00, v11 - v10 - v01 + v00], -1)  # (C, H, W, 4)
    channels, height, width, _ = quads.shape
    return np.ascontiguousarray(quads.transpose(1, 2, 0, 3).reshape(height * width, channels * 4), np.float32)


@dataclass
class Warped:
    """The moving maps sampled at a level's fixed points, and what their gradient needs.

    ``maps`` (C, H, W); ``exposure`` (H, W) weight of the samples for the intensity term, or None
    where it counts all; the rest is kept for ``Level.backward``.
    """

    maps: np.ndarray
    exposure: np.ndarray | None
    points: tuple[np.ndarray, np.ndarray]  # (N,) each: the physical x and y sampled through A, b (displaced where non-rigid)
    nonrigid: bool
    slopes: tuple[np.ndarray, np.ndarray]  # (C, N) each: d map / d x and d y (moving index) at each sample, 0 where clamped
    exposure_slopes: tuple[np.ndarray, np.ndarray] | None  # (N,) each: d exposure / d x and d y


class Level:
    """Maps of one resolution level: fixed maps on a coarse grid, moving maps to sample.

    ``exposed`` is the moving image's exposed rectangle (x0, x1, y0, y1), inclusive pixel indices.
    ``warp`` weighs each fixed pixel by how far its sample lies inside it (1 inside, 0 a pixel or
    more outside, linear between, like a bilinear sampling of a 0/1 image; differentiable).
    """

    def __init__(self, factor: int, fixed_maps, moving_maps, fixed_grid: Grid2D, moving_grid: Grid2D,
                 exposed: tuple[int, int, int, int], radius_mm: float, control_shape: tuple[int, int] = (10, 10)):
        import cv2

        self.fixed = [average_pooled(m, factor) for m in fixed_maps]
        self.fixed_gradients = [sobel(m) for m in self.fixed]  # constant: computed once, not at every iteration
        height, width = self.fixed[0].shape
        ys, xs = np.mgrid[0:height, 0:width].astype(float)
        index = np.c_[xs.ravel(), ys.ravel()] * factor + (factor - 1) / 2.0
        self.shape = (height, width)
        points = fixed_grid.to_physical(index)
        self.points_x, self.points_y = np.ascontiguousarray(points[:, 0]), np.ascontiguousarray(points[:, 1])
        full_height, full_width = fixed_grid.shape_hw
        self.weights_y = cubic_weights(ys[:, 0] * factor + (factor - 1) / 2.0, full_height, control_shape[0])
        self.weights_x = cubic_weights(xs[0] * factor + (factor - 1) / 2.0, full_width, control_shape[1])
        sigma = max(0.0, 0.5 * factor * fixed_grid.spacing.mean() / moving_grid.spacing.mean())
        moving = np.stack([cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0.3 else m for m in moving_maps]).astype(np.float32)
        self.channels = len(moving)
        self.quads = bilinear_quads(moving)
        self.exposed = exposed
        self.collimated = exposed != (0, moving_grid.shape_hw[1] - 1, 0, moving_grid.shape_hw[0] - 1)
        self.to_moving_index = np.linalg.inv(moving_grid.index_to_physical_matrix)
        self.moving_origin = np.asarray(moving_grid.origin, float)
        self.moving_hw = moving_grid.shape_hw
        self.radius_mm = radius_mm  # the mask maps' clipping radius at this level

    def _moving_index(self, transform: Transform2D, points: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float32 continuous x and y pixel indices in the moving image of the (N,) physical
        ``points`` x and y (the level's points, displaced where non-rigid): index = M (A q + b - origin),
        ``transform.affine()`` folded into M, the moving grid's physical -> index matrix."""
        with np.errstate(invalid="ignore", over="ignore"):  # a diverging trial step: handled below
            matrix, offset = transform.affine()
            matrix, shift = self.to_moving_index @ matrix, self.to_moving_index @ (offset - self.moving_origin)
            index = [matrix[row, 0] * points[0] + matrix[row, 1] * points[1] + shift[row] for row in range(2)]
        # Non-finite or huge coordinates (a diverging step) sample the border like any point beyond it.
        return tuple(np.nan_to_num(i, nan=-1e6, posinf=1e6, neginf=-1e6).astype(np.float32) for i in index)

    def warp(self, transform: Transform2D, nonrigid: bool) -> Warped:
        """The moving maps sampled (bilinear, the border value beyond it) at the level's fixed points.

        The non-rigid field counts only pixels the moving image shows: outside, the border-padded
        samples are streaks whose gradients the field would chase (it wandered up to 18 mm on an
        affine case). The linear stages keep them, unless a collimator frames the image (its edge
        would pull): their few parameters cannot chase streaks, and weighting there made 3 of 16
        phantom pipelines worse: 1.1, 1.1, 3.3 -> 3.5, 6.3, 8.8 mm.
        """
        points = (self.points_x, self.points_y)
        if nonrigid:
            displacement = transform.displacement_on_lattice(self.weights_y, self.weights_x)
            points = (points[0] + displacement[:, 0], points[1] + displacement[:, 1])
        x, y = self._moving_index(transform, points)
        height, width = self.moving_hw
        # Border padding: a sample beyond the image reads its edge, and does not move with the point.
        cx, cy = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
        x0, y0 = cx.astype(np.int32), cy.astype(np.int32)
        fx, fy = cx - x0, cy - y0
        # One gather of each sample's cell, (C, 4, N): value, x step, y step, cross term.
        cell = np.take(self.quads, y0 * width + x0, axis=0).T.reshape(self.channels, 4, -1)
        maps = (cell[:, 0] + fx * cell[:, 1] + fy * (cell[:, 2] + fx * cell[:, 3])).reshape(self.channels, *self.shape)
        slopes = ((cell[:, 1] + fy * cell[:, 3]) * ((x >= 0) & (x <= width - 1)),
                  (cell[:, 2] + fx * cell[:, 3]) * ((y >= 0) & (y <= height - 1)))
        if not (nonrigid or self.collimated):
            return Warped(maps, None, points, nonrigid, slopes, None)
        x0e, x1e, y0e, y1e = self.exposed
        ramps = np.stack([x - x0e + 1, x1e + 1 - x, y - y0e + 1, y1e + 1 - y])
        clamped = np.clip(ramps, 0, 1)
        live = (ramps > 0) & (ramps < 1)
        weight = clamped.prod(0)
        wx, wy = clamped[0] * clamped[1], clamped[2] * clamped[3]
        exposure_slopes = ((live[0] * clamped[1] - clamped[0] * live[1]) * wy, (live[2] * clamped[3] - clamped[2] * live[3]) * wx)
        return Warped(maps, weight.reshape(self.shape), points, nonrigid, slopes, exposure_slopes)

    def backward(self, transform: Transform2D, warped: Warped, grad_maps: np.ndarray,
                 grad_exposure: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The gradient with respect to the transform's parameters, given the loss's gradient with
        respect to the warped maps (C, H, W) and to the exposure weight (H, W)."""
        grad_maps = grad_maps.reshape(len(grad_maps), -1)
        grad_index = [(grad_maps * slope).sum(0) for slope in warped.slopes]  # d loss / d x, d y index
        if grad_exposure is not None and warped.exposure_slopes is not None:
            grad_index = [g + grad_exposure.ravel() * slope for g, slope in zip(grad_index, warped.exposure_slopes)]
        grad_index = np.stack(grad_index).astype(np.float64)  # (2, N)
        # index = M (A (q - c) + c + t - origin) with q = p + d: the chain rule through M, then A.
        grad_moved = self.to_moving_index.T @ grad_index  # (2, N), with respect to the moving physical point
        px, py = warped.points
        relative = np.stack([px - transform.center[0], py - transform.center[1]])  # (2, N)
        grad_matrix = grad_moved @ relative.T
        grad_lattice = None
        if warped.nonrigid:
            grad_lattice = (transform.matrix().T @ grad_moved).reshape(2, *self.shape)
        return transform.backward(grad_matrix, grad_moved.sum(1), grad_lattice, self.weights_y, self.weights_x)
