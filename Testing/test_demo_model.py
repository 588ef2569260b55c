"""The embedded demo model: pinned checksum, and real segmentations of fresh phantoms."""

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

FRESH_SEEDS = (9001, 9002, 9003)  # training draws phantoms from seeds (0, step): these were never seen


def test_shipped_checkpoint_matches_the_table():
    entry = load_table().entry("samfusion-demo")
    path = resources_dir() / entry.embedded
    assert entry.sha256 and len(entry.sha256) == 64
    assert sha256_file(path) == entry.sha256
    assert path.stat().st_size <= 25 * 1024 * 1024


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


@pytest.mark.xfail(
    strict=True,
    reason="the demo model (tiny ViT, 16 px patches, 48 CPU-minutes of training) misses 5-16 px phantom stones "
    "from one point even with zoom (Dice 0.001-0.054, measured); a bigger model must make this pass",
)
@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_segments_a_fresh_phantom_stone_from_one_point(demo_model, seed):
    rgb, stone, centre, _ = _slice_through_stone(seed)
    result = predict_zoomed(Segmenter(demo_model), rgb, centre[None], np.array([1]))
    assert dice(result.mask, stone) >= 0.8


def test_segments_a_fresh_phantom_kidney_from_a_box(demo_model):
    phantom = ct_volume(np.random.default_rng(FRESH_SEEDS[0]), (24, 128, 128), stone_count=1)
    kidney = phantom.masks["kidney_right"][12]
    rgb = to_sam_rgb(phantom.hu_kji[12], resolve_range(phantom.hu_kji, "soft_tissue"))
    ys, xs = np.nonzero(kidney)
    box = np.array([xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2], float)
    result = predict_zoomed(Segmenter(demo_model), rgb, None, None, box)
    assert dice(result.mask, kidney) >= 0.8
