"""The registration benchmark's own checks: its ground truth is consistent and ours meets it."""

from __future__ import annotations

import numpy as np

from SAMFusionLib.bench_register import make_cases, run_ours, tre_of
from SAMFusionLib.metrics import dice
from SAMFusionLib.registration import warp_mask


def test_ground_truth_warps_the_moving_mask_back_onto_the_fixed_one(shared_data):
    for case in make_cases(2):
        back = warp_mask(case.moving_mask, case.grid, case.grid, case.truth)
        assert dice(back, case.fixed_mask) > 0.95  # only the one-pixel erosion/dilation differs
        assert not np.allclose(case.moving, case.fixed)


def test_ours_registers_a_benchmark_case(shared_data):
    case = make_cases(1)[0]
    assert tre_of(case, run_ours(case)) < 2.0
