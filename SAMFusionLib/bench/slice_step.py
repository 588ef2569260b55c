"""``samfusion bench slice-step``: the pipeline with SAM on every Nth CT slice, against every slice.

Phantom cases (``make_demo_case(seed)`` for seeds 0..cases-1; seed 5 is the embedded default case),
one process, a fresh ``Segmenter`` for each run, so every image is encoded as on a first run; the
steps run in turn, every other case in reverse order. Per step: the images encoded, the CT mask's
Dice against the truth, the TRE against the known transform, how many runs stood on SAM's masks
and passed their check, and the CT segmentation's seconds. ``ratio``: step 1's CT segmentation
time over this step's, on the same cases in the same run (above 1 = faster);
``max_tre_change_mm``: the largest change of a case's TRE against step 1.
"""

from __future__ import annotations

import platform

import numpy as np


def run_benchmark(model, cases: int = 8, steps=(1, 2, 3, 4)) -> dict:
    """Figures per slice step (``steps`` must include 1, the peer) on ``cases`` phantom cases."""
    from SAMFusionLib.cases.demo_case import make_demo_case, tre_mm
    from SAMFusionLib.errors import SamFusionError
    from SAMFusionLib.imaging.metrics import dice
    from SAMFusionLib.pipeline import PipelineOptions, run_pipeline
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.sam.volume import check_slice_step

    steps = sorted(set(steps))
    for step in steps:
        check_slice_step(step)
    if steps[0] != 1:
        raise SamFusionError("the slice-step benchmark compares against step 1 (every slice): include 1 in --steps")
    if cases < 1:
        raise SamFusionError(f"the slice-step benchmark needs at least one case, got {cases}")
    runs = {step: [] for step in steps}
    for seed in range(cases):
        case = make_demo_case(seed)
        # Every other case runs the steps in reverse, so that no step gains or loses from going first.
        for step in steps if seed % 2 == 0 else steps[::-1]:
            segmenter = Segmenter(model)
            result = run_pipeline(segmenter, case.inputs, PipelineOptions(slice_step=step))
            runs[step].append({
                "images_encoded": result.report["images_encoded"],
                "ct_dice": dice(result.ct_mask_kji, case.ct_target_mask),
                "tre_mm": tre_mm(case, result.registration.sitk_transform),
                "on_sam_masks": result.registration.report["reference"] == "SAM masks",
                "passed": result.registration.passed,
                "segment_ct_s": result.report["timings_s"]["segment CT"],
            })
    every = runs[1]
    rows = {}
    for step, results in runs.items():
        column = {key: np.array([r[key] for r in results], float) for key in results[0]}
        rows[step] = {
            "images_encoded_median": float(np.median(column["images_encoded"])),
            "ct_dice_mean": round(float(column["ct_dice"].mean()), 4),
            "ct_dice_worst": round(float(column["ct_dice"].min()), 4),
            "tre_median_mm": round(float(np.median(column["tre_mm"])), 3),
            "tre_worst_mm": round(float(column["tre_mm"].max()), 3),
            "max_tre_change_mm": round(float(max(abs(r["tre_mm"] - e["tre_mm"]) for r, e in zip(results, every))), 3),
            "on_sam_masks": int(column["on_sam_masks"].sum()),
            "passed": int(column["passed"].sum()),
            "segment_ct_s_median": round(float(np.median(column["segment_ct_s"])), 2),
            "ratio": round(float(sum(e["segment_ct_s"] for e in every) / max(column["segment_ct_s"].sum(), 1e-9)), 2),
        }
    return {"benchmark": "slice-step", "model": model.model_id, "cases": cases, "machine": platform.machine(), "steps": rows}


def format_table(figures: dict) -> str:
    """The benchmark as a Markdown table, one row per step."""
    lines = [
        f"Slice-step benchmark: the pipeline on {figures['cases']} phantom cases, model {figures['model']}, every image encoded",
        "",
        "| slice step | images encoded (median) | CT Dice mean / worst | TRE median / worst (mm) | largest TRE change (mm) "
        "| on SAM's masks | passed | CT segmentation s (median) | ratio vs step 1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for step, row in figures["steps"].items():
        lines.append(
            f"| {step} | {row['images_encoded_median']:.0f} | {row['ct_dice_mean']:.3f} / {row['ct_dice_worst']:.3f} "
            f"| {row['tre_median_mm']:.2f} / {row['tre_worst_mm']:.2f} | {row['max_tre_change_mm']:.2f} | {row['on_sam_masks']} "
            f"| {row['passed']} | {row['segment_ct_s_median']:.1f} | {row['ratio']:.2f} |"
        )
    return "\n".join(lines)
