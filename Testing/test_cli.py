"""The `samfusion segment` contract: outputs, and bad input -> one-line error, exit 2, no file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from SAMFusionLib.cli.main import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(capsys, out: Path, message: str, *argv) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("samfusion: error: ")
    assert message in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp leftovers


def test_segment_png_with_point(capsys, png, checkpoint, tmp_path):
    out = tmp_path / "mask.png"
    code, stdout, err = run(capsys, "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", out)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["out"] == str(out) and 0.0 <= report["pixels"] <= 120 * 160
    mask = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (120, 160) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert int((mask > 0).sum()) == report["pixels"]


def test_segment_nrrd_keeps_geometry(capsys, checkpoint, tmp_path):
    array = np.random.default_rng(0).normal(0, 100, (1, 50, 70)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.4, 0.6, 1.0))
    image.SetOrigin((-12.0, 30.0, 4.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    source = tmp_path / "xray.nrrd"
    sitk.WriteImage(image, str(source))
    out = tmp_path / "mask.nrrd"
    code, _, err = run(capsys, "segment", source, "--box", 60, 40, 5, 5, "--negative", 30, 20, "--checkpoint", checkpoint, "--out", out)
    assert code == 0, err
    mask = sitk.ReadImage(str(out))
    assert mask.GetSize()[:2] == (70, 50)
    np.testing.assert_allclose(mask.GetSpacing()[:2], (0.4, 0.6))
    np.testing.assert_allclose(mask.GetOrigin()[:2], (-12.0, 30.0))
    np.testing.assert_allclose(np.reshape(mask.GetDirection(), (2, 2)), [[0, 1], [-1, 0]])
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


def test_point_outside_image(capsys, png, checkpoint, tmp_path):
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "(400, 60) lies outside the 160x120 image", "segment", png, "--point", 400, 60, "--checkpoint", checkpoint, "--out", out)


def test_box_past_the_edge_is_clipped_and_a_box_wholly_outside_is_refused(capsys, png, checkpoint, tmp_path):
    out = tmp_path / "m.png"
    code, _, err = run(capsys, "segment", png, "--box", 10, 10, 170, 50, "--checkpoint", checkpoint, "--out", out)
    assert code == 0
    assert err.strip().splitlines() == ["samfusion: note: the box reaches past the 160x120 image; clipped to (10, 10, 159.5, 50)"]
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (120, 160)
    out.unlink()
    assert_clean_failure(capsys, out, "box (165, 10, 200, 50) lies outside the 160x120 image",
                         "segment", png, "--box", 165, 10, 200, 50, "--checkpoint", checkpoint, "--out", out)


def test_nan_image(capsys, checkpoint, tmp_path):
    array = np.ones((1, 20, 30), np.float32)
    array[0, 3, 4] = np.nan
    source = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(source))
    out = tmp_path / "m.nrrd"
    assert_clean_failure(capsys, out, "NaN", "segment", source, "--point", 5, 5, "--checkpoint", checkpoint, "--out", out)


def test_constant_image(capsys, checkpoint, tmp_path):
    source = tmp_path / "flat.png"
    cv2.imwrite(str(source), np.full((20, 30), 90, np.uint8))
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "constant", "segment", source, "--point", 5, 5, "--checkpoint", checkpoint, "--out", out)


def test_4d_image(capsys, checkpoint, tmp_path):
    source = tmp_path / "four.nrrd"
    sitk.WriteImage(sitk.Image([6, 5, 4, 3], sitk.sitkFloat32), str(source))
    out = tmp_path / "m.nrrd"
    assert_clean_failure(capsys, out, "4D", "segment", source, "--point", 1, 1, "--checkpoint", checkpoint, "--out", out)


def test_volume_given_as_image(capsys, checkpoint, tmp_path):
    source = tmp_path / "vol.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((5, 8, 9)).astype(np.float32)), str(source))
    out = tmp_path / "m.nrrd"
    assert_clean_failure(capsys, out, "volume of 5 slices", "segment", source, "--point", 1, 1, "--checkpoint", checkpoint, "--out", out)


def test_rgba_image(capsys, checkpoint, tmp_path):
    source = tmp_path / "rgba.png"
    rgba = np.random.default_rng(0).integers(0, 255, (20, 30, 4)).astype(np.uint8)
    cv2.imwrite(str(source), rgba)
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "RGBA", "segment", source, "--point", 5, 5, "--checkpoint", checkpoint, "--out", out)


def test_missing_image(capsys, checkpoint, tmp_path):
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "file not found", "segment", tmp_path / "none.png", "--point", 5, 5, "--checkpoint", checkpoint, "--out", out)


def test_corrupt_image(capsys, checkpoint, tmp_path):
    source = tmp_path / "broken.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "cannot read image", "segment", source, "--point", 5, 5, "--checkpoint", checkpoint, "--out", out)


def test_truncated_checkpoint(capsys, png, checkpoint, tmp_path):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(checkpoint.read_bytes()[:10000])
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "corrupt or truncated", "segment", png, "--point", 80, 60, "--checkpoint", broken, "--out", out)


def test_checkpoint_of_wrong_architecture(capsys, png, checkpoint, tmp_path):
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "does not fit architecture 'vit_h'", "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--arch", "vit_h", "--out", out)


def test_embedded_model_with_wrong_sha256(capsys, png, checkpoint, tmp_path, monkeypatch):
    resources = tmp_path / "resources"
    (resources / "models").mkdir(parents=True)
    shutil.copyfile(checkpoint, resources / "models" / "samfusion_demo.pth")
    from SAMFusionLib.sam.models import resources_dir

    table = json.loads((resources_dir() / "models.json").read_text())
    next(m for m in table["models"] if m["id"] == "samfusion-demo")["sha256"] = "f" * 64
    (resources / "models.json").write_text(json.dumps(table))
    monkeypatch.setenv("SAMFUSION_RESOURCES", str(resources))
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "corrupt (SHA256 mismatch", "segment", png, "--model", "samfusion-demo", "--point", 80, 60, "--out", out)


def test_unknown_model(capsys, png, tmp_path):
    out = tmp_path / "m.png"
    assert_clean_failure(capsys, out, "unknown model 'vit_x'", "segment", png, "--point", 80, 60, "--model", "vit_x", "--out", out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "{out}"], "give at least one --point"),
        (["--point", "1", "2", "3", "--out", "{out}"], "pairs of numbers"),
        (["--point", "1", "x", "--out", "{out}"], "must be numbers"),
        (["--point", "1", "2"], "the following arguments are required: --out"),
        (["--point", "1", "2", "--out", "{dir}/mask.tiff"], "unsupported output type"),
        (["--point", "1", "2", "--out", "{dir}/missing/mask.png"], "output folder does not exist"),
    ],
)
def test_usage_errors_are_one_line(capsys, png, tmp_path, argv, message):
    out = tmp_path / "m.png"
    argv = [a.format(out=out, dir=tmp_path) for a in argv]
    assert_clean_failure(capsys, out, message, "segment", png, *argv)


def test_console_script_is_installed(png, checkpoint, tmp_path):
    script = Path(sys.executable).parent / "samfusion"
    assert script.exists(), "the samfusion console script is not installed (pip install -e .)"
    out = tmp_path / "m.png"
    done = subprocess.run([script, "segment", png, "--point", "900", "9", "--checkpoint", checkpoint, "--out", out],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["samfusion: error: point (900, 9) lies outside the 160x120 image"]
    assert not out.exists()


def test_the_executable_skips_the_final_collection_and_main_does_not(capsys):
    """``samfusion`` (the console script) freezes the living objects at its very end, so that the
    interpreter's exit does not collect torch's objects (measured: a cold ``samfusion run --model
    samfusion-demo`` 6.06 -> 5.22 s); ``main``, which Slicer, the web app and tests call in a process
    that lives on, must leave its garbage collectable."""
    import gc
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "samfusion"]
    assert script.value == "SAMFusionLib.cli.main:entry"
    frozen = gc.get_freeze_count()
    code, out, _ = run(capsys, "weights", "list")
    assert code == 0 and "lite_medsam" in out and gc.get_freeze_count() == frozen
    probe = ("import gc, sys; from SAMFusionLib.cli.main import entry; sys.argv = ['samfusion', 'weights', 'list'];"
             " code = entry(); print(code, gc.get_freeze_count() > 0, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "0 True", done.stderr
    assert "lite_medsam" in done.stdout


def test_the_run_progress_bar_shows_how_far_into_a_step_it_is():
    """The CT's segmentation is most of a first run (23 s of 31 s on the 2-core CPU): the bar's text
    gives its percentage, redrawn at most every 0.5 s, and a new step at once."""
    from SAMFusionLib.cli.run import _progress_bar

    now = [0.0]
    bar = _progress_bar()
    bar.clock = lambda: now[0]
    try:
        shown = []
        for t, step, fraction in ((0.0, "segment CT", 0.0), (0.2, "segment CT", 0.1), (0.6, "segment CT", 0.25),
                                  (0.9, "segment CT", 0.5), (1.2, "segment CT", 0.999), (1.25, "segment X-ray", 0.0)):
            now[0] = t
            bar(step, fraction)
            shown.append((bar.bar.postfix, bar.bar.n))
    finally:
        bar.close()
    assert shown == [("segment CT", 0), ("segment CT", 0), ("segment CT 25%", 0), ("segment CT 25%", 0),
                     ("segment CT 99%", 0), ("segment X-ray", 1)]
