"""Annotation on Dask: a local cluster (``--workers``) and a separately started scheduler with its
workers (``--scheduler``) give the serial run's answer; a worker killed mid-run and a task that
fails leave a complete, consistent output."""

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


def stone_images(shared_data: Path, folder: Path, count: int) -> tuple[Path, Path]:
    images, labels = folder / "images", folder / "labels"
    images.mkdir()
    labels.mkdir()
    for source in sorted((shared_data / "kidney_stone_ct" / "images").glob("*.jpg"))[:count]:
        shutil.copy(source, images / source.name)
        shutil.copy(shared_data / "kidney_stone_ct" / "labels" / f"{source.stem}.txt", labels / f"{source.stem}.txt")
    return images, labels


def annotate(images: Path, labels: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([*SAMFUSION, "annotate", "--model", "samfusion-demo", str(images), "--yolo", str(labels), "--classes", "stone", "--out", str(out), *map(str, extra)],
                          capture_output=True, text=True, timeout=600)


def outputs(out: Path) -> dict[str, bytes]:
    """Every output file's bytes: the COCO file, the label maps and the failures."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "annotate-state.json"}


@pytest.fixture
def external_cluster(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes (no nanny: a kill is a kill) on loopback."""
    address_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(address_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if address_file.exists() and address_file.stat().st_size:
            break
        time.sleep(0.1)
    address = json.loads(address_file.read_text())["address"]
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
                                 "--no-dashboard", "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "SAMFUSION_CACHE_DIR": str(tmp_path / "worker-cache")})
               for _ in range(2)]
    yield address, workers
    for process in [*workers, scheduler]:
        process.kill()
        process.wait()


def test_a_local_cluster_and_an_external_one_give_the_serial_answer(tmp_path, shared_data, external_cluster):
    images, labels = stone_images(shared_data, tmp_path, 10)
    serial = annotate(images, labels, tmp_path / "serial")
    local = annotate(images, labels, tmp_path / "local", "--workers", 2)
    external = annotate(images, labels, tmp_path / "external", "--scheduler", external_cluster[0])
    for done in (serial, local, external):
        assert done.returncode == 0, done.stderr
        assert "10 annotated, 0 already done, 0 failed" in done.stdout
    assert outputs(tmp_path / "local") == outputs(tmp_path / "serial")
    assert outputs(tmp_path / "external") == outputs(tmp_path / "serial")
    assert len(json.loads((tmp_path / "serial" / "annotations.json").read_text())["images"]) == 10


def test_a_worker_killed_mid_run_and_a_failing_task(tmp_path, shared_data, external_cluster):
    address, workers = external_cluster
    images, labels = stone_images(shared_data, tmp_path, 12)
    (images / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")  # its task fails: reported, the rest goes on
    (labels / "zz_broken.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    out = tmp_path / "out"
    process = subprocess.Popen([*SAMFUSION, "annotate", "--model", "samfusion-demo", str(images), "--yolo", str(labels), "--classes", "stone", "--out", str(out),
                                "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    state_path, deadline = out / "annotate-state.json", time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:  # until two images are written, the rest in flight
        if state_path.exists() and len(json.loads(state_path.read_text()).get("images", {})) >= 2:
            break
        time.sleep(0.005)
    assert process.poll() is None  # still running: the kill lands mid-run
    workers[0].send_signal(signal.SIGKILL)  # mid-run: its task goes to the other worker
    stdout, _ = process.communicate(timeout=600)
    assert process.returncode == 1, stdout  # 1: one image failed, reported
    assert "12 annotated, 0 already done, 1 failed" in stdout.decode()
    coco = json.loads((out / "annotations.json").read_text())
    names = [image["file_name"] for image in coco["images"]]
    assert sorted(names) == sorted(p.name for p in images.glob("*.jpg") if p.name != "zz_broken.jpg")  # each exactly once
    assert list(json.loads((out / "failures.json").read_text())) == ["zz_broken.jpg"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(f"{Path(n).stem}.png" for n in names)
    assert not list(out.rglob(".*"))  # no temporary files
