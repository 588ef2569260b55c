"""Registration as a user meets it: no cold-start tax (our L-BFGS instead of torch.optim), a cost
bounded in the image's size (working copies), full-size radiographs through the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from SAMFusionLib.imaging.grid2d import Grid2D, downsampled
from SAMFusionLib.registration.lbfgs import minimise


def test_lbfgs_finds_the_rosenbrock_minimum():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    loss = minimise([x], lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, max_iterations=100)
    assert loss < 1e-8
    np.testing.assert_allclose(x.detach().numpy(), [1.0, 1.0], atol=1e-4)


def test_lbfgs_agrees_with_torch_optim_on_a_smooth_problem():
    # The peer: torch's own L-BFGS with the same settings, on a convex quadratic plus a quartic.
    rng = np.random.default_rng(3)
    a = torch.as_tensor(rng.normal(size=(6, 6)))
    matrix, target = a @ a.T + torch.eye(6), torch.as_tensor(rng.normal(size=6))

    def loss_of(x):
        return 0.5 * x @ matrix @ x - target @ x + 0.1 * (x**4).sum()

    ours = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    minimise([ours], lambda: loss_of(ours), max_iterations=50)
    theirs = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theirs], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = loss_of(theirs)
        value.backward()
        return value

    optimiser.step(closure)
    np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().numpy(), atol=1e-6)


def test_a_registration_in_a_fresh_process_never_imports_torch_dynamo():
    # Constructing any torch.optim optimiser imports torch._dynamo: 1.5-5.5 s before the first step.
    code = """
import sys
from SAMFusionLib.bench.register import make_cases
from SAMFusionLib.registration.register import RegistrationOptions, register_2d
case = make_cases(1)[0]
register_2d(case.fixed, case.grid, case.moving, case.grid, case.fixed_mask, case.moving_mask, RegistrationOptions(transform="affine"))
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_wildly_wrong_transform_gives_a_loss_not_a_crash():
    # grid_sample's CPU kernel segfaulted on such coordinates (found by the fuzz suite).
    from SAMFusionLib.registration.levels import Level
    from SAMFusionLib.registration.transforms2d import Transform2D

    grid = Grid2D.isotropic((16, 20), 1.0)
    image = np.random.default_rng(0).random((16, 20)).astype(np.float32)
    level = Level(1, [image], [image], grid, grid, (0, 19, 0, 15), 6.0, control_shape=(4, 4))
    for shift in (1e30, float("inf"), float("nan")):
        transform = Transform2D(np.zeros(2), np.array([shift, 0.0]), control_shape=(4, 4))
        transform.params["t"].requires_grad_(True)
        maps, _ = level.warp(transform, nonrigid=False)
        maps[0].sum().backward()  # must not crash the process


def test_downsampled_keeps_the_physical_extent_and_the_target():
    grid = Grid2D((1638, 2000), np.array([0.16, 0.16]), np.array([10.0, -5.0]), np.array([[0.0, 1.0], [-1.0, 0.0]]))
    mask = np.zeros((1638, 2000), bool)
    mask[400:900, 700:1500] = True
    small, coarse = downsampled(mask, grid, 640, mask=True)
    assert max(small.shape) == 640 and small.shape == (524, 640)
    np.testing.assert_allclose(coarse.bounds()[0], grid.bounds()[0], atol=1e-9)
    np.testing.assert_allclose(coarse.bounds()[1], grid.bounds()[1], atol=1e-9)
    centre = lambda m, g: g.to_physical(np.argwhere(m)[:, ::-1].mean(0))[0]  # noqa: E731
    np.testing.assert_allclose(centre(small, coarse), centre(mask, grid), atol=0.1)  # mm
    same, same_grid = downsampled(mask[:600, :600], grid, 640)
    assert same_grid is grid and same.shape == (600, 600)


def test_a_2000_px_pair_registers_through_the_command_line(tmp_path, shared_data):
    import SimpleITK as sitk

    from SAMFusionLib.bench.register import make_cases, tre_of
    from SAMFusionLib.bench.register_scale import resized, write_case
    from SAMFusionLib.cli.main import main

    case = resized(make_cases(2)[1], 2000)
    assert max(case.grid.shape_hw) == 2000
    paths = write_case(case, tmp_path)
    code = main(["register", "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]), "--fixed-mask", str(paths["fixed_mask"]),
                 "--moving-mask", str(paths["moving_mask"]), "--out-transform", str(tmp_path / "t.h5"), "--out-report", str(tmp_path / "r.json")])
    assert code == 0
    transform = sitk.ReadTransform(str(tmp_path / "t.h5"))
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in case.points])
    assert tre_of(case, mapped) < 0.5  # mm; measured 0.35


@pytest.mark.parametrize("side", [1000])
def test_working_copies_are_reported(side, shared_data):
    from SAMFusionLib.bench.register import make_cases
    from SAMFusionLib.bench.register_scale import resized
    from SAMFusionLib.registration.register import RegistrationOptions, register_2d

    case = resized(make_cases(1)[0], side)
    result = register_2d(case.fixed, case.grid, case.moving, case.grid, case.fixed_mask, case.moving_mask, RegistrationOptions(transform="rigid"))
    assert max(result.report["working_px"]["fixed"]) == 512
