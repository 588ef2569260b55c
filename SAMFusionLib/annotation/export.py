"""Export a segmentation node in the formats other tools read (the Slicer module's Export action).

- ``seg.nrrd``: Slicer's own segmentation file (written by MRML);
- ``nrrd`` / ``nii``: an instance label map on the reference volume's grid (0 = background,
  n = the n-th segment), with its geometry;
- for a 2D (single-slice) reference, also ``png`` (the label map) and ``coco`` (one RLE
  annotation per segment, category = segment name).
DICOM SEG is not offered: it needs the source DICOM instances, which a volume loaded from NRRD or
NIfTI does not have. Files appear only when all are written (staged, then moved).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.io import sitk_image
from SAMFusionLib.scene import mrml

FORMATS = ("seg.nrrd", "nrrd", "nii", "png", "coco")


def export_segmentation(segmentation_node, reference_node, folder: Path, formats=FORMATS) -> list[Path]:
    """Write the chosen formats into ``folder``; returns the written paths."""
    import cv2
    import SimpleITK as sitk

    from SAMFusionLib.annotation.annotate import coco_annotation, coco_from_state

    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise SamFusionError(f"unknown export format(s) {', '.join(sorted(unknown))}: use {', '.join(FORMATS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise SamFusionError(f"export folder does not exist: {folder}")
    segmentation = segmentation_node.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    if not names:
        raise SamFusionError(f"{segmentation_node.GetName()} has no segments to export")
    geometry = mrml.volume_geometry(reference_node)
    flat = geometry.shape_kji[0] == 1
    if not flat and {"png", "coco"} & set(formats):
        raise SamFusionError("PNG and COCO export need a 2D (single-slice) reference image")
    masks = [mrml.segment_array(segmentation_node, name, reference_node).astype(bool) for name in names]
    labels = np.zeros(geometry.shape_kji, np.uint8 if len(masks) < 256 else np.uint16)
    for number, mask in enumerate(masks, 1):
        labels[mask] = number
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in segmentation_node.GetName())

    staging = Path(tempfile.mkdtemp(prefix=".export.", dir=folder))
    try:
        written = []
        if "seg.nrrd" in formats:
            if segmentation_node.GetStorageNode() is None:
                segmentation_node.AddDefaultStorageNode()
            storage = segmentation_node.GetStorageNode()
            previous = storage.GetFileName()
            storage.SetFileName(str(staging / f"{stem}.seg.nrrd"))
            ok = storage.WriteData(segmentation_node)
            if previous:
                storage.SetFileName(previous)
            if not ok:
                raise SamFusionError(f"could not write {stem}.seg.nrrd")
            written.append(f"{stem}.seg.nrrd")
        for kind, suffix in (("nrrd", ".nrrd"), ("nii", ".nii.gz")):
            if kind in formats:
                sitk.WriteImage(sitk_image(labels, geometry), str(staging / f"{stem}_labels{suffix}"), useCompression=True)
                written.append(f"{stem}_labels{suffix}")
        if "png" in formats:
            if not cv2.imwrite(str(staging / f"{stem}_labels.png"), labels[0]):
                raise SamFusionError("could not write the PNG label map")
            written.append(f"{stem}_labels.png")
        if "coco" in formats:
            height, width = labels.shape[1:]
            state = {"images": {f"{reference_node.GetName()}.png": {
                "height": height, "width": width,
                "annotations": [dict(coco_annotation(mask[0], 1.0), category=name) for mask, name in zip(masks, names)],
            }}}
            (staging / f"{stem}_coco.json").write_text(json.dumps(coco_from_state(state), indent=1))
            written.append(f"{stem}_coco.json")
        for name in written:
            os.replace(staging / name, folder / name)
        return [folder / name for name in written]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
