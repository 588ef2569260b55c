"""``samfusion bench segment``: our slice-wise engine against the naive SamPredictor loop.

Both sides use the same model, slices and ROI box. The naive loop calls ``set_image`` and
``predict`` on every slice; the engine (``volume.segment_volume`` without propagation) batches the
encoder and fills the embedding cache. Figures: wall seconds of each, their ratio, whether the
masks are identical, the largest low-res logit difference, and the re-prompt latency on a cached
slice (a new point answered from the cached embedding).
"""

from __future__ import annotations

import platform
import time

import numpy as np

from SAMFusionLib.errors import SamFusionError


def _case(slices: int):
    """(HU volume (k, j, i), geometry, ROI corners in RAS, source name): the abdomen CT's left
    kidney when the shared data is present, else a CT phantom."""
    from SAMFusionLib.imaging.geometry import ImageGeometry

    try:
        from SAMFusionLib.cases.shared_data import abdomen_ct

        hu, geometry, _, masks = abdomen_ct()
        mask = masks["kidney_left"]
        source = "abdomen_ct kidney_left (shared data)"
    except SamFusionError:
        from SAMFusionLib.cases.phantom import ct_volume

        phantom = ct_volume(np.random.default_rng(0), (40, 128, 128))
        hu, mask = phantom.hu_kji, phantom.masks["kidney_left"]
        geometry = ImageGeometry.from_lps((1.5, 1.5, 2.5), (0, 0, 0), np.eye(3), hu.shape)
        source = "CT phantom kidney"
    ks, js, is_ = np.nonzero(mask)
    k_mid = int(np.median(ks))
    k0, k1 = k_mid - slices // 2, k_mid - slices // 2 + slices - 1
    low = np.array([is_.min() - 3, js.min() - 3, k0 - 0.4])
    high = np.array([is_.max() + 3, js.max() + 3, k1 + 0.4])
    corners_ijk = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return hu, geometry, geometry.ijk_to_ras_points(corners_ijk), source, list(range(k0, k1 + 1))


def run_benchmark(args, model=None) -> dict:
    import torch

    from SAMFusionLib.imaging.geometry import SliceAxes
    from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
    from SAMFusionLib.sam.models import build_sam, from_module, load_table
    from SAMFusionLib.sam.segmenter import Segmenter, sam_predictor
    from SAMFusionLib.sam.volume import VolumePrompts, plan_prompts, segment_volume

    if args.slices < 8:
        raise SamFusionError("the benchmark needs --slices 8 or more")
    if args.random_arch:
        table = load_table()
        if args.random_arch not in table.architectures:
            raise SamFusionError(f"unknown architecture {args.random_arch!r}")
        torch.manual_seed(0)
        from SAMFusionLib.device import select_device

        model = from_module(build_sam(table.architectures[args.random_arch]), f"random-{args.random_arch}", args.random_arch, select_device(args.device))
    hu, geometry, corners, source, indices = _case(args.slices)
    prompts = VolumePrompts(roi_corners_ras=corners)
    box = plan_prompts(prompts, geometry, SliceAxes(2)).roi_box
    intensity = resolve_range(hu, "soft_tissue")
    images = [to_sam_rgb(hu[k], intensity) for k in indices]

    # Warm-up outside the timings (first-call allocations, lazy kernels).
    warm = sam_predictor(model.sam)
    warm.set_image(images[0])
    warm.predict(box=box, multimask_output=False)

    start = time.perf_counter()
    naive = sam_predictor(model.sam)
    naive_masks, naive_logits = [], []
    for rgb in images:
        naive.set_image(rgb)
        masks, _, logits = naive.predict(box=box, multimask_output=False)
        naive_masks.append(masks[0])
        naive_logits.append(logits[0])
    naive_s = time.perf_counter() - start

    precision = args.precision or "fp32"  # the naive loop's, so that the masks compare
    segmenter = Segmenter(model, precision=precision)
    start = time.perf_counter()
    result = segment_volume(segmenter, hu, geometry, prompts, window="soft_tissue", propagate=False, zoom="off", batch_size=args.batch_size)
    project_s = time.perf_counter() - start

    identical = all(np.array_equal(result.mask_kji[k].astype(bool), m) for k, m in zip(indices, naive_masks))
    max_diff = 0.0
    for rgb, reference in zip(images, naive_logits):
        segmenter.set_image(rgb)
        ours = segmenter.predict(box_xyxy=box, multimask=False)
        max_diff = max(max_diff, float(np.abs(ours.low_res_logits[0] - reference).max()))

    # The encoder alone: the same slices into a fresh cache.
    start = time.perf_counter()
    Segmenter(model, precision=precision).embed_many(images, args.batch_size or (1 if model.device == "cpu" else 4))
    encoder_s = time.perf_counter() - start

    latencies = []
    centre = np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]])
    for n in range(10):
        segmenter.set_image(images[n % len(images)])  # cached: no encoder call
        start = time.perf_counter()
        segmenter.set_image(images[(n + 1) % len(images)])
        segmenter.predict(points_xy=centre + n % 3, labels=np.array([1]))
        latencies.append(time.perf_counter() - start)
    return {
        "benchmark": "segment",
        "case": source,
        "slices": len(indices),
        "model": model.model_id,
        "device": model.device,
        "precision": segmenter.precision,
        "batch_size": args.batch_size or (1 if model.device == "cpu" else 4),
        "naive_s": round(naive_s, 4),
        "project_s": round(project_s, 4),
        "ratio": round(naive_s / project_s, 3),
        "encoder_ms_per_slice": round(1000 * encoder_s / len(indices), 1),
        "masks_identical": identical,
        "max_logit_abs_diff": max_diff,
        "reprompt_ms_median": round(1000 * float(np.median(latencies)), 2),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
