"""The embedded default case of ``samfusion run``: a CT phantom, an X-ray made from it, and prompts.

- CT: ``phantom.ct_volume`` with contrast-enhanced kidneys (a excretory (urographic) phase, 700 HU, so the
  kidneys show on a radiograph too) and stones, stored as DICOM scanners do (LPS axes, 1.2 x 1.2 x
  2.5 mm voxels).
- X-ray: the CT's AP projection (``radiograph.project_ct``) in another contrast (gamma, blur,
  noise; ``xray_contrast``), warped by a known transform (affine
  plus a smooth non-rigid displacement) onto its own detector grid with finer pixels, placed where
  Slicer puts a plain 2D image (the axial plane through the origin).
- Prompts, as a user would place them on the left kidney: an ROI around it and a positive point
  inside it on the CT; a box and a positive point on the X-ray.

The known transform (projection frame -> X-ray frame, ITK resampling direction) and test points
come with the case, so the run reports its registration error (TRE) against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.cases.xray_sim import random_transform
from SAMFusionLib.imaging.geometry import ImageGeometry, box_of, interior_point
from SAMFusionLib.imaging.grid2d import Grid2D, resample_onto
from SAMFusionLib.imaging.plane import Plane
from SAMFusionLib.pipeline import PipelineInputs, XrayPrompts
from SAMFusionLib.registration.radiograph import project_ct
from SAMFusionLib.sam.volume import VolumePrompts

TARGET = "kidney_left"
SPACING_MM = (1.2, 1.2, 2.5)
SHAPE_KJI = (48, 128, 128)
XRAY_PIXEL_RATIO = 0.8  # detector pixels are finer than the projection's


@dataclass
class DemoCase:
    inputs: PipelineInputs
    truth: object  # SimpleITK transform: projection frame -> X-ray frame (mm)
    test_points: np.ndarray  # (N, 2) projection-frame points (mm) in and around the target
    ct_target_mask: np.ndarray  # (k, j, i) bool ground truth on the CT grid
    xray_target_mask: np.ndarray  # (rows, columns) bool ground truth on the X-ray
    description: str


def xray_contrast(image: np.ndarray, rng: np.random.Generator, gamma: float = 1.5) -> np.ndarray:
    """A radiograph's look of a 0..255 projection: another gamma, detector blur and quantum noise.

    The display polarity stays bone-bright, as radiographs are read.
    """
    import cv2

    out = (np.clip(image, 0, 255) / 255.0) ** gamma
    out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), 0.8)
    out = out + rng.normal(0, 0.015, out.shape).astype(np.float32)
    return (255 * np.clip(out, 0, 1)).astype(np.float32)


def make_demo_case(seed: int = 5) -> DemoCase:
    """The embedded default case (see the module docstring)."""
    from SAMFusionLib.cases.phantom import ct_volume

    rng = np.random.default_rng(seed)
    phantom = ct_volume(rng, SHAPE_KJI, stone_count=3, kidney_hu=1200.0)
    ct_geometry = ImageGeometry.from_lps(SPACING_MM, (-76.8, -90.0, -60.0), np.eye(3), SHAPE_KJI)
    case = case_from_ct(phantom.hu_kji, ct_geometry, phantom.masks[TARGET], rng, nonrigid=True)
    case.description = (
        f"phantom CT {SHAPE_KJI[2]}x{SHAPE_KJI[1]}x{SHAPE_KJI[0]} voxels of {SPACING_MM} mm, kidneys in an excretory phase (1200 HU), "
        f"{len(phantom.stone_centers_ijk)} stones; {case.description}; target: {TARGET}"
    )
    return case


def case_from_ct(hu_kji: np.ndarray, ct_geometry: ImageGeometry, target: np.ndarray, rng: np.random.Generator,
                 nonrigid: bool = True, view: str = "AP", inverted: bool = False, collimation: bool = False) -> DemoCase:
    """A CT with its target mask -> a case: the X-ray made from the CT's projection by a known
    transform (affine, plus a non-rigid warp when ``nonrigid``), prompts from the target's geometry.

    ``inverted`` displays the X-ray with dense = dark (some detectors' MONOCHROME1); ``collimation``
    adds the collimator's unexposed border (a random 3-10% of each side), shown as dense as bone.
    """
    import cv2
    import SimpleITK as sitk

    fixed = project_ct(hu_kji, target, ct_geometry, view)
    fixed_grid = fixed.plane.grid()
    height, width = fixed.plane.shape_hw
    xray_spacing = float(fixed.plane.spacing_mm.min()) * XRAY_PIXEL_RATIO
    xray_shape = (int(round(height / XRAY_PIXEL_RATIO)), int(round(width / XRAY_PIXEL_RATIO)))
    xray_grid = Grid2D.isotropic(xray_shape, xray_spacing)
    # A plain 2D image in Slicer: LPS x, y axes, i.e. RAS -x, -y, through the origin.
    xray_plane = Plane(xray_shape, np.array([xray_spacing] * 2), np.zeros(3), np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]))

    warp, unwarp = random_transform(fixed_grid, rng, nonrigid=nonrigid)
    centre_fixed = fixed_grid.to_physical(np.array([(width - 1) / 2, (height - 1) / 2]))[0]
    centre_xray = xray_grid.to_physical(np.array([(xray_shape[1] - 1) / 2, (xray_shape[0] - 1) / 2]))[0]
    shift = centre_xray - centre_fixed
    truth = sitk.CompositeTransform(2)
    truth.AddTransform(sitk.TranslationTransform(2, tuple(shift)))
    truth.AddTransform(warp)  # applied first
    inverse = sitk.CompositeTransform(2)
    inverse.AddTransform(unwarp)
    inverse.AddTransform(sitk.TranslationTransform(2, tuple(-shift)))  # applied first

    xray = resample_onto(xray_contrast(fixed.image, rng), fixed_grid, xray_grid, inverse).astype(np.float32)
    if collimation:
        rows, columns = xray_shape
        top, bottom = (int(rows * f) for f in rng.uniform(0.03, 0.10, 2))
        left, right = (int(columns * f) for f in rng.uniform(0.03, 0.10, 2))
        exposed = np.zeros(xray_shape, bool)
        exposed[top : rows - bottom, left : columns - right] = True
        xray[~exposed] = 255.0  # no exposure: as bright as the densest bone
    if inverted:
        xray = 255.0 - xray
    xray_mask = resample_onto(fixed.mask.astype(np.uint8), fixed_grid, xray_grid, inverse, nearest=True).astype(bool)

    low, high = box_of(target, margin=2.0)
    corners_ijk = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    ct_prompts = VolumePrompts(
        points_ras=ct_geometry.ijk_to_ras_points(interior_point(target)[None]),
        labels=np.array([1]),
        roi_corners_ras=ct_geometry.ijk_to_ras_points(corners_ijk),
    )
    box_low, box_high = box_of(xray_mask, margin=3.0)
    box_low, box_high = np.maximum(box_low, 0), np.minimum(box_high, np.array(xray_shape[::-1]) - 1)  # on the image
    xray_prompts = XrayPrompts(interior_point(xray_mask)[None], np.array([1]), np.r_[box_low, box_high])

    around = cv2.dilate(fixed.mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    ys, xs = np.nonzero(around)
    pick = rng.choice(len(xs), min(30, len(xs)), replace=False)
    test_points = fixed_grid.to_physical(np.c_[xs[pick], ys[pick]].astype(float))

    inputs = PipelineInputs(hu_kji, ct_geometry, ct_prompts, xray, xray_plane, xray_prompts)
    description = (
        f"X-ray: the CT's {view} projection in another contrast, warped by a known {'affine + non-rigid' if nonrigid else 'affine'} "
        f"transform onto a {xray_shape[1]}x{xray_shape[0]} detector of {xray_spacing:.2f} mm pixels"
    )
    return DemoCase(inputs, truth, test_points, target, xray_mask, description)


def phantom_pair(rng: np.random.Generator) -> DemoCase:
    """A random phantom CT/X-ray pair with ground truth: CT phantom (kidneys with or without
    contrast, 0-5 stones), X-ray by projection, a random affine + non-rigid warp, either display
    polarity, noise, blur and, half the time, a collimation edge. The target is a kidney."""
    from SAMFusionLib.cases.phantom import ct_volume

    shape = (int(rng.integers(40, 56)), int(rng.integers(112, 144)), int(rng.integers(112, 144)))
    phantom = ct_volume(rng, shape, stone_count=int(rng.integers(0, 6)), kidney_hu=float(rng.choice([30.0, rng.uniform(300, 1500)])))
    spacing = float(rng.uniform(0.8, 1.4))
    geometry = ImageGeometry.from_lps((spacing, spacing, spacing * float(rng.uniform(1.5, 3.0))), (0.0, 0.0, 0.0), np.eye(3), shape)
    target = str(rng.choice(["kidney_left", "kidney_right"]))
    return case_from_ct(phantom.hu_kji, geometry, phantom.masks[target], rng, nonrigid=True,
                        inverted=bool(rng.random() < 0.5), collimation=bool(rng.random() < 0.5))


def tre_mm(case: DemoCase, sitk_transform) -> float:
    """Mean distance (mm) between estimated and true X-ray positions of the case's test points."""
    estimated = np.array([sitk_transform.TransformPoint(tuple(p)) for p in case.test_points])
    expected = np.array([case.truth.TransformPoint(tuple(p)) for p in case.test_points])
    return float(np.linalg.norm(estimated - expected, axis=1).mean())


def truth_report(case: DemoCase, result) -> dict:
    """A run's figures against the case's known truth (``report.json``'s ``case``): the masks' Dice
    and the registration's TRE (mm). ``result`` is the ``PipelineResult`` of a run on the case."""
    from SAMFusionLib.imaging.metrics import dice

    return {
        "name": "embedded default case",
        "description": case.description,
        "ct_dice_vs_truth": round(dice(result.ct_mask_kji, case.ct_target_mask), 4),
        "xray_dice_vs_truth": round(dice(result.xray_mask, case.xray_target_mask), 4),
        "registration_tre_mm": round(tre_mm(case, result.registration.sitk_transform), 3),
    }
