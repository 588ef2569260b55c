"""The embedded models: pinned checksums, and real segmentations of fresh phantoms by the default model."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.cases.phantom import ct_volume
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
from SAMFusionLib.imaging.metrics import dice
from SAMFusionLib.sam.models import load_table, resources_dir
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.weights import sha256_file
from SAMFusionLib.sam.zoom import predict_zoomed

FRESH_SEEDS = (9001, 9002, 9003)  # training draws phantoms from seeds (0, step) and (0, 2e6): these were never seen


@pytest.mark.parametrize("model_id", ["samfusion-demo", "samfusion-lite"])
def test_shipped_checkpoint_matches_the_table(model_id):
    entry = load_table().entry(model_id)
    path = resources_dir() / entry.embedded
    assert entry.sha256 and len(entry.sha256) == 64
    assert sha256_file(path) == entry.sha256
    assert path.stat().st_size <= 25 * 1024 * 1024


def test_the_default_is_the_fine_tuned_lite_model_and_stores_only_its_heads():
    import torch

    table = load_table()
    assert table.default == "samfusion-lite"
    entry = table.entry("samfusion-lite")
    assert entry.extra["base"] == "lite_medsam" and entry.architecture == "lite_medsam"
    heads = torch.load(resources_dir() / entry.embedded, weights_only=True, map_location="cpu")
    assert heads and all(key.startswith(("prompt_encoder.", "mask_decoder.")) for key in heads)


def _slice_through_stone(seed: int):
    phantom = ct_volume(np.random.default_rng(seed), (24, 128, 128), stone_count=2)
    i, j, k = phantom.stone_centers_ijk[0]
    index = int(round(k))
    rgb = to_sam_rgb(phantom.hu_kji[index], resolve_range(phantom.hu_kji, "soft_tissue"))
    stones = phantom.masks["stones"][index]
    import cv2

    count, labels = cv2.connectedComponents(stones.astype(np.uint8))
    stone = labels == labels[int(round(j)), int(round(i))]
    return rgb, stone, np.array([i, j]), phantom.masks["kidney_left"][index] | phantom.masks["kidney_right"][index]


def test_segments_fresh_phantom_stones_from_one_point(default_model):
    """One positive point on a 5-21 px stone, zoom auto. Measured per seed with an fp32 encoder 0.96,
    0.83, 0.71, 1.00, 0.93, 1.00 (mean 0.91); with the bf16 encoder (the default on a CPU with native
    bf16) 0.96, 0.83, 0.71, 1.00, 0.96, 1.00 (mean 0.91). The previous heads: mean 0.83 / 0.81, worst
    0.72 / 0.69. These 128 px slices are too small for the point zoom to enlarge a stone
    (``zoom.MIN_MAGNIFICATION``); before that rule the current heads lost the 9 px stone of seed 9006
    to a 325 px region of its crop (Dice 0.05). The from-scratch demo model: 0.001-0.054."""
    segmenter = Segmenter(default_model)
    scores = []
    for seed in range(9001, 9007):
        rgb, stone, centre, _ = _slice_through_stone(seed)
        scores.append(dice(predict_zoomed(segmenter, rgb, centre[None], np.array([1])).mask, stone))
    assert min(scores) >= 0.65 and np.mean(scores) >= 0.85, scores


def test_segments_a_fresh_phantom_kidney_from_a_box(default_model):
    phantom = ct_volume(np.random.default_rng(FRESH_SEEDS[0]), (24, 128, 128), stone_count=1)
    kidney = phantom.masks["kidney_right"][12]
    rgb = to_sam_rgb(phantom.hu_kji[12], resolve_range(phantom.hu_kji, "soft_tissue"))
    ys, xs = np.nonzero(kidney)
    box = np.array([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2], float)
    result = predict_zoomed(Segmenter(default_model), rgb, None, None, box)
    assert dice(result.mask, kidney) >= 0.8
