"""Models loaded ahead of the first Apply (``sam.preload``), as the Slicer module and the web app
use it: the preloaded segmenter is the one every run gets and segments like a plainly loaded one;
nothing is downloaded ahead; a failed preload is loaded again at the Apply, whose error is the
user's one line."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from SAMFusionLib.cases.demo_case import make_demo_case
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
from SAMFusionLib.imaging.metrics import dice
from SAMFusionLib.sam.models import load_model, load_table, resources_dir, weights_on_disk
from SAMFusionLib.sam.preload import SegmenterLoader, memory_segmenter
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.weights import weights_dir


class CountingBuilder:
    """The front ends' builder (a segmenter of a table model), counting its loads."""

    def __init__(self, checkpoint=None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.checkpoint = checkpoint

    def __call__(self, model_id: str, device: str) -> Segmenter:
        self.calls.append((model_id, device))
        if self.checkpoint is not None:
            return Segmenter(load_model(checkpoint=self.checkpoint, device=device, show_progress=False))
        return memory_segmenter(model_id, device)


def test_the_preloaded_segmenter_is_the_one_every_run_gets_and_it_segments_as_a_plain_one():
    build = CountingBuilder()
    loader = SegmenterLoader(build)
    future = loader.preload("samfusion-demo", "cpu")
    assert future is not None
    preloaded = future.result(timeout=120)
    assert loader.ready("samfusion-demo", "cpu")
    assert loader.preload("samfusion-demo", "cpu") is future  # loaded or loading: not started again
    assert loader.get("samfusion-demo", "cpu") is preloaded and loader.get("samfusion-demo", "cpu") is preloaded
    assert build.calls == [("samfusion-demo", "cpu")]
    assert "inference_encoder" in vars(preloaded.model)  # built by the preload, not at the first image
    # The preload's thread ends with its load: a live thread that has run torch slows torch on every
    # other thread (its OpenMP team; the demo model's slice 17 -> 28 ms on the build CPU).
    deadline = time.monotonic() + 30
    while any(t.name.startswith("samfusion-preload") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("samfusion-preload") for t in threading.enumerate())
    assert preloaded.images_encoded == 0 and len(preloaded.cache) == 0  # the preload encodes nothing

    case = make_demo_case()  # the embedded default case's X-ray, box and true target
    rgb = to_sam_rgb(case.inputs.xray, resolve_range(case.inputs.xray, "auto"))
    plain = Segmenter(load_model("samfusion-demo", device="cpu", show_progress=False))
    for segmenter in (preloaded, plain):
        segmenter.set_image(rgb)
    box = np.asarray(case.inputs.xray_prompts.box_xyxy, float)
    ours, theirs = preloaded.predict(box_xyxy=box, multimask=False), plain.predict(box_xyxy=box, multimask=False)
    assert dice(ours.mask, case.xray_target_mask) > 0.8
    assert np.array_equal(ours.mask, theirs.mask)


def test_a_model_whose_weights_are_not_here_is_not_downloaded_ahead():
    table = load_table()
    assert weights_on_disk("samfusion-lite") and weights_on_disk("samfusion-demo")  # embedded, over the package's encoder
    build = CountingBuilder()
    loader = SegmenterLoader(build)
    entry = table.entry("vit_b")
    cached = weights_dir() / (entry.filename or "vit_b.pth")
    assert not cached.exists()
    assert not weights_on_disk("vit_b")
    assert loader.preload("vit_b", "cpu") is None and not loader.ready("vit_b", "cpu")
    assert build.calls == []  # the 375 MB download stays the user's choice
    cached.write_bytes(b"present")  # presence is all it asks; the load verifies the SHA256
    try:
        assert weights_on_disk("vit_b")
    finally:
        cached.unlink()


def test_a_failed_preload_is_loaded_again_at_get_and_the_user_meets_that_error(tmp_path):
    checkpoint = tmp_path / "model.pth"  # not there yet, as a package the user has still to install
    build = CountingBuilder(checkpoint)
    loader = SegmenterLoader(build)
    future = loader.preload("samfusion-demo", "cpu")
    with pytest.raises(SamFusionError, match="checkpoint file not found"):
        future.result(timeout=60)
    assert not loader.ready("samfusion-demo", "cpu")

    with pytest.raises(SamFusionError) as error:  # Apply loads again, and says what is wrong in one line
        loader.get("samfusion-demo", "cpu")
    assert str(error.value) == f"checkpoint file not found: {checkpoint}"
    assert len(build.calls) == 2

    shutil.copy(resources_dir() / load_table().entry("samfusion-demo").embedded, checkpoint)
    segmenter = loader.get("samfusion-demo", "cpu")  # now there: the next Apply loads it
    assert isinstance(segmenter, Segmenter) and loader.ready("samfusion-demo", "cpu")
    assert loader.get("samfusion-demo", "cpu") is segmenter
    assert len(build.calls) == 3


def test_clear_forgets_the_segmenters_and_the_next_get_loads_again():
    build = CountingBuilder()
    loader = SegmenterLoader(build)
    first = loader.get("samfusion-demo", "cpu")  # without a preload: loaded on demand
    assert loader.ready("samfusion-demo", "cpu")
    loader.clear()
    assert not loader.ready("samfusion-demo", "cpu")
    second = loader.get("samfusion-demo", "cpu")
    assert second is not first and len(build.calls) == 2
