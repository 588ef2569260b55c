"""Laplacian-pyramid fusion: exact reconstruction, symmetry, range, mask guidance, metrics by hand, errors."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.fusion.metrics import entropy_bits, mutual_information_bits, qabf, spatial_frequency, ssim, standard_deviation
from SAMFusionLib.fusion.pyramid import FusionOptions, fuse, fuse_arrays, laplacian_pyramid, reconstruct
from SAMFusionLib.imaging.metrics import dice, iou, precision_recall_f1, tre_mm


@pytest.fixture
def pair(rng):
    a = cv2.GaussianBlur(rng.random((67, 93)).astype(np.float32) * 255, (0, 0), 2)  # odd, non-square
    b = np.zeros((67, 93), np.float32)
    cv2.circle(b, (40, 30), 15, 230, -1)
    return a, b


@pytest.mark.parametrize("levels", [1, 3, 4])
def test_pyramid_reconstructs_exactly(pair, levels):
    a, _ = pair
    np.testing.assert_allclose(reconstruct(laplacian_pyramid(a, levels)), a, atol=1e-3)


@pytest.mark.parametrize("base", ["gradient", "average", "energy"])
def test_fusing_an_image_with_itself_returns_it(pair, base):
    a, _ = pair
    np.testing.assert_allclose(fuse_arrays(a, a, FusionOptions(base=base)), a, atol=1e-3)


def test_detail_gain_scales_the_detail_bands_and_keeps_the_base(pair):
    """The reconstruction is linear: fused(g) = base image + g * detail image."""
    a, b = pair
    fused = {g: fuse_arrays(a, b, FusionOptions(detail_gain=g)).astype(np.float64) for g in (0.5, 1.0, 1.5, 2.0)}
    np.testing.assert_array_equal(fuse_arrays(a, b, FusionOptions()), fused[1.0])
    detail = fused[2.0] - fused[1.0]
    np.testing.assert_allclose(fused[1.5] - fused[1.0], 0.5 * detail, atol=1e-3)
    np.testing.assert_allclose(fused[0.5], fused[1.0] - 0.5 * detail, atol=1e-3)
    assert np.abs(detail).max() > 10  # the pair has details (the disc's edge) to scale
    base = fused[1.0] - detail  # what fused(0) would be: the base alone, smooth
    assert spatial_frequency(base.astype(np.float32)) < 0.5 * spatial_frequency(fused[1.0].astype(np.float32))
    assert spatial_frequency(fused[1.5].astype(np.float32)) > 1.3 * spatial_frequency(fused[1.0].astype(np.float32))


@pytest.mark.parametrize("gain", [0.0, 0.49, 2.01, math.nan, math.inf])
def test_detail_gain_outside_its_range_is_refused(pair, gain):
    with pytest.raises(SamFusionError, match="detail gain must lie in"):
        fuse(*pair, FusionOptions(detail_gain=gain))


def test_symmetric_rules_are_symmetric(pair):
    a, b = pair
    for base in ("gradient", "average"):
        np.testing.assert_allclose(fuse(a, b, FusionOptions(base=base)), fuse(b, a, FusionOptions(base=base)), atol=1e-3)


def test_sixteen_bit_inputs_and_range(rng):
    hu = rng.normal(40, 300, (64, 80)).astype(np.float32)
    xray = rng.integers(0, 65535, (64, 80)).astype(np.float32)
    fused = fuse(hu, xray)  # different scales: percentile-normalised into 0..255
    assert fused.dtype == np.float32 and fused.min() >= 0 and fused.max() <= 255
    byte_a, byte_b = rng.integers(10, 200, (64, 80)).astype(np.float32), rng.integers(30, 250, (64, 80)).astype(np.float32)
    fused = fuse(byte_a, byte_b)
    assert fused.min() >= 10 and fused.max() <= 249


def test_mask_guidance_keeps_the_target_of_the_clearer_modality():
    a = np.full((80, 80), 100, np.float32)
    cv2.circle(a, (40, 40), 6, 250, -1)  # the stone is crisp in A
    b = np.full((80, 80), 100, np.float32)
    cv2.circle(b, (40, 40), 6, 120, -1)  # and faint in B
    b[:, :20] = 30  # B has its own structure elsewhere
    target = np.zeros((80, 80), bool)
    cv2.circle(target.view(np.uint8), (40, 40), 8, 1, -1)
    guided = fuse_arrays(a, b, FusionOptions(), target)
    plain = fuse_arrays(a, b, FusionOptions())
    assert abs(guided[40, 40] - 250) < 5
    assert abs(guided[40, 40] - 250) < abs(plain[40, 40] - 250) - 10
    assert abs(guided[40, 5] - plain[40, 5]) < 1  # far from the target nothing changes


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros((10, 10)), np.zeros((10, 12)), "different grids"),
        (np.full((10, 10), np.nan), np.zeros((10, 10)), "NaN"),
        (np.zeros((10, 10, 3)), np.zeros((10, 10, 3)), "2D grey"),
    ],
)
def test_bad_pairs(a, b, message):
    with pytest.raises(SamFusionError, match=message):
        fuse(a, b)


def test_too_many_levels(pair):
    a, b = pair
    with pytest.raises(SamFusionError, match="levels must lie in 1..5"):
        fuse(a, b, FusionOptions(levels=9))


# ---- metrics on tiny hand-computable images


def test_entropy_sd_sf_by_hand():
    image = np.array([[0, 0], [255, 255]], float)
    assert entropy_bits(image) == pytest.approx(1.0)
    assert standard_deviation(image) == pytest.approx(127.5)
    # RF: no horizontal change; CF: each of the 2 columns jumps 255 -> sum 2 * 255^2 over 4 pixels.
    assert spatial_frequency(image) == pytest.approx(math.sqrt(2 * 255**2 / 4))


def test_mutual_information_by_hand():
    a = np.array([[0, 0], [255, 255]], float)
    assert mutual_information_bits(a, a) == pytest.approx(1.0)
    assert mutual_information_bits(a, 255 - a) == pytest.approx(1.0)
    assert mutual_information_bits(a, np.array([[0, 255], [0, 255]], float)) == pytest.approx(0.0)


def test_qabf_by_hand():
    image = np.zeros((9, 9))
    image[:, 4:] = 100.0
    # F = A = B: G = 1 and A = 1 everywhere with an edge, so Q = Qg(1) * Qa(1).
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert qabf(image, image, image) == pytest.approx(expected, rel=1e-9)
    # A flat F: strength ratio G = 0; F's orientation is pi/2 (sx = 0) against the edge's 0, so A = 0.
    lost = 0.9994 / (1 + math.exp(-15 * (0 - 0.5))) * 0.9879 / (1 + math.exp(-22 * (0 - 0.8)))
    assert qabf(image, image, np.zeros_like(image)) == pytest.approx(lost, rel=1e-6)


def test_ssim_by_hand():
    image = np.random.default_rng(0).random((32, 32)) * 255
    assert ssim(image, image) == pytest.approx(1.0)
    flat_a, flat_b = np.full((16, 16), 100.0), np.full((16, 16), 50.0)
    c1 = (0.01 * 255) ** 2
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 100 * 50 + c1) / (100**2 + 50**2 + c1), rel=1e-9)


def test_segmentation_and_detection_metrics_by_hand():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b = np.zeros((4, 4), bool)
    b[:2, 1:3] = True
    assert dice(a, b) == pytest.approx(0.5)
    assert iou(a, b) == pytest.approx(1 / 3)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    assert precision_recall_f1(3, 1, 2) == pytest.approx((0.75, 0.6, 2 * 0.75 * 0.6 / 1.35))
    assert precision_recall_f1(0, 0, 0) == (0.0, 0.0, 0.0)
    np.testing.assert_allclose(tre_mm([[0, 0], [1, 1]], [[3, 4], [1, 1]]), [5.0, 0.0])


# ---- the fuse command (design contract)


def _write(path, array, spacing=(0.5, 0.5)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_fuse_command_writes_float_on_the_grid(tmp_path, pair, capsys):
    a, b = pair
    _write(tmp_path / "a.nrrd", a)
    _write(tmp_path / "b.nrrd", b)
    mask = np.zeros(a.shape, np.uint8)
    mask[20:40, 25:55] = 1
    _write(tmp_path / "m.nrrd", mask)
    out = tmp_path / "f.nrrd"
    assert main(["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"), "--out", str(out), "--mask-a", str(tmp_path / "m.nrrd")]) == 0
    fused = sitk.ReadImage(str(out))
    assert fused.GetPixelID() == sitk.sitkFloat32 and fused.GetSpacing() == (0.5, 0.5)
    values = sitk.GetArrayFromImage(fused)
    assert values.shape == a.shape and values.min() >= 0 and values.max() <= 255


def test_fuse_command_bad_input_leaves_nothing(tmp_path, pair, capsys):
    a, b = pair
    _write(tmp_path / "a.nrrd", a)
    _write(tmp_path / "b.nrrd", b, spacing=(0.7, 0.5))
    out = tmp_path / "f.nrrd"
    assert main(["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "b.nrrd"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different spacing, origin or direction" in err[0]
    assert not out.exists()
    nan = a.copy()
    nan[3, 3] = np.nan
    _write(tmp_path / "nan.nrrd", nan)
    assert main(["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "nan.nrrd"), "--out", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not out.exists()
    assert main(["fuse", str(tmp_path / "a.nrrd"), str(tmp_path / "a.nrrd"), "--out", str(out), "--detail-gain", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["samfusion: error: detail gain must lie in [0.5, 2], got 3.0"]
    assert not out.exists()
