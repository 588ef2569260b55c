"""Zoom mode: crop placement and pasting back on the full grid."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.zoom import MIN_CROP_PX, _crop_window, predict_zoomed


def test_crop_window_stays_inside_and_has_a_minimum_size():
    assert _crop_window(np.array([100.0, 80.0]), 10, 200, 300) == (76, 56, 124, 104)
    assert _crop_window(np.array([2.0, 3.0]), 60, 200, 300) == (0, 0, 60, 60)
    x0, y0, x1, y1 = _crop_window(np.array([299.0, 199.0]), 60, 200, 300)
    assert (x1, y1) == (300, 200) and x1 - x0 == 60
    assert _crop_window(np.array([5.0, 5.0]), 1000, 40, 50) == (0, 0, 40, 40)
    assert MIN_CROP_PX == 48


def test_zoom_off_is_the_plain_prediction_and_on_pastes_into_the_crop(tiny_model):
    rgb = (np.random.default_rng(0).random((160, 200, 3)) * 255).astype(np.uint8)
    segmenter = Segmenter(tiny_model)
    segmenter.set_image(rgb)
    plain = segmenter.predict(np.array([[100.0, 80.0]]), np.array([1]))
    off = predict_zoomed(segmenter, rgb, np.array([[100.0, 80.0]]), np.array([1]), zoom="off")
    np.testing.assert_array_equal(off.mask, plain.mask)
    on = predict_zoomed(segmenter, rgb, None, None, np.array([90.0, 70.0, 110.0, 90.0]), zoom="on")
    assert on.mask.shape == (160, 200)
    x0, y0, x1, y1 = _crop_window(np.array([100.0, 80.0]), 80, 160, 200)  # CONTEXT (4) x the 20 px box
    outside = np.ones((160, 200), bool)
    outside[y0:y1, x0:x1] = False
    assert not on.mask[outside].any()
    with pytest.raises(SamFusionError, match="unknown zoom mode"):
        predict_zoomed(segmenter, rgb, np.array([[1.0, 1.0]]), np.array([1]), zoom="maybe")
