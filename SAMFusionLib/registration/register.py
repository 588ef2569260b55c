"""Markerless 2D registration driven by SAM masks: Match_Loss on soft masks (+ optional NGF).

Fixed and moving images each have a ``Grid2D`` (ITK physical frame). The transform maps fixed
points to moving points (ITK's resampling convention). Steps:
1. initialise from mask moments: centroids (translation), principal axes (rotation, both
   directions tried), area ratio (scale);
2. optimise with L-BFGS (``schedule``, ``lbfgs.minimise``): rigid -> similarity -> affine at the coarsest level
   (pixel factor 4), the affine refined at factors 2 and 1; then, for a non-rigid result, a
   displacement on a control grid (cubic, bending penalty) coarse to fine again. Below the
   coarsest linear stages the moving mask's contour may also shift uniformly (``MaskOffset``):
   SAM's masks in two modalities differ by such an erosion or dilation, not a transform;
3. keep the non-rigid result only if the data support it over the affine one: the masks fit
   clearly better, or (and, with ``select_by="both"``) the images' gradient correlation rises (a
   non-rigid field can fit noise and the masks' imperfections as well as anatomy);
4. check quality: mask Dice after warping, Match_Loss before (identity) and after, a sane
   scale and a fold-free non-rigid field. A failed check is reported as a failure, never hidden.

NumPy and OpenCV only: each loss term returns its gradient (``match_loss``, ``levels``,
``transforms2d`` write the chain rule out), so a cold ``samfusion register`` imports no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.grid2d import Grid2D, downsampled
from SAMFusionLib.registration.lbfgs import minimise
from SAMFusionLib.registration.levels import Level
from SAMFusionLib.registration.match_loss import match_loss_gradient, ngf_loss_gradient, soft_mask
from SAMFusionLib.registration.transforms2d import STAGES, Transform2D
from SAMFusionLib.registration.verdict import gradient_correlation_after, mask_mismatch, quality_check


@dataclass(frozen=True)
class RegistrationOptions:
    """What ``register_2d`` fits and how. Figures in comments: ``samfusion bench register``, median
    TRE / success rate / s per case, on the 2-core CPU (40 cases unless said)."""

    transform: str = "nonrigid"
    match_weight: float = 1.0
    intensity_weight: float = 1.0
    bending_weight: float = 2e-4  # per mm^2 of squared second differences of the control displacements
    levels: tuple[int, ...] = (4, 2, 1)
    iterations: int = 20  # per linear stage
    nonrigid_iterations: int = 50  # at the coarsest level twice this
    nonrigid_levels: tuple[int, ...] = (4, 2, 1)  # the levels at which the non-rigid field is optimised
    # At the finest level only a short polish (most of the work is done coarser): fine_iterations for
    # a 400 x 400 image, more for smaller ones, fine_pixel_budget / pixels up to max_fine_iterations
    # (the abdomen CT's 3 mm projection, 112 x 122, affine: 4 -> 20 iterations, TRE 0.51-1.65 -> 0.37-0.73 mm).
    fine_iterations: int = 4
    fine_pixel_budget: int = 640_000
    max_fine_iterations: int = 20
    # 10 x 10 -> 12 x 12 knots: 0.51 -> 0.48 mm on 20 cases (the best fit of the benchmark's smooth
    # warps leaves 0.23 mm on 10 x 10, 0.10 mm on 12 x 12).
    control_shape: tuple[int, int] = (12, 12)
    radius_px: float = 6.0
    # SAM's masks of the same target differ by a uniform erosion or dilation (a pixel or two, more
    # in one modality than the other). The fit absorbs one up to this bound with a free offset of the
    # moving mask's contour, so that the transform is not bent to make up for it
    # (0 -> 2 px, seed 0, with the masks alone as selection evidence: 0.466 mm / 0.975 -> 0.391 mm / 1.00).
    mask_offset_px: float = 2.0
    min_dice: float = 0.7
    match_mode: str = "vector"
    # Below the coarsest level, and for the non-rigid field at every level, the masks' own
    # imperfections would bias the fit, so the intensity term takes over: the mask term's weight is
    # scaled by these (non-rigid 0.3 -> 0.5, seeds 0-2, masks alone as selection evidence: 0.40 / 0.42 / 0.39 mm, success 0.975 / 0.95 /
    # 0.975 -> 0.39 / 0.41 / 0.39 mm, 1.00 / 1.00 / 0.975).
    fine_match_scale: float = 0.3
    nonrigid_match_scale: float = 0.5
    # Keep the non-rigid result only when the data support it (a field also fits noise and the
    # masks' imperfections). Two kinds of support: the masks fit clearly better, their Match_Loss
    # (offset-corrected, ``mask_mismatch``) falling by the factor ``selection_gain`` (on the
    # benchmark's 200 cases of seeds 0-4, a true non-rigid warp gives 1.14-2.0, a true affine one
    # 0.98-1.25 (5th-95th percentile): the kinds overlap, but a field kept by mistake costs less than
    # one dropped by mistake. 1.15 -> 1.12 on those cases: 8 flip, 5 better (3.20 -> 0.77 mm at
    # most), 2 worse (0.12 -> 0.66 mm at most), success 198 -> 199 of 200; the pipeline's 48 phantom
    # seeds: 1 flips, 1.15 -> 1.71 mm); and the images' gradient correlation rises by more than
    # ``correlation_gain``. ``select_by="either"`` keeps the field on either (benchmark
    # seeds 0-4: median 0.39-0.48 mm, success 0.975-1.00; the phantom with true masks, whose warp
    # is nearly affine over the small target, 0.89 -> 0.47 mm against the masks alone); "both"
    # needs both (for rough masks, see PipelineOptions.select_by; on the benchmark too strict:
    # success 0.93-0.95, the abdomen's correlation is flat). Without masks: the correlation alone.
    select_model: bool = True
    select_by: str = "either"
    selection_gain: float = 1.12
    # The correlation must rise by more than this: a smaller rise is what a field fitted to noise
    # gets (0 -> 0.01: seed 1 0.452 -> 0.407 mm, seeds 0 and 2-4 and the phantom with true masks
    # unchanged; in the pipeline's "both", phantom seed 7 1.93 -> 0.97 mm).
    correlation_gain: float = 0.01
    ngf_epsilon: float = 0.2  # on standardised images; larger ignores weak (noisy) gradients (0.05 -> 0.2: median TRE 0.96 -> 0.78 mm)
    # Larger images are registered on area-averaged working copies of at most this many pixels a
    # side (a 2000 px radiograph at 0.16 mm: 205 s and 2.2 GB at full size). The transform is
    # physical, so it is the full images' transform too; the levels above are factors of the working copy.
    # 8 cases resampled to 2000 px: 512 -> median 0.419 mm, 2.6 s warm (the same cases at 400 px: 0.417 mm);
    # 640 -> 0.436 mm, 3.7 s.
    max_working_px: int = 512


@dataclass
class RegistrationResult:
    transform: Transform2D
    sitk_transform: object
    passed: bool
    reason: str
    report: dict = field(default_factory=dict)


def _moments(mask: np.ndarray, grid: Grid2D) -> tuple[np.ndarray, float, float, float]:
    """(centroid mm, principal angle rad, physical area mm^2, anisotropy of the second moments)."""
    ys, xs = np.nonzero(mask)
    points = grid.to_physical(np.c_[xs, ys].astype(float))
    centroid = points.mean(0)
    covariance = np.cov((points - centroid).T) if len(points) > 2 else np.eye(2)
    values, vectors = np.linalg.eigh(covariance)
    angle = float(np.arctan2(vectors[1, 1], vectors[0, 1]))
    area = len(points) * float(np.prod(grid.spacing))
    return centroid, angle, area, float(values[1] / max(values[0], 1e-9))


def _check_inputs(fixed, fixed_grid, moving, moving_grid, fixed_mask, moving_mask) -> None:
    for name, image in (("fixed", fixed), ("moving", moving)):
        if image.ndim != 2:
            raise SamFusionError(f"the {name} image must be 2D, got {image.ndim} dimensions")
        if not np.all(np.isfinite(image)):
            raise SamFusionError(f"the {name} image contains NaN or infinite values")
    for name, mask, image in (("fixed", fixed_mask, fixed), ("moving", moving_mask, moving)):
        if mask is None:
            continue
        if mask.shape != image.shape:
            raise SamFusionError(f"the {name} mask ({mask.shape}) does not match its image ({image.shape})")
        if not mask.any():
            raise SamFusionError(f"the {name} mask is empty: the target was not found in that image")
    if (fixed_mask is None) != (moving_mask is None):
        raise SamFusionError("give both masks or neither")
    (low_f, high_f), (low_m, high_m) = fixed_grid.bounds(), moving_grid.bounds()
    # With masks the start comes from their moments, so the two frames may lie anywhere (an X-ray's
    # detector frame and a CT projection's plane share no origin); without, they must overlap.
    if fixed_mask is None and np.any(np.minimum(high_f, high_m) <= np.maximum(low_f, low_m)):
        raise SamFusionError("the fixed and moving images' fields of view do not overlap")


class MaskOffset:
    """A fitted offset (mm) of the moving mask's contour along its normal, bounded to +-bound_mm
    (``bound_mm * tanh(raw)``)."""

    def __init__(self, bound_mm: float):
        self.bound_mm = bound_mm
        self.raw = 0.0

    def mm(self) -> float:
        return self.bound_mm * float(np.tanh(self.raw))

    def slope(self) -> float:
        """d mm / d raw."""
        return self.bound_mm * (1.0 - float(np.tanh(self.raw)) ** 2)


def _loss(level: Level, transform: Transform2D, options: RegistrationOptions, use_masks: bool, nonrigid: bool,
          match_scale: float = 1.0, offset: MaskOffset | None = None) -> tuple[float, dict[str, np.ndarray], float]:
    """The registration loss at ``level``; its gradient with respect to the transform's parameters
    (by name) and with respect to the offset's raw parameter (0 without one)."""
    warped = level.warp(transform, nonrigid)
    grad_maps = np.zeros_like(warped.maps)
    grad_exposure = None
    grad_offset = 0.0
    total = 0.0
    if use_masks and match_scale > 0:
        weight = options.match_weight * match_scale
        moved = warped.maps[0]
        live = None
        if offset is not None:  # the moving mask map is unclipped: offset its contour, then clip like the fixed one
            shifted = moved + offset.mm() / level.radius_mm
            moved, live = np.clip(shifted, -1.0, 1.0), (shifted >= -1.0) & (shifted <= 1.0)
        loss, grad = match_loss_gradient(level.fixed_gradients[0], moved, options.match_mode)
        grad = weight * (grad if live is None else grad * live)
        total += weight * loss
        grad_maps[0] = grad
        if offset is not None:
            grad_offset = float(grad.sum(dtype=np.float64)) * offset.slope() / level.radius_mm
    if options.intensity_weight > 0 or not use_masks:
        weight = options.intensity_weight if use_masks else 1.0
        loss, grad, grad_exposure = ngf_loss_gradient(level.fixed_gradients[-1], warped.maps[-1], options.ngf_epsilon, warped.exposure)
        total += weight * loss
        grad_maps[-1] += weight * grad
        grad_exposure = None if grad_exposure is None else weight * grad_exposure
    gradient = level.backward(transform, warped, grad_maps, grad_exposure)
    if nonrigid:
        energy, grad_d = transform.bending_energy()
        total += options.bending_weight * energy
        gradient["d"] = gradient["d"] + options.bending_weight * grad_d
    return total, gradient, grad_offset


@dataclass(frozen=True)
class Step:
    """One L-BFGS run: at pixel ``factor``, freeing the parameters of ``stage``, for up to
    ``iterations``, with the mask term's weight scaled by ``match_scale``."""

    factor: int
    stage: str
    iterations: int
    match_scale: float


def schedule(options: RegistrationOptions, fixed_pixels: int) -> list[Step]:
    """The optimisation steps, in order, for a fixed image of ``fixed_pixels`` pixels."""
    final = STAGES.index(options.transform)
    linear = min(final, 2)
    coarsest, finer = options.levels[0], options.levels[1:]
    # The finest level costs in proportion to its pixels: a small image gets more polish for the same time.
    fine = int(np.clip(options.fine_pixel_budget // max(fixed_pixels, 1), options.fine_iterations, options.max_fine_iterations))

    def iterations(factor: int, normal: int) -> int:
        return fine if factor == options.levels[-1] and factor != coarsest else normal

    steps = [Step(coarsest, stage, options.iterations, 1.0) for stage in STAGES[: linear + 1]]
    steps += [Step(f, STAGES[linear], iterations(f, options.iterations), options.fine_match_scale) for f in finer]
    if final == 3:
        steps += [Step(f, "nonrigid", iterations(f, options.nonrigid_iterations * (2 if f == coarsest else 1)), options.nonrigid_match_scale)
                  for f in options.levels if f in options.nonrigid_levels]
    return steps


def _optimise(level, transform, options, use_masks, step: Step, cancelled=None, offset: MaskOffset | None = None) -> float:
    """Run ``step`` from the current ``transform`` (and ``offset``), updating them; the loss reached."""
    nonrigid = step.stage == "nonrigid"
    names = transform.free_names(step.stage)
    # The offset is free from the first finer level on, and for the non-rigid field: at the coarsest
    # linear stages, far from the solution, an offset could only trade overlap for a smaller band.
    offset_free = offset is not None and (step.factor != options.levels[0] or nonrigid)

    def set_point(x: np.ndarray) -> None:
        transform.set_flat(step.stage, x[:-1] if offset_free else x)
        if offset_free:
            offset.raw = float(x[-1])

    def evaluate(x: np.ndarray) -> tuple[float, np.ndarray]:
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled during registration")
        set_point(x)
        loss, gradient, grad_offset = _loss(level, transform, options, use_masks, nonrigid, step.match_scale, offset)
        flat = np.concatenate([gradient[name].ravel() for name in names] + ([np.array([grad_offset])] if offset_free else []))
        return loss, flat

    start = transform.flat(step.stage)
    if offset_free:
        start = np.append(start, offset.raw)
    x, loss = minimise(evaluate, start, step.iterations)
    set_point(x)
    return loss


def exposed_field(image: np.ndarray, margin_px: int = 3) -> np.ndarray:
    """(H, W) bool: the image without a collimator's uniform border.

    Edge rows and columns whose values are all (nearly) equal, within 1% of the image's range, on
    all four sides, are unexposed; so are ``margin_px`` more inside, so that the collimator's edge, a strong gradient
    that the CT's projection does not have, never pulls the intensity term. All True when the
    image has no such border.
    """
    tolerance = 0.01 * float(np.ptp(image))
    flat_rows = np.ptp(image, axis=1) <= tolerance
    flat_columns = np.ptp(image, axis=0) <= tolerance

    def run(flags: np.ndarray) -> int:
        return int(np.argmin(flags)) if not flags.all() else len(flags)

    top, bottom = run(flat_rows), run(flat_rows[::-1])
    left, right = run(flat_columns), run(flat_columns[::-1])
    field = np.ones(image.shape, bool)
    # A collimator frames the image on all four sides; flat rows on only some sides are something
    # else (e.g. a rotated detector's fill) and are left alone (measured: treating those too cost
    # the benchmark's success rate 1.00 -> 0.85).
    if top and bottom and left and right:
        field[:] = False
        height, width = image.shape
        field[top + margin_px : height - bottom - margin_px, left + margin_px : width - right - margin_px] = True
    return field


def _standardise(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    spread = float(image.std())
    if spread == 0:
        raise SamFusionError("an image is constant; nothing to register")
    return (image - float(image.mean())) / spread


def register_2d(
    fixed: np.ndarray,
    fixed_grid: Grid2D,
    moving: np.ndarray,
    moving_grid: Grid2D,
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    options: RegistrationOptions = RegistrationOptions(),
    cancelled: Callable[[], bool] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` ((H, W) arrays with their grids); masks are (H, W) bool.
    ``cancelled()`` is polled at every optimiser evaluation.

    The cost is bounded in the images' size: an image longer than ``options.max_working_px`` on a
    side is registered on its working copy (``grid2d.downsampled``); the result, a physical
    transform, applies to the full image unchanged. ``report["working_px"]`` gives the sizes used.
    """
    start = time.perf_counter()
    _check_inputs(fixed, fixed_grid, moving, moving_grid, fixed_mask, moving_mask)
    limit = options.max_working_px
    fixed_w, fixed_grid_w = downsampled(fixed, fixed_grid, limit)
    moving_w, moving_grid_w = downsampled(moving, moving_grid, limit)
    fixed_mask_w = None if fixed_mask is None else downsampled(fixed_mask, fixed_grid, limit, mask=True)[0]
    moving_mask_w = None if moving_mask is None else downsampled(moving_mask, moving_grid, limit, mask=True)[0]
    result = _register(fixed_w, fixed_grid_w, moving_w, moving_grid_w, fixed_mask_w, moving_mask_w, options, cancelled)
    result.report["working_px"] = {"fixed": list(fixed_w.shape[::-1]), "moving": list(moving_w.shape[::-1])}
    result.report["seconds"] = round(time.perf_counter() - start, 3)
    return result


def _register(fixed, fixed_grid, moving, moving_grid, fixed_mask, moving_mask, options, cancelled) -> RegistrationResult:
    """``register_2d`` on images within the working size, already checked; ``register_2d`` adds
    the report's ``seconds`` and ``working_px``."""
    if options.transform not in STAGES:
        raise SamFusionError(f"unknown transform {options.transform!r}: use {', '.join(STAGES)}")
    if options.select_by not in ("either", "both"):
        raise SamFusionError(f"unknown select_by {options.select_by!r}: use either or both")
    final = STAGES.index(options.transform)
    use_masks = fixed_mask is not None
    fixed_i, moving_i = _standardise(fixed), _standardise(moving)

    if use_masks:
        c_f, angle_f, area_f, aniso_f = _moments(fixed_mask, fixed_grid)
        c_m, angle_m, area_m, aniso_m = _moments(moving_mask, moving_grid)
        # A rigid result keeps scale 1: the area ratio seeds only the models that may scale.
        log_scale = 0.5 * np.log(area_m / area_f) if options.transform != "rigid" else 0.0
        # An elongated target defines its axis (up to 180 degrees); a round one does not.
        angles = [angle_m - angle_f, angle_m - angle_f + np.pi] if min(aniso_f, aniso_m) > 1.3 else [0.0]
    else:
        c_f = fixed_grid.to_physical(np.array([(fixed.shape[1] - 1) / 2, (fixed.shape[0] - 1) / 2]))[0]
        c_m = moving_grid.to_physical(np.array([(moving.shape[1] - 1) / 2, (moving.shape[0] - 1) / 2]))[0]
        log_scale, angles = 0.0, [0.0]

    def radius_mm(factor: int) -> float:
        """The mask maps' clipping radius at pixel ``factor``."""
        return options.radius_px * factor * float(fixed_grid.spacing.mean())

    def maps(factor: int, which: str):
        grid, mask, image = (fixed_grid, fixed_mask, fixed_i) if which == "fixed" else (moving_grid, moving_mask, moving_i)
        # The moving mask's map stays unclipped when its contour may be offset (clipped in _loss).
        clip = which == "fixed" or options.mask_offset_px == 0
        return ([soft_mask(mask, float(grid.spacing.mean()), radius_mm(factor), clip)] if use_masks else []) + [image]

    field = exposed_field(moving)
    rows, columns = np.nonzero(field.any(1))[0], np.nonzero(field.any(0))[0]
    exposed = (int(columns[0]), int(columns[-1]), int(rows[0]), int(rows[-1]))
    field = None if field.all() else field
    levels = {f: Level(f, maps(f, "fixed"), maps(f, "moving"), fixed_grid, moving_grid, exposed, radius_mm(f), options.control_shape)
              for f in options.levels}
    offset = MaskOffset(options.mask_offset_px * float(fixed_grid.spacing.mean())) if use_masks and options.mask_offset_px > 0 else None
    coarse = levels[options.levels[0]]
    candidates = []
    for angle in angles:
        candidate = Transform2D(c_f, c_m - c_f, angle, log_scale, options.control_shape)
        candidates.append((_loss(coarse, candidate, options, use_masks, False, offset=offset)[0], candidate))
    transform = min(candidates, key=lambda pair: pair[0])[1]

    history = []
    linear_result = None
    for step in schedule(options, fixed.size):
        if step.stage == "nonrigid" and linear_result is None:
            linear_result = transform.copy()
        loss = _optimise(levels[step.factor], transform, options, use_masks, step, cancelled, offset)
        history.append({"level": step.factor, "stage": step.stage, "loss": round(loss, 5)})

    nonrigid = final == 3
    sitk_transform = transform.to_sitk(fixed_grid, nonrigid)
    correlation = gradient_correlation_after(fixed, fixed_grid, moving, moving_grid, sitk_transform, field)
    chosen = options.transform
    if linear_result is not None and options.select_model:
        linear_sitk = linear_result.to_sitk(fixed_grid, False)
        linear_correlation = gradient_correlation_after(fixed, fixed_grid, moving, moving_grid, linear_sitk, field)
        # A field the data do not support has fitted noise or the masks' imperfections (see
        # RegistrationOptions.select_model).
        images_support = correlation > linear_correlation + options.correlation_gain
        supported = images_support
        if use_masks:
            mismatch = mask_mismatch(fixed_mask, fixed_grid, moving_mask, moving_grid, sitk_transform, radius_mm(1), options.mask_offset_px)
            linear_mismatch = mask_mismatch(fixed_mask, fixed_grid, moving_mask, moving_grid, linear_sitk, radius_mm(1), options.mask_offset_px)
            masks_support = linear_mismatch > options.selection_gain * mismatch
            supported = (masks_support and images_support) if options.select_by == "both" else (masks_support or images_support)
        if not supported:
            transform, sitk_transform, correlation, chosen = linear_result, linear_sitk, linear_correlation, "affine"
    passed, reason, quality = quality_check(fixed_mask, fixed_grid, moving_mask, moving_grid, sitk_transform, transform, options)
    quality["gradient_correlation"] = round(correlation, 4)
    report = {
        "transform": options.transform,
        "chosen_model": chosen,
        "seconds": None,  # set by register_2d, which times the whole call
        "parameters": transform.summary(),
        "mask_offset_mm": None if offset is None else round(offset.mm(), 3),
        "stages": history,
        **quality,
        "passed": passed,
        "reason": reason,
    }
    return RegistrationResult(transform, sitk_transform, passed, reason, report)
