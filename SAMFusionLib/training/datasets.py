"""Training sample sources: callables ``rng -> ((H, W, 3) uint8 image, (H, W) bool target mask)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from SAMFusionLib.cases.phantom import ct_volume, scene_2d
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb

SampleSource = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def phantom_scenes(size: int = 256) -> SampleSource:
    """Random 2D phantoms (CT slices, radiographs, shapes); one random object is the target."""

    def draw(rng: np.random.Generator):
        image, objects = scene_2d(rng, size)
        target = objects[rng.integers(len(objects))]
        return np.repeat(image[:, :, None], 3, axis=2), target

    return draw


def phantom_ct_slices() -> SampleSource:
    """Windowed slices of 3D CT phantoms (``phantom.ct_volume``) with a random organ or stone as target."""

    def draw(rng: np.random.Generator):
        phantom = ct_volume(rng, (24, int(rng.integers(80, 160)), int(rng.integers(80, 160))), stone_count=int(rng.integers(1, 5)))
        index = int(rng.integers(6, 18))
        names = [n for n, m in phantom.masks.items() if m[index].sum() >= 4]
        target = phantom.masks[names[rng.integers(len(names))]][index]
        window = ["soft_tissue", "bone", "stone", "auto"][rng.integers(4)]
        return to_sam_rgb(phantom.hu_kji[index], resolve_range(phantom.hu_kji, window)), target

    return draw


def phantom_radiographs() -> SampleSource:
    """Radiographs of CT phantoms (``radiograph.project_ct``, the default case's X-ray look) with the
    spine, a contrast-filled kidney or a stone as the target.

    Kidneys are targets only when contrast makes them visible (>= 300 HU); 1 in 4 images has the
    inverted display polarity of some detectors.
    """
    from SAMFusionLib.cases.demo_case import xray_contrast
    from SAMFusionLib.imaging.geometry import ImageGeometry
    from SAMFusionLib.registration.radiograph import project_ct

    def draw(rng: np.random.Generator):
        import cv2

        size = int(rng.integers(80, 140))
        shape = (int(rng.integers(32, 64)), size, size)
        kidney_hu = float(rng.choice([30.0, rng.uniform(300, 1500)]))
        phantom = ct_volume(rng, shape, stone_count=int(rng.integers(0, 5)), kidney_hu=kidney_hu)
        spacing = float(rng.uniform(0.8, 1.6))
        geometry = ImageGeometry.from_lps((spacing, spacing, spacing * rng.uniform(1.0, 3.0)), (0.0, 0.0, 0.0), np.eye(3), shape)
        names = ["spine"] + (["kidney_left", "kidney_right"] if kidney_hu >= 300 else []) + (["stones"] if phantom.masks["stones"].any() else [])
        name = names[rng.integers(len(names))]
        radiograph = project_ct(phantom.hu_kji, phantom.masks[name], geometry, "AP")
        target = radiograph.mask
        if name == "stones":  # one stone: a connected component of the projected stones
            count, labels = cv2.connectedComponents(target.astype(np.uint8))
            target = labels == int(rng.integers(1, count)) if count > 1 else target
        image = xray_contrast(radiograph.image, rng, gamma=float(rng.uniform(0.6, 1.8)))
        if rng.random() < 0.25:
            image = 255.0 - image
        return np.repeat(image.astype(np.uint8)[:, :, None], 3, axis=2), target

    return draw


def folder_pairs(images_dir: Path, masks_dir: Path) -> SampleSource:
    """Images with same-stem mask files; each distinct non-zero mask value is one target object."""
    import cv2

    images = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    pairs = [(p, next(Path(masks_dir).glob(p.stem + ".*"), None)) for p in images]
    pairs = [(i, m) for i, m in pairs if m is not None]
    if not pairs:
        raise SamFusionError(f"no image/mask pairs in {images_dir} and {masks_dir}")

    def draw(rng: np.random.Generator):
        image_path, mask_path = pairs[rng.integers(len(pairs))]
        image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
        labels = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        labels = cv2.resize(labels, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        values = [v for v in np.unique(labels) if v != 0]
        return image, labels == values[rng.integers(len(values))]

    return draw


def shared_lungs(split: str = "train") -> SampleSource:
    """Chest X-rays of ``split``; the target is one lung or both."""
    from SAMFusionLib.cases.shared_data import chest_xray_cases

    cases = chest_xray_cases(split)

    def draw(rng: np.random.Generator):
        case = cases[rng.integers(len(cases))]
        pick = rng.integers(len(case.lungs) + 1)
        target = np.logical_or.reduce(case.lungs) if pick == len(case.lungs) else case.lungs[pick]
        return np.repeat(case.image[:, :, None], 3, axis=2), target

    return draw


def shared_stones(split: str = "train") -> SampleSource:
    """Kidney-stone CT crops of ``split``, with Otsu-in-box pseudo masks, often zoomed around the stone.

    Zooming (a crop of 4-16x the stone's size) teaches the small model what the engine's zoom mode shows it.
    """
    from SAMFusionLib.cases.shared_data import kidney_stone_cases, stone_pseudo_mask

    cases = kidney_stone_cases(split)

    def draw(rng: np.random.Generator):
        case = cases[rng.integers(len(cases))]
        box = case.boxes[rng.integers(len(case.boxes))]
        mask = stone_pseudo_mask(case.image, box)
        image = case.image
        if mask.sum() < 3:
            return phantom_scenes()(rng)
        if rng.random() < 0.6:
            side = int(max(box[2] - box[0], box[3] - box[1]) * rng.uniform(4, 16)) + 16
            cx, cy = (box[0] + box[2]) / 2 + rng.uniform(-0.2, 0.2) * side, (box[1] + box[3]) / 2 + rng.uniform(-0.2, 0.2) * side
            x0, y0 = int(np.clip(cx - side / 2, 0, max(image.shape[1] - side, 0))), int(np.clip(cy - side / 2, 0, max(image.shape[0] - side, 0)))
            image, mask = image[y0 : y0 + side, x0 : x0 + side], mask[y0 : y0 + side, x0 : x0 + side]
            if mask.sum() < 3:
                return phantom_scenes()(rng)
        return np.repeat(image[:, :, None], 3, axis=2), mask

    return draw


def shared_kidneys(split: str = "train") -> SampleSource:
    """Kidney slices of the abdomen CT as the pipeline shows them (view grid, default window), caudal
    half for training (``shared_data.kidney_view_slices``); the target is one kidney."""
    from SAMFusionLib.cases.shared_data import kidney_view_slices

    slices = kidney_view_slices(split)

    def draw(rng: np.random.Generator):
        grey, targets = slices[rng.integers(len(slices))]
        names = sorted(targets)
        return np.repeat(grey[:, :, None], 3, axis=2), targets[names[rng.integers(len(names))]]

    return draw


DEMO_SOURCES = ["phantom", "phantom-ct", "phantom-xray", "shared-lungs", "shared-stones", "shared-kidneys"]


def make_sources(names: list[str]) -> list[SampleSource]:
    """Sources by name (see ``DEMO_SOURCES``), or ``IMAGES_DIR:MASKS_DIR`` for a folder of pairs."""
    makers = {
        "phantom": phantom_scenes,
        "phantom-ct": phantom_ct_slices,
        "phantom-xray": phantom_radiographs,
        "shared-lungs": lambda: shared_lungs("train"),
        "shared-stones": lambda: shared_stones("train"),
        "shared-kidneys": shared_kidneys,
    }
    sources = []
    for name in names:
        if name in makers:
            sources.append(makers[name]())
        elif ":" in name:
            images, masks = name.split(":", 1)
            sources.append(folder_pairs(Path(images), Path(masks)))
        else:
            raise SamFusionError(f"unknown training source {name!r}")
    return sources
