"""``samfusion bench ct-size``: ``samfusion run`` on a real CT at its stored size and at a clinical size.

The shared abdomen CT is stored at 3 mm (112 x 101 x 122 voxels); a clinical abdomen CT has 512 x 512
pixels of 0.6-0.8 mm and slices of 1-1.5 mm. "clinical" is the same CT resampled to 512 x 512 pixels
in-plane over the same extent and to 1.5 mm slices (linear; its kidney mask nearest): the anatomy is
what it was, the voxel count (about 59 M, 224 MiB of float32) is a clinical one. For each size the
end-to-end case is made from that CT (``case_from_ct``: an affine X-ray, seed ``seed``) and written as
the files a user passes, then:

- cold: ``samfusion run`` on the files in a fresh process with an empty embedding cache: wall time
  from start to exit, the process's peak resident memory (VmHWM), the images it encoded and its
  step timings (its ``report.json``);
- again: the same command in a fresh process, which finds the first run's embeddings on disk;
- quality: the same files through the same engine in this process, over the embedding cache the first
  run filled (nothing is encoded): the CT mask's Dice against the truth, the TRE against the known
  transform (``truth.json``), the reference the registration stood on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError

SIZES = ("stored", "clinical")
CLINICAL_IN_PLANE_PX = 512
CLINICAL_SLICE_MM = 1.5


def clinical_size(image, mask_kji: np.ndarray):
    """(HU (k, j, i) float32, geometry, mask (k, j, i) bool) of a SimpleITK CT ``image`` and its mask
    resampled to CLINICAL_IN_PLANE_PX pixels in-plane over the same extent and CLINICAL_SLICE_MM slices."""
    import SimpleITK as sitk

    from SAMFusionLib.imaging.geometry import ImageGeometry

    extent_mm = np.array(image.GetSize()) * np.array(image.GetSpacing())
    spacing_mm = (extent_mm[0] / CLINICAL_IN_PLANE_PX, extent_mm[1] / CLINICAL_IN_PLANE_PX, CLINICAL_SLICE_MM)
    size = [CLINICAL_IN_PLANE_PX, CLINICAL_IN_PLANE_PX, int(round(extent_mm[2] / CLINICAL_SLICE_MM))]
    mask = sitk.GetImageFromArray(mask_kji.astype(np.uint8))
    mask.CopyInformation(image)

    def onto_clinical_grid(source, interpolator, outside: float):
        return sitk.Resample(source, size, sitk.Transform(), interpolator, image.GetOrigin(), spacing_mm, image.GetDirection(), outside)

    hu = onto_clinical_grid(sitk.Cast(image, sitk.sitkFloat32), sitk.sitkLinear, -1024.0)
    labels = onto_clinical_grid(mask, sitk.sitkNearestNeighbor, 0.0)
    hu_kji = sitk.GetArrayFromImage(hu)
    geometry = ImageGeometry.from_lps(spacing_mm, image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)), hu_kji.shape)
    return hu_kji, geometry, sitk.GetArrayFromImage(labels).astype(bool)


def abdomen_case(size: str, seed: int):
    """The end-to-end case (the left kidney) made from the abdomen CT at ``size`` ("stored" or "clinical")."""
    from SAMFusionLib.cases.demo_case import case_from_ct
    from SAMFusionLib.cases.shared_data import abdomen_ct

    hu, geometry, image, masks = abdomen_ct()
    mask = masks["kidney_left"]
    if size == "clinical":
        hu, geometry, mask = clinical_size(image, mask)
    return case_from_ct(hu, geometry, mask, np.random.default_rng(seed), nonrigid=False)


def run_cold(files: dict, out: Path, cache: Path, model_id: str, slice_step: int | str) -> dict:
    """``samfusion run`` on ``files`` in a fresh process whose cache folder is ``cache``: wall seconds,
    peak RSS (MiB) and its report.json."""
    from SAMFusionLib.bench.register_scale import CHILD

    peak = out.with_suffix(".peak")
    command = [sys.executable, "-c", CHILD, peak, "run", "--ct", files["ct"], "--xray", files["xray"], "--prompts", *files["prompts"],
               "--out", out, "--model", model_id, "--slice-step", str(slice_step)]
    start = time.perf_counter()
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, env={**os.environ, "SAMFUSION_CACHE_DIR": str(cache)})
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):  # 3: the registration's check failed; the outputs are written
        raise SamFusionError(f"samfusion run failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return {"seconds": seconds, "peak_rss_mib": float(peak.read_text()) / 1024, "report": json.loads((out / "report.json").read_text())}


def quality(case, files: dict, cache: Path, model, slice_step: int | str) -> dict:
    """The files through the engine in this process, over the embedding cache in ``cache``."""
    from SAMFusionLib.imaging.metrics import dice
    from SAMFusionLib.pipeline import PipelineOptions
    from SAMFusionLib.sam.embedding_cache import EmbeddingCache
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.scene import mrml
    from SAMFusionLib.scene.case_files import landmark_tre_mm, load_file_case
    from SAMFusionLib.scene.run import run_on_scene

    segmenter = Segmenter(model, EmbeddingCache(disk_dir=cache / "embeddings"))
    core = mrml.headless_scene()
    nodes = load_file_case(core.scene, files["ct"], files["xray"], files["prompts"])
    _, result = run_on_scene(core.scene, nodes, segmenter, PipelineOptions(slice_step=slice_step))
    return {
        "ct_dice": round(dice(result.ct_mask_kji, case.ct_target_mask), 4),
        "tre_mm": round(landmark_tre_mm(result.registration.sitk_transform, files["truth"]), 3),
        "reference": result.registration.report["reference"],
        "confirmed_by": result.registration.report.get("confirmed_by"),  # see registration/confirm.py
        "passed": bool(result.registration.passed),
        "images_encoded": result.report["images_encoded"],
    }


def run_benchmark(model_id: str, sizes=SIZES, seed: int = 1, slice_step: int | str = "auto") -> dict:
    """The figures of each size in ``sizes`` (see the module docstring)."""
    from SAMFusionLib.sam.models import load_model, load_table
    from SAMFusionLib.sam.volume import check_slice_step
    from SAMFusionLib.scene.case_files import write_case_files

    unknown = [size for size in sizes if size not in SIZES]
    if unknown or not sizes:
        raise SamFusionError(f"--sizes takes {' and/or '.join(SIZES)}, separated by commas, got {','.join(sizes) or 'none'}")
    check_slice_step(slice_step)
    load_table().entry(model_id)  # an unknown model is refused here, before any case is made
    model = load_model(model_id, device="cpu")
    rows = {}
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="samfusion-ct-size-") as scratch:
            folder = Path(scratch)
            case = abdomen_case(size, seed)
            files = write_case_files(case, folder / "case")
            cold = run_cold(files, folder / "cold", folder / "cache", model_id, slice_step)
            again = run_cold(files, folder / "again", folder / "cache", model_id, slice_step)
            report = cold["report"]
            rows[size] = {
                "ct_voxels": [int(n) for n in case.inputs.ct_kji.shape[::-1]],  # i, j, k
                "ct_spacing_mm": [round(float(s), 3) for s in case.inputs.ct_geometry.spacing_mm],
                "xray_px": [int(n) for n in case.inputs.xray.shape[::-1]],  # columns, rows
                "slice_step_used": report["ct"]["slice_step"],  # "auto" resolved for this CT's slices
                "slices_segmented": report["ct"]["slices_segmented"],
                "cold_s": round(cold["seconds"], 2),
                "cold_images_encoded": report["images_encoded"],
                "cold_timings_s": report["timings_s"],
                "cold_peak_rss_gib": round(cold["peak_rss_mib"] / 1024, 2),
                "again_s": round(again["seconds"], 2),
                "again_images_encoded": again["report"]["images_encoded"],
                "again_peak_rss_gib": round(again["peak_rss_mib"] / 1024, 2),
                **quality(case, files, folder / "cache", model, slice_step),
            }
    return {"benchmark": "ct-size", "model": model_id, "seed": seed, "slice_step": slice_step, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "sizes": rows}


def format_table(figures: dict) -> str:
    """The benchmark as a Markdown table, one row per size."""
    lines = [
        f"CT-size benchmark: `samfusion run` on the abdomen CT's end-to-end case (seed {figures['seed']}), model {figures['model']}, "
        f"slice step {figures['slice_step']}, each run a fresh process",
        "",
        "| CT size | voxels (i × j × k) | spacing (mm) | X-ray (px) | slices SAM ran on (step) | cold: wall s | images encoded | CT segmentation s "
        "| peak RSS (GiB) | again, embeddings on disk: wall s | images encoded | CT Dice | TRE (mm) | registered on |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in figures["sizes"].items():
        voxels = " × ".join(str(n) for n in row["ct_voxels"])
        spacing = " × ".join(f"{s:g}" for s in row["ct_spacing_mm"])
        verdict = row["reference"] + (f", confirmed by {row['confirmed_by']}" if row.get("confirmed_by") else "") + ("" if row["passed"] else ", failed")
        lines.append(
            f"| {size} | {voxels} | {spacing} | {row['xray_px'][0]} × {row['xray_px'][1]} | {row['slices_segmented']} ({row['slice_step_used']}) | {row['cold_s']:.1f} "
            f"| {row['cold_images_encoded']} | {row['cold_timings_s']['segment CT']:.1f} | {row['cold_peak_rss_gib']:.2f} | {row['again_s']:.1f} "
            f"| {row['again_images_encoded']} | {row['ct_dice']:.3f} | {row['tre_mm']:.2f} | {verdict} |"
        )
    return "\n".join(lines)
