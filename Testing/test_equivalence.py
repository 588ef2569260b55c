"""Our predictor path gives the same masks and logits as segment_anything.SamPredictor."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

from SAMFusionLib.sam.embedding_cache import EmbeddingCache
from SAMFusionLib.sam.segmenter import Segmenter

TOLERANCE = 1e-4

PROMPTS = {
    "one_point": dict(points=[[60.0, 40.0]], labels=[1], box=None, multimask=True),
    "points_pos_neg": dict(points=[[60.0, 40.0], [200.0, 150.0], [10.0, 170.0]], labels=[1, 1, 0], box=None, multimask=False),
    "box": dict(points=None, labels=None, box=[30.0, 20.0, 180.0, 120.0], multimask=False),
    "box_and_points": dict(points=[[100.0, 70.0], [35.0, 25.0]], labels=[1, 0], box=[30.0, 20.0, 180.0, 120.0], multimask=True),
}


def _official(model, rgb, prompt, mask_input=None):
    predictor = SamPredictor(model.sam)
    predictor.set_image(rgb)
    return predictor.predict(
        point_coords=None if prompt["points"] is None else np.array(prompt["points"]),
        point_labels=None if prompt["labels"] is None else np.array(prompt["labels"]),
        box=None if prompt["box"] is None else np.array(prompt["box"]),
        mask_input=mask_input,
        multimask_output=prompt["multimask"],
    )


def _ours(segmenter, prompt, mask_input=None):
    return segmenter.predict(prompt["points"], prompt["labels"], prompt["box"], mask_input, prompt["multimask"])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    base = (rng.random((190, 260, 3)) * 255).astype(np.uint8)  # non-square on purpose: padding matters
    other = (rng.random((190, 260, 3)) * 255).astype(np.uint8)
    return base, other


@pytest.mark.parametrize("name", PROMPTS)
def test_same_masks_and_logits_as_sampredictor(tiny_model, images, name):
    base, other = images
    prompt = PROMPTS[name]
    masks, scores, logits = _official(tiny_model, base, prompt)
    segmenter = Segmenter(tiny_model, precision="fp32")  # the same arithmetic as SamPredictor
    segmenter.set_image(base)
    segmenter.set_image(other)
    segmenter.set_image(base)  # the second visit comes from the embedding cache
    assert segmenter.cache.hits >= 1
    ours = _ours(segmenter, prompt)
    assert np.abs(ours.all_low_res_logits - logits).max() <= TOLERANCE
    np.testing.assert_array_equal(ours.masks, masks)
    np.testing.assert_allclose(ours.scores, scores, atol=TOLERANCE)
    official_logits = SamPredictor(tiny_model.sam)
    official_logits.set_image(base)
    full, _, _ = official_logits.predict(
        point_coords=None if prompt["points"] is None else np.array(prompt["points"]),
        point_labels=None if prompt["labels"] is None else np.array(prompt["labels"]),
        box=None if prompt["box"] is None else np.array(prompt["box"]),
        multimask_output=prompt["multimask"],
        return_logits=True,
    )
    stability = (full > 1.0).sum(axis=(1, 2)) / np.maximum((full > -1.0).sum(axis=(1, 2)), 1)
    np.testing.assert_allclose(ours.stability, stability)
    np.testing.assert_array_equal(ours.mask, masks[int(np.argmax(scores * stability))])
    assert ours.low_res_logits.shape == (1, *tiny_model.sam.prompt_encoder.mask_input_size)


def test_previous_low_res_mask_as_input(tiny_model, images):
    base, _ = images
    first = dict(points=[[60.0, 40.0]], labels=[1], box=None, multimask=True)
    _, scores, logits = _official(tiny_model, base, first)
    previous = logits[np.argmax(scores)][None]
    refine = dict(points=[[60.0, 40.0], [150.0, 90.0]], labels=[1, 0], box=None, multimask=False)
    masks, _, refined_logits = _official(tiny_model, base, refine, mask_input=previous)
    segmenter = Segmenter(tiny_model, precision="fp32")  # the same arithmetic as SamPredictor
    segmenter.set_image(base)
    ours_first = _ours(segmenter, first)
    ours = _ours(segmenter, refine, mask_input=ours_first.low_res_logits)
    assert np.abs(ours.all_low_res_logits - refined_logits).max() <= TOLERANCE
    np.testing.assert_array_equal(ours.masks, masks)


def test_batched_encoding_matches_one_by_one(tiny_model, images):
    base, other = images
    third = np.ascontiguousarray(base[::-1])
    prompt = PROMPTS["box_and_points"]
    references = [_official(tiny_model, rgb, prompt) for rgb in (base, other, third)]
    segmenter = Segmenter(tiny_model, cache=EmbeddingCache(), precision="fp32")
    keys = segmenter.embed_many([base, other, third], batch_size=3)
    assert len(set(keys)) == 3 and len(segmenter.cache) == 3
    for rgb, (masks, _, logits) in zip((base, other, third), references, strict=True):
        segmenter.set_image(rgb)
        ours = _ours(segmenter, prompt)
        assert np.abs(ours.all_low_res_logits - logits).max() <= TOLERANCE
        np.testing.assert_array_equal(ours.masks, masks)
