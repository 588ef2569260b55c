"""The pipeline on MRML nodes: what the Slicer module's Logic and ``samfusion run`` both call.

Nodes in (CT volume, X-ray single-slice volume, fiducial lists, ROIs) -> ``pipeline.run_pipeline``
-> nodes out (two segmentations, the projection, the transform(s), the fused volume). All scene
access goes through the ``mrml`` adapter; this module never imports ``slicer``.

Scene safety: every prompt and geometry is read and checked before anything is added, the
pipeline itself touches no node, and the output nodes are created inside a ``SceneTransaction``,
so an error or a cancel leaves the scene exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.plane import Plane
from SAMFusionLib.pipeline import PipelineInputs, PipelineOptions, PipelineResult, XrayPrompts, run_pipeline
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.sam.volume import VolumePrompts
from SAMFusionLib.scene import mrml


@dataclass
class SceneInputs:
    """The input nodes; any prompt node may be None (but each image needs some prompt)."""

    ct: object
    xray: object
    ct_points: object = None
    ct_negative_points: object = None
    ct_roi: object = None
    xray_points: object = None
    xray_negative_points: object = None
    xray_roi: object = None
    target_name: str = "target"


@dataclass
class SceneOutputs:
    ct_segmentation: object
    xray_segmentation: object
    projection: object
    transform: object
    grid_transform: object
    fused: object

    def node_ids(self) -> dict[str, str | None]:
        return {name: (node.GetID() if node is not None else None) for name, node in vars(self).items()}


def read_inputs(nodes: SceneInputs, copy_ct: bool = True) -> PipelineInputs:
    """Arrays, geometry and prompts from the nodes; raises on anything missing or misplaced.

    The CT is a copy, so that a front end may run the pipeline on another thread while the scene
    lives on; with ``copy_ct`` False it is a read-only view of the node's voxels, one CT fewer in
    memory (224 MiB for 512 x 512 x 224 float32), for a caller that changes nothing in the scene
    until the pipeline has returned (the command line).
    """
    if nodes.ct is None or nodes.xray is None:
        raise SamFusionError("select both a CT volume and an X-ray image")
    ct_kji, ct_geometry, ct_prompts = read_ct(nodes, copy_ct)
    xray, xray_plane = read_xray(nodes)
    return PipelineInputs(ct_kji, ct_geometry, ct_prompts, xray, xray_plane, xray_prompts(nodes, xray_plane))


def read_ahead(nodes: SceneInputs) -> tuple[np.ndarray | None, tuple | None]:
    """What can be encoded before Apply (``pipeline.encode_ahead_of_run``): the X-ray array, and the
    CT's (array, geometry, prompts); each None while it (or a prompt on the CT) is not there yet,
    or its prompts are ones Apply will refuse (Apply says why)."""
    xray = ct = None
    if nodes is not None and nodes.xray is not None:
        try:
            xray = read_xray(nodes)[0]
        except SamFusionError:
            xray = None  # e.g. a volume of several slices selected as the X-ray: Apply says so
    if nodes is not None and nodes.ct is not None and (nodes.ct_points is not None or nodes.ct_roi is not None):
        try:
            ct = read_ct(nodes)
        except SamFusionError:
            ct = None
        if ct is not None and not len(ct[2].points_ras) and ct[2].roi_corners_ras is None:
            ct = None  # the prompt lists are there, still empty
    return xray, ct


def ahead_key(nodes: SceneInputs | None) -> tuple:
    """What ``read_ahead`` reads, as a value that changes when any of it does: the CT and X-ray nodes
    (ID, node and voxel modification times) and the CT's prompts. A front end restarts encoding
    ahead only when this (with the run's options and model) changes: reading and resampling the CT
    again for an X-ray prompt, or for a click that moved nothing, would only repeat work."""
    if nodes is None:
        return (None,)

    def node_key(node):
        if node is None:
            return None
        image = node.GetImageData() if hasattr(node, "GetImageData") else None
        return node.GetID(), node.GetMTime(), None if image is None else image.GetMTime()

    points_ras, labels = mrml.point_prompts(nodes.ct_points, nodes.ct_negative_points)
    try:
        roi = mrml.roi_corners(nodes.ct_roi)
    except SamFusionError:
        roi = "not placed"  # an ROI being placed: its first corner has not been clicked yet
    return (node_key(nodes.ct), node_key(nodes.xray), np.asarray(points_ras, float).tobytes(), np.asarray(labels).tobytes(),
            roi.tobytes() if isinstance(roi, np.ndarray) else roi)


def read_xray(nodes: SceneInputs) -> tuple[np.ndarray, Plane]:
    """The X-ray as the pipeline takes it: (rows, columns) float32, and its plane."""
    if nodes.xray is None:
        raise SamFusionError("select an X-ray image")
    xray, plane = mrml.xray_from_volume(nodes.xray)
    return xray.astype(np.float32), plane


def read_ct(nodes: SceneInputs, copy: bool = True) -> tuple[np.ndarray, ImageGeometry, VolumePrompts]:
    """The CT's (k, j, i) array (a copy, or a read-only view: see ``read_inputs``), geometry and prompts
    from the nodes (what encoding ahead needs, before the X-ray is prompted); raises on a missing CT
    or a misplaced prompt."""
    if nodes.ct is None:
        raise SamFusionError("select a CT volume")
    ct_kji, ct_geometry = mrml.array_from_volume(nodes.ct, copy)
    points_ras, labels = mrml.point_prompts(nodes.ct_points, nodes.ct_negative_points)
    roi = mrml.roi_corners(nodes.ct_roi)
    if len(points_ras):
        inside = ct_geometry.contains_ijk(ct_geometry.ras_to_ijk(points_ras))
        if not inside.all():
            raise SamFusionError(f"CT point {int(np.argmin(inside)) + 1} lies outside the CT volume")
    if roi is not None and not ct_geometry.contains_ijk(ct_geometry.ras_to_ijk(roi.mean(0, keepdims=True)))[0]:
        raise SamFusionError("the CT ROI's centre lies outside the CT volume")
    return ct_kji, ct_geometry, VolumePrompts(points_ras, labels, roi)


def xray_prompts(nodes: SceneInputs, plane: Plane) -> XrayPrompts:
    """Pixel prompts on the X-ray from RAS markups; points must lie on the X-ray's plane.

    When the X-ray sits under a transform (e.g. from an earlier run), prompts placed on it in the
    views are world positions: they are mapped back into the X-ray's own frame first.
    """
    parent = nodes.xray.GetParentTransformNode()

    def local(points_ras: np.ndarray) -> np.ndarray:
        return mrml.map_from_world(parent, points_ras) if parent is not None and len(points_ras) else points_ras

    points_ras, labels = mrml.point_prompts(nodes.xray_points, nodes.xray_negative_points)
    points_xy = plane.ras_to_pixel(local(points_ras)) if len(points_ras) else np.zeros((0, 2))
    box = None
    corners = mrml.roi_corners(nodes.xray_roi)
    if corners is not None:
        corners = local(corners)
        plane.ras_to_pixel(corners.mean(0, keepdims=True))  # the ROI's centre must be on the X-ray
        pixels = plane.ras_to_pixel(corners, tolerance_mm=np.inf)
        box = np.r_[pixels.min(0), pixels.max(0)]
    return XrayPrompts(points_xy, labels, box)


def run_on_scene(
    scene,
    nodes: SceneInputs,
    segmenter: Segmenter,
    options: PipelineOptions = PipelineOptions(),
    progress: Callable[[str, float], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    apply_transform: bool = True,
    reuse: SceneOutputs | None = None,
    copy_ct: bool = True,
) -> tuple[SceneOutputs, PipelineResult]:
    """Run the pipeline on the nodes and add its outputs to ``scene``.

    ``reuse`` holds output nodes (any may be None) to refill instead of creating new ones, as the
    panel's output selectors do; they are touched only after the pipeline has succeeded.

    With ``apply_transform`` the X-ray node, its segmentation and its prompts are put under the
    new transform, which shows them aligned on the CT's projection plane. ``copy_ct``: see ``read_inputs``.
    """
    inputs = read_inputs(nodes, copy_ct)
    result = run_pipeline(segmenter, inputs, options, progress, cancelled)
    return add_outputs(scene, nodes, result, options, apply_transform, reuse), result


def add_outputs(scene, nodes: SceneInputs, result: PipelineResult, options: PipelineOptions = PipelineOptions(),
                apply_transform: bool = True, reuse: SceneOutputs | None = None) -> SceneOutputs:
    """The output nodes of a finished pipeline run, added to ``scene`` all or nothing (the second half
    of ``run_on_scene``; an app that runs the pipeline on a worker thread calls it on the scene's)."""
    ct_name, xray_name = nodes.ct.GetName(), nodes.xray.GetName()
    old = reuse or SceneOutputs(None, None, None, None, None, None)
    with mrml.SceneTransaction(scene):
        ct_segmentation = mrml.add_segmentation(scene, result.ct_mask_kji, nodes.ct, nodes.target_name, node=old.ct_segmentation)
        xray_segmentation = mrml.add_segmentation(scene, result.xray_mask[None].astype(np.uint8), nodes.xray, nodes.target_name,
                                                  color=(0.2, 0.6, 0.9), node=old.xray_segmentation)
        projection = mrml.add_image_2d(scene, result.fixed.image, result.fixed.plane, f"{ct_name} projection ({options.view})", node=old.projection)
        transform, grid = mrml.add_transforms(scene, result.from_ct_ras, result.displacement_ras, result.fixed.plane, f"{xray_name} to {ct_name}",
                                              linear=old.transform, grid=old.grid_transform)
        fused = mrml.add_image_2d(scene, result.fused, result.fixed.plane, f"{ct_name} + {xray_name} fused", node=old.fused)
        if apply_transform:
            # The segmentation and the prompts move with the X-ray: the mask shows on it, and the
            # prompts stay on it for a re-run. (Their data keep the X-ray's frame; only reading them
            # in world coordinates resamples through the transform, see mrml.segment_array.)
            for node in (nodes.xray, xray_segmentation, nodes.xray_points, nodes.xray_negative_points, nodes.xray_roi):
                if node is not None:
                    node.SetAndObserveTransformNodeID(transform.GetID())
    outputs = SceneOutputs(ct_segmentation, xray_segmentation, projection, transform, grid, fused)
    result.report["nodes"] = outputs.node_ids()
    return outputs


def add_case_nodes(scene, inputs: PipelineInputs, ct_name: str, xray_name: str, target_name: str = "target") -> SceneInputs:
    """Nodes for arrays and prompts held in memory (a generated case): the CT, the X-ray, a point
    list and an ROI on each, as a user would place them in Slicer."""
    ct = mrml.add_volume(scene, inputs.ct_kji, inputs.ct_geometry, ct_name)
    xray = mrml.add_image_2d(scene, inputs.xray, inputs.xray_plane, xray_name)
    nodes = SceneInputs(ct, xray, target_name=target_name)
    prompts = inputs.ct_prompts
    if len(prompts.points_ras):
        nodes.ct_points = mrml.add_fiducials(scene, prompts.points_ras, "CT points", selected=np.asarray(prompts.labels) == 1)
    if prompts.roi_corners_ras is not None:
        nodes.ct_roi = mrml.add_roi(scene, prompts.roi_corners_ras, "CT ROI")
    plane, xray_prompts = inputs.xray_plane, inputs.xray_prompts
    if len(xray_prompts.points_xy):
        nodes.xray_points = mrml.add_fiducials(scene, plane.pixel_to_ras(xray_prompts.points_xy), "X-ray points",
                                               selected=np.asarray(xray_prompts.labels) == 1)
    if xray_prompts.box_xyxy is not None:
        box = np.asarray(xray_prompts.box_xyxy, float)
        corners = plane.pixel_to_ras(np.array([[box[0], box[1]], [box[2], box[3]]]))
        # 2 mm thick across the plane: an ROI drawn on a 2D image in a slice view.
        nodes.xray_roi = mrml.add_roi(scene, np.r_[corners - plane.normal_ras, corners + plane.normal_ras], "X-ray ROI")
    return nodes
