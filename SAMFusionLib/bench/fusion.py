"""``samfusion bench fuse``: our pyramid fusion against classic peers on co-registered real pairs.

Two sets of pairs from ``../shared/data``, each about 400 px wide:
- ``slab``: the abdomen CT's coronal slab (5 slices, soft-tissue window) against an X-ray-like
  parallel projection of the same CT along the same axis (8 pairs);
- ``radiograph``: what the pipeline fuses, a radiograph against another rendering of the same
  anatomy: the chest X-rays and the abdomen CT's projection, each against the registration
  benchmark's contrast rendering of it (``xray_sim.render_contrast``: another gamma, polarity,
  blur and noise), on the same grid (12 pairs, seeded).
Ours is run twice, plain and with a detail gain (``FusionOptions.detail_gain``). Peers: the average, a DWT fusion (PyWavelets db2, 3 levels, max-abs details, mean approximation)
and a Laplacian pyramid with per-pixel max-abs selection. All methods get the same 0..255 inputs.
Figures: EN, SD, SF, MI, Qabf, SSIM (conventions in ``metrics``) and ms per pair.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from SAMFusionLib.fusion.metrics import fusion_metrics
from SAMFusionLib.fusion.pyramid import FusionOptions, fuse, laplacian_pyramid, reconstruct

SIZE = 400


def benchmark_pairs(count: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """(CT slab, X-ray-like projection) pairs, each (H, W) float32 in 0..255 on the same grid."""
    import cv2

    from SAMFusionLib.cases.shared_data import abdomen_ct
    from SAMFusionLib.imaging.intensity import resolve_range, to_uint8
    from SAMFusionLib.registration.projection import line_integral, xray_image

    hu, geometry, _, masks = abdomen_ct()
    integral = line_integral(hu, geometry, axis=1)  # along j (anterior-posterior rows of the axial slices)
    xray = xray_image(integral, bone_bright=True)
    kidney_j = np.flatnonzero(masks["kidney_left"].any(axis=(0, 2)) | masks["kidney_right"].any(axis=(0, 2)))
    window = resolve_range(hu, "soft_tissue")
    pairs = []
    for j in np.linspace(kidney_j.min(), kidney_j.max(), count).astype(int):
        slab = hu[:, max(j - 2, 0) : j + 3, :].mean(axis=1)
        ct = to_uint8(slab, window).astype(np.float32)
        height = int(round(SIZE * ct.shape[0] / ct.shape[1]))
        resize = (SIZE, height)
        pairs.append((cv2.resize(ct, resize, interpolation=cv2.INTER_CUBIC).clip(0, 255), cv2.resize(xray, resize, interpolation=cv2.INTER_CUBIC).clip(0, 255)))
    return pairs


def radiograph_pairs(count: int = 12, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(radiograph, rendering of it) pairs, each (H, W) float32 in 0..255 on the same grid: every
    third the abdomen CT's projection, the others the chest X-rays in turn."""
    from SAMFusionLib.bench.register import source_images
    from SAMFusionLib.cases.xray_sim import render_contrast

    rng = np.random.default_rng(seed)
    sources = source_images()
    pairs = []
    for n in range(count):
        _, image, _, _, kind = sources[0] if n % 3 == 0 else sources[1 + (n - n // 3 - 1) % (len(sources) - 1)]
        original = np.clip(image, 0, 255).astype(np.float32)
        pairs.append((original, render_contrast(original, rng, kind)))
    return pairs


PAIR_SETS = {"slab": benchmark_pairs, "radiograph": radiograph_pairs}


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a + b) / 2


def dwt_max_abs(a: np.ndarray, b: np.ndarray, wavelet: str = "db2", levels: int = 3) -> np.ndarray:
    import pywt

    ca, cb = pywt.wavedec2(a, wavelet, level=levels), pywt.wavedec2(b, wavelet, level=levels)
    fused = [(ca[0] + cb[0]) / 2]
    for da, db in zip(ca[1:], cb[1:]):
        fused.append(tuple(np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(da, db)))
    return pywt.waverec2(fused, wavelet)[: a.shape[0], : a.shape[1]].clip(0, 255)


def laplacian_max_abs(a: np.ndarray, b: np.ndarray, levels: int = 3) -> np.ndarray:
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    bands = [np.where(np.abs(x) >= np.abs(y), x, y) for x, y in zip(pa[:-1], pb[:-1])]
    return reconstruct(bands + [(pa[-1] + pb[-1]) / 2]).clip(0, 255)


def ours(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fuse(a, b, FusionOptions(levels=3))


SHARPENED_GAIN = 1.05  # the smallest gain in steps of 0.05 that lifts SF past max-abs on the radiograph set


def ours_sharpened(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return fuse(a, b, FusionOptions(levels=3, detail_gain=SHARPENED_GAIN))


METHODS = {"samfusion (match rule)": ours, f"samfusion, detail gain {SHARPENED_GAIN}": ours_sharpened, "laplacian max-abs": laplacian_max_abs, "dwt db2 max-abs": dwt_max_abs, "average": average}


def run_benchmark(pairs: list[tuple[np.ndarray, np.ndarray]] | None = None, repeats: int = 5, pair_set: str = "slab") -> dict:
    """Every method on ``pairs``: by default the set ``pair_set`` names (``PAIR_SETS``), which also titles the table."""
    pairs = pairs if pairs is not None else PAIR_SETS[pair_set]()
    results = {}
    for name, method in METHODS.items():
        method(*pairs[0])  # warm-up
        times, rows = [], []
        for a, b in pairs:
            start = time.perf_counter()
            for _ in range(repeats):
                fused = method(a, b)
            times.append((time.perf_counter() - start) / repeats)
            rows.append(fusion_metrics(a, b, fused))
        results[name] = {key: round(float(np.mean([r[key] for r in rows])), 4) for key in rows[0]}
        results[name]["ms_per_pair"] = round(1000 * float(np.median(times)), 2)
    return {
        "benchmark": "fuse",
        "set": pair_set,
        "pairs": len(pairs),
        "size": list(pairs[0][0].shape),
        "conventions": "EN, MI in bits; MI and SSIM summed over both sources; Qabf Xydeas-Petrovic",
        "machine": platform.machine(),
        "methods": results,
    }


SET_TITLES = {"slab": "CT slab / X-ray-like projection", "radiograph": "radiograph / another rendering of it"}


def format_table(figures: dict) -> str:
    """The benchmark as a Markdown table, one row per method."""
    columns = ["EN", "SD", "SF", "MI", "Qabf", "SSIM", "ms_per_pair"]
    lines = [
        f"Fusion benchmark, {SET_TITLES[figures['set']]}: {figures['pairs']} pairs, the first of "
        f"{figures['size'][1]}x{figures['size'][0]} px ({figures['conventions']})",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name, row in figures["methods"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c != "ms_per_pair" else f"{row[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)
