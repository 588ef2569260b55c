"""``samfusion annotate``: prompts in, a labelled data set out, in the formats other tools read.

2D images (a folder) with prompts from YOLO boxes, COCO boxes or a CSV of points (``labels_io``):
- ``masks/<image stem>.png|.nrrd|.nii.gz``: an instance label map, 0 = background, n = the n-th
  target of the image (later targets drawn over earlier ones where they overlap);
- ``annotations.json``: COCO with one annotation per target: RLE mask (pycocotools), its box and
  area, the category of its prompt, SAM's score;
- ``failures.json``: the files that could not be done, with the reason.

A volume (NRRD, NIfTI, ...) with Slicer markups files (each file one target: a point list or an
ROI) gives ``<volume>.seg.nrrd`` (one segment per file, written by MRML) and a label map.

Resumable: ``annotate-state.json`` records each finished image (written atomically after each one);
a re-run skips those whose mask file is still there. Embeddings go to the disk cache
(``$SAMFUSION_CACHE_DIR/embeddings``), so a re-run with changed prompts encodes nothing again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from SAMFusionLib.annotation.labels_io import LabelError, Target, list_images, read_grey
from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path

MASK_FORMATS = {"png": ".png", "nrrd": ".nrrd", "nii": ".nii.gz"}
STATE_FILE = "annotate-state.json"


@dataclass
class AnnotateSummary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done in an earlier run
    failures: dict[str, str] = field(default_factory=dict)


def segment_targets(segmenter, image: np.ndarray, targets: list[Target], zoom: str = "auto") -> list[tuple[np.ndarray, float]]:
    """(mask, score) per target: its box when it has one, else its points."""
    from SAMFusionLib.sam.zoom import predict_zoomed

    rgb = np.repeat(image[:, :, None], 3, axis=2)
    results = []
    for target in targets:
        if target.box_xyxy is not None:
            prediction = predict_zoomed(segmenter, rgb, None, None, target.sam_box(), zoom)
        elif len(target.points_xy):
            prediction = predict_zoomed(segmenter, rgb, target.points_xy, target.point_labels, None, zoom)
        else:
            raise LabelError(f"target {target.category!r} has neither a box nor points")
        results.append((prediction.mask.astype(bool), float(prediction.score)))
    return results


def label_map(masks: list[np.ndarray], shape_hw: tuple[int, int]) -> np.ndarray:
    dtype = np.uint8 if len(masks) < 256 else np.uint16
    labels = np.zeros(shape_hw, dtype)
    for number, mask in enumerate(masks, 1):
        labels[mask] = number
    return labels


def write_label_map(labels: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    with atomic_path(path, suffix="".join(path.suffixes)) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp), useCompression=True)


def coco_annotation(mask: np.ndarray, score: float) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "score": round(score, 4),
        "iscrowd": 0,
    }


def _write_json(payload, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def annotate_image(path: Path, targets_of: Callable, segmenter, zoom: str = "auto") -> tuple[np.ndarray | None, list[dict], str | None]:
    """One image: (label map (H, W), COCO annotations with their category, None), or
    (None, [], reason) when this image or its labels cannot be used. The unit of work of a run."""
    try:
        image = read_grey(path)
        targets = targets_of(path, image.shape)
        results = segment_targets(segmenter, image, targets, zoom)
    except Cancelled:
        raise
    except SamFusionError as error:  # this image or its labels (a box with no area, say): reported, the run goes on
        return None, [], str(error)
    found = [dict(coco_annotation(m, s), category=t.category) for (m, s), t in zip(results, targets)]
    return label_map([m for m, _ in results], image.shape), found, None


def annotate_folder(images_dir: Path, targets_of: Callable, out: Path, segmenter, mask_format: str = "png", zoom: str = "auto",
                    progress: bool = True, runner: Callable | None = None) -> AnnotateSummary:
    """Annotate every image of ``images_dir`` into ``out`` (see the module docstring).

    ``runner(paths)`` yields (path, ``annotate_image`` result) for each path in any order (a Dask
    cluster: ``batch.cluster``); without one, the images are done here one by one. Either way this
    process alone writes the outputs, each image's as its result arrives.
    """
    from tqdm import tqdm

    if mask_format not in MASK_FORMATS:
        raise SamFusionError(f"unknown mask format {mask_format!r}: use {', '.join(MASK_FORMATS)}")
    images = list_images(images_dir)
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"images": {}}
    summary = AnnotateSummary()
    mask_of = {path: out / "masks" / f"{path.stem}{MASK_FORMATS[mask_format]}" for path in images}
    pending = []
    for path in images:
        if path.name in state["images"] and mask_of[path].exists():
            summary.skipped.append(path.name)
        else:
            pending.append(path)
    results = runner(pending) if runner is not None else ((path, annotate_image(path, targets_of, segmenter, zoom)) for path in pending)
    for path, (labels, found, failure) in tqdm(results, total=len(pending), desc="annotate", unit="image", disable=not progress):
        if failure is not None:
            summary.failures[path.name] = failure
            continue
        write_label_map(labels, mask_of[path])
        state["images"][path.name] = {"height": int(labels.shape[0]), "width": int(labels.shape[1]), "mask": mask_of[path].name,
                                      "annotations": found}
        _write_json(state, state_path)  # after every image: an interrupted run resumes here
        summary.done.append(path.name)
    _write_json(coco_from_state(state), out / "annotations.json")
    _write_json(summary.failures, out / "failures.json")
    return summary


def coco_from_state(state: dict) -> dict:
    """A COCO data set (images, categories, annotations) from the recorded per-image results."""
    categories = sorted({a["category"] for entry in state["images"].values() for a in entry["annotations"]})
    category_ids = {name: number for number, name in enumerate(categories, 1)}
    images, annotations = [], []
    for image_id, (name, entry) in enumerate(sorted(state["images"].items()), 1):
        images.append({"id": image_id, "file_name": name, "height": entry["height"], "width": entry["width"]})
        for annotation in entry["annotations"]:
            record = {k: v for k, v in annotation.items() if k != "category"}
            annotations.append(dict(record, id=len(annotations) + 1, image_id=image_id, category_id=category_ids[annotation["category"]]))
    return {"images": images, "annotations": annotations, "categories": [{"id": i, "name": n} for n, i in category_ids.items()]}


def annotate_volume(volume_path: Path, markups_paths: list[Path], out: Path, segmenter, zoom: str = "auto", slice_step: int = 1) -> list[Path]:
    """Segment a volume from markups files (one target each) into ``.seg.nrrd`` + a label map.

    ``slice_step``: SAM on every Nth slice of each target, the others interpolated (``volume.segment_volume``).
    """
    import tempfile

    from SAMFusionLib.imaging.io import read_volume, sitk_image
    from SAMFusionLib.sam.volume import VolumePrompts, segment_volume
    from SAMFusionLib.scene import mrml

    hu, geometry, _ = read_volume(volume_path)
    core = mrml.headless_scene()
    stem = Path(volume_path).name.split(".")[0]
    volume_node = mrml.add_volume(core.scene, hu, geometry, stem)
    masks, names = [], []
    for path in markups_paths:
        node = mrml.load_markups(core.scene, path)
        if node.IsA("vtkMRMLMarkupsROINode"):
            prompts = VolumePrompts(roi_corners_ras=mrml.roi_corners(node))
        else:
            points, labels = mrml.point_prompts(node)
            prompts = VolumePrompts(points, labels)
        result = segment_volume(segmenter, hu, geometry, prompts, zoom=zoom, slice_step=slice_step)
        if not result.mask_kji.any():
            raise SamFusionError(f"{Path(path).name}: SAM found nothing at these prompts")
        masks.append(result.mask_kji.astype(bool))
        names.append(node.GetName())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    segmentation = mrml.add_segmentation(core.scene, masks[0], volume_node, names[0], name=f"{stem} segmentation")
    for mask, name in zip(masks[1:], names[1:]):
        extra = mrml.add_segmentation(core.scene, mask, volume_node, name)
        segmentation.GetSegmentation().CopySegmentFromSegmentation(extra.GetSegmentation(), extra.GetSegmentation().GetNthSegmentID(0))
        core.scene.RemoveNode(extra)
    labels = np.zeros(geometry.shape_kji, np.uint8 if len(masks) < 256 else np.uint16)
    for number, mask in enumerate(masks, 1):
        labels[mask] = number
    import SimpleITK as sitk

    seg_path, label_path = out / f"{stem}.seg.nrrd", out / f"{stem}_labels.nrrd"
    with tempfile.TemporaryDirectory(dir=out) as staging:
        segmentation.AddDefaultStorageNode()
        storage = segmentation.GetStorageNode()
        storage.SetFileName(str(Path(staging) / seg_path.name))
        if not storage.WriteData(segmentation):
            raise SamFusionError(f"could not write {seg_path.name}")
        sitk.WriteImage(sitk_image(labels, geometry), str(Path(staging) / label_path.name), useCompression=True)
        os.replace(Path(staging) / seg_path.name, seg_path)
        os.replace(Path(staging) / label_path.name, label_path)
    return [seg_path, label_path]
