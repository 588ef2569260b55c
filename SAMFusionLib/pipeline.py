"""The whole SAMFusion job, without Slicer: segment, project, register, resample, fuse, report.

Inputs are arrays with their geometry and prompts in physical RAS (CT) or pixels (X-ray):

1. segment the CT slice-wise and the X-ray (one embedding per image, reused by every prompt);
2. when the CT is 3D, resample it onto the view grid and project it and its mask (a DRR,
   ``radiograph``: parallel, or perspective from a point source onto a flat detector); a
   single-slice CT is used as it is;
3. register the X-ray (moving) to the projection (fixed) on the SAM masks (``registration``);
4. resample the X-ray onto the projection's grid;
5. fuse them (Laplacian pyramid, ``fusion``);
6. collect the report: timings, Match_Loss, Dice, the quality verdict.

The result holds the transform in two forms: the 2D ITK transform (fixed frame -> moving frame)
and its 3D RAS form for Slicer (``plane.linear_from_fixed_ras`` plus, when non-rigid, a
displacement on the projection plane), both in the resampling direction (CT -> X-ray).

``progress(step, fraction)`` is called as work advances; ``cancelled()`` is polled between and
inside steps and stops the run with ``PipelineCancelled``. The pipeline never writes anything, so
a cancelled or failed run leaves nothing behind; the callers (CLI, MRML) commit only on success.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.fusion.pyramid import FusionOptions, fuse
from SAMFusionLib.imaging.geometry import ImageGeometry, check_pixel_inside, clip_box
from SAMFusionLib.imaging.grid2d import resample_onto
from SAMFusionLib.imaging.intensity import check_finite_nonconstant, resolve_range, to_sam_rgb
from SAMFusionLib.imaging.plane import Plane, linear_from_fixed_ras
from SAMFusionLib.registration.confirm import confirmed
from SAMFusionLib.registration.prompt_shapes import prompt_box_masks, to_fixed_plane
from SAMFusionLib.registration.radiograph import Radiograph, perspective_for, project_ct, project_ct_perspective, resample, view_geometry
from SAMFusionLib.registration.register import RegistrationOptions, RegistrationResult, register_2d
from SAMFusionLib.registration.transforms2d import STAGES
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.volume import VolumePrompts, encode_ahead, segment_volume
from SAMFusionLib.sam.zoom import predict_zoomed

REPORT_EVERY_S = 0.05  # progress reports inside the registration (0.3 s on the default case), at most this often
STEPS = ("segment CT", "segment X-ray", "project", "register", "resample", "fuse")


class PipelineCancelled(Cancelled):
    """The user cancelled the run between two steps (inside a step, the step raises ``Cancelled``)."""


@dataclass
class XrayPrompts:
    """Pixel prompts on the X-ray: (N, 2) points (x = column, y = row), (N,) labels 1/0, a box."""

    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    box_xyxy: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return len(self.points_xy) == 0 and self.box_xyxy is None


@dataclass
class PipelineInputs:
    """ct_kji: (k, j, i) HU on ``ct_geometry`` (one slice for a 2D CT image); xray: (rows, columns)
    grey values on ``xray_plane``."""

    ct_kji: np.ndarray
    ct_geometry: ImageGeometry
    ct_prompts: VolumePrompts
    xray: np.ndarray
    xray_plane: Plane
    xray_prompts: XrayPrompts


@dataclass(frozen=True)
class PipelineOptions:
    view: str = "AP"
    projection: str = "parallel"  # or "perspective": a point source and a flat detector (``radiograph.perspective_for``)
    source_to_centre_mm: float = 1000.0
    source_to_detector_mm: float = 1500.0
    ct_window: str = "auto"
    xray_window: str = "auto"
    zoom: str = "auto"
    propagate: bool = True
    # SAM on every Nth CT slice of the propagation, the rest filled by shape interpolation
    # (``volume.segment_volume``): fewer encoder runs for a small loss of detail (the default case with
    # the default model at N = 3: 16 against 32 images, CT Dice 0.988 against 0.998, the same TRE).
    # "auto" (``volume.resolve_slice_step``): SAM's slices about 3 mm apart, so every slice of a CT of
    # 3 mm slices or thicker, and a thin-slice CT costs what its anatomy does, not its slice count.
    slice_step: int | str = "auto"
    fusion_levels: int = 3
    registration: RegistrationOptions = RegistrationOptions()
    # SAM's masks here are rougher than the benchmark's (a pixel of erosion): a non-rigid field also
    # fits their errors, so the masks and the images must both support it (``RegistrationOptions.select_by``).
    # Measured on 16 phantom seeds, against the masks alone: TRE median 1.11 -> 1.07 mm, worst three
    # 3.8 / 3.0 / 2.9 -> 3.8 / 1.8 / 1.3 mm.
    select_by: str = "both"
    # When the registration on SAM's masks fails, retry on the prompt boxes (``_register_on_prompt_boxes``).
    box_fallback: bool = True


@dataclass
class PipelineResult:
    """ct_mask_kji: on the CT's own grid; xray_mask: (rows, columns) on the X-ray.

    fixed: the CT's projection (or its single slice) with its mask and plane; the registered X-ray
    and the fused image lie on ``fixed.plane``. ``from_ct_ras``: (4, 4) RAS -> RAS, CT-side points
    to X-ray points (Slicer's "from parent"); ``displacement_ras``: (rows, columns, 3) mm on
    ``fixed.plane``, applied before ``from_ct_ras``, or None for a linear result.
    """

    ct_mask_kji: np.ndarray
    xray_mask: np.ndarray
    fixed: Radiograph
    registration: RegistrationResult
    from_ct_ras: np.ndarray
    displacement_ras: np.ndarray | None
    xray_registered: np.ndarray
    fused: np.ndarray
    report: dict
    inputs: PipelineInputs  # what the run was given (arrays, geometry, prompts)


def check_inputs(inputs: PipelineInputs) -> None:
    """Everything that can be checked before any work: shapes, finiteness, prompts present."""
    if inputs.ct_kji.ndim != 3 or tuple(inputs.ct_kji.shape) != tuple(inputs.ct_geometry.shape_kji):
        raise SamFusionError(f"the CT array {inputs.ct_kji.shape} does not match its geometry {inputs.ct_geometry.shape_kji}")
    if inputs.xray.ndim != 2 or tuple(inputs.xray.shape) != tuple(inputs.xray_plane.shape_hw):
        raise SamFusionError(f"the X-ray must be one 2D image matching its plane, got an array of shape {inputs.xray.shape}")
    check_finite_nonconstant(inputs.ct_kji, "the CT")
    check_finite_nonconstant(inputs.xray, "the X-ray")
    prompts = inputs.ct_prompts
    if len(prompts.points_ras) == 0 and prompts.roi_corners_ras is None:
        raise SamFusionError("no CT prompts: place at least one positive point or an ROI on the CT")
    if len(prompts.points_ras) and not np.any(np.asarray(prompts.labels) == 1) and prompts.roi_corners_ras is None:
        raise SamFusionError("the CT prompts have no positive point and no ROI")
    if inputs.xray_prompts.empty:
        raise SamFusionError("no X-ray prompts: place at least one positive point or an ROI on the X-ray")
    height, width = inputs.xray.shape
    check_pixel_inside(np.asarray(inputs.xray_prompts.points_xy, float).reshape(-1, 2), height, width, "an X-ray point")
    if inputs.xray_prompts.box_xyxy is not None:
        clip_box(inputs.xray_prompts.box_xyxy, height, width)  # raises when no part of it is on the X-ray


def run_pipeline(
    segmenter: Segmenter,
    inputs: PipelineInputs,
    options: PipelineOptions = PipelineOptions(),
    progress: Callable[[str, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> PipelineResult:
    """Run every step (see the module docstring); raises ``SamFusionError`` on bad input or failure."""
    check_inputs(inputs)
    if options.projection not in ("parallel", "perspective"):
        raise SamFusionError(f"unknown projection {options.projection!r}: use parallel or perspective")
    timings: dict[str, float] = {}
    is_3d = inputs.ct_kji.shape[0] > 1

    def step(name: str, fraction: float = 0.0) -> None:
        if cancelled is not None and cancelled():
            raise PipelineCancelled(f"cancelled during '{name}'")
        if progress is not None:
            progress(name, fraction)

    clock = time.perf_counter()
    encoded_before = segmenter.images_encoded

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    # 1. CT: segmented on the view grid, so the stored orientation (LPS, RAS, oblique) does not matter.
    step("segment CT")
    grid, ct_view, axis = ct_view_grid(inputs.ct_kji, inputs.ct_geometry, options.view)
    segmentation = segment_volume(
        segmenter, ct_view, grid, inputs.ct_prompts, slice_axis=axis, window=options.ct_window, propagate=options.propagate,
        zoom=options.zoom, slice_step=options.slice_step, progress=lambda done, total: step("segment CT", done / max(total, 1)), cancelled=cancelled,
    )
    if not segmentation.mask_kji.any():
        raise SamFusionError("SAM found nothing at the CT prompts: move them onto the target")
    ct_mask = resample(segmentation.mask_kji, grid, inputs.ct_geometry, nearest=True) if is_3d else segmentation.mask_kji
    lap("segment CT")

    # 2. X-ray.
    step("segment X-ray")
    xray_rgb = xray_sam_rgb(inputs.xray, options)
    prompts = inputs.xray_prompts
    has_points = len(prompts.points_xy) > 0
    xray_prediction = predict_zoomed(
        segmenter, xray_rgb, prompts.points_xy if has_points else None, prompts.labels if has_points else None, prompts.box_xyxy, options.zoom
    )
    xray_mask = xray_prediction.mask.astype(bool)
    if not xray_mask.any():
        raise SamFusionError("SAM found nothing at the X-ray prompts: move them onto the target")
    lap("segment X-ray")

    # 3. The fixed image: the CT's projection, or the CT image itself.
    step("project")
    perspective = None
    if is_3d and options.projection == "perspective":
        perspective = perspective_for(inputs.ct_geometry, options.view, options.source_to_centre_mm, options.source_to_detector_mm)
        fixed = project_ct_perspective(ct_view, segmentation.mask_kji, grid, perspective)
    elif is_3d:
        fixed = project_ct(ct_view, segmentation.mask_kji, inputs.ct_geometry, options.view, grid=grid)
    else:
        plane = Plane.from_geometry(inputs.ct_geometry)
        ct_range = resolve_range(inputs.ct_kji[0], options.ct_window)
        image = to_sam_rgb(inputs.ct_kji[0], ct_range)[..., 0].astype(np.float32)
        fixed = Radiograph(image, segmentation.mask_kji[0].astype(bool), plane, inputs.ct_geometry)
    lap("project")

    # 4. Register the X-ray to it. The optimiser polls ``during_registration`` at every evaluation:
    # it reports progress (at most every REPORT_EVERY_S) so that a GUI processes events and its Cancel fires.
    step("register")
    evaluations, last_report = 0, time.perf_counter()

    def during_registration() -> bool:
        nonlocal evaluations, last_report
        evaluations += 1
        now = time.perf_counter()
        if progress is not None and now - last_report >= REPORT_EVERY_S:
            last_report = now
            progress("register", evaluations / (evaluations + 200.0))  # grows towards 1; the count is not known ahead
        return cancelled is not None and cancelled()

    fixed_grid, moving_grid = fixed.plane.grid(), inputs.xray_plane.grid()
    moving = xray_rgb[..., 0].astype(np.float32)  # the same windowed grey image SAM saw
    registration = register_2d(fixed.image, fixed_grid, moving, moving_grid, fixed.mask, xray_mask,
                               replace(options.registration, select_by=options.select_by), during_registration)
    check_prompts_agree(registration, inputs, fixed, perspective)
    registration.report["reference"] = "SAM masks"
    if not registration.passed and options.box_fallback:
        on_boxes = _register_on_prompt_boxes(registration, inputs, fixed, moving, perspective, options, during_registration)
        registration = _confirmed_by_boxes(registration, on_boxes, fixed, xray_mask, moving_grid, options) or on_boxes
    lap("register")

    # 5. Resample, and express the transform in RAS.
    step("resample")
    xray_registered = resample_onto(moving, moving_grid, fixed_grid, registration.sitk_transform)
    from_ct_ras, displacement_ras = transform_in_ras(registration.sitk_transform, fixed.plane, inputs.xray_plane)
    lap("resample")

    # 6. Fuse.
    step("fuse")
    registered_mask = resample_onto(xray_mask.astype(np.uint8), moving_grid, fixed_grid, registration.sitk_transform, nearest=True).astype(bool)
    fused = fuse(fixed.image, xray_registered, FusionOptions(levels=options.fusion_levels), target=fixed.mask | registered_mask)
    lap("fuse")
    step("fuse", 1.0)

    report = {
        "timings_s": timings,
        "total_s": round(sum(timings.values()), 3),
        "ct": {
            "dimensions": 3 if is_3d else 2,
            "view": options.view if is_3d else None,
            "projection": options.projection if is_3d else None,
            "mask_voxels": int(ct_mask.sum()),
            "mask_volume_ml": round(float(ct_mask.sum() * np.prod(inputs.ct_geometry.spacing_mm)) / 1000.0, 3),
            "slice_step": segmentation.slice_step,
            "slices_segmented": len(segmentation.slice_scores),
            "slices_interpolated": len(segmentation.interpolated),
            "mean_slice_score": round(float(np.mean(list(segmentation.slice_scores.values()))), 4) if segmentation.slice_scores else None,
        },
        "xray": {"mask_pixels": int(xray_mask.sum()), "score": round(float(xray_prediction.score), 4)},
        # Images the encoder ran on in this run; the others' embeddings came from the cache.
        "images_encoded": segmenter.images_encoded - encoded_before,
        "registration": registration.report,
    }
    return PipelineResult(ct_mask, xray_mask, fixed, registration, from_ct_ras, displacement_ras, xray_registered, fused, report, inputs)


def _register_on_prompt_boxes(failed: RegistrationResult, inputs: PipelineInputs, fixed: Radiograph, moving: np.ndarray, perspective,
                              options: PipelineOptions, cancelled) -> RegistrationResult:
    """When the registration on SAM's masks fails its check, try again with the user's boxes as
    the target's shape (ellipses inscribed in the CT ROI's projection and in the X-ray box).

    Kept only if it passes every check itself, the prompt agreement included; the report says so
    (``reference``) and keeps the masks' failure. Measured on the abdomen CT (non-contrast kidney;
    the demo model's masks: Dice 0.4 and 0.3, far off, failed): 0.25-1.04 mm (4 seeds), affine at most.
    """
    shapes = prompt_box_masks(inputs.ct_prompts.roi_corners_ras, inputs.xray_prompts.box_xyxy, fixed, inputs.xray.shape, perspective)
    if shapes is None:
        return failed
    # Ellipses in boxes say where the target is and how large, nothing about its outline: fit at
    # most an affine transform to them (a field would bend the images to make the ellipses agree;
    # measured on the phantom's two box retries: TRE 2.4 and 6.2 mm non-rigid, 0.65 and 1.08 mm affine).
    stage = STAGES[min(STAGES.index(options.registration.transform), STAGES.index("affine"))]
    retry = register_2d(fixed.image, fixed.plane.grid(), moving, inputs.xray_plane.grid(), *shapes,
                        replace(options.registration, transform=stage), cancelled)
    check_prompts_agree(retry, inputs, fixed, perspective)
    if not retry.passed:
        return failed
    retry.reason = f"on the prompt boxes, because SAM's masks failed ({failed.reason}); {retry.reason}"
    retry.report.update(reason=retry.reason, reference="prompt boxes", sam_masks_failure=failed.reason)
    return retry


def _confirmed_by_boxes(on_masks: RegistrationResult, on_boxes: RegistrationResult, fixed: Radiograph, xray_mask: np.ndarray,
                        moving_grid, options: PipelineOptions) -> RegistrationResult | None:
    """The registration on SAM's masks, passed after all, when it missed only the mask Dice threshold,
    its prompts agree, and the prompt boxes' registration confirms it (``confirm.confirmed``); else None.
    Measured on the abdomen CT (default model, seeds 0-3): three such results at 0.19-0.54 mm from
    the known transform instead of the boxes' 0.23-0.76 mm."""
    if on_boxes is on_masks or on_masks.report.get("prompt_distance_mm", np.inf) > on_masks.report.get("prompt_tolerance_mm", 0.0):
        return None
    result = confirmed(on_masks, on_boxes, fixed.mask, fixed.plane.grid(), xray_mask, moving_grid, options.registration, "the prompt boxes")
    if result is None and "confirmation_distance_mm" in on_masks.report:
        on_boxes.report["sam_masks_confirmation_distance_mm"] = on_masks.report["confirmation_distance_mm"]
    return result


def check_prompts_agree(registration: RegistrationResult, inputs: PipelineInputs, fixed: Radiograph, perspective=None) -> None:
    """Fail a registration that does not bring the CT's target prompt onto the X-ray's.

    The user marks the same target in both images. Two imperfect SAM masks can be aligned to each
    other (high mask Dice) while the targets are far apart; the prompts tell. The CT anchor (first
    positive point, else the ROI's centre) is projected onto the fixed plane the way the CT was
    (parallel, or along the ray from the source), mapped by the transform, and compared with the
    X-ray anchor (first positive point, else the box centre). Allowed: a quarter of the diagonal of
    the X-ray's box (two prompts inside one target lie about that close), at least 5 mm. Measured:
    0.4-7.8 mm for good registrations (tolerance about 20 mm), 50-105 mm for the ones that aligned
    two wrong masks (tolerance about 32 mm).
    """
    ct, xray = inputs.ct_prompts, inputs.xray_prompts
    positive = np.flatnonzero(np.asarray(ct.labels) == 1)
    anchor_ras = ct.points_ras[positive[0]] if len(positive) else np.asarray(ct.roi_corners_ras).mean(0)
    anchor_fixed = to_fixed_plane(anchor_ras, fixed.plane, perspective)[0]
    mapped = np.array(registration.sitk_transform.TransformPoint(tuple(float(v) for v in anchor_fixed)))
    moving_grid = inputs.xray_plane.grid()
    positive_xray = np.flatnonzero(np.asarray(xray.labels) == 1)
    if len(positive_xray):
        anchor_xray = np.asarray(xray.points_xy, float)[positive_xray[0]]
    else:
        anchor_xray = (np.asarray(xray.box_xyxy, float)[:2] + np.asarray(xray.box_xyxy, float)[2:]) / 2
    target_xray = moving_grid.to_physical(anchor_xray)[0]
    box = np.asarray(xray.box_xyxy, float).reshape(2, 2) if xray.box_xyxy is not None else None
    extent_px = np.abs(box[1] - box[0]) if box is not None else np.array([4.0, 4.0])
    tolerance = max(5.0, 0.25 * float(np.linalg.norm(extent_px * inputs.xray_plane.spacing_mm)))
    distance = float(np.linalg.norm(mapped - target_xray))
    registration.report["prompt_distance_mm"] = round(distance, 2)
    registration.report["prompt_tolerance_mm"] = round(tolerance, 2)
    if registration.passed and distance > tolerance:
        registration.passed = False
        registration.reason = (f"the CT's target prompt maps {distance:.0f} mm from the X-ray's (allowed {tolerance:.0f} mm): "
                               "the masks were aligned, but they are not the same target")
        registration.report["passed"], registration.report["reason"] = registration.passed, registration.reason


def xray_sam_rgb(xray: np.ndarray, options: PipelineOptions = PipelineOptions()) -> np.ndarray:
    """The (H, W, 3) uint8 image SAM segments of a (rows, columns) X-ray: windowed by ``options.xray_window``."""
    return to_sam_rgb(xray, resolve_range(xray, options.xray_window))


def encode_ahead_of_run(segmenter: Segmenter, xray: np.ndarray | None, ct: tuple | None, options: PipelineOptions = PipelineOptions(),
                        progress: Callable[[int, int], None] | None = None, cancelled: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Encode what ``run_pipeline`` with ``options`` will segment, before it runs: the X-ray (the
    ``PipelineInputs`` array; its embedding does not depend on the prompts), then the CT's slices
    (``ct``: (array, geometry, prompts), see ``encode_ct_ahead``); either may be None, not there
    yet. Returns (X-ray images encoded, CT slices encoded). A front end runs it on a worker thread
    while the user places prompts; the run then finds these images in the segmenter's cache."""
    before = segmenter.images_encoded
    if xray is not None:
        segmenter.embed_many([xray_sam_rgb(xray, options)])
    xray_encoded = segmenter.images_encoded - before
    if ct is None or (cancelled is not None and cancelled()):
        return xray_encoded, 0
    return xray_encoded, encode_ct_ahead(segmenter, *ct, options, progress, cancelled)


def encode_ct_ahead(segmenter: Segmenter, ct_kji: np.ndarray, ct_geometry: ImageGeometry, ct_prompts: VolumePrompts,
                    options: PipelineOptions = PipelineOptions(), progress: Callable[[int, int], None] | None = None,
                    cancelled: Callable[[], bool] | None = None) -> int:
    """Encode the CT slices that ``run_pipeline`` with ``options`` will segment, before it runs
    (``volume.encode_ahead`` on the pipeline's view grid and window); returns the images encoded.
    A front end calls it once the CT and its prompts are there, while the X-ray is still being prompted."""
    grid, ct_view, axis = ct_view_grid(ct_kji, ct_geometry, options.view)
    return encode_ahead(segmenter, ct_view, grid, ct_prompts, axis, options.ct_window, options.slice_step, progress, cancelled)


def ct_view_grid(ct_kji: np.ndarray, geometry: ImageGeometry, view: str = "AP") -> tuple[ImageGeometry, np.ndarray, int]:
    """The CT as SAM sees it in the pipeline: (view grid, (k, j, i) float32 CT on it, slice axis).

    A 3D CT is resampled onto the view-aligned grid and cut across the axis nearest its own slice
    direction, so the stored orientation (LPS, RAS, oblique) does not matter; one slice stays as is.
    """
    if ct_kji.shape[0] == 1:
        return geometry, ct_kji.astype(np.float32), 2
    grid = view_geometry(geometry, view)
    view_kji = resample(np.asarray(ct_kji, np.float32), geometry, grid, default=float(ct_kji.min()))  # no copy of a float32 CT
    return grid, view_kji, _axis_nearest(grid, geometry.ijk_to_ras[:3, 2])


def _axis_nearest(grid: ImageGeometry, direction_ras: np.ndarray) -> int:
    """The grid's IJK axis most nearly parallel to ``direction_ras`` (slices are cut across it)."""
    axes = grid.ijk_to_ras[:3, :3] / grid.spacing_mm
    return int(np.argmax(np.abs(axes.T @ (direction_ras / np.linalg.norm(direction_ras)))))


def transform_in_ras(sitk_transform, fixed: Plane, moving: Plane) -> tuple[np.ndarray, np.ndarray | None]:
    """The 2D fixed -> moving transform as (4, 4) RAS "from parent" matrix and optional displacement.

    A composite (affine after a displacement field on the fixed grid) gives the field in RAS mm,
    (rows, columns, 3); the matrix then applies after it.
    """
    import SimpleITK as sitk

    if isinstance(sitk_transform, sitk.CompositeTransform) or sitk_transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(sitk_transform)
        affine = sitk.AffineTransform(composite.GetNthTransform(0))
        field_image = sitk.DisplacementFieldTransform(composite.GetNthTransform(1)).GetDisplacementField()
        field_uv = sitk.GetArrayFromImage(field_image)  # (rows, columns, 2) in the fixed frame
        displacement = field_uv[..., :1] * fixed.x_ras + field_uv[..., 1:] * fixed.y_ras
    else:
        affine, displacement = sitk.AffineTransform(sitk_transform), None
    matrix = np.array(affine.GetMatrix()).reshape(2, 2)
    centre, translation = np.array(affine.GetCenter()), np.array(affine.GetTranslation())
    return linear_from_fixed_ras(fixed, moving, matrix, centre + translation - matrix @ centre), displacement
