"""``samfusion bench batch``: annotation throughput serial against a local Dask cluster, one run.

Each configuration is a fresh ``samfusion annotate`` process over the same images (the shared
kidney-stone CT slices with their YOLO boxes), each with an empty embedding cache, so every image
is encoded; wall time from start to exit (interpreter, imports, cluster start, model load on each
worker, annotation, writing), images per second, the process's own peak RSS and, on a cluster,
each worker's. The outputs of every configuration are compared with the serial run's.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from SAMFusionLib.bench.register_scale import CHILD
from SAMFusionLib.errors import SamFusionError


def stone_folder(folder: Path, count: int) -> tuple[Path, Path]:
    """The first ``count`` shared kidney-stone images and their YOLO files, copied into ``folder``."""
    from SAMFusionLib.cases.shared_data import shared_data_dir

    source = shared_data_dir() / "kidney_stone_ct"
    names = sorted((source / "images").glob("*.jpg"))[:count]
    if len(names) < count:
        raise SamFusionError(f"shared data: {len(names)} kidney-stone images in {source}, {count} asked (set SAMFUSION_SHARED_DATA)")
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for path in names:
        shutil.copy(path, images / path.name)
        shutil.copy(source / "labels" / f"{path.stem}.txt", labels / f"{path.stem}.txt")
    return images, labels


def annotate_once(images: Path, labels: Path, out: Path, model_id: str, workers: int | None) -> dict:
    """One fresh ``samfusion annotate`` process; its wall time, peak RSS and workers' peak RSS."""
    import os

    peak = out.parent / f"{out.name}.peak"
    command = [sys.executable, "-c", CHILD, str(peak), "annotate", str(images), "--yolo", str(labels), "--classes", "stone",
               "--model", model_id, "--out", str(out), *(["--workers", str(workers)] if workers else [])]
    env = {**os.environ, "SAMFUSION_CACHE_DIR": str(out.parent / f"{out.name}.cache")}  # empty: every image is encoded
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SamFusionError(f"annotate {'serial' if not workers else f'--workers {workers}'} failed: {done.stderr.strip().splitlines()[-1:]}")
    found = re.search(r"peak RSS per worker ([\d, ]+) MB", done.stdout)
    return {"seconds": round(seconds, 2), "client_peak_rss_mb": round(int(peak.read_text()) / 1024, 1),
            "worker_peak_rss_mb": [float(v) for v in found.group(1).split(",")] if found else []}


def outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "annotate-state.json"}


def mask_agreement(out: Path, reference: Path) -> dict:
    """How far two runs' label maps differ: images with identical maps, and the lowest Dice of a
    map's foreground against the reference's (1.0 when every map is identical)."""
    import cv2
    import numpy as np

    from SAMFusionLib.imaging.metrics import dice

    names = sorted(p.name for p in (reference / "masks").iterdir())
    identical, lowest = 0, 1.0
    for name in names:
        a, b = (cv2.imread(str(folder / "masks" / name), cv2.IMREAD_UNCHANGED) for folder in (out, reference))
        identical += int(np.array_equal(a, b))
        if a.any() or b.any():
            lowest = min(lowest, dice(a > 0, b > 0))
    return {"identical_masks": f"{identical}/{len(names)}", "lowest_mask_dice": round(float(lowest), 4)}


def run_benchmark(count: int, model_id: str, workers: tuple[int, ...] = (2,)) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        images, labels = stone_folder(folder / "data", count)
        rows = []
        for n in (None, *workers):
            out = folder / f"out-{n or 'serial'}"
            run = annotate_once(images, labels, out, model_id, n)
            serial = folder / "out-serial"
            rows.append({"workers": n or 0, **run, "images_per_second": round(count / run["seconds"], 3),
                         "same_as_serial": outputs(out) == outputs(serial), **mask_agreement(out, serial)})
    serial = rows[0]["seconds"]
    for row in rows:
        row["speed_up"] = round(serial / row["seconds"], 2)
    import os

    return {"images": count, "model": model_id, "cpu_cores": os.cpu_count(), "rows": rows}


def format_table(figures: dict) -> str:
    lines = [f"samfusion annotate, {figures['images']} kidney-stone CT slices, model {figures['model']}, {figures['cpu_cores']} CPU cores; "
             "a fresh process each, empty embedding cache", "",
             "| run | wall s | images/s | speed-up | client peak RSS (MB) | worker peak RSS (MB) | outputs = serial | identical masks | lowest mask Dice |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in figures["rows"]:
        name = "serial" if not row["workers"] else f"--workers {row['workers']}"
        workers = ", ".join(f"{v:.0f}" for v in row["worker_peak_rss_mb"]) or "-"
        lines.append(f"| {name} | {row['seconds']:.1f} | {row['images_per_second']:.2f} | {row['speed_up']:.2f} | "
                     f"{row['client_peak_rss_mb']:.0f} | {workers} | {'yes' if row['same_as_serial'] else 'no'} | "
                     f"{row['identical_masks']} | {row['lowest_mask_dice']:.4f} |")
    return "\n".join(lines)
