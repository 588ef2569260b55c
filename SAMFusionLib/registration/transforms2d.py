"""A differentiable 2D transform, fixed physical point p -> moving physical point q (ITK's convention):

    q = A (p + d(p) - c) + c + t,    A = R(theta) [[e^(s + a), h], [0, e^(s - a)]]

c is the fixed mask's centroid. The stage chooses what may move: rigid (theta, t), similarity
(+ s), affine (+ a, h), non-rigid (+ d, a displacement on a coarse control grid over the fixed
image, upsampled bicubically, like a cubic B-spline).
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.grid2d import Grid2D

STAGES = ("rigid", "similarity", "affine", "nonrigid")
TRANSLATION_UNIT_MM = 10.0  # parameters are scaled so that all are of order 1 for the optimiser


def cubic_weights(index, length: int, knots: int):
    """(N, knots) float64 tensor: the weights by which ``displacement`` interpolates the control
    knots along one axis, at continuous pixel indices ``index`` (N,) of an axis ``length`` pixels
    long (knots span it end to end, like grid_sample's align_corners=True)."""
    import torch
    import torch.nn.functional as F

    index = torch.as_tensor(np.asarray(index, float), dtype=torch.float64)
    # Channel j holds column j of ones: sampling it reads the weight of knot j (the weights along
    # the other axis sum to 1, border knots included).
    basis = torch.eye(knots, dtype=torch.float64)[:, None, :].expand(knots, knots, knots)[None]
    u = 2 * index / max(length - 1, 1) - 1
    sample = torch.stack([u, torch.zeros_like(u)], dim=-1)[None, None]
    return F.grid_sample(basis, sample, mode="bicubic", padding_mode="border", align_corners=True)[0, :, 0].T


class Transform2D:
    def __init__(self, center: np.ndarray, translation: np.ndarray, angle: float = 0.0, log_scale: float = 0.0,
                 control_shape: tuple[int, int] = (8, 8)):
        import torch

        self.center = torch.as_tensor(np.asarray(center, float), dtype=torch.float64)
        self.params = {
            "theta": torch.tensor([angle], dtype=torch.float64),
            "t": torch.as_tensor(np.asarray(translation, float) / TRANSLATION_UNIT_MM, dtype=torch.float64).clone(),
            "s": torch.tensor([log_scale], dtype=torch.float64),
            "a": torch.zeros(1, dtype=torch.float64),
            "h": torch.zeros(1, dtype=torch.float64),
            "d": torch.zeros((1, 2, *control_shape), dtype=torch.float64),
        }

    def copy(self) -> Transform2D:
        """An independent copy (parameters cloned, detached), on the same device."""
        return self.to(self.center.device)

    def to(self, device) -> Transform2D:
        """An independent copy (parameters cloned, detached) on torch ``device``."""
        twin = Transform2D.__new__(Transform2D)
        twin.center = self.center.detach().to(device).clone()
        twin.params = {name: value.detach().to(device).clone() for name, value in self.params.items()}
        return twin

    def free(self, stage: str) -> list:
        """Set requires_grad for ``stage`` and return the free parameters."""
        if stage not in STAGES:
            raise SamFusionError(f"unknown transform {stage!r}: use {', '.join(STAGES)}")
        names = {"rigid": ["theta", "t"], "similarity": ["theta", "t", "s"], "affine": ["theta", "t", "s", "a", "h"],
                 "nonrigid": ["theta", "t", "s", "a", "h", "d"]}[stage]
        for name, value in self.params.items():
            value.requires_grad_(name in names)
        return [self.params[name] for name in names]

    def matrix(self):
        import torch

        p = self.params
        cos, sin = torch.cos(p["theta"]), torch.sin(p["theta"])
        rotation = torch.stack([torch.cat([cos, -sin]), torch.cat([sin, cos])])
        shape = torch.stack([torch.cat([torch.exp(p["s"] + p["a"]), p["h"]]), torch.cat([torch.zeros_like(p["h"]), torch.exp(p["s"] - p["a"])])])
        return rotation @ shape

    def translation_mm(self):
        return self.params["t"] * TRANSLATION_UNIT_MM

    def displacement(self, grid: Grid2D, xy_index):
        """(N, 2) displacement in mm at continuous fixed indices ``xy_index`` (N, 2) of ``grid``."""
        import torch
        import torch.nn.functional as F

        height, width = grid.shape_hw
        u = 2 * xy_index[:, 0] / max(width - 1, 1) - 1
        v = 2 * xy_index[:, 1] / max(height - 1, 1) - 1
        sample = torch.stack([u, v], dim=-1)[None, None]
        field = self.params["d"] * TRANSLATION_UNIT_MM
        # grid_sample of the control grid with bicubic weights = a cubic interpolation of the control displacements.
        return F.grid_sample(field, sample, mode="bicubic", padding_mode="border", align_corners=True)[0, :, 0].T

    def displacement_on_lattice(self, weights_y, weights_x):
        """(H * W, 2) displacement in mm on a lattice of fixed points, row-major (y, then x).

        ``weights_y`` (H, cy) and ``weights_x`` (W, cx) are ``cubic_weights`` of the lattice's rows and
        columns. Equal to ``displacement`` at those points, but separable: two small matrix
        products instead of a 2D bicubic sampling, which is what makes the non-rigid stage cheap.
        """
        field = (self.params["d"][0] * TRANSLATION_UNIT_MM).to(weights_x.dtype)  # (2, cy, cx)
        lattice = weights_y @ field @ weights_x.T  # (2, H, W)
        return lattice.reshape(2, -1).T

    def __call__(self, points, grid: Grid2D | None = None, xy_index=None, nonrigid: bool = False, displacement=None):
        """Map (N, 2) fixed physical points (torch float64) to moving physical points.
        ``displacement`` (N, 2): the non-rigid displacement at those points, when already known."""
        if nonrigid:
            points = points + (self.displacement(grid, xy_index) if displacement is None else displacement)
        return (points - self.center) @ self.matrix().T + self.center + self.translation_mm()

    def bending_energy(self):
        """Squared second differences of the control displacements (mm^2), a discrete bending penalty."""
        d = self.params["d"] * TRANSLATION_UNIT_MM
        dxx = d[..., :, 2:] - 2 * d[..., :, 1:-1] + d[..., :, :-2]
        dyy = d[..., 2:, :] - 2 * d[..., 1:-1, :] + d[..., :-2, :]
        return dxx.pow(2).mean() + dyy.pow(2).mean()

    def to_sitk(self, fixed: Grid2D, nonrigid: bool):
        """The SimpleITK transform (fixed -> moving): an AffineTransform, or a composite of the affine
        and a displacement field on the fixed grid, the field applied first."""
        import SimpleITK as sitk
        import torch

        model = self.to("cpu")  # SimpleITK and numpy read CPU tensors
        with torch.no_grad():
            affine = sitk.AffineTransform(2)
            affine.SetMatrix(tuple(model.matrix().numpy().ravel()))
            affine.SetCenter(tuple(model.center.numpy()))
            affine.SetTranslation(tuple(model.translation_mm().numpy()))
            if not nonrigid:
                return affine
            height, width = fixed.shape_hw
            ys, xs = np.mgrid[0:height, 0:width]
            index = torch.as_tensor(np.c_[xs.ravel(), ys.ravel()], dtype=torch.float64)
            field = model.displacement(fixed, index).numpy().reshape(height, width, 2)
        image = sitk.GetImageFromArray(field, isVector=True)
        fixed.apply_to(image)
        composite = sitk.CompositeTransform(2)
        composite.AddTransform(affine)
        # ITK applies a composite's transforms last-added first: the displacement acts on fixed points first.
        composite.AddTransform(sitk.DisplacementFieldTransform(image))
        return composite

    def summary(self) -> dict:
        import torch

        with torch.no_grad():
            return {
                "angle_deg": float(np.degrees(self.params["theta"].item())),
                "log_scale": float(self.params["s"].item()),
                "anisotropy": float(self.params["a"].item()),
                "shear": float(self.params["h"].item()),
                "translation_mm": [float(v) for v in self.translation_mm().cpu().numpy()],
                "max_displacement_mm": float((self.params["d"] * TRANSLATION_UNIT_MM).abs().max().item()),
            }
