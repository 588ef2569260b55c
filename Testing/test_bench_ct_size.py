"""``samfusion bench ct-size``: ``samfusion run`` on the real abdomen CT at its stored size and at a
clinical size, each run a fresh process."""

from __future__ import annotations

import numpy as np
import pytest

from SAMFusionLib.bench.ct_size import CLINICAL_IN_PLANE_PX, CLINICAL_SLICE_MM, clinical_size, format_table, run_benchmark
from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError


def test_the_stored_ct_runs_cold_then_again_from_the_embeddings_on_disk(shared_data):
    figures = run_benchmark("samfusion-demo", sizes=["stored"], seed=1)
    row = figures["sizes"]["stored"]
    assert row["ct_voxels"] == [122, 101, 112] and row["ct_spacing_mm"] == [3.0, 3.0, 3.0]
    # Cold, every CT slice SAM ran on and the X-ray were encoded (measured 38 for 37 slices); the
    # second process found all of them on disk.
    assert row["cold_images_encoded"] >= row["slices_segmented"] + 1 >= 20 and row["again_images_encoded"] == 0
    assert row["images_encoded"] == 0  # the quality run in the benchmark's own process, over the same cache
    # The demo model's masks of this kidney are poor (CT Dice measured 0.40): the registration stands
    # on the prompt boxes, as the pipeline tests find, and lands near the truth (measured 1.29 mm).
    assert row["passed"] and row["reference"] == "prompt boxes" and row["tre_mm"] < 2.5
    # Its masks' result was far off, so the boxes' result did not confirm it (registration/confirm.py).
    assert row["confirmed_by"] is None and format_table(figures).endswith("| prompt boxes |")
    assert 0.2 < row["ct_dice"] < 0.7
    # Times and memory, so only their sense (measured: cold 5.7 s, again 5.4 s, 1.1 GiB).
    assert 0 < row["cold_timings_s"]["segment CT"] < row["cold_s"] and row["again_s"] > 0 and 0.2 < row["cold_peak_rss_gib"] < 8
    assert figures["slice_step"] == "auto" and row["slice_step_used"] == 1  # auto keeps every slice of a 3 mm CT
    assert format_table(figures).splitlines()[-1].startswith(f"| stored | 122 × 101 × 112 | 3 × 3 × 3 | 152 × 140 | {row['slices_segmented']} (1) |")


def test_the_clinical_size_keeps_the_extent_and_the_kidney(shared_data):
    from SAMFusionLib.cases.shared_data import abdomen_ct

    hu, geometry, image, masks = abdomen_ct()
    big_hu, big_geometry, big_mask = clinical_size(image, masks["kidney_left"])
    assert big_hu.shape[1:] == (CLINICAL_IN_PLANE_PX, CLINICAL_IN_PLANE_PX) and big_hu.dtype == np.float32
    assert big_geometry.spacing_mm[2] == CLINICAL_SLICE_MM and big_geometry.shape_kji == big_hu.shape
    extent_mm = np.array(image.GetSize()) * np.array(image.GetSpacing())
    assert np.allclose(np.array(big_geometry.shape_kji[::-1]) * big_geometry.spacing_mm, extent_mm, atol=CLINICAL_SLICE_MM)
    assert np.allclose(big_geometry.ijk_to_ras[:3, 3], geometry.ijk_to_ras[:3, 3])  # the same origin
    # The kidney keeps its volume (nearest resampling of a 3 mm mask) and its HU.
    volume_ml = masks["kidney_left"].sum() * np.prod(geometry.spacing_mm) / 1000
    assert abs(big_mask.sum() * np.prod(big_geometry.spacing_mm) / 1000 - volume_ml) < 0.03 * volume_ml
    assert abs(np.median(big_hu[big_mask]) - np.median(hu[masks["kidney_left"]])) < 15


@pytest.mark.parametrize("sizes, step, message", [
    (["huge"], 1, "--sizes takes stored and/or clinical"),
    ([], 1, "--sizes takes stored and/or clinical, separated by commas, got none"),
    (["stored"], 0, "slice step must be auto or a whole number of slices, at least 1"),
])
def test_what_the_benchmark_cannot_run_is_refused_before_any_case_is_made(sizes, step, message):
    with pytest.raises(SamFusionError, match=message):
        run_benchmark("samfusion-demo", sizes, slice_step=step)


def test_the_command_refuses_an_unknown_model_in_one_line(capsys):
    assert main(["bench", "ct-size", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samfusion: error: ") and "no-such-model" in err and "\n" not in err
