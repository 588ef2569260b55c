"""The MRML adapter: the only SAMFusionLib module that imports ``slicer``.

It uses only calls that exist both in desktop Slicer and in the ``slicer-core`` wheel (node
classes, their methods, static module-logic methods), so the same code runs in the Slicer module
and headless.

- ``headless_scene``: a real ``vtkMRMLScene`` with the application logic and the module logics
  that register node classes (segmentations, markups, volumes, transforms), as ``trame-slicer``
  starts Slicer's core without Qt.
- Volumes <-> (array (k, j, i), ``ImageGeometry``), both directions; 2D images are single-slice
  volumes whose slice axis is the plane normal.
- Markups -> prompts in RAS: fiducials (positive/negative from two lists, or from each control
  point's selected state), ROI -> its 8 corners.
- Masks -> segments, transforms -> linear and grid transform nodes, arrays -> new volumes.
- ``SceneTransaction``: on error or cancel, removes every node added since it began.
- ``save_scene``: writes every storable node and a ``.mrml`` that references them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.io import quiet_native_output
from SAMFusionLib.imaging.plane import Plane


@dataclass
class HeadlessSlicer:
    """A scene with its logics; keep this object alive as long as the scene is used."""

    scene: object
    application_logic: object
    logics: dict


def headless_scene() -> HeadlessSlicer:
    """A new real MRML scene with the logics that register segmentation, markups, volume and transform nodes."""
    import slicer

    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    logics = {}
    for name, logic_class in (
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("Markups", slicer.vtkSlicerMarkupsLogic),
        ("Volumes", slicer.vtkSlicerVolumesLogic),
        ("Transforms", slicer.vtkSlicerTransformLogic),
    ):
        logic = logic_class()
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
        logics[name] = logic
    return HeadlessSlicer(scene, application, logics)


def _vtk_matrix(array: np.ndarray):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    matrix.DeepCopy(tuple(float(value) for value in np.asarray(array).ravel()))  # row by row, as vtkMatrix4x4 stores it
    return matrix


def _numpy_matrix(matrix) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _image_data(array_kji: np.ndarray, image_class=None):
    """A vtkImageData (or ``image_class``) holding a copy of a (k, j, i) scalar array."""
    import vtk
    from vtk.util import numpy_support

    array_kji = np.ascontiguousarray(array_kji)
    image = (image_class or vtk.vtkImageData)()
    image.SetDimensions(array_kji.shape[2], array_kji.shape[1], array_kji.shape[0])
    scalars = numpy_support.numpy_to_vtk(array_kji.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


# --- volumes ------------------------------------------------------------------------------------

def volume_geometry(volume_node) -> ImageGeometry:
    """The node's IJK->RAS geometry; the node must hold image data."""
    import vtk

    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None:
        raise SamFusionError(f"volume {_name(volume_node)} holds no image data")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    columns, rows, slices = image.GetDimensions()
    return ImageGeometry(_numpy_matrix(matrix), (slices, rows, columns))


def array_from_volume(volume_node, copy: bool = True) -> tuple[np.ndarray, ImageGeometry]:
    """((k, j, i) scalar array, geometry) of a scalar volume node: a copy, or (``copy`` False) a read-only view of its voxels."""
    from vtk.util import numpy_support

    geometry = volume_geometry(volume_node)
    scalars = volume_node.GetImageData().GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        raise SamFusionError(f"volume {_name(volume_node)} is not a scalar volume")
    array = numpy_support.vtk_to_numpy(scalars).reshape(geometry.shape_kji)  # a view that keeps the VTK array alive
    return (array.copy() if copy else np.lib.stride_tricks.as_strided(array, writeable=False)), geometry


def xray_from_volume(volume_node) -> tuple[np.ndarray, Plane]:
    """((rows, columns) array, plane) of a single-slice volume node (an X-ray in Slicer)."""
    array, geometry = array_from_volume(volume_node)
    if array.shape[0] != 1:
        raise SamFusionError(f"the X-ray {_name(volume_node)} must be a single 2D image, but it has {array.shape[0]} slices")
    return array[0], Plane.from_geometry(geometry)


def add_volume(scene, array_kji: np.ndarray, geometry: ImageGeometry, name: str, class_name: str = "vtkMRMLScalarVolumeNode", node=None):
    """A new volume node holding a copy of ``array_kji`` on ``geometry``, with display nodes; or,
    when ``node`` is given, that node refilled (its ID and name kept)."""
    if tuple(array_kji.shape) != tuple(geometry.shape_kji):
        raise SamFusionError(f"array {array_kji.shape} does not match geometry {geometry.shape_kji}")
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    node.SetIJKToRASMatrix(_vtk_matrix(geometry.ijk_to_ras))
    node.SetAndObserveImageData(_image_data(array_kji))
    node.CreateDefaultDisplayNodes()
    return node


def add_image_2d(scene, image: np.ndarray, plane: Plane, name: str, node=None):
    """A single-slice volume node for a (rows, columns) image on ``plane`` (or ``node`` refilled)."""
    return add_volume(scene, image[None], plane.geometry(), name, node=node)


# --- markups ------------------------------------------------------------------------------------

def control_points_ras(markups_node) -> tuple[np.ndarray, np.ndarray]:
    """((N, 3) world RAS positions, (N,) selected flags) of a markups node's defined points.

    World positions include any parent transform, as Slicer shows them.
    """
    points, selected = [], []
    for index in range(markups_node.GetNumberOfControlPoints()):
        if not markups_node.GetNthControlPointPositionStatus(index) == markups_node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        points.append(position)
        selected.append(bool(markups_node.GetNthControlPointSelected(index)))
    return np.array(points, float).reshape(-1, 3), np.array(selected, bool)


def point_prompts(positive_node=None, negative_node=None) -> tuple[np.ndarray, np.ndarray]:
    """((N, 3) RAS points, (N,) labels 1/0).

    With two lists, every point of ``positive_node`` is positive and every point of
    ``negative_node`` negative. With one list, a point's selected state decides: selected
    (Slicer's default) is positive, unselected is negative.
    """
    points, labels = [np.zeros((0, 3))], [np.zeros(0, int)]
    if positive_node is not None:
        positions, selected = control_points_ras(positive_node)
        points.append(positions)
        labels.append(np.ones(len(positions), int) if negative_node is not None else selected.astype(int))
    if negative_node is not None:
        positions, _ = control_points_ras(negative_node)
        points.append(positions)
        labels.append(np.zeros(len(positions), int))
    return np.concatenate(points), np.concatenate(labels)


def roi_corners(roi_node) -> np.ndarray | None:
    """(8, 3) RAS corners of an ROI node (any orientation), or None when there is no ROI."""
    if roi_node is None:
        return None
    if roi_node.GetNumberOfControlPoints() == 0:
        raise SamFusionError(f"ROI {_name(roi_node)} is not placed")
    center, size = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(center)
    roi_node.GetSizeWorld(size)
    size = np.asarray(size)
    axes = np.zeros((3, 3))
    for axis in range(3):
        direction = [0.0, 0.0, 0.0]
        roi_node.GetAxisWorld(axis, direction)
        axes[:, axis] = direction
    signs = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    return np.asarray(center) + (signs * size) @ axes.T


def add_fiducials(scene, points_ras: np.ndarray, name: str, selected: np.ndarray | None = None):
    """A new fiducial list with the given (N, 3) RAS points (``selected`` False marks negatives)."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for index, point in enumerate(np.atleast_2d(points_ras)):
        node.AddControlPoint(*[float(v) for v in point])
        if selected is not None:
            node.SetNthControlPointSelected(index, bool(selected[index]))
    node.CreateDefaultDisplayNodes()
    return node


def add_roi(scene, corners_ras: np.ndarray, name: str):
    """A new axis-aligned ROI node covering the bounding box of (N, 3) RAS points."""
    low, high = np.min(corners_ras, 0), np.max(corners_ras, 0)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    node.SetCenter(*[float(v) for v in (low + high) / 2])
    node.SetSize(*[float(v) for v in high - low])
    node.CreateDefaultDisplayNodes()
    return node


def load_markups(scene, path: Path):
    """A markups node (point list or ROI) read by MRML's own JSON storage node."""
    path = Path(path)
    if not path.is_file():
        raise SamFusionError(f"prompt file not found: {path}")
    try:
        kind = json.loads(path.read_text())["markups"][0]["type"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SamFusionError(f"{path.name} is not a Slicer markups file (.mrk.json)") from None
    classes = {"Fiducial": ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsFiducialJsonStorageNode"),
               "ROI": ("vtkMRMLMarkupsROINode", "vtkMRMLMarkupsROIJsonStorageNode")}
    if kind not in classes:
        raise SamFusionError(f"{path.name}: markups of type {kind!r} are not prompts; use a point list or an ROI")
    node_class, storage_class = classes[kind]
    name = path.name.removesuffix(".mrk.json")
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass(storage_class if scene.IsNodeClassRegistered(storage_class) else "vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    with quiet_native_output():  # MRML logs its parse warnings itself; our error line says what failed
        read = storage.ReadData(node)
    if not read or (kind == "Fiducial" and node.GetNumberOfControlPoints() == 0):
        scene.RemoveNode(node)  # the scene as it was: no empty node left behind
        scene.RemoveNode(storage)
        raise SamFusionError(f"{path.name}: no prompts could be read")
    node.SetName(name)
    return node


# --- segmentations ------------------------------------------------------------------------------

def add_segmentation(scene, mask_kji: np.ndarray, reference_node, segment_name: str, name: str | None = None, color=(0.9, 0.3, 0.2),
                     node=None):
    """A new segmentation node with one segment from a (k, j, i) mask on the reference volume's grid.

    The reference image geometry is the reference volume's; the node is named after it
    (``<volume> segmentation``) unless ``name`` is given. With ``node``, that node is reused:
    its segments are replaced by this one.
    """
    import slicer

    geometry = volume_geometry(reference_node)
    if tuple(mask_kji.shape) != tuple(geometry.shape_kji):
        raise SamFusionError(f"mask {mask_kji.shape} does not match volume {reference_node.GetName()} {geometry.shape_kji}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{reference_node.GetName()} segmentation")
        node.CreateDefaultDisplayNodes()
    else:
        node.GetSegmentation().RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
    segment_id = node.GetSegmentation().AddEmptySegment("", segment_name, list(color))
    labelmap = _image_data((np.asarray(mask_kji) > 0).astype(np.uint8), slicer.vtkOrientedImageData)
    labelmap.SetImageToWorldMatrix(_vtk_matrix(geometry.ijk_to_ras))
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(labelmap, node, segment_id):
        raise SamFusionError(f"could not store segment {segment_name!r}")
    return node


def segment_array(segmentation_node, segment_name: str, reference_node) -> np.ndarray:
    """(k, j, i) uint8 mask of a named segment, on the reference volume's grid.

    Read in the nodes' own frame: the reference must sit under the same transform as the
    segmentation (or both under none). Reading in world coordinates would resample the labelmap
    through a non-linear parent onto a new grid.
    """
    import slicer
    from vtk.util import numpy_support

    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        raise SamFusionError(f"no segment named {segment_name!r} in {segmentation_node.GetName()}")
    if segmentation_node.GetTransformNodeID() != reference_node.GetTransformNodeID():
        raise SamFusionError(f"{segmentation_node.GetName()} and {reference_node.GetName()} are under different transforms")
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap, False)
    geometry = volume_geometry(reference_node)
    reference = _image_data(np.zeros(geometry.shape_kji, np.uint8), slicer.vtkOrientedImageData)
    reference.SetImageToWorldMatrix(_vtk_matrix(geometry.ijk_to_ras))
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled)
    dims = resampled.GetDimensions()
    return numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0]).copy()


# --- transforms ---------------------------------------------------------------------------------

def add_transforms(scene, from_ct_ras: np.ndarray, displacement_ras: np.ndarray | None, plane: Plane, name: str, linear=None, grid=None):
    """Transform nodes that place the X-ray on the CT: (linear node, grid node or None).

    ``from_ct_ras`` is the (4, 4) "from parent" matrix (CT-side RAS -> X-ray RAS). A
    displacement (rows, columns, 3) mm on ``plane`` becomes a grid transform node, parent of the
    linear one, so that world -> X-ray = linear(grid(world)), the order of the 2D composite.
    Put the X-ray volume under the returned linear node. ``linear`` and ``grid`` reuse existing
    nodes (a grid node no longer needed is detached, not deleted).
    """
    import slicer
    import vtk

    if linear is None:
        linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    linear.SetMatrixTransformFromParent(_vtk_matrix(from_ct_ras))
    if displacement_ras is None:
        linear.SetAndObserveTransformNodeID(None)
        return linear, None
    rows, columns = plane.shape_hw
    if displacement_ras.shape != (rows, columns, 3):
        raise SamFusionError(f"displacement {displacement_ras.shape} does not match the plane {plane.shape_hw}")
    # Three layers across the plane (offsets -1, 0, +1 mm) so that interpolation is defined on it.
    field = np.repeat(displacement_ras[None], 3, axis=0).astype(np.float64)
    grid_image = vtk.vtkImageData()
    grid_image.SetDimensions(columns, rows, 3)
    grid_image.SetSpacing(float(plane.spacing_mm[0]), float(plane.spacing_mm[1]), 1.0)
    grid_image.SetOrigin(*[float(v) for v in plane.origin_ras - plane.normal_ras])
    from vtk.util import numpy_support

    vectors = numpy_support.numpy_to_vtk(field.reshape(-1, 3), deep=True)
    grid_image.GetPointData().SetScalars(vectors)
    direction = np.eye(4)
    direction[:3, :3] = plane.rotation
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid_image)
    transform.SetGridDirectionMatrix(_vtk_matrix(direction))
    transform.SetInterpolationModeToCubic()
    if grid is None:
        grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", f"{name} (non-rigid)")
    grid.SetAndObserveTransformFromParent(transform)
    linear.SetAndObserveTransformNodeID(grid.GetID())
    return linear, grid


def map_from_world(transform_node, points_ras: np.ndarray) -> np.ndarray:
    """(N, 3) world RAS points -> the node's local frame (through all its parents)."""
    import vtk

    general = vtk.vtkGeneralTransform()
    transform_node.GetTransformFromWorld(general)
    return np.array([general.TransformPoint(*[float(v) for v in p]) for p in np.atleast_2d(points_ras)])


# --- scene safety and saving --------------------------------------------------------------------

class SceneTransaction:
    """``with SceneTransaction(scene):`` removes every node added inside the block when it raises.

    Existing nodes keep their IDs; only what the block created goes.
    """

    def __init__(self, scene):
        self.scene = scene

    def __enter__(self):
        self.before = set(node_ids(self.scene))
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            return False
        for node_id in reversed(node_ids(self.scene)):
            if node_id not in self.before:
                node = self.scene.GetNodeByID(node_id)
                if node is not None:
                    self.scene.RemoveNode(node)
        return False


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


STORAGE_SUFFIX = {"vtkMRMLSegmentationNode": ".seg.nrrd", "vtkMRMLLinearTransformNode": ".h5", "vtkMRMLGridTransformNode": ".h5",
                  "vtkMRMLMarkupsFiducialNode": ".mrk.json", "vtkMRMLMarkupsROINode": ".mrk.json"}


def copyable_suffix(path) -> str | None:
    """The suffix under which a copy of ``path`` can stand for a volume node in a saved scene
    (a one-file image: header and voxels together), or None."""
    return next((suffix for suffix in (".nrrd", ".nii", ".nii.gz", ".mha") if Path(path).name.lower().endswith(suffix)), None)


def save_scene(scene, folder: Path, scene_name: str = "scene.mrml", copies: dict | None = None) -> list[Path]:
    """Write every storable node to ``folder`` (one file each, named after the node) and the
    ``.mrml`` that references them; returns the written paths. The folder must exist.

    ``copies``: {volume node ID: (a one-file image, its voxels' ``GetMTime()`` when read from it)}: such
    a node, its voxels unchanged since, is saved as a copy of the file instead of being encoded again
    (a clinical CT: 4.0 s compressed). Not a hard link: a rewrite of the input in place would show.
    """
    folder = Path(folder)
    written, used = [], set()
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if not node.IsA("vtkMRMLStorableNode") or node.GetHideFromEditors():
            continue
        source, read_at = (copies or {}).get(node.GetID(), (None, None))
        if source is None or not copyable_suffix(source) or node.GetImageData().GetMTime() != read_at or not Path(source).is_file():
            source = None
        suffix = copyable_suffix(source) if source is not None else STORAGE_SUFFIX.get(node.GetClassName(), ".nrrd")
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in node.GetName()) or node.GetID()
        while stem in used:
            stem += "_"
        used.add(stem)
        path = folder / f"{stem}{suffix}"
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(path))
        if source is not None:
            shutil.copyfile(source, path)
        elif not storage.WriteData(node):
            raise SamFusionError(f"could not write {path.name}")
        written.append(path)
    scene.SetRootDirectory(str(folder))
    scene.SetURL(str(folder / scene_name))
    if not scene.Commit():
        raise SamFusionError(f"could not write {scene_name}")
    return [*written, folder / scene_name]


def load_scene(path: Path) -> HeadlessSlicer:
    """A fresh headless scene with ``path`` (a ``.mrml``) loaded, its nodes' data read."""
    slicer_core = headless_scene()
    slicer_core.scene.SetURL(str(path))
    if not slicer_core.scene.Connect():
        raise SamFusionError(f"could not load the scene {path}")
    return slicer_core


def _name(node) -> str:
    return repr(node.GetName()) if node is not None else "(none)"
