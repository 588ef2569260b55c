"""``samfusion bench register``: markerless registration on cases with known ground truth.

Cases come from the real images in ``../shared/data``:
- the abdomen CT's parallel projection (fixed) against an X-ray-like rendering of the same CT
  (exponential attenuation, random display polarity, gamma, noise, blur), with the projected
  kidney masks;
- the chest X-rays (fixed) against contrast-changed copies (gamma, polarity, noise, blur), with
  their manual lung masks.
The moving image is the fixed one warped by a known transform T (fixed -> moving): rotation up to
+-20 degrees, scale 0.88-1.12, shear up to 0.08, translation up to +-8% of the image size, and for
half the cases a smooth non-rigid displacement (up to about 2.5% of the size). Masks are warped the
same way and then eroded or dilated by one pixel, like SAM's imperfections.

TRE (mm) is the mean distance ||T_est(p) - T(p)|| over 30 points p in and around the fixed mask
(within 15 px) whose true position T(p) lies inside the moving image (targets visible in both);
a case succeeds when TRE < 2 mm. Peers run on the same images: itk-elastix (affine; affine +
B-spline; default parameter maps) and SimpleITK (Mattes MI, affine).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from SAMFusionLib.cases.xray_sim import random_transform, render_contrast
from SAMFusionLib.imaging.grid2d import Grid2D, resample_onto

SIZE = 400


@dataclass
class Case:
    name: str
    fixed: np.ndarray
    fixed_mask: np.ndarray
    moving: np.ndarray
    moving_mask: np.ndarray
    grid: Grid2D
    truth: object  # SimpleITK transform, fixed -> moving
    points: np.ndarray  # (N, 2) physical test points
    nonrigid: bool


def _resize(image: np.ndarray, mask: np.ndarray, extent_mm: float) -> tuple[np.ndarray, np.ndarray, Grid2D]:
    import cv2

    height = int(round(SIZE * image.shape[0] / image.shape[1]))
    image = cv2.resize(image.astype(np.float32), (SIZE, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), (SIZE, height), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
    return image, mask, Grid2D.isotropic((height, SIZE), extent_mm / SIZE)


def source_images() -> list[tuple[str, np.ndarray, np.ndarray, Grid2D, str]]:
    """(name, image 0..255, mask, grid, kind) of each real source image."""
    from SAMFusionLib.cases.shared_data import abdomen_ct, chest_xray_cases
    from SAMFusionLib.registration.projection import line_integral, project_mask, xray_image

    sources = []
    hu, geometry, _, masks = abdomen_ct()
    integral = line_integral(hu, geometry, axis=1)
    kidneys = project_mask(masks["kidney_left"] | masks["kidney_right"], axis=1)
    image, mask, grid = _resize(xray_image(integral), kidneys, geometry.spacing_mm[0] * hu.shape[2])
    sources.append(("abdomen_projection", image, mask, grid, "ct"))
    for case in chest_xray_cases():
        lungs = np.logical_or.reduce(case.lungs)
        image, mask, grid = _resize(case.image.astype(np.float32), lungs, 430.0)
        sources.append((f"chest_{case.name}", image, mask, grid, "xray"))
    return sources


def _test_points(mask: np.ndarray, grid: Grid2D, truth, rng: np.random.Generator, count: int = 30, margin_px: int = 3) -> np.ndarray:
    """(count, 2) physical fixed points within 15 px of the mask whose true moving position lies
    inside the moving image (``margin_px`` from its edge): a target outside the moving image's field
    of view is not visible there, so no method can register it (its error would measure only how a
    non-rigid field extrapolates)."""
    import cv2

    around = cv2.dilate(mask.astype(np.uint8), np.ones((31, 31), np.uint8)).astype(bool)
    ys, xs = np.nonzero(around)
    order = rng.permutation(len(xs))
    points = grid.to_physical(np.c_[xs[order], ys[order]].astype(float))
    height, width = grid.shape_hw
    chosen = []
    for point in points:
        x, y = grid.to_index(np.array([truth.TransformPoint(tuple(point))]))[0]
        if margin_px <= x <= width - 1 - margin_px and margin_px <= y <= height - 1 - margin_px:
            chosen.append(point)
            if len(chosen) == count:
                break
    return np.array(chosen)


def make_cases(count: int = 20, seed: int = 0) -> list[Case]:
    """``count`` cases: about a third from the abdomen CT projection, the rest from the chest X-rays."""
    import cv2

    rng = np.random.default_rng(seed)
    sources = source_images()
    cases = []
    for n in range(count):
        name, image, mask, grid, kind = sources[0] if n % 3 == 0 else sources[1 + (n // 3 * 2 + n % 3) % (len(sources) - 1)]
        nonrigid = n % 2 == 1
        truth, inverse = random_transform(grid, rng, nonrigid)
        moving = resample_onto(render_contrast(image, rng, kind), grid, grid, inverse)
        moving_mask = resample_onto(mask.astype(np.uint8), grid, grid, inverse, nearest=True)
        kernel = np.ones((3, 3), np.uint8)
        moving_mask = (cv2.erode(moving_mask, kernel) if rng.random() < 0.5 else cv2.dilate(moving_mask, kernel)).astype(bool)
        points = _test_points(mask, grid, truth, np.random.default_rng((seed, n)))
        cases.append(Case(f"{name}-{n}", image, mask, moving.astype(np.float32), moving_mask, grid, truth, points, nonrigid))
    return cases


def tre_of(case: Case, mapped: np.ndarray) -> float:
    """Mean TRE (mm) of estimated moving positions ``mapped`` (N, 2) of the case's points."""
    expected = np.array([case.truth.TransformPoint(tuple(p)) for p in case.points])
    return float(np.linalg.norm(mapped - expected, axis=1).mean())


def run_ours(case: Case, transform: str = "nonrigid") -> np.ndarray:
    from SAMFusionLib.registration.register import RegistrationOptions, register_2d

    result = register_2d(case.fixed, case.grid, case.moving, case.grid, case.fixed_mask, case.moving_mask, RegistrationOptions(transform=transform))
    return np.array([result.sitk_transform.TransformPoint(tuple(p)) for p in case.points])


def run_simpleitk_mi(case: Case) -> np.ndarray:
    import SimpleITK as sitk

    fixed, moving = sitk.GetImageFromArray(case.fixed), sitk.GetImageFromArray(case.moving)
    case.grid.apply_to(fixed)
    case.grid.apply_to(moving)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method.SetInitialTransform(initial, inPlace=False)
    transform = method.Execute(fixed, moving)
    return np.array([transform.TransformPoint(tuple(p)) for p in case.points])


def run_elastix(case: Case, bspline: bool) -> np.ndarray:
    import itk

    fixed = itk.image_view_from_array(np.ascontiguousarray(case.fixed))
    moving = itk.image_view_from_array(np.ascontiguousarray(case.moving))
    for image in (fixed, moving):
        image.SetSpacing([float(s) for s in case.grid.spacing])
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("affine"))
    if bspline:
        parameters.AddParameterMap(parameters.GetDefaultParameterMap("bspline"))
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    # transformix writes deformationField.nii into the working folder: keep it out of the user's.
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        try:
            field = itk.array_from_image(itk.transformix_deformation_field(moving, result))  # (H, W, 2): fixed -> moving
        finally:
            os.chdir(previous)
    index = case.grid.to_index(case.points)
    x0, y0 = np.floor(index[:, 0]).astype(int), np.floor(index[:, 1]).astype(int)
    fx, fy = (index[:, 0] - x0)[:, None], (index[:, 1] - y0)[:, None]
    x1, y1 = np.minimum(x0 + 1, field.shape[1] - 1), np.minimum(y0 + 1, field.shape[0] - 1)
    displacement = (field[y0, x0] * (1 - fx) * (1 - fy) + field[y0, x1] * fx * (1 - fy) + field[y1, x0] * (1 - fx) * fy + field[y1, x1] * fx * fy)
    return case.points + displacement


PEERS = {
    "samfusion (masks, non-rigid)": run_ours,
    "elastix affine": lambda case: run_elastix(case, False),
    "elastix affine+bspline": lambda case: run_elastix(case, True),
    "simpleitk MI affine": run_simpleitk_mi,
}


def run_benchmark(count: int = 20, methods: list[str] | None = None) -> dict:
    cases = make_cases(count)
    results = {}
    for name in methods or list(PEERS):
        # One untimed warm-up case per method: imports and first-call set-up are not per-case costs.
        try:
            PEERS[name](cases[0])
        except Exception:
            pass
        errors, seconds = [], []
        for case in cases:
            start = time.perf_counter()
            try:
                mapped = PEERS[name](case)
                errors.append(tre_of(case, mapped))
            except Exception:  # a peer that crashes on a case has failed that case
                errors.append(float("inf"))
            seconds.append(time.perf_counter() - start)
        errors = np.array(errors)
        results[name] = {
            "median_tre_mm": round(float(np.median(errors)), 3),
            "success_rate": round(float(np.mean(errors < 2.0)), 3),
            "seconds_per_case": round(float(np.mean(seconds)), 3),
        }
    return {"benchmark": "register", "cases": len(cases), "size_px": SIZE, "machine": platform.machine(), "methods": results}


def format_table(figures: dict) -> str:
    lines = [
        f"Registration benchmark: {figures['cases']} cases, about {figures['size_px']} px wide, success = TRE < 2 mm",
        "",
        "| method | median TRE (mm) | success rate | s / case |",
        "|---|---|---|---|",
    ]
    for name, row in figures["methods"].items():
        lines.append(f"| {name} | {row['median_tre_mm']:.3f} | {row['success_rate']:.2f} | {row['seconds_per_case']:.2f} |")
    return "\n".join(lines)
