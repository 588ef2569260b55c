"""CT windows and X-ray normalisation into SAM's uint8 RGB."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.intensity import IntensityRange, resolve_range, to_sam_rgb, to_uint8


def test_ct_presets_map_hu_linearly():
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    soft = resolve_range(hu, "soft_tissue")  # level 40, width 400: -160..240
    assert (soft.low, soft.high) == (-160.0, 240.0)
    assert to_uint8(hu, soft).tolist() == [[0, 0, 128, 255, 255]]
    bone = resolve_range(hu, "bone")
    assert (bone.low, bone.high) == (-500.0, 1300.0)
    stone = resolve_range(hu, "stone")
    assert (stone.low, stone.high) == (-100.0, 1500.0)
    assert resolve_range(hu, "50,100") == IntensityRange(0.0, 100.0)


def test_uint8_grey_is_passed_through_unchanged():
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = to_sam_rgb(grey, resolve_range(grey, "auto"))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)


def test_16bit_and_signed_inputs_use_percentiles():
    rng = np.random.default_rng(0)
    sixteen = rng.integers(0, 4096, size=(64, 64)).astype(np.uint16)
    sixteen[0, 0] = 30000  # one hot pixel must not squash the contrast
    rgb = to_sam_rgb(sixteen, resolve_range(sixteen, "auto"))
    assert rgb[..., 0].max() == 255 and rgb[..., 0].min() == 0
    assert 100 < np.median(rgb[..., 0]) < 155
    signed = (sixteen.astype(np.int32) - 2048).astype(np.int16)
    shifted = to_sam_rgb(signed, resolve_range(signed, "auto")).astype(int)
    assert np.abs(shifted - to_sam_rgb(sixteen, resolve_range(sixteen, "auto"))).max() <= 1  # same up to rounding


def test_rgb_uint8_is_kept():
    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3)).astype(np.uint8)
    assert np.array_equal(to_sam_rgb(rgb, resolve_range(rgb, "auto")), rgb)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8), np.nan), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 2.0]]), "NaN or infinite"),
        (np.full((8, 8), 7.0), "constant"),
    ],
)
def test_unusable_images_are_refused(array, message):
    with pytest.raises(SamFusionError, match=message):
        resolve_range(array, "auto")


def test_unknown_window_is_refused():
    with pytest.raises(SamFusionError, match="unknown window 'brain'"):
        resolve_range(np.arange(4.0), "brain")
