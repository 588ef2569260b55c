"""The bad-input promise, case by case (issue: thirteen ways to break it): a result, or exit 2 with one
line ``samfusion: error: ...``; nothing half-written; every file that was there before left byte for
byte as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import SimpleITK as sitk

from SAMFusionLib.cli.main import main
from SAMFusionLib.imaging.atomic import deferred_interrupts, locked_folder, output_files

SAMFUSION = [sys.executable, "-c", "import sys; from SAMFusionLib.cli.main import main; sys.exit(main())"]


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path, Path, Path]:
    """A fixed/moving image pair 1 mm apart with their masks (NRRD, 0.5 mm pixels)."""
    paths = []
    for name, centre in (("fixed", (60, 50)), ("moving", (62, 50))):
        image = np.zeros((100, 120), np.float32)
        cv2.ellipse(image, centre, (30, 20), 15, 0, 360, 200, -1)
        mask = (image > 0).astype(np.uint8)
        for array, suffix in ((cv2.GaussianBlur(image, (0, 0), 1.5), ""), (mask, "_mask")):
            item = sitk.GetImageFromArray(array)
            item.SetSpacing((0.5, 0.5))
            path = tmp_path / f"{name}{suffix}.nrrd"
            sitk.WriteImage(item, str(path))
            paths.append(path)
    return paths[0], paths[2], paths[1], paths[3]  # fixed, moving, fixed mask, moving mask


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder on a read-only filesystem (a tmpfs mounted read-only; needs root)."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def immutable_dir(tmp_path):
    """A folder with the immutable flag (chattr +i; needs root and a filesystem that has the flag)."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    flagged = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if flagged.returncode != 0:
        pytest.skip(f"cannot set the immutable flag here: {flagged.stderr.decode().strip()}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def run(capfd, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capfd.readouterr()  # file-descriptor level: ITK's and GDCM's own prints are caught too
    return code, captured.out, captured.err


def one_error_line(capfd, message: str, *argv) -> str:
    code, _, err = run(capfd, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("samfusion: error: ") and message in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_state(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. A failed command never deletes or changes an existing file


def test_1_register_failing_on_its_report_keeps_the_existing_transform(capfd, pair, tmp_path, readonly_dir):
    fixed, moving, fixed_mask, moving_mask = pair
    old = tmp_path / "pre" / "old.h5"
    old.parent.mkdir()
    old.write_bytes(b"the user's earlier transform")
    one_error_line(capfd, "cannot write to output folder", "register", "--fixed", fixed, "--moving", moving,
                   "--fixed-mask", fixed_mask, "--moving-mask", moving_mask, "--out-transform", old,
                   "--out-report", readonly_dir / "r.json")
    assert old.read_bytes() == b"the user's earlier transform"
    assert sorted(p.name for p in old.parent.iterdir()) == ["old.h5"]


def test_1_outputs_are_committed_together_or_not_at_all(tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text("old a")
    with pytest.raises(RuntimeError), output_files(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        raise RuntimeError("the second output failed")
    assert first.read_text() == "old a" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with output_files(first, second, None) as (tmp_a, tmp_b, nothing):
        tmp_a.write_text("new a")
        tmp_b.write_text("new b")
        assert nothing is None
    assert (first.read_text(), second.read_text()) == ("new a", "new b")


# ---- 2. Output = input


def test_2_segment_refuses_to_write_over_its_input(capfd, png, checkpoint):
    before = digest(png)
    one_error_line(capfd, "is the same file as", "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", png)
    link = png.parent / "link.png"
    link.symlink_to(png)
    one_error_line(capfd, "is the same file as", "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", link)
    assert digest(png) == before


def test_2_fuse_and_register_refuse_an_output_that_is_an_input(capfd, pair):
    fixed, moving, fixed_mask, moving_mask = pair
    before = {p: digest(p) for p in pair}
    one_error_line(capfd, "is the same file as", "fuse", fixed, moving, "--out", moving)
    one_error_line(capfd, "is the same file as", "register", "--fixed", fixed, "--moving", moving, "--fixed-mask", fixed_mask,
                   "--moving-mask", moving_mask, "--out-transform", fixed.parent / "t.h5", "--out-resampled", fixed_mask)
    assert {p: digest(p) for p in pair} == before


# ---- 3. Two runs into one folder


def test_3_a_second_run_into_a_folder_in_use_is_refused(capfd, tmp_path):
    out = tmp_path / "out"
    with locked_folder(out):
        one_error_line(capfd, "is being written by another samfusion command", "run", "--model", "samfusion-demo", "--out", out)
    assert not out.exists()
    assert not list(tmp_path.iterdir())  # the lock file went with the lock


def test_3_two_real_processes_into_one_folder(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([*SAMFUSION, "run", "--model", "samfusion-demo", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".out.samfusion-lock"
    for _ in range(600):
        if lock.exists() or first.poll() is not None:
            break
        subprocess.run(["sleep", "0.05"])
    second = subprocess.run([*SAMFUSION, "run", "--model", "samfusion-demo", "--out", str(out)], capture_output=True, text=True)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [f"samfusion: error: {out.resolve()} is being written by another samfusion command; wait for it or choose another --out"]
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"])


# ---- 4. Truncated NIfTI


@pytest.mark.parametrize("name", ["image.nii.gz", "image.nii"])
def test_4_a_truncated_nifti_is_refused(capfd, tmp_path, checkpoint, name):
    array = (np.random.default_rng(4).random((1, 120, 160)) * 255).astype(np.float32)
    whole = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(array), str(whole))
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    out = tmp_path / "m.png"
    one_error_line(capfd, f"cut_{name} is truncated", "segment", cut, "--point", 80, 60, "--checkpoint", checkpoint, "--out", out)
    one_error_line(capfd, f"cut_{name} is truncated", "fuse", cut, whole, "--out", tmp_path / "f.nrrd")
    assert not out.exists() and not (tmp_path / "f.nrrd").exists()
    assert run(capfd, "segment", whole, "--point", 80, 60, "--checkpoint", checkpoint, "--out", out)[0] == 0


# ---- 5-9. Output locations that cannot be written: refused up front, in one line


def test_5_segment_into_a_read_only_filesystem(capfd, png, checkpoint, readonly_dir):
    one_error_line(capfd, "Read-only file system", "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", readonly_dir / "m.png")


def test_6_fuse_into_an_immutable_folder(capfd, pair, immutable_dir):
    one_error_line(capfd, "Operation not permitted", "fuse", pair[0], pair[1], "--out", immutable_dir / "f.nrrd")


def test_7_register_report_into_a_read_only_filesystem(capfd, pair, tmp_path, readonly_dir):
    fixed, moving, fixed_mask, moving_mask = pair
    one_error_line(capfd, "Read-only file system", "register", "--fixed", fixed, "--moving", moving, "--out-transform", tmp_path / "t.h5",
                   "--out-report", readonly_dir / "r.json")
    assert not (tmp_path / "t.h5").exists()


def test_8_run_into_a_read_only_filesystem(capfd, readonly_dir):
    one_error_line(capfd, "Read-only file system", "run", "--model", "samfusion-demo", "--out", readonly_dir / "out")


def test_9_run_into_an_existing_immutable_folder(capfd, immutable_dir):
    one_error_line(capfd, "Operation not permitted", "run", "--model", "samfusion-demo", "--out", immutable_dir)


# ---- 10. A folder named like an image: our line only, no ITK/GDCM warnings


def test_10_a_folder_named_like_an_image_gives_one_line(capfd, tmp_path, checkpoint):
    folder = tmp_path / "adir.png"
    folder.mkdir()
    one_error_line(capfd, "is an empty folder", "segment", folder, "--point", 5, 5, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")
    (folder / "notes.txt").write_text("not DICOM")
    one_error_line(capfd, "no DICOM series in folder", "segment", folder, "--point", 5, 5, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")


# ---- 11-12. Wrong answers no longer accepted


def test_11_a_non_finite_window_is_refused(capfd, png, checkpoint, tmp_path):
    for window in ("nan,nan", "40,inf"):
        one_error_line(capfd, "must be two finite numbers", "segment", png, "--point", 80, 60, "--window", window,
                       "--checkpoint", checkpoint, "--out", tmp_path / "m.png")


def test_12_a_box_with_no_area_is_refused(capfd, png, checkpoint, tmp_path):
    one_error_line(capfd, "box (50, 50, 50, 50) has no area", "segment", png, "--box", 50, 50, 50, 50, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")
    one_error_line(capfd, "has no area", "segment", png, "--box", 10, 50, 90, 50, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")


# ---- 13. An interrupt and the commit point


def _interrupt_at(function_name: str, c_function=None):
    """A profile hook that sends this process a real SIGINT once, when ``function_name`` is entered
    (or, with ``c_function``, when that function calls the builtin ``c_function``)."""
    sent = []

    def hook(frame, event, arg):
        if sent:
            return
        if c_function is None and event == "call" and frame.f_code.co_name == function_name \
                or c_function is not None and event == "c_call" and arg is c_function and frame.f_code.co_name == function_name:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    return hook, sent


def _interrupted_run(capfd, out: Path, hook) -> tuple[int, str, str]:
    # Ctrl-C's own disposition, whatever this process inherited (a background job ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.setprofile(hook)
    try:
        code = main(["run", "--model", "samfusion-demo", "--out", str(out)])
    finally:
        sys.setprofile(None)
        signal.signal(signal.SIGINT, previous)
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def test_13_an_interrupt_during_the_commit_lets_it_complete(capfd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    hook, sent = _interrupt_at("staged_folder", os.replace)  # the first file moved into the folder
    code, stdout, err = _interrupted_run(capfd, out, hook)
    assert sent
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*report["files"], "mine.txt"])
    assert "registration passed" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_13_an_interrupt_before_the_commit_leaves_the_folder_as_it_was(capfd, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    hook, sent = _interrupt_at("register_2d")
    code, stdout, err = _interrupted_run(capfd, out, hook)
    assert sent
    assert code == 130
    assert err.strip().splitlines()[-1] == "samfusion: error: interrupted"
    assert folder_state(out) == {"mine.txt": digest(out / "mine.txt")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder, no lock file


def test_13_deferred_interrupts_hold_a_signal_until_the_block_ends():
    with deferred_interrupts() as arrived:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # give the interpreter the chance to run the handler
            pass
    assert arrived == [signal.SIGINT]


# ---- Also seen


def test_outputs_get_the_mode_of_the_umask(capfd, png, pair, checkpoint, tmp_path):
    previous = os.umask(0o022)
    try:
        assert run(capfd, "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")[0] == 0
        fixed, moving, fixed_mask, moving_mask = pair
        code, _, err = run(capfd, "register", "--fixed", fixed, "--moving", moving, "--fixed-mask", fixed_mask, "--moving-mask", moving_mask,
                           "--transform", "rigid", "--out-transform", tmp_path / "t.h5", "--out-report", tmp_path / "r.json")
        assert code == 0, err
    finally:
        os.umask(previous)
    for name in ("m.png", "t.h5", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_fuse_on_a_tiny_image_says_it_is_too_small(capfd, tmp_path):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.array([[0, 50], [100, 200]], np.uint8))
    one_error_line(capfd, "a 2x2 image is too small to fuse", "fuse", tiny, tiny, "--out", tmp_path / "f.png")


def test_intensity_only_registration_of_images_far_apart_in_spacing_fails_its_check(capfd, pair, tmp_path):
    fixed, moving = pair[0], pair[1]
    squeezed = sitk.ReadImage(str(moving))
    squeezed.SetSpacing((0.5e-4, 0.5e-4))
    small = tmp_path / "small.nrrd"
    sitk.WriteImage(squeezed, str(small))
    code, _, err = run(capfd, "register", "--fixed", fixed, "--moving", small, "--transform", "rigid", "--out-transform", tmp_path / "t.h5")
    assert code == 3
    assert "physical sizes differ 1e+04x" in err


def test_an_image_beyond_the_supported_size_is_refused_from_its_header(capfd, tmp_path, checkpoint):
    big = tmp_path / "big.nrrd"
    sitk.WriteImage(sitk.Image(8000, 6000, sitk.sitkUInt8), str(big), True)
    one_error_line(capfd, "has 8000x6000 pixels; images up to 40 megapixels are supported",
                   "segment", big, "--point", 5, 5, "--checkpoint", checkpoint, "--out", tmp_path / "m.png")


def test_an_output_that_is_a_folder_is_refused(capfd, png, checkpoint, tmp_path):
    folder = tmp_path / "m.png"
    folder.mkdir()
    one_error_line(capfd, "is a folder", "segment", png, "--point", 80, 60, "--checkpoint", checkpoint, "--out", folder)
    shutil.rmtree(folder)
