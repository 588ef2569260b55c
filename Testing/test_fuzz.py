"""Property-based fuzzing of every command's inputs (hypothesis): whatever the image, metadata,
prompt, mask or prompt file, a command gives a result, or exits 2 with exactly one line
``samfusion: error: ...`` and writes nothing. Never a traceback, never a partial file.

Fixed seed (``derandomize``) and a bounded number of examples per command, so ``make test`` stays in
its budget; ``SAMFUSION_FUZZ_EXAMPLES=500`` runs a longer search.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from SAMFusionLib.cli.main import main

SCALE = float(os.environ.get("SAMFUSION_FUZZ_EXAMPLES", "1")) if os.environ.get("SAMFUSION_FUZZ_EXAMPLES", "").isdigit() else None


def examples(default: int) -> int:
    """``default`` examples per command, or $SAMFUSION_FUZZ_EXAMPLES for a longer run."""
    return int(SCALE) if SCALE else default


def fuzz(default: int):
    return settings(max_examples=examples(default), deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


# ---- strategies

DTYPES = ["uint8", "uint16", "int16", "float32", "float64"]
NUMBER_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda v: repr(float(v))),
    st.integers(-100, 300).map(str),
    st.sampled_from(["abc", "", "1e400", "-0", "0x10", "nan", "-inf"]),
)


@st.composite
def image_specs(draw, dims=(2,)):
    """(array, is_vector, spacing, direction, origin, suffix, corruption, cut) for one image file.

    Half the examples are plausible (16-48 px, grey or RGB, intact), so that the search also reaches
    the model and the optimiser; the other half are hostile: any size from 1 px, RGBA, 3D/4D,
    constant, NaN/Inf, extreme spacing, truncated, empty, text, or a folder.
    """
    hostile = draw(st.booleans())
    dimension = draw(st.sampled_from(dims)) if hostile else dims[0]
    low = 1 if hostile else 16
    height, width = draw(st.integers(low, 40 if hostile else 48)), draw(st.integers(low, 40 if hostile else 48))
    channels = draw(st.sampled_from([1, 3, 4] if hostile else [1, 3]))
    shape: tuple[int, ...] = (height, width)
    if dimension == 3:
        shape = (draw(st.integers(1 if hostile else 8, 8)), height, width)
    elif dimension == 4:
        shape = (2, 1, height, width)
    dtype = draw(st.sampled_from(DTYPES if hostile else ["uint8", "uint16", "float32"]))
    content = draw(st.sampled_from(["random", "constant", "nan", "inf"])) if hostile else "random"
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    array = (rng.random(shape + ((channels,) if channels > 1 else ())) * 250).astype(dtype)
    if content == "constant":
        array[...] = 7
    elif content in ("nan", "inf") and array.dtype.kind == "f":
        array.flat[rng.integers(array.size)] = np.nan if content == "nan" else np.inf
    axes = 3 if dimension >= 3 else 2
    spacing = tuple(draw(st.floats(1e-4, 1e3)) if hostile else draw(st.floats(0.1, 3.0)) for _ in range(axes))
    angle = draw(st.floats(-np.pi, np.pi))
    direction = np.eye(axes)
    direction[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    origin = tuple(draw(st.floats(-1e4, 1e4)) if hostile else draw(st.floats(-50, 50)) for _ in range(axes))
    suffix = draw(st.sampled_from([".png", ".nrrd", ".nii.gz", ".mha", ".nii"]))
    corruption = draw(st.sampled_from(["none", "truncated", "empty", "text", "folder"])) if hostile else "none"
    return array, channels > 1, spacing, direction, origin, suffix, corruption, draw(st.floats(0.05, 0.95))


def write_image(spec, folder: Path, stem: str) -> Path:
    """Write ``spec`` as a file (or a mistake: truncated, empty, text, a folder); returns its path."""
    array, vector, spacing, direction, origin, suffix, corruption, cut = spec
    path = folder / f"{stem}{suffix}"
    if corruption == "folder":
        path.mkdir()
        return path
    if corruption in ("empty", "text"):
        path.write_text("" if corruption == "empty" else "this is not an image\n")
        return path
    if suffix == ".png":  # PNG holds one 2D slice of bytes (or 16-bit grey)
        while array.ndim > (3 if vector else 2):
            array = array[0]
        if array.dtype.name != "uint16" or vector:
            array = np.clip(np.nan_to_num(array), 0, 255).astype(np.uint8)
        image = sitk.GetImageFromArray(array, isVector=vector)
    else:
        image = sitk.GetImageFromArray(array, isVector=vector)
        dimension = image.GetDimension()
        image.SetSpacing([float(v) for v in (list(spacing) + [1.0] * dimension)[:dimension]])
        image.SetOrigin([float(v) for v in (list(origin) + [0.0] * dimension)[:dimension]])
        if dimension == len(spacing):
            image.SetDirection([float(v) for v in direction.ravel()])
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError:
        path.write_bytes(b"\x89PNG\r\n")  # a format that cannot hold this array: a broken file instead
    if corruption == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
    return path


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


PROGRESS = re.compile(r"^[\w -]+: +\d+%\|")


def run_captured(argv: list) -> tuple[int, list[str]]:
    """``samfusion argv`` in-process; its stderr lines, caught at file descriptor 2 (what a user sees,
    C++ libraries' own prints included). A NumPy warning is an error: it would be a second line."""
    import contextlib
    import io
    import sys

    with tempfile.TemporaryFile("w+") as sink, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(io.StringIO()):
                code = main([str(a) for a in argv])
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        # tqdm's progress bar is display, redrawn with carriage returns: not a line of output.
        return code, [line for line in sink.read().strip().splitlines() if line.strip() and not PROGRESS.search(line)]


def check_promise(argv: list, folder: Path, outputs: list[Path], ok_codes=(0,)) -> int:
    """Run ``samfusion argv`` in-process: success (``ok_codes``), or exit 2 with one error line and
    nothing new in ``folder``. An exception is a traceback, and fails the test with its example."""
    before = listing(folder)
    code, lines = run_captured(argv)
    if code in ok_codes:
        assert all(p.exists() for p in outputs), (argv, lines)
        return code
    assert code == 2, (code, lines)
    assert len(lines) == 1 and lines[0].startswith("samfusion: error: "), lines
    assert listing(folder) == before, lines
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], lines
    return code


def check_folder_promise(argv: list, out: Path) -> tuple[int, list[str]]:
    """A command over a folder of items: 0, 1 (some items failed, the rest done) or 2 with one
    error line and no ``out`` folder. Returns the code and the stderr lines."""
    code, lines = run_captured(argv)
    assert code in (0, 1, 2), lines
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("samfusion: error: "), lines
        assert not out.exists()
    return code, lines


# ---- the commands


@fuzz(40)
@given(spec=image_specs(dims=(2, 2, 2, 3, 4)), prompt=st.sampled_from(["point", "box", "both", "negative-only"]),
       numbers=st.lists(NUMBER_TEXT, min_size=6, max_size=6), near=st.lists(st.floats(-3, 45), min_size=6, max_size=6),
       use_near=st.sampled_from([True, True, True, False]), window=st.sampled_from(["auto", "raw", "bone", "nan,nan", "40,0", "abc", "1,2,3", "40,400", "inf,1", "percentile"]),
       out_suffix=st.sampled_from([".png", ".png", ".png", ".nrrd", ".nii.gz", ".jpg"]))
def test_segment(checkpoint, spec, prompt, numbers, near, use_near, window, out_suffix):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        image = write_image(spec, folder, "image")
        values = [repr(v) for v in near] if use_near else numbers
        argv = ["segment", image, "--window", window, "--checkpoint", checkpoint, "--out", folder / f"mask{out_suffix}"]
        if prompt in ("point", "both"):
            argv += ["--point", *values[:2]]
        if prompt in ("box", "both"):
            argv += ["--box", *values[2:6]]
        if prompt == "negative-only":
            argv += ["--negative", *values[:2]]
        check_promise(argv, folder, [folder / f"mask{out_suffix}"])


@st.composite
def mask_specs(draw):
    kind = draw(st.sampled_from(["none", "match", "empty", "wrong-size", "broken"]))
    return kind, draw(st.integers(0, 2**16))


def write_mask(kind_seed, folder: Path, stem: str, like: Path) -> Path | None:
    kind, seed = kind_seed
    if kind == "none":
        return None
    path = folder / f"{stem}.nrrd"
    if kind == "broken":
        path.write_text("NRRD0004\ntype: what\n")
        return path
    try:
        reference = sitk.ReadImage(str(like))
        height, width = reference.GetSize()[1], reference.GetSize()[0]
    except RuntimeError:
        height, width = 20, 20
    if kind == "wrong-size":
        height += 3
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8) if kind == "empty" else (rng.random((height, width)) > 0.6).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(path))
    return path


@fuzz(25)
@given(fixed=image_specs(), moving=image_specs(), masks=st.tuples(mask_specs(), mask_specs()),
       transform=st.sampled_from(["rigid", "affine", "nonrigid"]), resampled=st.booleans(), report=st.booleans())
def test_register(fixed, moving, masks, transform, resampled, report):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        fixed_path, moving_path = write_image(fixed, folder, "fixed"), write_image(moving, folder, "moving")
        argv = ["register", "--fixed", fixed_path, "--moving", moving_path, "--transform", transform, "--out-transform", folder / "t.h5"]
        outputs = [folder / "t.h5"]
        for flag, spec, like, stem in (("--fixed-mask", masks[0], fixed_path, "fm"), ("--moving-mask", masks[1], moving_path, "mm")):
            path = write_mask(spec, folder, stem, like) if like.is_file() else None
            if path is not None:
                argv += [flag, path]
        if resampled:
            argv += ["--out-resampled", folder / "r.nrrd"]
            outputs.append(folder / "r.nrrd")
        if report:
            argv += ["--out-report", folder / "r.json"]
            outputs.append(folder / "r.json")
        # 3: the quality check failed; the outputs are written for inspection (the contract).
        check_promise(argv, folder, outputs, ok_codes=(0, 3))


@fuzz(30)
@given(a=image_specs(), b=image_specs(), same=st.booleans(), mask=mask_specs(), levels=st.integers(-1, 7),
       threshold=st.floats(-0.5, 1.5), out_suffix=st.sampled_from([".nrrd", ".png", ".txt"]))
def test_fuse(a, b, same, mask, levels, threshold, out_suffix):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        a_path = write_image(a, folder, "a")
        b_path = write_image(a if same else b, folder, "b")
        argv = ["fuse", a_path, b_path, "--levels", levels, "--threshold", threshold, "--out", folder / f"f{out_suffix}"]
        mask_path = write_mask(mask, folder, "ma", a_path) if a_path.is_file() else None
        if mask_path is not None:
            argv += ["--mask-a", mask_path]
        check_promise(argv, folder, [folder / f"f{out_suffix}"])


YOLO_LINES = st.lists(st.one_of(
    st.tuples(st.integers(-1, 3), *[st.floats(-0.5, 1.5)] * 4).map(lambda t: " ".join(str(v) for v in t)),
    st.text(alphabet="0123456789 .-abc\t", max_size=20),
), max_size=3)


@fuzz(15)
@given(images=st.lists(image_specs(), min_size=1, max_size=2), labels=st.lists(YOLO_LINES, min_size=2, max_size=2))
def test_annotate(checkpoint, images, labels):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "images").mkdir()
        (folder / "labels").mkdir()
        for index, spec in enumerate(images):
            write_image(spec, folder / "images", f"im{index}")
            (folder / "labels" / f"im{index}.txt").write_text("\n".join(labels[index]))
        out = folder / "out"
        argv = ["annotate", folder / "images", "--yolo", folder / "labels", "--checkpoint", checkpoint, "--out", out]
        # 0: all annotated; 1: some images failed, each reported in one line and in failures.json.
        code, lines = check_folder_promise(argv, out)
        if code != 2:
            coco = json.loads((out / "annotations.json").read_text())
            failures = json.loads((out / "failures.json").read_text()) if (out / "failures.json").exists() else {}
            assert len(coco["images"]) + len(failures) <= len(images)
            assert (code == 1) == bool(failures)
            assert all(line.startswith("samfusion: failed: ") for line in lines), lines


@fuzz(12)
@given(images=st.lists(image_specs(), min_size=1, max_size=2), masks=st.lists(mask_specs(), min_size=2, max_size=2),
       protocol=st.sampled_from(["prompted", "automatic", "both"]), prompt=st.sampled_from(["point", "box"]),
       areas=st.tuples(st.integers(-5, 50), st.integers(-5, 5000)), bootstrap=st.integers(-1, 50))
def test_evaluate(images, masks, protocol, prompt, areas, bootstrap):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "images").mkdir()
        (folder / "masks").mkdir()
        for index, spec in enumerate(images):
            image = write_image(spec, folder / "images", f"im{index}")
            if image.is_file():
                write_mask(masks[index], folder / "masks", f"im{index}", image)
        out = folder / "out"
        argv = ["evaluate", folder / "images", "--masks", folder / "masks", "--protocol", protocol, "--prompt", prompt,
                "--min-area", areas[0], "--max-area", areas[1], "--bootstrap", bootstrap, "--points-per-side", 4,
                "--model", "samfusion-demo", "--no-classical", "--out", out]
        # 0: the table; 1: some images could not be scored, each reported in one line; 2: bad input.
        code, lines = check_folder_promise(argv, out)
        if code != 2:
            table = json.loads((out / "table.json").read_text())
            assert (code == 1) == bool(table["failures"])
            assert (out / "table.md").exists() and (out / "overlays.png").exists()


MARKUPS = st.one_of(
    st.just('{"markups": [{"type": "Fiducial", "controlPoints": [{"position": [0, 0, 0]}]}]}'),
    st.just('{"markups": [{"type": "ROI", "center": [0, 0, 0], "size": [1e9, 1e9, 1e9]}]}'),
    st.just('{"markups": [{"type": "Fiducial", "controlPoints": [{"position": ["a", null, 1]}]}]}'),
    st.just('{"markups": [{"type": "Fiducial"'),  # truncated
    st.just("[]"),
    st.text(max_size=30),
)


@fuzz(10)
@given(ct=image_specs(dims=(3, 3, 2)), xray=image_specs(), ct_markups=MARKUPS, xray_markups=MARKUPS)
def test_run(checkpoint, ct, xray, ct_markups, xray_markups):
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        ct_path, xray_path = write_image(ct, folder, "ct"), write_image(xray, folder, "xray")
        (folder / "ct_prompts.mrk.json").write_text(ct_markups)
        (folder / "xray_prompts.mrk.json").write_text(xray_markups)
        argv = ["run", "--ct", ct_path, "--xray", xray_path, "--prompts", folder / "ct_prompts.mrk.json", folder / "xray_prompts.mrk.json",
                "--checkpoint", checkpoint, "--out", folder / "out"]
        check_promise(argv, folder, [folder / "out" / "report.json"], ok_codes=(0, 3))


def test_the_fuzz_budget_is_bounded():
    # The default run must stay within make test's budget; a longer search is opt-in.
    if not SCALE:
        assert examples(40) == 40
    pytest.importorskip("hypothesis")
