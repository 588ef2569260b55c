"""Registration as a user meets it: no cold-start tax (NumPy, no torch import), a cost
bounded in the image's size (working copies), full-size radiographs through the command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from SAMFusionLib.imaging.grid2d import Grid2D, downsampled
from SAMFusionLib.registration.lbfgs import minimise
from SAMFusionLib.registration.register import RegistrationOptions


def test_lbfgs_finds_the_rosenbrock_minimum():
    def rosenbrock(x):
        loss = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
        gradient = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
        return loss, gradient

    x, loss = minimise(rosenbrock, np.array([-1.2, 1.0]), max_iterations=100)
    assert loss < 1e-8
    np.testing.assert_allclose(x, [1.0, 1.0], atol=1e-4)


def test_lbfgs_agrees_with_torch_optim_on_a_smooth_problem():
    # The peer: torch's own L-BFGS with the same settings, on a convex quadratic plus a quartic.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 6))
    matrix, target = a @ a.T + np.eye(6), rng.normal(size=6)

    def loss_and_gradient(x):
        return 0.5 * x @ matrix @ x - target @ x + 0.1 * (x**4).sum(), matrix @ x - target + 0.4 * x**3

    ours, _ = minimise(loss_and_gradient, np.zeros(6), max_iterations=50)
    theirs = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theirs], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")
    matrix_t, target_t = torch.as_tensor(matrix), torch.as_tensor(target)

    def closure():
        optimiser.zero_grad()
        value = 0.5 * theirs @ matrix_t @ theirs - target_t @ theirs + 0.1 * (theirs**4).sum()
        value.backward()
        return value

    optimiser.step(closure)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), atol=1e-6)


def test_a_registration_in_a_fresh_process_never_imports_torch():
    # torch's import alone costs 1.4 s, and any torch.optim optimiser imports torch._dynamo (1.5-5.5 s):
    # the registration is NumPy, so a cold `samfusion register` pays neither.
    code = """
import sys
from SAMFusionLib.bench.register import make_cases
from SAMFusionLib.registration.register import RegistrationOptions, register_2d
case = make_cases(1)[0]
result = register_2d(case.fixed, case.grid, case.moving, case.grid, case.fixed_mask, case.moving_mask, RegistrationOptions())
print(result.passed, "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True False"


def test_a_wildly_wrong_transform_gives_a_loss_not_a_crash():
    # A diverging line-search step can propose such coordinates (torch's grid_sample segfaulted on
    # them, found by the fuzz suite); they sample the border, with a finite loss and gradient.
    from SAMFusionLib.registration.levels import Level
    from SAMFusionLib.registration.register import _loss
    from SAMFusionLib.registration.transforms2d import Transform2D

    grid = Grid2D.isotropic((16, 20), 1.0)
    image = np.random.default_rng(0).random((16, 20)).astype(np.float32)
    level = Level(1, [image], [image], grid, grid, (0, 19, 0, 15), 6.0, control_shape=(4, 4))
    for shift in (1e30, float("inf"), float("nan")):
        transform = Transform2D(np.zeros(2), np.array([shift, 0.0]), control_shape=(4, 4))
        for nonrigid in (False, True):
            loss, gradient, _ = _loss(level, transform, RegistrationOptions(), False, nonrigid)
            assert np.isfinite(loss) and all(np.isfinite(g).all() for g in gradient.values())


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
