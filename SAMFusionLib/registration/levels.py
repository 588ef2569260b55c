"""One resolution level of the registration: the fixed image's maps pooled to the level's pixel
factor, the moving maps to sample, and the warp of the moving maps through a ``Transform2D``.

Maps are (H, W) float arrays (soft masks, standardised images) on their ``Grid2D``; sample points
are physical (ITK frame); tensors are torch (1, C, H, W).
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.imaging.grid2d import Grid2D
from SAMFusionLib.registration.match_loss import sobel
from SAMFusionLib.registration.transforms2d import Transform2D, cubic_weights


class Level:
    """Maps of one resolution level: fixed maps on a coarse grid, moving maps to sample.

    ``exposed`` is the moving image's exposed rectangle (x0, x1, y0, y1), inclusive pixel indices.
    ``warp`` weighs each fixed pixel by how far its sample lies inside it (1 inside, 0 a pixel or
    more outside, linear between, like a bilinear sampling of a 0/1 image; differentiable).
    """

    def __init__(self, factor: int, fixed_maps, moving_maps, fixed_grid: Grid2D, moving_grid: Grid2D,
                 exposed: tuple[int, int, int, int], radius_mm: float, control_shape: tuple[int, int] = (10, 10), device="cpu"):
        import cv2
        import torch
        import torch.nn.functional as F

        self.fixed = [F.avg_pool2d(torch.as_tensor(m, device=device)[None, None], factor, ceil_mode=True) for m in fixed_maps]
        self.fixed_gradients = [sobel(m) for m in self.fixed]  # constant: computed once, not at every iteration
        height, width = self.fixed[0].shape[-2:]
        ys, xs = np.mgrid[0:height, 0:width].astype(float)
        index = np.c_[xs.ravel(), ys.ravel()] * factor + (factor - 1) / 2.0
        self.shape = (height, width)
        self.points = torch.as_tensor(fixed_grid.to_physical(index), dtype=torch.float64, device=device)
        full_height, full_width = fixed_grid.shape_hw
        self.weights_y = cubic_weights(ys[:, 0] * factor + (factor - 1) / 2.0, full_height, control_shape[0]).to(device)
        self.weights_x = cubic_weights(xs[0] * factor + (factor - 1) / 2.0, full_width, control_shape[1]).to(device)
        sigma = max(0.0, 0.5 * factor * fixed_grid.spacing.mean() / moving_grid.spacing.mean())
        # One (1, C, H, W) stack: a single sampling (and its backward) serves all moving maps.
        self.moving = torch.as_tensor(np.stack([cv2.GaussianBlur(m, (0, 0), sigma) if sigma > 0.3 else m for m in moving_maps]), device=device)[None]
        self.exposed = exposed
        self.collimated = exposed != (0, moving_grid.shape_hw[1] - 1, 0, moving_grid.shape_hw[0] - 1)
        to_index = np.linalg.inv(moving_grid.index_to_physical_matrix)
        self.to_moving_index = torch.as_tensor(to_index, dtype=torch.float64, device=device)
        self.moving_origin = torch.as_tensor(moving_grid.origin, dtype=torch.float64, device=device)
        self.moving_hw = moving_grid.shape_hw
        self.radius_mm = radius_mm  # the mask maps' clipping radius at this level

    def warp(self, transform: Transform2D, nonrigid: bool) -> tuple[list, object]:
        """The moving maps sampled at the level's fixed points, each (1, 1, H, W), and the exposure
        weight (1, 1, H, W) of those samples for the intensity term, or None where it counts all.

        The non-rigid field counts only pixels the moving image shows: outside, the border-padded
        samples are streaks whose gradients the field would chase (it wandered up to 18 mm on an
        affine case). The linear stages keep them, unless a collimator frames the image (its edge
        would pull): their few parameters cannot chase streaks, and weighting there made 3 of 16
        phantom pipelines worse: 1.1, 1.1, 3.3 -> 3.5, 6.3, 8.8 mm.
        """
        import torch
        import torch.nn.functional as F

        displacement = transform.displacement_on_lattice(self.weights_y, self.weights_x) if nonrigid else None
        moved = transform(self.points, nonrigid=nonrigid, displacement=displacement)
        index = ((moved - self.moving_origin) @ self.to_moving_index.T).float()
        height, width = self.moving_hw
        x, y = index[:, 0], index[:, 1]
        sample = torch.stack([2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1], -1).reshape(1, *self.shape, 2)
        # grid_sample's CPU kernel crashes the process (a segfault, found by the fuzz suite) on huge,
        # infinite or NaN coordinates (pytorch/pytorch#24823). Beyond the border, border padding samples
        # the edge whatever the distance, so bounding the coordinates changes no value or gradient.
        sample = torch.nan_to_num(sample, nan=2.0, posinf=2.0, neginf=-2.0).clamp(-2.0, 2.0)
        stack = F.grid_sample(self.moving, sample, mode="bilinear", padding_mode="border", align_corners=True)
        if not (nonrigid or self.collimated):
            return list(stack.split(1, dim=1)), None
        x0, x1, y0, y1 = self.exposed
        weight = ((x - x0 + 1).clamp(0, 1) * (x1 + 1 - x).clamp(0, 1) * (y - y0 + 1).clamp(0, 1) * (y1 + 1 - y).clamp(0, 1))
        return list(stack.split(1, dim=1)), weight.reshape(1, 1, *self.shape)
