"""X-ray-like copies of an image with known ground truth, for benchmarks, tests and the demo case.

- ``render_contrast``: a changed-contrast copy: for a CT projection an exponential (X-ray-like)
  rendering with either display polarity, else gamma and polarity; then blur and noise.
- ``random_transform``: a known transform T (fixed -> moving): rotation up to +-20 degrees, scale
  0.88-1.12, shear up to 0.08, translation up to +-8% of the size, optionally a smooth non-rigid
  displacement (up to 2.5% of the size); returned with its inverse (for ``grid2d.resample_onto``:
  the moving image on its own grid is moving(q) = source(T^-1(q))).
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.imaging.grid2d import Grid2D


def render_contrast(image: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """A changed-contrast copy: X-ray-like exponential rendering for the CT projection, else gamma."""
    import cv2

    normalised = image / 255.0
    if kind == "ct":
        transmission = np.exp(-rng.uniform(2.0, 4.0) * normalised)
        out = 1.0 - transmission if rng.random() < 0.5 else transmission
    else:
        out = normalised if rng.random() < 0.5 else 1.0 - normalised
    out = np.clip((out - out.min()) / (np.ptp(out) + 1e-9), 0, 1) ** rng.uniform(0.6, 1.6)
    out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.5, 1.5))
    out = out + rng.normal(0, 0.02, out.shape).astype(np.float32)
    return (255 * np.clip(out, 0, 1)).astype(np.float32)


def random_transform(grid: Grid2D, rng: np.random.Generator, nonrigid: bool):
    """(T fixed -> moving, T^-1) as SimpleITK transforms."""
    import cv2
    import SimpleITK as sitk

    height, width = grid.shape_hw
    extent = np.array([width, height]) * grid.spacing
    center = grid.to_physical(np.array([(width - 1) / 2, (height - 1) / 2]))[0]
    angle = np.radians(rng.uniform(-20, 20))
    scale = rng.uniform(0.88, 1.12, 2)
    shear = rng.uniform(-0.08, 0.08)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[scale[0], shear], [0, scale[1]]])
    affine = sitk.AffineTransform(2)
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetCenter(tuple(center))
    affine.SetTranslation(tuple(rng.uniform(-0.08, 0.08, 2) * extent))
    if not nonrigid:
        return affine, affine.GetInverse()
    field = rng.normal(0, 1, (6, 6, 2)).astype(np.float64)
    field = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    field *= 0.025 * extent.min() / np.abs(field).max()
    image = sitk.GetImageFromArray(field, isVector=True)
    grid.apply_to(image)
    inverse_field = sitk.InvertDisplacementField(image, maximumNumberOfIterations=50, maxErrorToleranceThreshold=0.01, meanErrorToleranceThreshold=0.001)
    forward = sitk.CompositeTransform(2)
    forward.AddTransform(affine)
    forward.AddTransform(sitk.DisplacementFieldTransform(image))  # applied first
    backward = sitk.CompositeTransform(2)
    backward.AddTransform(sitk.DisplacementFieldTransform(inverse_field))
    backward.AddTransform(affine.GetInverse())  # applied first
    return forward, backward
