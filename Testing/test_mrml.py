"""The MRML adapter on a real headless vtkMRMLScene (slicer-core): nodes <-> arrays, prompts,
segments, transforms, scene safety, saving and reloading."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.plane import Plane
from SAMFusionLib.pipeline import transform_in_ras
from SAMFusionLib.scene import mrml

from .test_geometry import DIRECTIONS


@pytest.fixture
def core():
    return mrml.headless_scene()


def oblique_geometry(shape_kji=(6, 20, 30)) -> ImageGeometry:
    return ImageGeometry.from_lps((0.7, 0.9, 2.5), (10.0, -20.0, 5.0), DIRECTIONS["oblique"], shape_kji)


def test_volume_round_trip_keeps_values_and_oblique_geometry(core):
    geometry = oblique_geometry()
    array = np.random.default_rng(0).normal(size=geometry.shape_kji).astype(np.float32)
    node = mrml.add_volume(core.scene, array, geometry, "ct")
    back, back_geometry = mrml.array_from_volume(node)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-9)
    assert back_geometry.shape_kji == geometry.shape_kji


def test_a_volume_read_without_a_copy_is_a_read_only_view_that_keeps_the_voxels_alive(core):
    """``array_from_volume(copy=False)`` (the command line's CT, one volume fewer in memory): the
    node's own voxels, never written through, still readable after the node is gone."""
    import gc

    from vtk.util import numpy_support

    geometry = oblique_geometry()
    array = np.arange(np.prod(geometry.shape_kji), dtype=np.int16).reshape(geometry.shape_kji)
    node = mrml.add_volume(core.scene, array, geometry, "ct")
    view, view_geometry = mrml.array_from_volume(node, copy=False)
    copy, _ = mrml.array_from_volume(node)
    np.testing.assert_array_equal(view, array)
    np.testing.assert_allclose(view_geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-9)
    assert not view.flags.writeable and copy.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0, 0] = 5
    numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())[0] = -7  # a change in the node, in place
    assert view[0, 0, 0] == -7 and copy[0, 0, 0] == 0  # the view is the node's memory; the copy is not
    core.scene.RemoveNode(node)
    del node
    gc.collect()
    assert view[-1, -1, -1] == array[-1, -1, -1] and int(view.sum()) == int(array.sum()) - 7


def test_xray_needs_a_single_slice(core):
    geometry = oblique_geometry((3, 20, 30))
    node = mrml.add_volume(core.scene, np.zeros(geometry.shape_kji, np.float32), geometry, "three slices")
    with pytest.raises(SamFusionError, match="single 2D image, but it has 3 slices"):
        mrml.xray_from_volume(node)


def test_image_2d_lies_on_its_plane(core):
    plane = Plane((20, 30), np.array([0.5, 0.8]), np.array([1.0, 2.0, 3.0]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))
    node = mrml.add_image_2d(core.scene, np.ones((20, 30), np.float32), plane, "xray")
    image, back = mrml.xray_from_volume(node)
    assert image.shape == (20, 30)
    np.testing.assert_allclose(back.pixel_to_ras([[4, 7]]), plane.pixel_to_ras([[4, 7]]), atol=1e-9)
    np.testing.assert_allclose(back.ras_to_pixel(plane.pixel_to_ras([[4, 7]])), [[4, 7]], atol=1e-9)


def test_segment_round_trip_on_the_reference_grid(core):
    geometry = oblique_geometry()
    volume = mrml.add_volume(core.scene, np.zeros(geometry.shape_kji, np.float32), geometry, "ct")
    mask = np.zeros(geometry.shape_kji, np.uint8)
    mask[2:4, 5:12, 8:20] = 1
    segmentation = mrml.add_segmentation(core.scene, mask, volume, "kidney")
    assert segmentation.GetName() == "ct segmentation"
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(mrml.segment_array(segmentation, "kidney", volume), mask)
    with pytest.raises(SamFusionError, match="no segment named"):
        mrml.segment_array(segmentation, "liver", volume)
    # Under a transform, the mask is read in the nodes' own frame, with its volume under the same one.
    shift = core.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 7.5)
    matrix.SetElement(1, 3, -3.0)
    shift.SetMatrixTransformToParent(matrix)
    segmentation.SetAndObserveTransformNodeID(shift.GetID())
    with pytest.raises(SamFusionError, match="under different transforms"):
        mrml.segment_array(segmentation, "kidney", volume)
    volume.SetAndObserveTransformNodeID(shift.GetID())
    np.testing.assert_array_equal(mrml.segment_array(segmentation, "kidney", volume), mask)


def test_point_prompts_from_two_lists_or_from_the_selected_state(core):
    positive = mrml.add_fiducials(core.scene, np.array([[1.0, 2, 3], [4, 5, 6]]), "pos", selected=np.array([True, False]))
    negative = mrml.add_fiducials(core.scene, np.array([[7.0, 8, 9]]), "neg")
    points, labels = mrml.point_prompts(positive, negative)
    np.testing.assert_allclose(points, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert labels.tolist() == [1, 1, 0]  # two lists: the list decides
    points, labels = mrml.point_prompts(positive)
    assert labels.tolist() == [1, 0]  # one list: the selected state decides


def test_roi_corners_span_the_roi(core):
    roi = mrml.add_roi(core.scene, np.array([[0.0, -5, 10], [4, 5, 30]]), "roi")
    corners = mrml.roi_corners(roi)
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(0), [0, -5, 10], atol=1e-9)
    np.testing.assert_allclose(corners.max(0), [4, 5, 30], atol=1e-9)


def test_transform_nodes_map_world_points_as_the_2d_composite(core):
    """Linear + grid nodes reproduce fixed -> moving of an ITK composite (affine after a field)."""
    fixed = Plane((40, 50), np.array([1.0, 1.0]), np.array([30.0, 5.0, 60.0]), np.array([-1.0, 0, 0]), np.array([0, 0, -1.0]))
    moving = Plane((60, 70), np.array([0.8, 0.8]), np.zeros(3), np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]))
    grid = fixed.grid()
    affine = sitk.AffineTransform(2)
    angle = np.radians(12)
    affine.SetMatrix((1.05 * np.cos(angle), -np.sin(angle), np.sin(angle), 0.95 * np.cos(angle)))
    affine.SetCenter(tuple(grid.to_physical(np.array([25.0, 20.0]))[0]))
    affine.SetTranslation((20.0, 40.0))
    rows, columns = np.mgrid[0:40, 0:50]
    field = np.stack([1.5 * np.sin(columns / 8.0), 1.0 * np.cos(rows / 6.0)], -1).astype(np.float64)
    field_image = sitk.GetImageFromArray(field, isVector=True)
    grid.apply_to(field_image)
    composite = sitk.CompositeTransform(2)
    composite.AddTransform(affine)
    composite.AddTransform(sitk.DisplacementFieldTransform(field_image))

    from_ct, displacement = transform_in_ras(composite, fixed, moving)
    linear, grid_node = mrml.add_transforms(core.scene, from_ct, displacement, fixed, "xray to ct")
    assert grid_node is not None and linear.GetParentTransformNode() is grid_node

    pixels = np.array([[10.0, 10.0], [25.5, 18.0], [40.0, 33.0]])
    world = fixed.pixel_to_ras(pixels)
    mapped = mrml.map_from_world(linear, world)
    expected_uv = np.array([composite.TransformPoint(tuple(p)) for p in grid.to_physical(pixels)])
    expected = np.array([moving.pixel_to_ras(moving.grid().to_index(uv[None]))[0] for uv in expected_uv])
    np.testing.assert_allclose(mapped, expected, atol=0.05)  # mm; cubic vs linear field interpolation


def test_scene_transaction_removes_only_what_the_block_added(core):
    keep = mrml.add_fiducials(core.scene, np.zeros((1, 3)), "keep")
    before = mrml.node_ids(core.scene)
    with pytest.raises(SamFusionError, match="boom"):
        with mrml.SceneTransaction(core.scene):
            mrml.add_fiducials(core.scene, np.ones((1, 3)), "added")
            raise SamFusionError("boom")
    assert mrml.node_ids(core.scene) == before
    assert core.scene.GetNodeByID(keep.GetID()) is keep


def test_saved_scene_reloads_with_every_node(core, tmp_path):
    geometry = oblique_geometry()
    volume = mrml.add_volume(core.scene, np.arange(np.prod(geometry.shape_kji), dtype=np.float32).reshape(geometry.shape_kji), geometry, "ct")
    mask = np.zeros(geometry.shape_kji, np.uint8)
    mask[1:3, 4:9, 6:10] = 1
    mrml.add_segmentation(core.scene, mask, volume, "target")
    mrml.add_transforms(core.scene, np.eye(4), None, None, "identity")
    mrml.add_fiducials(core.scene, np.array([[1.0, 2, 3]]), "points")
    files = mrml.save_scene(core.scene, tmp_path, "scene.mrml")
    assert all(path.is_file() for path in files)
    assert {p.suffix for p in files} >= {".nrrd", ".h5", ".json", ".mrml"}

    reloaded = mrml.load_scene(tmp_path / "scene.mrml")
    scene = reloaded.scene
    volume_back = scene.GetFirstNodeByName("ct")
    array, geometry_back = mrml.array_from_volume(volume_back)
    np.testing.assert_array_equal(array, mrml.array_from_volume(volume)[0])
    np.testing.assert_allclose(geometry_back.ijk_to_ras, geometry.ijk_to_ras, atol=1e-6)
    segmentation = scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    np.testing.assert_array_equal(mrml.segment_array(segmentation, "target", volume_back), mask)
    assert scene.GetFirstNodeByName("identity") is not None
    assert scene.GetFirstNodeByName("points").GetNumberOfControlPoints() == 1


def test_export_writes_every_format_of_a_2d_segmentation(core, tmp_path):
    from pycocotools.coco import COCO

    from SAMFusionLib.annotation.export import export_segmentation

    plane = Plane((40, 50), np.array([0.5, 0.5]), np.zeros(3), np.array([-1.0, 0, 0]), np.array([0, -1.0, 0]))
    image = mrml.add_image_2d(core.scene, np.zeros((40, 50), np.float32), plane, "xray")
    first = np.zeros((1, 40, 50), np.uint8)
    first[0, 5:15, 5:20] = 1
    second = np.zeros((1, 40, 50), np.uint8)
    second[0, 25:35, 30:45] = 1
    segmentation = mrml.add_segmentation(core.scene, first, image, "left")
    extra = mrml.add_segmentation(core.scene, second, image, "right")
    segmentation.GetSegmentation().CopySegmentFromSegmentation(extra.GetSegmentation(), extra.GetSegmentation().GetNthSegmentID(0))
    paths = export_segmentation(segmentation, image, tmp_path)
    assert sorted(p.name for p in paths) == sorted(["xray_segmentation.seg.nrrd", "xray_segmentation_labels.nrrd", "xray_segmentation_labels.nii.gz",
                                                    "xray_segmentation_labels.png", "xray_segmentation_coco.json"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "xray_segmentation_labels.nrrd")))
    np.testing.assert_array_equal(labels, first + 2 * second)
    coco = COCO(str(tmp_path / "xray_segmentation_coco.json"))
    decoded = {coco.loadCats(a["category_id"])[0]["name"]: coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds())}
    np.testing.assert_array_equal(decoded["left"], first[0])
    np.testing.assert_array_equal(decoded["right"], second[0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_export_refuses_png_for_a_volume_and_writes_nothing(core, tmp_path):
    from SAMFusionLib.annotation.export import export_segmentation

    geometry = oblique_geometry()
    volume = mrml.add_volume(core.scene, np.zeros(geometry.shape_kji, np.float32), geometry, "ct")
    mask = np.zeros(geometry.shape_kji, np.uint8)
    mask[1:3, 4:9, 6:10] = 1
    segmentation = mrml.add_segmentation(core.scene, mask, volume, "target")
    with pytest.raises(SamFusionError, match="need a 2D"):
        export_segmentation(segmentation, volume, tmp_path, ("seg.nrrd", "png"))
    assert list(tmp_path.iterdir()) == []
