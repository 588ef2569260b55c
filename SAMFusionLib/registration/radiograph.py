"""A CT volume seen as a radiograph: a view-aligned grid, resampling onto it, and the parallel DRR.

A view fixes how the projection is displayed, the way radiographs are read (RAS unit vectors):

- ``AP`` (frontal): columns toward patient left, rows toward inferior, rays antero-posterior.
  The patient's right is on the viewer's left, head up.
- ``LAT`` (left lateral): columns toward posterior, rows toward inferior, rays right to left.
- ``SI`` (axial): columns toward patient left, rows toward posterior, rays along the body axis.

``view_geometry`` builds a grid whose i, j, k axes are the view's column, row and ray
directions, covering the CT, with the CT's own spacing along the nearest axes. Resampling onto it
makes the analysis independent of how the CT was stored: an LPS and an RAS copy of one scan give
the same voxels (their centres coincide), and an oblique scan is interpolated. The projection
is then a sum along k, displayed as in ``projection.xray_image``, and lies on the plane through
the CT's centre perpendicular to the rays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.plane import Plane
from SAMFusionLib.registration.projection import line_integral, project_mask, xray_image

VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "AP": ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "LAT": ((0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),
    "SI": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


def view_axes(view: str) -> np.ndarray:
    """(3, 3) columns: the view's column, row and ray directions in RAS."""
    if view not in VIEWS:
        raise SamFusionError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    x_ras, y_ras = (np.array(v) for v in VIEWS[view])
    return np.c_[x_ras, y_ras, np.cross(x_ras, y_ras)]


def view_geometry(geometry: ImageGeometry, view: str = "AP") -> ImageGeometry:
    """The view-aligned grid covering ``geometry``'s voxel centres (see the module docstring)."""
    axes = view_axes(view)
    directions = geometry.ijk_to_ras[:3, :3] / geometry.spacing_mm
    # Each view axis takes the spacing of the CT axis most nearly parallel to it.
    nearest = np.argmax(np.abs(axes.T @ directions), axis=1)
    spacing = geometry.spacing_mm[nearest]
    shape_ijk = np.array(geometry.shape_kji[::-1])
    corners_ijk = np.array([[i, j, k] for i in (0, shape_ijk[0] - 1) for j in (0, shape_ijk[1] - 1) for k in (0, shape_ijk[2] - 1)])
    coordinates = geometry.ijk_to_ras_points(corners_ijk) @ axes  # (8, 3) along column, row, ray
    low, high = coordinates.min(0), coordinates.max(0)
    # 1e-6 absorbs rounding so that an axis-aligned CT keeps exactly its own number of voxels.
    counts = np.floor((high - low) / spacing + 1e-6).astype(int) + 1
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = axes * spacing
    ijk_to_ras[:3, 3] = axes @ low
    return ImageGeometry(ijk_to_ras, (int(counts[2]), int(counts[1]), int(counts[0])))


def resample(volume_kji: np.ndarray, geometry: ImageGeometry, target: ImageGeometry, nearest: bool = False, default: float = 0.0) -> np.ndarray:
    """Resample a (k, j, i) volume onto ``target``'s grid (linear, or nearest for masks)."""
    import SimpleITK as sitk

    from SAMFusionLib.imaging.io import sitk_image

    image = sitk_image(volume_kji, geometry)
    # The output grid is given as numbers, not as a reference image: one volume fewer in memory
    # (a clinical CT's view grid: 224 MiB).
    spacing, origin, direction = target.to_lps()
    shape_kji = target.shape_kji
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    resampled = sitk.Resample(image, (int(shape_kji[2]), int(shape_kji[1]), int(shape_kji[0])), sitk.Transform(), interpolator,
                              [float(v) for v in origin], [float(v) for v in spacing], [float(v) for v in direction], float(default))
    del image  # ITK's copy of the input, freed before the output is copied out: one volume fewer at the peak
    return sitk.GetArrayFromImage(resampled)


@dataclass
class Radiograph:
    """A CT's parallel projection: the displayed image (rows, columns) 0..255, the target mask's
    projection, the plane it lies on, and the view grid the CT was resampled onto."""

    image: np.ndarray
    mask: np.ndarray | None
    plane: Plane
    view_geometry: ImageGeometry


def project_ct(hu_kji: np.ndarray, mask_kji: np.ndarray | None, geometry: ImageGeometry, view: str = "AP",
               grid: ImageGeometry | None = None) -> Radiograph:
    """Project a CT (HU) and optionally its target mask, both given on ``grid`` when it is passed
    (already resampled), else on ``geometry`` (resampled here)."""
    if grid is None:
        grid = view_geometry(geometry, view)
        hu_kji = resample(hu_kji, geometry, grid, default=-1000.0)
        if mask_kji is not None:
            mask_kji = resample(mask_kji.astype(np.uint8), geometry, grid, nearest=True)
    image = xray_image(line_integral(hu_kji, grid, axis=2))
    projected = project_mask(mask_kji, axis=2) if mask_kji is not None else None
    nk = grid.shape_kji[0]
    # The plane through the middle of the rays, with the view grid's first two axes.
    origin = grid.ijk_to_ras_points([[0.0, 0.0, (nk - 1) / 2.0]])[0]
    spacing = grid.spacing_mm[:2]
    plane = Plane(tuple(grid.shape_kji[1:]), spacing, origin, grid.ijk_to_ras[:3, 0] / spacing[0], grid.ijk_to_ras[:3, 1] / spacing[1])
    image, projected, plane = square_pixels(image, projected, plane)
    return Radiograph(image, projected, plane, grid)


def square_pixels(image: np.ndarray, mask: np.ndarray | None, plane: Plane) -> tuple[np.ndarray, np.ndarray | None, Plane]:
    """Resample a projection to square pixels of the finer spacing, as a radiograph has.

    Thick CT slices would otherwise give a squashed image (e.g. 2.5 mm rows against 0.8 mm
    columns). The plane's origin moves with the pixel centres: cv2 maps new pixel x' to old
    (x' + 0.5) n / m - 0.5 for n old and m new pixels.
    """
    import cv2

    target = float(plane.spacing_mm.min())
    if np.allclose(plane.spacing_mm, target, rtol=1e-6):
        return image, mask, plane
    height, width = plane.shape_hw
    extent = np.array([width, height]) * plane.spacing_mm
    size = np.maximum(np.round(extent / target).astype(int), 1)  # (columns, rows)
    spacing = extent / size
    shift = 0.5 * spacing - 0.5 * plane.spacing_mm  # centre of new pixel 0, relative to old pixel 0
    origin = plane.origin_ras + shift[0] * plane.x_ras + shift[1] * plane.y_ras
    resized = cv2.resize(image.astype(np.float32), (int(size[0]), int(size[1])), interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask.astype(np.uint8), (int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    return resized, mask, Plane((int(size[1]), int(size[0])), spacing, origin, plane.x_ras, plane.y_ras)


@dataclass(frozen=True)
class Perspective:
    """Cone-beam geometry: a point source and a flat detector, in RAS millimetres.

    Attributes:
        source_ras: (3,) the focal spot.
        detector: the detector's pixel grid as a plane (its centre, axes and pixel size).
    """

    source_ras: np.ndarray
    detector: Plane


def perspective_for(geometry: ImageGeometry, view: str = "AP", source_to_centre_mm: float = 1000.0,
                    source_to_detector_mm: float = 1500.0) -> Perspective:
    """A clinical-like set-up for a CT: the source on the view's ray axis through the CT's centre,
    the detector behind the patient, perpendicular to that axis, covering the magnified CT.

    Detector pixels are the CT's finer in-plane spacing times the magnification, so that the
    image has about as many pixels across the CT as a parallel projection.
    """
    if not 0 < source_to_centre_mm < source_to_detector_mm:
        raise SamFusionError("the source must lie between 0 and the detector distance from the CT's centre")
    axes = view_axes(view)
    grid = view_geometry(geometry, view)
    centre = grid.ijk_to_ras_points([[(n - 1) / 2.0 for n in grid.shape_kji[::-1]]])[0]
    ray = axes[:, 2]
    source = centre - source_to_centre_mm * ray
    magnification = source_to_detector_mm / source_to_centre_mm
    pixel = float(grid.spacing_mm[:2].min()) * magnification
    extent = np.array(grid.shape_kji[1:][::-1]) * grid.spacing_mm[:2] * magnification * 1.1  # (columns, rows) mm, 10% margin
    columns, rows = (int(np.ceil(e / pixel)) for e in extent)
    detector_centre = source + source_to_detector_mm * ray
    origin = detector_centre - axes[:, 0] * pixel * (columns - 1) / 2 - axes[:, 1] * pixel * (rows - 1) / 2
    return Perspective(source, Plane((rows, columns), np.array([pixel, pixel]), origin, axes[:, 0], axes[:, 1]))


def perspective_integral(volume_kji: np.ndarray, geometry: ImageGeometry, perspective: Perspective, samples: int = 256) -> np.ndarray:
    """(rows, columns) line integrals of ``volume_kji`` along the rays from the source to each
    detector pixel centre: trilinear samples (``torch.grid_sample``), ``samples`` per ray across the
    volume's bounding sphere, times the step in mm. Outside the volume counts as 0."""
    import torch

    detector = perspective.detector
    rows, columns = detector.shape_hw
    ys, xs = np.mgrid[0:rows, 0:columns]
    pixels_ras = detector.pixel_to_ras(np.c_[xs.ravel(), ys.ravel()])
    directions = pixels_ras - perspective.source_ras
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    corners = geometry.ijk_to_ras_points(np.array([[i, j, k] for i in (0, geometry.shape_kji[2] - 1)
                                                   for j in (0, geometry.shape_kji[1] - 1) for k in (0, geometry.shape_kji[0] - 1)]))
    centre = corners.mean(0)
    radius = float(np.linalg.norm(corners - centre, axis=1).max()) + float(geometry.spacing_mm.max())
    along = (centre - perspective.source_ras) @ directions.T  # distance to the point nearest the centre, per ray
    steps = np.linspace(-radius, radius, samples)
    step_mm = steps[1] - steps[0]
    to_ijk = np.linalg.inv(geometry.ijk_to_ras)
    size_ijk = np.array(geometry.shape_kji[::-1], float)
    image = torch.as_tensor(np.ascontiguousarray(volume_kji, np.float32))[None, None]
    integral = np.zeros(len(directions), np.float64)
    for start in range(0, len(directions), 8192):  # bounded memory: 8192 rays x samples at a time
        block = slice(start, start + 8192)
        points = perspective.source_ras + (along[block, None, None] + steps[None, :, None]) * directions[block, None, :]
        ijk = points @ to_ijk[:3, :3].T + to_ijk[:3, 3]
        normalised = 2.0 * ijk / np.maximum(size_ijk - 1, 1) - 1.0  # align_corners=True: index 0 -> -1, n-1 -> +1
        # Outside the volume samples are 0 at any distance; bounded, so that grid_sample never sees
        # the huge or non-finite coordinates that crash its CPU kernel (pytorch/pytorch#24823).
        normalised = np.clip(np.nan_to_num(normalised, nan=2.0, posinf=2.0, neginf=-2.0), -2.0, 2.0)
        grid = torch.as_tensor(normalised, dtype=torch.float32)[None, None]  # (1, 1, rays, samples, 3) as (x=i, y=j, z=k)
        values = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        integral[block] = values[0, 0, 0].sum(-1).double().numpy() * step_mm
    return integral.reshape(rows, columns)


def project_ct_perspective(hu_kji: np.ndarray, mask_kji: np.ndarray | None, geometry: ImageGeometry, perspective: Perspective) -> Radiograph:
    """A cone-beam DRR of a CT (HU -> attenuation) and its mask, on the detector's plane."""
    from SAMFusionLib.registration.projection import hu_to_mu

    image = xray_image(perspective_integral(hu_to_mu(hu_kji), geometry, perspective))
    projected = None
    if mask_kji is not None:
        projected = perspective_integral(np.asarray(mask_kji, np.float32), geometry, perspective) > 0.5 * float(geometry.spacing_mm.min())
    return Radiograph(image, projected, perspective.detector, geometry)
