"""``samfusion phantom``: a 2D CT phantom slice with ground truth and prompt files, for the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .intensity import resolve_range, to_uint8
from .phantom import ct_volume


def write_demo_phantom(out_dir: Path, seed: int = 7) -> dict:
    """Write ``ct_slice.png`` (soft-tissue window), ground-truth masks and ``prompts.json``.

    Files: ``kidney_gt.png``, ``stone_gt.png`` (0/255), and ``point_args_kidney.txt`` /
    ``box_args_kidney.txt`` / ``point_args_stone.txt`` holding the ``samfusion segment`` prompt options.
    Returns the prompts as written to ``prompts.json`` (pixel x = column, y = row).
    """
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    phantom = ct_volume(rng, (24, 192, 192), stone_count=2)
    stone_i, stone_j, stone_k = phantom.stone_centers_ijk[0]
    k = int(round(stone_k))
    image = to_uint8(phantom.hu_kji[k], resolve_range(phantom.hu_kji, "soft_tissue"))
    kidney = phantom.masks["kidney_left"][k]
    stone = phantom.masks["stones"][k]
    ys, xs = np.nonzero(kidney & ~stone)
    centre = (float(np.median(xs)), float(np.median(ys)))
    kidney_box = [float(xs.min() - 3), float(ys.min() - 3), float(xs.max() + 3), float(ys.max() + 3)]
    prompts = {"slice_k": k, "kidney_point": centre, "kidney_box": kidney_box, "stone_point": [float(stone_i), float(stone_j)]}
    cv2.imwrite(str(out_dir / "ct_slice.png"), image)
    cv2.imwrite(str(out_dir / "kidney_gt.png"), kidney.astype(np.uint8) * 255)
    cv2.imwrite(str(out_dir / "stone_gt.png"), stone.astype(np.uint8) * 255)
    (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=2))
    (out_dir / "point_args_kidney.txt").write_text("--point {:.1f} {:.1f}\n".format(*centre))
    (out_dir / "box_args_kidney.txt").write_text("--box {:.1f} {:.1f} {:.1f} {:.1f}\n".format(*kidney_box))
    (out_dir / "point_args_stone.txt").write_text(f"--point {stone_i:.1f} {stone_j:.1f}\n")
    return prompts
