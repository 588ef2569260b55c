"""Interrupted runs, in real subprocesses: SIGINT or SIGTERM during the slowest step leaves the
output folder as it was (``run``), or every image either complete or absent and resumable
(``annotate``); never a half-written file or a staging folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SAMFUSION = [sys.executable, "-c", "import sys; from SAMFusionLib.cli.main import main; sys.exit(main())"]


def _interruptible() -> None:
    # A shell starts background jobs with SIGINT ignored, and a child inherits that: give the command
    # the default disposition a user's terminal gives it, so that the test means the same anywhere.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(argv: list, cwd: Path, **environment) -> subprocess.Popen:
    return subprocess.Popen([*SAMFUSION, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **environment}, preexec_fn=_interruptible)


def wait_for(process: subprocess.Popen, marker: bytes, timeout_s: float = 120) -> bytes:
    """Read the process's stderr (tqdm redraws with carriage returns) until ``marker`` appears."""
    os.set_blocking(process.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"never saw {marker!r}: {seen[-300:]!r}")
        chunk = process.stderr.read()
        seen += chunk or b""
        time.sleep(0.01)
    return seen


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_run_interrupted_while_registering_leaves_the_folder_as_it_was(tmp_path, sig, code):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    process = start(["run", "--model", "samfusion-demo", "--out", out], tmp_path)
    wait_for(process, b"register")  # the progress bar names the step it is in
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert err.decode().strip().splitlines()[-1] == f"samfusion: error: {'interrupted' if sig == signal.SIGINT else 'terminated'}"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "the user's own file"
    assert hidden(tmp_path) == []  # no staging folder, no lock file


def test_annotate_terminated_mid_run_keeps_complete_images_and_resumes(tmp_path, shared_data):
    images = tmp_path / "images"
    labels = tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    sources = sorted((shared_data / "kidney_stone_ct" / "images").glob("*.jpg"))[:16]
    for source in sources:
        shutil.copy(source, images / source.name)
        shutil.copy(shared_data / "kidney_stone_ct" / "labels" / f"{source.stem}.txt", labels / f"{source.stem}.txt")
    out = tmp_path / "out"
    argv = ["annotate", images, "--yolo", labels, "--classes", "stone", "--out", out]
    # A cache of its own, so that every image costs an encoder run (earlier tests may have cached these).
    cache = {"SAMFUSION_CACHE_DIR": str(tmp_path / "cache")}
    process = start(argv, tmp_path, **cache)
    state_path = out / "annotate-state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # until two images are recorded done
        if state_path.exists() and len(json.loads(state_path.read_text() or "{}").get("images", {})) >= 2:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    state = json.loads((out / "annotate-state.json").read_text()) if (out / "annotate-state.json").exists() else None
    assert state is not None and 2 <= len(state["images"]) < 16
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert masks == sorted(entry["mask"] for entry in state["images"].values())  # each image complete or absent
    assert not list(out.rglob(".*"))  # no temporary files
    assert hidden(tmp_path) == []

    resumed = subprocess.run([*SAMFUSION, *map(str, argv)], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **cache})
    assert resumed.returncode == 0, resumed.stderr
    assert f"{16 - len(state['images'])} annotated, {len(state['images'])} already done" in resumed.stdout
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(image["file_name"] for image in coco["images"]) == sorted(p.name for p in sources)  # each exactly once
