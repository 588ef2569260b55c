"""Synthetic images and volumes with exact ground truth, for training, tests and the demo.

- ``scene_2d``: a random 2D image (CT-slice-like, X-ray-like or generic shapes) with the masks
  of its objects.
- ``ct_volume``: a seeded CT phantom in HU (body, fat, muscle, spine, ribs, two kidneys and
  stones) with its masks, on any geometry.
All sizes are in pixels/voxels unless a name says mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def blob_mask(shape: tuple[int, int], center_xy, radii_xy, angle_rad: float, rng: np.random.Generator, wobble: float = 0.15) -> np.ndarray:
    """(H, W) bool: a rotated ellipse whose radius wobbles with a few random harmonics."""
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs - center_xy[0], ys - center_xy[1]
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    u = (dx * cos + dy * sin) / max(radii_xy[0], 0.5)
    v = (-dx * sin + dy * cos) / max(radii_xy[1], 0.5)
    theta = np.arctan2(v, u)
    radius = np.ones_like(theta)
    for harmonic in range(2, 5):
        radius += wobble * rng.uniform(-1, 1) / harmonic * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    return (u * u + v * v) <= radius * radius


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """(H, W) float32 zero-mean, unit-std low-frequency texture (blurred white noise)."""
    import cv2

    noise = rng.standard_normal(shape).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), sigmaX=max(scale, 0.5))
    return (blurred - blurred.mean()) / (blurred.std() + 1e-6)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, noise and a random gamma; float image in ~[0, 1] -> (H, W) uint8."""
    import cv2

    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigmaX=rng.uniform(0.3, 1.2))
    image = image + rng.uniform(0.0, 0.05) * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def _ct_slice(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An axial abdomen-like slice: body, fat, spine, kidneys and small bright stones."""
    shape = (size, size)
    c = size / 2 + rng.uniform(-0.05, 0.05, 2) * size
    body = blob_mask(shape, c, (size * rng.uniform(0.38, 0.47), size * rng.uniform(0.28, 0.38)), rng.uniform(-0.1, 0.1), rng, 0.05)
    inner = blob_mask(shape, c, (size * 0.33, size * 0.24), 0.0, rng, 0.05) & body
    image = np.where(body, 0.35, 0.02) + np.where(inner, 0.13, 0.0) + 0.03 * smooth_noise(shape, rng, size / 40)
    spine = blob_mask(shape, (c[0], c[1] + size * 0.14), (size * 0.05, size * 0.05), 0, rng, 0.1)
    image = np.where(spine, rng.uniform(0.8, 1.0), image)
    objects = [body, spine]
    for side in (-1, 1):
        kc = (c[0] + side * size * rng.uniform(0.13, 0.18), c[1] + size * rng.uniform(0.02, 0.1))
        kidney = blob_mask(shape, kc, (size * rng.uniform(0.04, 0.07), size * rng.uniform(0.06, 0.1)), rng.uniform(-0.5, 0.5), rng)
        image = np.where(kidney, rng.uniform(0.55, 0.68), image)
        objects.append(kidney)
        for _ in range(rng.integers(0, 3)):
            ys, xs = np.nonzero(kidney)
            pick = rng.integers(len(xs))
            stone = blob_mask(shape, (xs[pick], ys[pick]), rng.uniform(1.5, 6, 2), rng.uniform(0, np.pi), rng, 0.2) & kidney
            if stone.sum() >= 4:
                image = np.where(stone, rng.uniform(0.85, 1.0), image)
                objects.append(stone)
    return image, objects


def _xray(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A chest-radiograph-like image: bright body, two dark lungs, a mediastinum, in either polarity."""
    shape = (size, size)
    image = 0.25 + 0.05 * smooth_noise(shape, rng, size / 20)
    body = blob_mask(shape, (size / 2, size * 0.55), (size * 0.45, size * 0.5), 0, rng, 0.05)
    image = np.where(body, 0.75, image)
    objects = [body]
    for side in (-1, 1):
        lc = (size / 2 + side * size * rng.uniform(0.17, 0.22), size * rng.uniform(0.45, 0.52))
        lung = blob_mask(shape, lc, (size * rng.uniform(0.12, 0.16), size * rng.uniform(0.22, 0.3)), side * rng.uniform(0, 0.15), rng, 0.1) & body
        image = np.where(lung, rng.uniform(0.2, 0.4) + 0.06 * smooth_noise(shape, rng, size / 60), image)
        objects.append(lung)
    if rng.random() < 0.5:
        image = 1.0 - image
    return image, objects


def _shapes(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random blobs of random size (3 px to half the image) and contrast on a textured background."""
    shape = (size, size)
    image = rng.uniform(0.2, 0.8) + 0.08 * smooth_noise(shape, rng, rng.uniform(2, size / 8))
    objects = []
    for _ in range(rng.integers(1, 6)):
        radius = size * np.exp(rng.uniform(np.log(0.012), np.log(0.3)))
        center = rng.uniform(radius, size - radius, 2)
        blob = blob_mask(shape, center, radius * rng.uniform(0.5, 1.0, 2), rng.uniform(0, np.pi), rng)
        level = np.clip(np.median(image[blob]) + rng.choice([-1, 1]) * rng.uniform(0.15, 0.5), 0, 1) if blob.any() else 0.5
        image = np.where(blob, level + 0.04 * smooth_noise(shape, rng, 2), image)
        objects = [o & ~blob for o in objects] + [blob]
    return image, objects


def scene_2d(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    """A random (size, size) uint8 image and the (size, size) bool masks of its visible objects."""
    kind = rng.choice(3, p=[0.4, 0.2, 0.4])
    image, objects = (_ct_slice, _xray, _shapes)[kind](rng, size)
    objects = [m for m in objects if m.sum() >= 6]
    return _finish(image, rng), objects


@dataclass
class CtPhantom:
    """A CT phantom: ``hu_kji`` (k, j, i) float32 HU and boolean masks by name on the same grid."""

    hu_kji: np.ndarray
    masks: dict[str, np.ndarray]
    stone_centers_ijk: list[tuple[float, float, float]]


def ct_volume(rng: np.random.Generator, shape_kji: tuple[int, int, int] = (40, 96, 96), stone_count: int = 2,
              kidney_hu: float = 30.0) -> CtPhantom:
    """A seeded abdominal CT phantom in HU, axial slices along k, voxel units (geometry is the caller's).

    Contents: air -1000, body (fat -100 around muscle 50), spine (700), ribs (600), two kidneys
    (ellipsoids, ``kidney_hu``: 30 without contrast, about 150-250 in a contrast-enhanced
    urographic phase) and ``stone_count`` stones (300-1500 HU, radius 1-3 voxels) inside them.
    """
    nk, nj, ni = shape_kji
    k, j, i = np.mgrid[0:nk, 0:nj, 0:ni].astype(np.float32)
    ck, cj, ci = nk / 2, nj / 2, ni / 2

    def ellipsoid(center, radii):
        return ((k - center[0]) / radii[0]) ** 2 + ((j - center[1]) / radii[1]) ** 2 + ((i - center[2]) / radii[2]) ** 2 <= 1

    body = ((j - cj) / (nj * 0.36)) ** 2 + ((i - ci) / (ni * 0.45)) ** 2 <= 1
    muscle = ((j - cj) / (nj * 0.3)) ** 2 + ((i - ci) / (ni * 0.38)) ** 2 <= 1
    spine = ((j - (cj + nj * 0.18)) / (nj * 0.07)) ** 2 + ((i - ci) / (ni * 0.07)) ** 2 <= 1
    ribs = body & ~(((j - cj) / (nj * 0.33)) ** 2 + ((i - ci) / (ni * 0.42)) ** 2 <= 1) & (np.sin(k * 0.6) > 0.6)
    hu = np.full(shape_kji, -1000.0, dtype=np.float32)
    hu[body] = -100
    hu[muscle] = 50
    hu[spine] = 700
    hu[ribs] = 600
    masks = {"body": body, "spine": spine}
    stones = []
    for name, side in (("kidney_left", 1), ("kidney_right", -1)):
        # Patient left is image +i in a RAS-like display of an LPS array is not assumed: names are labels only.
        center = (ck + rng.uniform(-2, 2), cj + nj * 0.08, ci + side * ni * 0.2)
        kidney = ellipsoid(center, (nk * 0.3, nj * 0.1, ni * 0.07))
        hu[kidney] = kidney_hu
        masks[name] = kidney
    stone_mask = np.zeros(shape_kji, bool)
    for n in range(stone_count):
        kidney = masks["kidney_left" if n % 2 == 0 else "kidney_right"]
        kk, jj, ii = np.nonzero(kidney)
        interior = np.abs(kk - ck) < nk * 0.15
        pick = rng.choice(np.flatnonzero(interior))
        center = (float(kk[pick]), float(jj[pick]), float(ii[pick]))
        radius = rng.uniform(1.5, 3.0)
        stone = ellipsoid(center, (radius, radius, radius)) & kidney
        hu[stone] = rng.uniform(300, 1500)
        stone_mask |= stone
        stones.append((center[2], center[1], center[0]))
    masks["stones"] = stone_mask
    hu += rng.normal(0, 8, shape_kji).astype(np.float32)
    return CtPhantom(hu, masks, stones)
