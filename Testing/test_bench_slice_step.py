"""``samfusion bench slice-step``: the pipeline at several slice steps against every slice."""

from __future__ import annotations

import pytest

from SAMFusionLib.bench.slice_step import format_table, run_benchmark
from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError


def test_the_benchmark_compares_each_step_with_every_slice_on_the_same_cases(demo_model):
    figures = run_benchmark(demo_model, cases=2, steps=(2, 1))
    every, stepped = figures["steps"][1], figures["steps"][2]
    assert list(figures["steps"]) == [1, 2] and figures["cases"] == 2 and figures["model"] == "samfusion-demo"
    assert stepped["images_encoded_median"] < every["images_encoded_median"]
    assert every["max_tre_change_mm"] == 0.0 and every["ratio"] == 1.0
    # A time ratio, so only its sense is checked here, not its size (measured 1.48 with the demo model).
    assert 0 < stepped["ratio"] < 100
    for row in (every, stepped):
        assert 0.5 < row["ct_dice_worst"] <= row["ct_dice_mean"] <= 1.0
        assert 0 < row["tre_median_mm"] <= row["tre_worst_mm"] < 10
        assert 0 <= row["on_sam_masks"] <= 2 and 0 <= row["passed"] <= 2
    table = format_table(figures).splitlines()
    assert table[-2].startswith("| 1 | ") and table[-1].startswith("| 2 | ")


@pytest.mark.parametrize("cases, steps, message", [
    (1, (2, 3), "include 1 in --steps"),
    (1, (1, 0), "at least 1, got 0"),
    (0, (1, 2), "at least one case, got 0"),
])
def test_what_the_benchmark_cannot_compare_is_refused(demo_model, cases, steps, message):
    with pytest.raises(SamFusionError, match=message):
        run_benchmark(demo_model, cases, steps)


def test_the_command_refuses_steps_that_are_not_numbers(capsys):
    assert main(["bench", "slice-step", "--model", "samfusion-demo", "--steps", "1,two"]) == 2
    assert capsys.readouterr().err.strip() == "samfusion: error: --steps takes whole numbers separated by commas, got '1,two'"
