"""Prompts at the image's edge, as users give them: box corners past the edge are clipped to the
outer pixel edges (the image spans -0.5..W-0.5), boxes with no area left are errors."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry, SliceAxes, clip_box, roi_corners_ras
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
from SAMFusionLib.imaging.metrics import dice
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.volume import VolumePrompts, plan_prompts


@pytest.mark.parametrize("box, clipped, was_clipped", [
    ((0, 0, 640, 524), (-0.0, 0, 639.5, 523.5), True),          # an exclusive corner at W, H
    ((-3, -7, 100, 50), (-0.5, -0.5, 100, 50), True),            # a box dragged past the top-left
    ((100, 50, 10, 5), (10, 5, 100, 50), False),                 # corners in any order
    ((-0.5, -0.5, 639.5, 523.5), (-0.5, -0.5, 639.5, 523.5), False),
])
def test_clip_box(box, clipped, was_clipped):
    result, flag = clip_box(box, 524, 640)
    np.testing.assert_allclose(result, clipped)
    assert flag is was_clipped


@pytest.mark.parametrize("box, message", [
    ((640, 0, 700, 50), r"box \(640, 0, 700, 50\) lies outside the 640x524 image"),
    ((-20, -20, -1, 30), "lies outside"),
    ((50, 50, 50, 50), "has no area"),
    ((10, 50, 90, 50), "has no area"),
    ((np.nan, 0, 10, 10), "4 finite numbers"),
])
def test_boxes_with_no_area_on_the_image_are_errors(box, message):
    with pytest.raises(SamFusionError, match=message):
        clip_box(box, 524, 640)


def test_every_lung_box_of_the_shared_chest_xrays_is_accepted(shared_data, demo_model):
    """Bounding boxes of the manual lung masks with exclusive upper corners, as YOLO and COCO give
    them: each is accepted, and where it reaches the edge its mask's Dice against the lung equals
    that of the box pulled in by one pixel."""
    from SAMFusionLib.cases.shared_data import chest_xray_cases

    segmenter = Segmenter(demo_model)
    boxes = at_edge = 0
    for case in chest_xray_cases():
        height, width = case.image.shape
        segmenter.set_image(to_sam_rgb(case.image, resolve_range(case.image, "auto")))
        for lung in case.lungs:
            rows, columns = np.nonzero(lung)
            box = np.array([columns.min(), rows.min(), columns.max() + 1, rows.max() + 1], float)
            mask = segmenter.predict(box_xyxy=box).mask
            boxes += 1
            if box[2] > width - 0.5 or box[3] > height - 0.5:
                at_edge += 1
                pulled_in = segmenter.predict(box_xyxy=box - np.array([0, 0, 1, 1])).mask
                assert abs(dice(mask, lung) - dice(pulled_in, lung)) <= 0.01, case.name
    assert boxes == 50 and at_edge == 6  # measured: 6 of the 50 lung boxes reach the right or bottom edge


def test_the_command_accepts_an_exclusive_corner_and_says_it_clipped(capsys, png, checkpoint, tmp_path):
    code = main(["segment", str(png), "--box", "100", "30", "160", "120", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.png")])
    assert code == 0
    assert capsys.readouterr().err.strip() == "samfusion: note: the box reaches past the 160x120 image; clipped to (100, 30, 159.5, 119.5)"


def test_a_points_half_a_pixel_rule(capsys, png, checkpoint, tmp_path):
    out = tmp_path / "m.png"
    assert main(["segment", str(png), "--point", "159.5", "-0.5", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["segment", str(png), "--point", "159.6", "10", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "n.png")]) == 2
    assert "lies outside the 160x120 image" in capsys.readouterr().err


def test_an_roi_reaching_past_the_volume_is_clipped_to_it():
    # 30 x 20 x 10 voxels (i, j, k), 1 x 1 x 2 mm, RAS-aligned: the ROI spans i 15..35 and k -3..12.
    geometry = ImageGeometry.from_lps((1.0, 1.0, 2.0), (0, 0, 0), np.diag([-1.0, -1.0, 1.0]), (10, 20, 30))
    plan = plan_prompts(VolumePrompts(roi_corners_ras=roi_corners_ras([25, 5, 9], [20, 4, 30])), geometry, SliceAxes(2))
    assert (plan.first, plan.last) == (0, 9)
    np.testing.assert_allclose(plan.roi_box, [15, 3, 29.5, 7])
