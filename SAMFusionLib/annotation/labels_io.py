"""Ground truth and prompts for folders of 2D images: YOLO boxes, COCO, mask files, CSV points.

Every reader returns, per image, a list of ``Target``s in pixel coordinates (boxes as pixel
edges x0, y0, x1, y1; points x = column, y = row). A problem with one file raises ``LabelError``,
which the callers report for that file and then go on with the others.

- YOLO: ``LABELS/<image stem>.txt``, lines ``class cx cy w h`` normalised to the image size.
- COCO: one JSON; ``bbox`` is [x, y, width, height]; a ``segmentation`` (polygons or RLE) becomes
  the target's mask.
- Masks: ``MASKS/<image stem>.*`` or ``MASKS/<image stem>__*.*``; each non-zero value (or only
  ``target_value``) is a target, optionally split into connected components; a mask of another
  size is resized to the image (nearest, anisotropic: labels drawn on a fixed canvas).
- CSV points: header ``image,x,y[,label][,object]``; label 1 positive (default) or 0 negative;
  rows with the same image and object form one target.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LabelError(SamFusionError):
    """A problem with one image or its labels; the run reports it and goes on."""


@dataclass
class Target:
    category: str = "target"
    box_xyxy: np.ndarray | None = None
    mask: np.ndarray | None = None
    points_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    def centre_xy(self) -> np.ndarray:
        """The prompt point a protocol derives: the box centre, else the mask's deepest pixel."""
        if self.box_xyxy is not None:
            return np.array([(self.box_xyxy[0] + self.box_xyxy[2]) / 2 - 0.5, (self.box_xyxy[1] + self.box_xyxy[3]) / 2 - 0.5])
        from SAMFusionLib.imaging.geometry import interior_point

        return interior_point(self.mask)

    def sam_box(self) -> np.ndarray:
        """The box in SAM's coordinates (integers at pixel centres): pixel edges minus half a pixel."""
        return self.box() - 0.5

    def box(self) -> np.ndarray:
        """Pixel-edge box: the given one, else the mask's."""
        if self.box_xyxy is not None:
            return np.asarray(self.box_xyxy, float)
        ys, xs = np.nonzero(self.mask)
        return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SamFusionError(f"image folder not found: {folder}")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SamFusionError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images


def read_grey(path: Path) -> np.ndarray:
    """(H, W) uint8 grey image; a corrupt or unreadable file raises ``LabelError``."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None or image.size == 0:
        raise LabelError(f"{Path(path).name}: cannot read the image (corrupt or not an image)")
    return image


def yolo_targets(labels_dir: Path, image_path: Path, shape_hw: tuple[int, int], class_names: list[str] | None = None) -> list[Target]:
    path = Path(labels_dir) / f"{Path(image_path).stem}.txt"
    if not path.is_file():
        raise LabelError(f"{Path(image_path).name}: no label file {path.name}")
    height, width = shape_hw
    targets = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise LabelError(f"{path.name} line {number}: not numbers") from None
        if len(values) != 5:
            raise LabelError(f"{path.name} line {number}: expected 'class cx cy w h', got {len(values)} values")
        label, cx, cy, w, h = values
        if w <= 0 or h <= 0 or cx - w / 2 < -1e-6 or cy - h / 2 < -1e-6 or cx + w / 2 > 1 + 1e-6 or cy + h / 2 > 1 + 1e-6:
            raise LabelError(f"{path.name} line {number}: box outside the image (normalised values must lie in 0..1)")
        category = class_names[int(label)] if class_names and int(label) < len(class_names) else str(int(label))
        box = np.array([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
        targets.append(Target(category, box))
    return targets


def coco_index(coco_path: Path) -> dict[str, list[Target]]:
    """{image file name: targets} of a COCO JSON (boxes, and masks where segmentations exist)."""
    from pycocotools import mask as mask_utils

    try:
        coco = json.loads(Path(coco_path).read_text())
        categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
        images = {i["id"]: i for i in coco["images"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SamFusionError(f"{Path(coco_path).name} is not a readable COCO file: {error}") from None
    index: dict[str, list[Target]] = {i["file_name"]: [] for i in images.values()}
    for annotation in coco.get("annotations", []):
        image = images.get(annotation.get("image_id"))
        if image is None:
            continue
        height, width = image["height"], image["width"]
        x, y, w, h = annotation["bbox"]
        mask = None
        segmentation = annotation.get("segmentation")
        if segmentation:
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            mask = mask_utils.decode(rle).astype(bool)
        index[image["file_name"]].append(Target(categories.get(annotation.get("category_id"), "target"), np.array([x, y, x + w, y + h], float), mask))
    return index


def coco_targets(index: dict[str, list[Target]], image_path: Path, shape_hw: tuple[int, int]) -> list[Target]:
    name = Path(image_path).name
    if name not in index:
        raise LabelError(f"{name}: not listed in the COCO file")
    for target in index[name]:
        box = target.box_xyxy
        if box[0] < -0.5 or box[1] < -0.5 or box[2] > shape_hw[1] + 0.5 or box[3] > shape_hw[0] + 0.5:
            raise LabelError(f"{name}: a COCO box lies outside the {shape_hw[1]}x{shape_hw[0]} image")
    return index[name]


def mask_targets(masks_dir: Path, image_path: Path, shape_hw: tuple[int, int], target_value: int | None = None,
                 components: bool = False, min_area: int = 1) -> list[Target]:
    import cv2

    stem = Path(image_path).stem
    candidates = sorted(p for p in Path(masks_dir).iterdir() if p.stem.split(".")[0] == stem or p.name.startswith(f"{stem}__"))
    if not candidates:
        raise LabelError(f"{Path(image_path).name}: no mask file for it in {Path(masks_dir).name}")
    labels = cv2.imread(str(candidates[0]), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise LabelError(f"{candidates[0].name}: cannot read the mask")
    if labels.ndim == 3:
        labels = labels[..., 0]
    if labels.shape != tuple(shape_hw):
        labels = cv2.resize(labels, (shape_hw[1], shape_hw[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    values = [target_value] if target_value is not None else [int(v) for v in np.unique(labels) if v != 0]
    targets = []
    for value in values:
        region = labels == value
        if components:
            count, parts, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
            pieces = [parts == n for n in range(1, count) if stats[n, cv2.CC_STAT_AREA] >= min_area]
        else:
            pieces = [region] if region.sum() >= min_area else []
        targets += [Target(str(value), None, piece) for piece in pieces]
    return targets


def csv_points(csv_path: Path) -> dict[str, list[Target]]:
    """{image file name: targets with point prompts} from a CSV of points."""
    grouped: dict[str, dict[str, list]] = {}
    try:
        with open(csv_path, newline="") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                try:
                    point = (float(row["x"]), float(row["y"]))
                    label = int(row.get("label") or 1)
                except (KeyError, ValueError, TypeError):
                    raise SamFusionError(f"{Path(csv_path).name} line {number}: needs image, x, y (numbers) and optional label, object") from None
                grouped.setdefault(row["image"], {}).setdefault(row.get("object") or "1", []).append((point, label))
    except OSError as error:
        raise SamFusionError(f"cannot read {csv_path}: {error}") from None
    return {
        image: [Target(f"object {name}", points_xy=np.array([p for p, _ in rows], float), point_labels=np.array([lab for _, lab in rows], int))
                for name, rows in objects.items()]
        for image, objects in grouped.items()
    }


def point_targets(index: dict[str, list[Target]], image_path: Path, shape_hw: tuple[int, int]) -> list[Target]:
    name = Path(image_path).name
    if name not in index:
        raise LabelError(f"{name}: no points for it in the CSV")
    height, width = shape_hw
    for target in index[name]:
        inside = (target.points_xy >= -0.5).all(1) & (target.points_xy[:, 0] <= width - 0.5) & (target.points_xy[:, 1] <= height - 0.5)
        if not inside.all():
            raise LabelError(f"{name}: a point lies outside the {width}x{height} image")
    return index[name]
