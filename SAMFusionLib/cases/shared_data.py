"""Access to the real, licensed data in ``../shared/data`` (never copied into the project).

The folder comes from ``$SAMFUSION_SHARED_DATA`` (default: ``../shared/data`` beside the project
root). Train/validation splits are fixed by a hash of each file's name, so every tool (training,
evaluation, tests) agrees on them without a list to maintain.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError

VALIDATION_PERCENT = 30


def shared_data_dir() -> Path:
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("SAMFUSION_SHARED_DATA") or default)


def split_of(name: str) -> str:
    """"val" for about VALIDATION_PERCENT % of names, else "train"; stable across machines."""
    bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100
    return "val" if bucket < VALIDATION_PERCENT else "train"


@dataclass
class LungCase:
    """A chest X-ray: ``image`` (H, W) uint8 and ``lungs``, one (H, W) bool mask per lung."""

    name: str
    image: np.ndarray
    lungs: list[np.ndarray]


def chest_xray_cases(split: str | None = None) -> list[LungCase]:
    """The chest X-rays with manual lung masks, resized anisotropically from the 2000 px canvas."""
    import cv2

    root = shared_data_dir() / "chest_xray_lungs"
    pairs = root / "pairs_v7id_imageid_v7w_v7h.txt"
    if not pairs.exists():
        raise SamFusionError(f"shared data not found: {pairs} (set SAMFUSION_SHARED_DATA)")
    cases = []
    for line in pairs.read_text().split("\n"):
        if not line.strip():
            continue
        v7_id, image_id = line.split()[:2]
        if split is not None and split_of(image_id) != split:
            continue
        image = cv2.imread(str(root / "images" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE)
        canvas = cv2.imread(str(root / "v7_semantic_masks_2000px" / f"{image_id}__v7_{v7_id}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None or canvas is None:
            raise SamFusionError(f"chest X-ray case {image_id} is incomplete")
        lung = cv2.resize((canvas == 255).astype(np.uint8), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(lung, connectivity=8)
        order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
        cases.append(LungCase(image_id, image, [labels == n for n in order if stats[n, cv2.CC_STAT_AREA] > 500]))
    return cases


@dataclass
class StoneCase:
    """A coronal CT crop: ``image`` (H, W) uint8 and ``boxes`` (N, 4) stone boxes x0, y0, x1, y1 in pixels."""

    name: str
    image: np.ndarray
    boxes: np.ndarray


def kidney_stone_cases(split: str | None = None) -> list[StoneCase]:
    """The kidney-stone CT crops with their YOLO boxes converted to pixel corners."""
    import cv2

    root = shared_data_dir() / "kidney_stone_ct"
    if not (root / "images").is_dir():
        raise SamFusionError(f"shared data not found: {root} (set SAMFUSION_SHARED_DATA)")
    cases = []
    for path in sorted((root / "images").glob("*.jpg")):
        if split is not None and split_of(path.stem) != split:
            continue
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        height, width = image.shape
        rows = np.loadtxt(root / "labels" / f"{path.stem}.txt", ndmin=2)
        cx, cy, w, h = rows[:, 1] * width, rows[:, 2] * height, rows[:, 3] * width, rows[:, 4] * height
        boxes = np.c_[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        cases.append(StoneCase(path.stem, image, boxes))
    return cases


def stone_pseudo_mask(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(H, W) bool: the bright component inside ``box`` (Otsu within the box), a stand-in for a stone mask.

    The dataset gives boxes only; stones are the brightest structures inside their boxes.
    """
    import cv2

    height, width = image.shape
    x0, y0 = int(np.floor(max(box[0], 0))), int(np.floor(max(box[1], 0)))
    x1, y1 = int(np.ceil(min(box[2], width - 1))), int(np.ceil(min(box[3], height - 1)))
    mask = np.zeros(image.shape, bool)
    crop = image[y0 : y1 + 1, x0 : x1 + 1]
    if crop.size == 0:
        return mask
    _, bright = cv2.threshold(crop, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    if count > 1:
        brightest = max(range(1, count), key=lambda n: crop[labels == n].mean())
        mask[y0 : y1 + 1, x0 : x1 + 1] = labels == brightest
    return mask


def abdomen_ct():
    """The abdomen CT: ((k, j, i) HU array, geometry, SimpleITK image, {organ: (k, j, i) bool})."""
    from SAMFusionLib.imaging.io import read_volume

    root = shared_data_dir() / "abdomen_ct"
    hu, geometry, image = read_volume(root / "example_ct.nii.gz")
    masks = {}
    for name in ("kidney_left", "kidney_right"):
        mask, _, _ = read_volume(root / "old_v1_organ_masks" / f"{name}.nii.gz")
        masks[name] = mask.astype(bool)
    return hu, geometry, image, masks



@dataclass
class KidneyView:
    """The abdomen CT as the pipeline shows it to SAM (``pipeline.ct_view_grid``, AP, default window).

    Attributes:
        grid: the view grid; ``view_kji``: (k, j, i) float32 HU on it; ``axis``: the IJK slice axis.
        masks: {kidney: (k, j, i) bool on the grid}.
        slices: {(kidney, split): slice indices}; "train" is the caudal half of that kidney's
            slices, "val" the cranial half (one patient: a held-out region, not a held-out patient).
    """

    grid: object
    view_kji: np.ndarray
    axis: int
    masks: dict[str, np.ndarray]
    slices: dict[tuple[str, str], list[int]]


def kidney_view() -> KidneyView:
    from SAMFusionLib.imaging.geometry import SliceAxes
    from SAMFusionLib.pipeline import PipelineOptions, ct_view_grid
    from SAMFusionLib.registration.radiograph import resample

    hu, geometry, _, masks = abdomen_ct()
    grid, view, axis = ct_view_grid(hu, geometry, PipelineOptions().view)
    axes = SliceAxes(axis)
    on_grid, slices = {}, {}
    for name, mask in masks.items():
        on_grid[name] = resample(mask.astype(np.uint8), geometry, grid, nearest=True).astype(bool)
        indices = [i for i in range(axes.count(on_grid[name].shape)) if axes.take(on_grid[name], i).sum() > 20]
        # Indices grow along the slice axis; which end is caudal depends on that axis's RAS z sign.
        caudal_first = indices if grid.ijk_to_ras[2, axis] > 0 else indices[::-1]
        half = len(indices) // 2
        slices[(name, "train")], slices[(name, "val")] = sorted(caudal_first[:half]), sorted(caudal_first[half:])
    return KidneyView(grid, view, axis, on_grid, slices)


def kidney_view_slices(split: str) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The kidney slices of ``split`` ("train" or "val") as SAM sees them: [((H, W) uint8, {kidney: (H, W) bool})]."""
    from SAMFusionLib.imaging.geometry import SliceAxes
    from SAMFusionLib.imaging.intensity import resolve_range, to_uint8
    from SAMFusionLib.pipeline import PipelineOptions

    if split not in ("train", "val"):
        raise SamFusionError(f"split must be train or val, got {split!r}")
    kidneys = kidney_view()
    axes = SliceAxes(kidneys.axis)
    intensity = resolve_range(kidneys.view_kji, PipelineOptions().ct_window)
    by_slice: dict[int, dict[str, np.ndarray]] = {}
    for (name, part), indices in kidneys.slices.items():
        for index in indices if part == split else []:
            by_slice.setdefault(index, {})[name] = axes.take(kidneys.masks[name], index)
    return [(to_uint8(axes.take(kidneys.view_kji, index), intensity), targets) for index, targets in sorted(by_slice.items())]
