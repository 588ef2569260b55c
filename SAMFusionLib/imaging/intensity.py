"""Intensity mapping: CT windows and X-ray percentiles -> the uint8 RGB images SAM expects.

A mapping is resolved once per image or volume into a fixed (low, high) range, so every slice of
a volume uses the same contrast and the range can be part of the embedding-cache key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError

# (level, width) in HU. "stone" keeps kidney stones (300-1500 HU) bright against soft tissue.
CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "bone": (400.0, 1800.0),
    "soft_tissue": (40.0, 400.0),
    "stone": (700.0, 1600.0),
    "lung": (-600.0, 1500.0),
}

DEFAULT_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityRange:
    """A resolved linear mapping: values <= low -> 0, values >= high -> 255."""

    low: float
    high: float

    def key(self) -> str:
        """A stable text form for cache keys."""
        return f"{self.low:.6g}:{self.high:.6g}"


def check_finite_nonconstant(array: np.ndarray, what: str = "image") -> None:
    """Raise a clear error for images SAM cannot use: NaN/inf values or a single constant value."""
    if array.size == 0:
        raise SamFusionError(f"{what} is empty")
    if not np.all(np.isfinite(array)):
        raise SamFusionError(f"{what} contains NaN or infinite values")
    if float(np.min(array)) == float(np.max(array)):
        raise SamFusionError(f"{what} is constant (every pixel is {float(np.min(array)):g}); nothing to segment")


def resolve_range(array: np.ndarray, window: str = "auto", percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> IntensityRange:
    """Turn a window request into a fixed range for ``array`` (any shape, any real dtype).

    Args:
        array: the whole image or volume; percentiles are taken over all of it.
        window: a CT preset name (``CT_WINDOW_PRESETS``), ``"level,width"`` in HU,
            ``"percentile"`` (robust X-ray normalisation), ``"raw"`` (uint8 as is), or ``"auto"``:
            uint8 data stays as is, anything else (16-bit, signed, float) uses percentiles.
    """
    check_finite_nonconstant(array)
    if window == "auto":
        window = "raw" if array.dtype == np.uint8 else "percentile"
    if window == "raw":
        return IntensityRange(0.0, 255.0)
    if window == "percentile":
        low, high = np.percentile(array, percentiles)
        if high <= low:  # a mostly-constant image: fall back to the full range
            low, high = float(np.min(array)), float(np.max(array))
        return IntensityRange(float(low), float(high))
    if window in CT_WINDOW_PRESETS:
        level, width = CT_WINDOW_PRESETS[window]
    else:
        try:
            level, width = (float(v) for v in window.split(","))
        except ValueError:
            raise SamFusionError(
                f"unknown window {window!r}: use auto, raw, percentile, {', '.join(CT_WINDOW_PRESETS)} or LEVEL,WIDTH"
            ) from None
        if not (np.isfinite(level) and np.isfinite(width)):
            raise SamFusionError(f"window {window!r} must be two finite numbers LEVEL,WIDTH")
        if width <= 0:
            raise SamFusionError(f"window width must be positive, got {width:g}")
    return IntensityRange(level - width / 2.0, level + width / 2.0)


def to_uint8(array: np.ndarray, intensity: IntensityRange) -> np.ndarray:
    """Map values linearly so that ``low`` -> 0 and ``high`` -> 255; same shape, dtype uint8."""
    if intensity == IntensityRange(0.0, 255.0) and array.dtype == np.uint8:
        return array
    scaled = (array.astype(np.float32) - intensity.low) * (255.0 / (intensity.high - intensity.low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_sam_rgb(slice_yx: np.ndarray, intensity: IntensityRange) -> np.ndarray:
    """A (H, W) grey or (H, W, 3) RGB slice -> (H, W, 3) uint8 RGB, the input of ``SamPredictor``."""
    image = to_uint8(slice_yx, intensity)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise SamFusionError(f"expected a grey (H, W) or RGB (H, W, 3) slice, got shape {image.shape}")
