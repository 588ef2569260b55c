"""What a user meets in ``samfusion bench register``: a fresh process per case (cold), and real
radiograph sizes (the same cases resampled to about 400, 1000 and 2000 px).

- cold: ``samfusion register`` run as a new process on the case's files, wall time from start to
  exit (imports, reading, registering, writing), TRE from the transform file it wrote;
- sizes: each case resampled onto a grid with the same physical extent and the given longer side
  (linear for images, nearest for masks; the truth and the test points are physical, so they stay);
  ours cold with its peak resident memory (the process's own high-water mark, ``VmHWM``), next to elastix
  affine + B-spline in this process on the same images.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from SAMFusionLib.bench.register import Case, run_elastix, tre_of
from SAMFusionLib.imaging.grid2d import resample_onto

SWEEP_SIDES = (400, 1000, 2000)
# ``samfusion`` as a user runs it, writing its peak resident memory (kB) to argv[1] when it exits.
CHILD = """
import atexit, re, sys
from pathlib import Path
peak = Path(sys.argv.pop(1))
atexit.register(lambda: peak.write_text(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)))
from SAMFusionLib.cli.main import main
sys.exit(main())
"""


def resized(case: Case, side: int) -> Case:
    """The case on a grid of the same physical extent whose longer side has ``side`` pixels."""
    import SimpleITK as sitk

    height, width = case.grid.shape_hw
    scale = side / max(height, width)
    grid = case.grid.with_shape((max(1, round(height * scale)), max(1, round(width * scale))))
    identity = sitk.Transform(2, sitk.sitkIdentity)
    return replace(
        case, grid=grid,
        fixed=resample_onto(case.fixed.astype(np.float32), case.grid, grid, identity),
        moving=resample_onto(case.moving.astype(np.float32), case.grid, grid, identity),
        fixed_mask=resample_onto(case.fixed_mask.astype(np.uint8), case.grid, grid, identity, nearest=True).astype(bool),
        moving_mask=resample_onto(case.moving_mask.astype(np.uint8), case.grid, grid, identity, nearest=True).astype(bool),
    )


def write_case(case: Case, folder: Path) -> dict[str, Path]:
    """The case's images and masks as NRRD files with its grid (what a user would pass)."""
    import SimpleITK as sitk

    paths = {}
    for name in ("fixed", "moving", "fixed_mask", "moving_mask"):
        array = getattr(case, name)
        image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array)
        case.grid.apply_to(image)
        paths[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(image, str(paths[name]))
    return paths


def register_cold(case: Case) -> dict:
    """``samfusion register`` in a fresh process: wall seconds, TRE (mm), peak RSS (MB)."""
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        paths = write_case(case, folder)
        # The child reports its own VmHWM at exit: a forked child's ru_maxrss starts from the parent's.
        command = [sys.executable, "-c", CHILD, folder / "peak.txt", "register",
                   "--fixed", paths["fixed"], "--moving", paths["moving"], "--fixed-mask", paths["fixed_mask"],
                   "--moving-mask", paths["moving_mask"], "--out-transform", folder / "t.h5"]
        start = time.perf_counter()
        done = subprocess.run([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if done.returncode not in (0, 3):  # 3: the quality check failed; the transform is still written
            raise RuntimeError(f"samfusion register failed: {done.stderr.decode().strip()[-300:]}")
        transform = sitk.ReadTransform(str(folder / "t.h5"))
        peak_kb = float((folder / "peak.txt").read_text())
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in case.points])
    return {"seconds": seconds, "tre_mm": tre_of(case, mapped), "peak_rss_mb": peak_kb / 1024}


def cold_figures(cases: list[Case]) -> dict:
    """Ours, each case in a fresh process."""
    runs = [register_cold(case) for case in cases]
    errors = np.array([run["tre_mm"] for run in runs])
    return {
        "median_tre_mm": round(float(np.median(errors)), 3),
        "success_rate": round(float(np.mean(errors < 2.0)), 3),
        "cold_seconds_per_case": round(float(np.mean([run["seconds"] for run in runs])), 3),
        "peak_rss_mb": round(float(max(run["peak_rss_mb"] for run in runs)), 1),
    }


def size_sweep(cases: list[Case], sides: tuple[int, ...] = SWEEP_SIDES) -> list[dict]:
    """Per size: ours cold (time, TRE, peak RSS) and elastix affine + B-spline (time, TRE)."""
    rows = []
    for side in sides:
        scaled = [resized(case, side) for case in cases]
        ours = [register_cold(case) for case in scaled]
        peer_errors, peer_seconds = [], []
        for case in scaled:
            start = time.perf_counter()
            try:
                peer_errors.append(tre_of(case, run_elastix(case, True)))
            except Exception:  # a peer that crashes on a case has failed that case
                peer_errors.append(float("inf"))
            peer_seconds.append(time.perf_counter() - start)
        rows.append({
            "side_px": side,
            "pixels": int(np.mean([case.grid.shape_hw[0] * case.grid.shape_hw[1] for case in scaled])),
            "ours_cold_seconds": round(float(np.mean([run["seconds"] for run in ours])), 2),
            "ours_median_tre_mm": round(float(np.median([run["tre_mm"] for run in ours])), 3),
            "ours_peak_rss_mb": round(float(max(run["peak_rss_mb"] for run in ours)), 1),
            "elastix_bspline_seconds": round(float(np.mean(peer_seconds)), 2),
            "elastix_bspline_median_tre_mm": round(float(np.median(peer_errors)), 3),
        })
    return rows


def format_sweep(rows: list[dict], cases: int) -> str:
    lines = [f"Size sweep: {cases} cases resampled, same physical extent; ours cold (a fresh `samfusion register` per case)", "",
             "| longer side (px) | ours cold s | ours median TRE (mm) | ours peak RSS (MB) | elastix affine+bspline s | elastix median TRE (mm) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['side_px']} | {row['ours_cold_seconds']:.2f} | {row['ours_median_tre_mm']:.3f} | {row['ours_peak_rss_mb']:.0f} | "
                     f"{row['elastix_bspline_seconds']:.2f} | {row['elastix_bspline_median_tre_mm']:.3f} |")
    return "\n".join(lines)
