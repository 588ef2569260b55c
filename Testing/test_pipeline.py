"""The pipeline end to end on real MRML scenes: the abdomen CT, the default case, orientations,
scene safety, and ``samfusion run``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from SAMFusionLib.cases.demo_case import case_from_ct, make_demo_case, tre_mm
from SAMFusionLib.cli.main import main
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.geometry import ImageGeometry
from SAMFusionLib.imaging.metrics import dice
from SAMFusionLib.pipeline import PipelineCancelled, run_pipeline
from SAMFusionLib.registration.radiograph import resample
from SAMFusionLib.sam.segmenter import Segmenter
from SAMFusionLib.scene import mrml
from SAMFusionLib.scene.run import add_case_nodes, run_on_scene

from .test_geometry import rotation


def run_case(case, model, **kwargs):
    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, case.inputs, "CT", "X-ray", "kidney")
    outputs, result = run_on_scene(core.scene, nodes, Segmenter(model), **kwargs)
    return core, nodes, outputs, result


def node_mapping_error_mm(outputs, result, case) -> float:
    """Max distance between the transform nodes' and the registration's own mapping of the test points."""
    plane, xray_plane = result.fixed.plane, case.inputs.xray_plane
    world = plane.pixel_to_ras(plane.grid().to_index(case.test_points))
    mapped = mrml.map_from_world(outputs.transform, world)
    expected_uv = np.array([result.registration.sitk_transform.TransformPoint(tuple(p)) for p in case.test_points])
    expected = xray_plane.pixel_to_ras(xray_plane.grid().to_index(expected_uv))
    return float(np.linalg.norm(mapped - expected, axis=1).max())


@pytest.fixture(scope="module")
def abdomen_run(shared_data, demo_model):
    from SAMFusionLib.cases.shared_data import abdomen_ct

    hu, geometry, _, masks = abdomen_ct()
    case = case_from_ct(hu, geometry, masks["kidney_left"], np.random.default_rng(0), nonrigid=False)
    return (case, *run_case(case, demo_model))


def test_abdomen_ct_end_to_end_gives_nodes_on_the_right_grids(abdomen_run, tmp_path):
    case, core, nodes, outputs, result = abdomen_run
    ct_geometry = mrml.volume_geometry(nodes.ct)
    ct_mask = mrml.segment_array(outputs.ct_segmentation, "kidney", nodes.ct)
    assert ct_mask.shape == ct_geometry.shape_kji and ct_mask.any()
    np.testing.assert_array_equal(ct_mask, result.ct_mask_kji)
    xray_mask = mrml.segment_array(outputs.xray_segmentation, "kidney", nodes.xray)
    assert xray_mask.shape == (1, *case.inputs.xray.shape) and xray_mask.any()
    # The fused volume lies on the CT projection's plane grid, one slice.
    fused_geometry = mrml.volume_geometry(outputs.fused)
    np.testing.assert_allclose(fused_geometry.ijk_to_ras, result.fixed.plane.geometry().ijk_to_ras, atol=1e-9)
    assert fused_geometry.shape_kji == (1, *result.fixed.plane.shape_hw)
    assert mrml.array_from_volume(outputs.fused)[0].max() <= 255.0
    # The transform nodes carry exactly the registration's result.
    assert node_mapping_error_mm(outputs, result, case) < 0.05
    # And the saved scene reloads with all nodes.
    mrml.save_scene(core.scene, tmp_path, "scene.mrml")
    reloaded = mrml.load_scene(tmp_path / "scene.mrml").scene
    for name in ("CT", "X-ray", "CT segmentation", "X-ray segmentation", "X-ray to CT", "CT + X-ray fused", "CT points", "CT ROI"):
        assert reloaded.GetFirstNodeByName(name) is not None, name
    reloaded_ct = reloaded.GetFirstNodeByName("CT")
    np.testing.assert_array_equal(mrml.segment_array(reloaded.GetFirstNodeByName("CT segmentation"), "kidney", reloaded_ct), ct_mask)


# The quality check's verdicts on masks of different targets: they do not overlap after
# registration, or they do but off the user's prompts.
MASK_FAILURES = ("mask Dice after registration", "not the same target")


def test_abdomen_ct_end_to_end_with_the_default_model(shared_data, default_model):
    """The fine-tuned LiteMedSAM segments the non-contrast kidney in the CT (Dice measured 0.899 with
    the folded encoder, 0.905 before; 0.82 with the previous heads, 0.4 for the demo model) and the
    registration stands on SAM's masks within 1 mm. The X-ray mask of that faint kidney is the weak
    part (Dice 0.69 against its true projection on this seed), so the masks overlap with Dice 0.667
    after an accurate registration, under the check's 0.7: the prompt boxes' registration confirms it
    (measured 0.39 mm apart over the target; seeds 0-3: TRE 0.54 / 0.99 / 0.29 / 0.19 mm, seed 1 on
    its own mask Dice, the others confirmed, against 0.76 / 0.99 / 0.23 / 0.55 mm on the boxes)."""
    from SAMFusionLib.cases.shared_data import abdomen_ct

    hu, geometry, _, masks = abdomen_ct()
    case = case_from_ct(hu, geometry, masks["kidney_left"], np.random.default_rng(0), nonrigid=False)
    result = run_pipeline(Segmenter(default_model), case.inputs)
    assert dice(result.ct_mask_kji, case.ct_target_mask) >= 0.88
    report = result.registration.report
    assert result.registration.passed and report["reference"] == "SAM masks"
    assert report["confirmed_by"] == "the prompt boxes"
    assert report["confirmation_distance_mm"] <= report["confirmation_tolerance_mm"]
    assert "agrees with it within" in result.registration.reason
    assert tre_mm(case, result.registration.sitk_transform) < 1.0


def test_abdomen_ct_masks_failure_is_reported_and_the_prompt_boxes_take_over(abdomen_run):
    """The demo model cannot see this non-contrast kidney well (Dice measured about 0.4): its two
    masks cannot be laid onto each other (mask Dice measured 0.67), and where they could, not onto
    the anatomy, which the prompts show. The pipeline says so, and registers on the prompt boxes."""
    _, _, _, _, result = abdomen_run
    report = result.registration.report
    assert any(reason in report["sam_masks_failure"] for reason in MASK_FAILURES), report["sam_masks_failure"]
    assert report["reference"] == "prompt boxes" and result.registration.passed
    # Ellipses in boxes carry no outline: the retry fits at most an affine transform.
    assert report["transform"] == "affine" and report["chosen_model"] == "affine"
    assert result.registration.reason.startswith("on the prompt boxes, because SAM's masks failed")
    assert report["prompt_distance_mm"] <= report["prompt_tolerance_mm"]


def test_abdomen_ct_transform_recovers_the_known_transform_within_1_mm(abdomen_run):
    """Measured 0.76 mm (4 seeds: 0.25-1.04 mm), through the prompt-box fallback above."""
    case, _, _, _, result = abdomen_run
    assert tre_mm(case, result.registration.sitk_transform) < 1.0


def test_without_the_fallback_the_masks_failure_stays_a_failure(abdomen_run, demo_model):
    from SAMFusionLib.pipeline import PipelineOptions

    case = abdomen_run[0]
    result = run_pipeline(Segmenter(demo_model), case.inputs, PipelineOptions(box_fallback=False))
    assert not result.registration.passed and result.registration.report["reference"] == "SAM masks"
    assert any(reason in result.registration.reason for reason in MASK_FAILURES), result.registration.reason
    assert tre_mm(case, result.registration.sitk_transform) > 2.0  # far off (67 mm before this release)


def test_a_fallback_that_fails_its_own_check_is_not_used(default_case, default_run):
    """Prompt boxes on different targets (the X-ray box moved 60 px off the kidney, its point left
    on it): the boxes get aligned, the point check then fails, and the first result stands."""
    from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
    from SAMFusionLib.pipeline import PipelineInputs, PipelineOptions, XrayPrompts, _register_on_prompt_boxes

    inputs, first = default_case.inputs, default_run[3]
    box = np.asarray(inputs.xray_prompts.box_xyxy, float)
    moved = XrayPrompts(inputs.xray_prompts.points_xy, inputs.xray_prompts.labels, box + np.array([-60.0, 0.0, -60.0, 0.0]))
    bad = PipelineInputs(inputs.ct_kji, inputs.ct_geometry, inputs.ct_prompts, inputs.xray, inputs.xray_plane, moved)
    moving = to_sam_rgb(inputs.xray, resolve_range(inputs.xray, "auto"))[..., 0].astype(np.float32)
    assert _register_on_prompt_boxes(first.registration, bad, first.fixed, moving, None, PipelineOptions(), None) is first.registration
    # The same call with the true boxes does give a result of its own, on the boxes.
    retry = _register_on_prompt_boxes(first.registration, inputs, first.fixed, moving, None, PipelineOptions(), None)
    assert retry is not first.registration and retry.report["reference"] == "prompt boxes"


def test_abdomen_ct_with_ground_truth_masks_registers_within_1_mm(shared_data):
    """The registration half of the 1 mm requirement, on the same case: this 3 mm CT's projection
    against the 2.4 mm X-ray, given the true kidney masks (measured 0.50 mm; 4 seeds: 0.30-0.73 mm)."""
    from SAMFusionLib.cases.shared_data import abdomen_ct
    from SAMFusionLib.imaging.intensity import resolve_range, to_sam_rgb
    from SAMFusionLib.registration.radiograph import project_ct
    from SAMFusionLib.registration.register import register_2d

    hu, geometry, _, masks = abdomen_ct()
    case = case_from_ct(hu, geometry, masks["kidney_left"], np.random.default_rng(0), nonrigid=False)
    inputs = case.inputs
    fixed = project_ct(inputs.ct_kji, case.ct_target_mask, inputs.ct_geometry, "AP")
    moving = to_sam_rgb(inputs.xray, resolve_range(inputs.xray, "auto"))[..., 0].astype(np.float32)
    result = register_2d(fixed.image, fixed.plane.grid(), moving, inputs.xray_plane.grid(), fixed.mask, case.xray_target_mask)
    assert result.passed, result.reason
    assert tre_mm(case, result.sitk_transform) < 1.0


@pytest.fixture(scope="module")
def default_case():
    return make_demo_case()


@pytest.fixture(scope="module")
def default_run(default_case, demo_model):
    return run_case(default_case, demo_model)


def test_default_case_segments_and_registers(default_case, default_run):
    _, _, outputs, result = default_run
    assert dice(result.ct_mask_kji, default_case.ct_target_mask) > 0.75  # measured 0.80
    assert dice(result.xray_mask, default_case.xray_target_mask) > 0.75  # measured 0.85
    assert result.registration.passed, result.registration.reason
    assert node_mapping_error_mm(outputs, result, default_case) < 0.05
    # A grid node exactly when the registration kept its non-rigid field (here the affine result
    # correlates better with the X-ray, measured 0.83 against 0.80).
    assert (outputs.grid_transform is not None) == (result.registration.report["chosen_model"] == "nonrigid")


def test_a_non_rigid_result_becomes_a_grid_node_under_the_linear_one(default_case, demo_model):
    from SAMFusionLib.pipeline import PipelineOptions
    from SAMFusionLib.registration.register import RegistrationOptions

    options = PipelineOptions(registration=RegistrationOptions(select_model=False))
    core, _, outputs, result = run_case(default_case, demo_model, options=options)  # core keeps the scene alive
    assert result.registration.report["chosen_model"] == "nonrigid"
    assert outputs.grid_transform is not None and outputs.transform.GetTransformNodeID() == outputs.grid_transform.GetID()
    assert node_mapping_error_mm(outputs, result, default_case) < 0.05
    assert tre_mm(default_case, result.registration.sitk_transform) < 1.5  # measured 1.01 mm
    # The X-ray's segmentation moves with the X-ray, its mask unchanged on the X-ray's grid.
    xray = core.scene.GetFirstNodeByName("X-ray")
    assert outputs.xray_segmentation.GetTransformNodeID() == xray.GetTransformNodeID() == outputs.transform.GetID()
    np.testing.assert_array_equal(mrml.segment_array(outputs.xray_segmentation, "kidney", xray)[0], result.xray_mask)


def test_default_case_transform_within_1_mm(default_case, default_run):
    """The known transform is recovered at the test points (measured 0.69 mm)."""
    assert tre_mm(default_case, default_run[3].registration.sitk_transform) < 1.0


def restored(case, kind: str):
    """The same physical CT stored differently: as an RAS-ordered array, or on an oblique grid."""
    inputs = case.inputs
    geometry = inputs.ct_geometry
    if kind == "ras":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.array(geometry.shape_kji[::-1][:2]) - 1.0  # i' = n - 1 - i, j' = m - 1 - j
        new_geometry = ImageGeometry(geometry.ijk_to_ras @ flip, geometry.shape_kji)
        array = inputs.ct_kji[:, ::-1, ::-1].copy()
    else:
        centre = geometry.ijk_to_ras_points(np.array([[(n - 1) / 2 for n in geometry.shape_kji[::-1]]]))[0]
        turn = np.eye(4)
        turn[:3, :3] = rotation([0.2, 0.1, 1.0], 7.0)
        turn[:3, 3] = centre - turn[:3, :3] @ centre
        new_geometry = ImageGeometry(turn @ geometry.ijk_to_ras, geometry.shape_kji)
        array = resample(inputs.ct_kji, geometry, new_geometry, default=-1000.0)
    return replace(case, inputs=replace(inputs, ct_kji=array, ct_geometry=new_geometry))


@pytest.mark.parametrize("kind", ["ras", "oblique"])
def test_the_same_case_stored_differently_gives_the_same_result_in_ras(default_case, default_run, demo_model, kind):
    reference = default_run[3]
    other_case = restored(default_case, kind)
    _, _, outputs, other = run_case(other_case, demo_model)
    # CT masks compared in RAS: resampled onto the reference grid.
    back = resample(other.ct_mask_kji, other_case.inputs.ct_geometry, default_case.inputs.ct_geometry, nearest=True)
    # The projection frame is the view's, whatever the storage (its extent grows for an oblique grid),
    # so the same frame points can be compared.
    np.testing.assert_allclose(other.fixed.plane.rotation, reference.fixed.plane.rotation, atol=1e-9)
    mapped = np.array([other.registration.sitk_transform.TransformPoint(tuple(p)) for p in default_case.test_points])
    expected = np.array([reference.registration.sitk_transform.TransformPoint(tuple(p)) for p in default_case.test_points])
    spread = np.linalg.norm(mapped - expected, axis=1).mean()
    if kind == "ras":
        np.testing.assert_array_equal(back, reference.ct_mask_kji)  # identical voxels after the view resampling
        assert spread < 1e-3
    else:
        assert dice(back, reference.ct_mask_kji) > 0.8  # measured 0.845
        # The interpolated CT gives slightly different SAM masks, which move the fit within the
        # demo model's accuracy (default case TRE 3.0 mm): measured spread 2.6 mm.
        assert spread < 3.0
        assert tre_mm(other_case, other.registration.sitk_transform) < 5.0


# --- scene safety ---------------------------------------------------------------------------------

def scene_state(scene) -> list[str]:
    return mrml.node_ids(scene)


@pytest.mark.parametrize("problem, message", [
    ("no prompts", "no CT prompts"),
    ("roi outside", "ROI's centre lies outside the CT volume"),
    ("xray 3 slices", "single 2D image, but it has 3 slices"),
    ("xray point off plane", "off the X-ray's plane"),
])
def test_bad_input_leaves_the_scene_as_it_was(default_case, demo_model, problem, message):
    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray", "kidney")
    if problem == "no prompts":
        nodes.ct_points = nodes.ct_roi = None
    elif problem == "roi outside":
        nodes.ct_points = None
        nodes.ct_roi = mrml.add_roi(core.scene, np.array([[500.0, 500, 500], [520, 520, 520]]), "far ROI")
    elif problem == "xray 3 slices":
        geometry = default_case.inputs.xray_plane.geometry()
        geometry = ImageGeometry(geometry.ijk_to_ras, (3, *geometry.shape_kji[1:]))
        nodes.xray = mrml.add_volume(core.scene, np.zeros(geometry.shape_kji, np.float32), geometry, "stack")
    else:
        nodes.xray_points = mrml.add_fiducials(core.scene, np.array([[10.0, 10.0, 40.0]]), "off plane")
    before = scene_state(core.scene)
    with pytest.raises(SamFusionError, match=message):
        run_on_scene(core.scene, nodes, Segmenter(demo_model))
    assert scene_state(core.scene) == before


def test_cancel_in_the_middle_leaves_the_scene_as_it_was(default_case, demo_model):
    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray", "kidney")
    before = scene_state(core.scene)
    seen = []

    def progress(step, fraction):
        seen.append(step)

    # Cancelled once the X-ray is segmented: the next check, before projecting, stops the run.
    with pytest.raises(PipelineCancelled, match="cancelled during 'project'"):
        run_on_scene(core.scene, nodes, Segmenter(demo_model), progress=progress, cancelled=lambda: "segment X-ray" in seen)
    assert scene_state(core.scene) == before
    assert seen[0] == "segment CT" and "segment X-ray" in seen


def test_a_new_prompt_costs_only_the_decoder(default_case, demo_model):
    """The embedding cache is shared: a re-run with a moved X-ray prompt encodes no image again."""
    segmenter = Segmenter(demo_model)
    run_pipeline(segmenter, default_case.inputs)
    encoded, reused = segmenter.cache.misses, segmenter.cache.hits
    assert encoded > 1  # the CT slices and the X-ray
    prompts = default_case.inputs.xray_prompts
    moved = replace(default_case.inputs, xray_prompts=replace(prompts, points_xy=prompts.points_xy + 1.0))
    run_pipeline(segmenter, moved)
    assert segmenter.cache.misses == encoded
    assert segmenter.cache.hits > reused


@pytest.mark.parametrize("view", ["AP", "LAT"])
def test_images_encoded_ahead_leave_the_run_only_its_zoomed_crops(default_case, demo_model, view):
    """What the front ends run while the user places prompts: ``encode_ahead_of_run`` on the
    pipeline's own view grid and windows, so the run finds the X-ray and its CT slices cached
    (measured with the demo model on the default case, AP: the X-ray and 33 slices ahead, then 2
    images in the run, its zoomed crops, against 35) and its result is the same."""
    from SAMFusionLib.pipeline import PipelineOptions, encode_ahead_of_run

    options = PipelineOptions(view=view)
    inputs = default_case.inputs
    plain = run_pipeline(Segmenter(demo_model), inputs, options)
    segmenter = Segmenter(demo_model)
    xray, slices = encode_ahead_of_run(segmenter, inputs.xray, (inputs.ct_kji, inputs.ct_geometry, inputs.ct_prompts), options)
    result = run_pipeline(segmenter, inputs, options)
    assert xray == 1 and slices >= result.report["ct"]["slices_segmented"] >= 10
    # Left to the run: the zoomed crops on the target's small end slices (2 in AP, 4 in LAT).
    assert result.report["images_encoded"] <= plain.report["images_encoded"] - result.report["ct"]["slices_segmented"] - 1
    assert np.array_equal(result.ct_mask_kji, plain.ct_mask_kji) and np.array_equal(result.xray_mask, plain.xray_mask)
    assert result.registration.report["dice_after"] == plain.registration.report["dice_after"]
    assert encode_ahead_of_run(segmenter, inputs.xray, None, options) == (0, 0)  # already there: nothing to do


def test_what_can_be_encoded_ahead_is_read_from_the_scene_as_apply_reads_it(default_case):
    """``read_ahead``: nothing before the images; the X-ray alone before a prompt is on the CT; the
    arrays Apply itself reads (``read_inputs``), so the cache keys match."""
    from SAMFusionLib.scene.run import SceneInputs, read_ahead, read_inputs

    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray")
    assert read_ahead(None) == (None, None)
    xray, ct = read_ahead(SceneInputs(None, nodes.xray))
    assert ct is None and xray.dtype == np.float32
    empty = core.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "CT points, none placed yet")
    assert read_ahead(SceneInputs(None, nodes.ct)) == (None, None)  # a CT volume as the X-ray: Apply will say why
    assert read_ahead(SceneInputs(nodes.ct, None, ct_points=empty))[1] is None
    xray, (ct_kji, geometry, prompts) = read_ahead(nodes)
    full = read_inputs(nodes)
    assert np.array_equal(xray, full.xray) and xray.dtype == full.xray.dtype
    assert np.array_equal(ct_kji, full.ct_kji) and np.allclose(prompts.roi_corners_ras, full.ct_prompts.roi_corners_ras)


def test_the_key_of_what_is_encoded_ahead_changes_with_the_ct_and_its_prompts_only(default_case):
    """``ahead_key``: the front ends start encoding ahead anew only when it changes. A CT point moved,
    added or turned negative, the ROI moved, the CT's voxels changed, another X-ray: a new key. A
    prompt placed on the X-ray, or nothing at all: the same key."""
    import vtk
    from vtk.util import numpy_support

    from SAMFusionLib.scene.run import SceneInputs, ahead_key

    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray")
    key = ahead_key(nodes)
    assert ahead_key(nodes) == key and ahead_key(None) != key
    nodes.xray_points.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0))  # an X-ray prompt: the same images to encode
    assert ahead_key(nodes) == key

    changes = []
    point = nodes.ct_points.GetNthControlPointPositionVector(0)
    nodes.ct_points.SetNthControlPointPosition(0, point[0] + 2.0, point[1], point[2])
    changes.append(ahead_key(nodes))
    nodes.ct_points.SetNthControlPointSelected(0, False)  # a negative point
    changes.append(ahead_key(nodes))
    center = [0.0, 0.0, 0.0]
    nodes.ct_roi.GetCenter(center)
    nodes.ct_roi.SetCenter(*(np.asarray(center) + 3.0))
    changes.append(ahead_key(nodes))
    image = nodes.ct.GetImageData()  # the CT's voxels changed in place, as a filter may change them
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] += 1
    image.Modified()
    changes.append(ahead_key(nodes))
    other = mrml.add_image_2d(core.scene, default_case.inputs.xray, default_case.inputs.xray_plane, "another X-ray")
    changes.append(ahead_key(SceneInputs(nodes.ct, other, nodes.ct_points, ct_roi=nodes.ct_roi)))
    # An ROI being placed (no corner clicked yet) is a state of its own, not an error in a view's callback.
    unplaced = core.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "CT ROI, being placed")
    changes.append(ahead_key(SceneInputs(nodes.ct, nodes.xray, nodes.ct_points, ct_roi=unplaced)))
    assert len({key, *changes}) == 1 + len(changes)


def test_sam_on_every_third_ct_slice_with_the_default_model(default_case, default_model):
    """``slice_step=3``: the encoder runs on about half as many images (measured 16 against 32),
    the other CT slices are interpolated, and the result barely moves (CT Dice against the truth
    0.987 against 0.998, TRE 0.76 against 0.78 mm, on SAM's masks)."""
    from SAMFusionLib.pipeline import PipelineOptions

    result = run_pipeline(Segmenter(default_model), default_case.inputs, PipelineOptions(slice_step=3))
    ct = result.report["ct"]
    assert ct["slice_step"] == 3 and ct["slices_interpolated"] >= 10 and ct["slices_segmented"] + ct["slices_interpolated"] >= 25
    assert result.report["images_encoded"] <= 20
    assert dice(result.ct_mask_kji, default_case.ct_target_mask) > 0.98
    assert result.registration.passed and result.registration.report["reference"] == "SAM masks"
    assert tre_mm(default_case, result.registration.sitk_transform) < 1.0

# --- samfusion run ----------------------------------------------------------------------------------

def test_run_without_arguments_writes_the_default_case(tmp_path, capsys, monkeypatch):
    from SAMFusionLib.sam.segmenter import Segmenter

    monkeypatch.setenv("SAMFUSION_CACHE_DIR", str(tmp_path / "cache"))  # a cold embedding cache
    out = tmp_path / "demo"
    code = main(["run", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for name in report["files"]:
        assert (out / name).is_file(), name
    names = set(report["files"])
    assert {"SAMFusion.mrml", "report.json", "report.png", "phantom_CT_segmentation.seg.nrrd", "phantom_X-ray_segmentation.seg.nrrd"} <= names
    assert any(n.endswith("fused.nrrd") for n in names) and any(n.endswith(".h5") for n in names)
    from SAMFusionLib.sam.models import load_table

    table = load_table()
    assert report["model"]["id"] == table.default and report["model"]["title"] == table.entry(table.default).title
    assert "not a medical device" in report["model"]["note"]
    from SAMFusionLib.sam.segmenter import resolve_precision

    # The default model (LiteMedSAM, measured under bf16): bf16 where this CPU computes it natively, else fp32.
    assert report["model"]["encoder_precision"] == resolve_precision("auto", "cpu", bf16_measured=True)
    assert report["registration"]["passed"] == (code == 0)
    for key in ("dice_before", "dice_after", "match_loss_before", "match_loss_after", "reason"):
        assert key in report["registration"]
    assert set(report["timings_s"]) == {"segment CT", "segment X-ray", "project", "register", "resample", "fuse"}
    # The default model on the default case (measured: CT Dice 0.996, X-ray Dice 0.947, TRE 0.73 mm, on SAM's masks).
    # (CT Dice 0.968 before the zoom on propagated slices followed the seed, sam/volume.py.)
    assert report["case"]["ct_dice_vs_truth"] > 0.985 and report["case"]["xray_dice_vs_truth"] > 0.9
    assert report["case"]["registration_tre_mm"] < 1.0 and report["registration"]["reference"] == "SAM masks"
    reloaded = mrml.load_scene(out / "SAMFusion.mrml").scene
    assert reloaded.GetFirstNodeByName("phantom CT + phantom X-ray fused") is not None
    import cv2

    picture = cv2.imread(str(out / "report.png"))
    assert picture is not None and picture.shape[0] > 400 and picture.shape[1] > 700

    # Run again (a new Segmenter, as a new process has): every embedding comes from the disk cache.
    def no_encoder(*_args, **_kwargs):
        raise AssertionError("the encoder ran although the case's embeddings were on disk")

    monkeypatch.setattr(Segmenter, "_encode", no_encoder)
    assert main(["run", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["case"] == report["case"]
    # 29 slices, their seed's zoomed crop, the X-ray: measured 32 encoder runs the first time.
    assert 25 <= report["images_encoded"] <= 40 and again["images_encoded"] == 0


def write_case_files(folder, case=None):
    """A case (default: the default case) as files, written by MRML: CT.nrrd, X-ray.nrrd and the prompts' .mrk.json."""
    from SAMFusionLib.scene.case_files import write_case_files as write_files

    case = case or make_demo_case()
    write_files(case, folder)
    return case


def test_run_from_files_with_markups_prompts(tmp_path, demo_model):
    """Write the default case as files (volumes + .mrk.json by MRML), then run on them."""
    inputs_dir = tmp_path / "inputs"
    case = write_case_files(inputs_dir)
    out = tmp_path / "out"
    prompts = [str(inputs_dir / f"{name}.mrk.json") for name in ("CT_points", "CT_ROI", "X-ray_points", "X-ray_ROI")]
    code = main(["run", "--model", "samfusion-demo", "--ct", str(inputs_dir / "CT.nrrd"), "--xray", str(inputs_dir / "X-ray.nrrd"), "--prompts", *prompts, "--out", str(out)])
    assert code in (0, 3)
    report = json.loads((out / "report.json").read_text())
    assert report["ct"]["mask_voxels"] > 0 and report["xray"]["mask_pixels"] > 0
    # The default slice step, auto, is 1 on this CT of 2.5 mm slices: every slice SAM visits is its own.
    assert report["ct"]["slice_step"] == 1 and report["ct"]["slices_interpolated"] == 0
    # The same prompts through files give the same CT mask as in memory.
    in_memory = run_pipeline(Segmenter(demo_model), case.inputs)
    assert report["ct"]["mask_voxels"] == int(in_memory.ct_mask_kji.sum())
    # The CT is saved as a copy of its file, not encoded again (a clinical CT took 4 s to write), and
    # the saved scene reads it back as the same volume.
    assert (out / "CT.nrrd").read_bytes() == (inputs_dir / "CT.nrrd").read_bytes()
    saved = mrml.load_scene(out / "SAMFusion.mrml")
    ct_kji, ct_geometry = mrml.array_from_volume(saved.scene.GetFirstNodeByName("CT"))
    assert np.array_equal(ct_kji, case.inputs.ct_kji) and np.allclose(ct_geometry.ijk_to_ras, case.inputs.ct_geometry.ijk_to_ras)
    assert "CT.nrrd" in report["files"]


def test_a_ct_read_from_a_file_is_saved_as_a_copy_of_it_unless_its_voxels_changed(tmp_path):
    """``source_copies`` and ``save_scene``'s ``copies``: the CT's file copied, byte for byte; once the
    node's voxels change (as a filter would change them, in place), they are written instead."""
    from vtk.util import numpy_support

    from SAMFusionLib.scene.case_files import load_file_case, source_copies

    inputs_dir = tmp_path / "inputs"
    write_case_files(inputs_dir)
    core = mrml.headless_scene()
    prompts = [inputs_dir / f"{name}.mrk.json" for name in ("CT_points", "CT_ROI", "X-ray_points", "X-ray_ROI")]
    nodes = load_file_case(core.scene, inputs_dir / "CT.nrrd", inputs_dir / "X-ray.nrrd", prompts)
    copies = source_copies(nodes, inputs_dir / "CT.nrrd")
    assert list(copies) == [nodes.ct.GetID()]
    (tmp_path / "copied").mkdir()
    mrml.save_scene(core.scene, tmp_path / "copied", copies=copies)
    assert (tmp_path / "copied" / "CT.nrrd").read_bytes() == (inputs_dir / "CT.nrrd").read_bytes()

    before = mrml.array_from_volume(nodes.ct)[0]
    image = nodes.ct.GetImageData()
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] += 5
    image.Modified()
    (tmp_path / "written").mkdir()
    mrml.save_scene(core.scene, tmp_path / "written", copies=copies)
    saved = mrml.load_scene(tmp_path / "written" / "scene.mrml")
    assert np.array_equal(mrml.array_from_volume(saved.scene.GetFirstNodeByName("CT"))[0], before + 5)


def test_run_on_files_falls_back_on_the_boxes_unless_told_not_to(tmp_path, abdomen_run, capsys):
    """The abdomen case as files, with the demo model (whose masks of this kidney fail): exit 0 on the
    prompt boxes; with --no-box-fallback, exit 3 (the masks' failure), the outputs written all the same."""
    inputs_dir = tmp_path / "inputs"
    write_case_files(inputs_dir, abdomen_run[0])
    prompts = [str(inputs_dir / f"{name}.mrk.json") for name in ("CT_points", "CT_ROI", "X-ray_points", "X-ray_ROI")]
    files = ["run", "--model", "samfusion-demo", "--ct", str(inputs_dir / "CT.nrrd"), "--xray", str(inputs_dir / "X-ray.nrrd"), "--prompts", *prompts]
    for extra, code, reference in (([], 0, "prompt boxes"), (["--no-box-fallback"], 3, "SAM masks")):
        out = tmp_path / f"out{code}"
        assert main([*files, "--out", str(out), *extra]) == code
        report = json.loads((out / "report.json").read_text())
        assert report["registration"]["reference"] == reference and report["registration"]["passed"] == (code == 0)


def test_run_says_when_sam_skipped_ct_slices(tmp_path, capsys):
    """With a slice step above 1 the summary names it and the slices filled between SAM's; at 1
    (the default case's 2.5 mm slices under auto) it adds nothing."""
    inputs_dir = tmp_path / "inputs"
    write_case_files(inputs_dir)
    files = ["run", "--model", "samfusion-demo", "--ct", str(inputs_dir / "CT.nrrd"), "--xray", str(inputs_dir / "X-ray.nrrd"),
             "--prompts", *[str(inputs_dir / f"{name}.mrk.json") for name in ("CT_points", "CT_ROI", "X-ray_points", "X-ray_ROI")]]
    assert main([*files, "--slice-step", "2", "--out", str(tmp_path / "two")]) in (0, 3)
    report = json.loads((tmp_path / "two" / "report.json").read_text())["ct"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == (f"  CT: SAM on {report['slices_segmented']} slices, a step of 2 (--slice-step 2), "
                         f"{report['slices_interpolated']} interpolated") and report["slices_interpolated"] > 0
    assert main([*files, "--out", str(tmp_path / "auto")]) in (0, 3)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("samfusion run: ")


@pytest.mark.parametrize("args, message", [
    (["--ct", "missing.nrrd"], "give both --ct and --xray"),
    (["--prompts", "a.mrk.json"], "--prompts needs --ct and --xray"),
    (["--slice-step", "0"], "the slice step must be auto or a whole number of slices, at least 1, got 0"),
    (["--slice-step", "every"], "argument --slice-step: auto or a whole number of slices, got 'every'"),
])
def test_run_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["run", *args, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("samfusion: error:") and message in error and "\n" not in error
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_run_with_a_missing_prompt_file_writes_nothing(tmp_path, capsys):
    inputs_dir = tmp_path / "inputs"
    write_case_files(inputs_dir)
    out = tmp_path / "out"
    code = main(["run", "--model", "samfusion-demo", "--ct", str(inputs_dir / "CT.nrrd"), "--xray", str(inputs_dir / "X-ray.nrrd"), "--prompts", str(tmp_path / "nope.mrk.json"), "--out", str(out)])
    assert code == 2 and "prompt file not found" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]


def test_sample_data_files_match_their_pinned_sha256(tmp_path):
    """The files the Slicer module registers as sample data are the default case, bit for bit."""
    from SAMFusionLib.cases.sample_data import sample_table, write_sample_files
    from SAMFusionLib.sam.weights import sha256_file

    written = write_sample_files(tmp_path)
    for entry in sample_table()["files"]:
        assert sha256_file(written[entry["node"]]) == entry["sha256"], entry["file"]


def test_perspective_projection_puts_a_ball_where_the_ray_through_it_meets_the_detector():
    from SAMFusionLib.registration.radiograph import perspective_for, project_ct_perspective

    spacing = (1.0, 1.2, 2.0)
    geometry = ImageGeometry.from_lps(spacing, (-30.0, -40.0, -20.0), np.eye(3), (40, 60, 70))
    k, j, i = np.mgrid[:40, :60, :70]
    centre_ijk = np.array([20.0, 25.0, 15.0])
    radius_mm = 8.0
    ball = ((i - centre_ijk[0]) * spacing[0]) ** 2 + ((j - centre_ijk[1]) * spacing[1]) ** 2 + ((k - centre_ijk[2]) * spacing[2]) ** 2 <= radius_mm**2
    perspective = perspective_for(geometry, "AP", 1000.0, 1500.0)
    radiograph = project_ct_perspective(np.where(ball, 1000.0, -1000.0), ball, geometry, perspective)
    detector, source = perspective.detector, perspective.source_ras
    centre_ras = geometry.ijk_to_ras_points(centre_ijk[None])[0]
    along = ((detector.origin_ras - source) @ detector.normal_ras) / ((centre_ras - source) @ detector.normal_ras)
    expected = detector.ras_to_pixel((source + along * (centre_ras - source))[None], tolerance_mm=1e-6)[0]
    ys, xs = np.nonzero(radiograph.mask)
    np.testing.assert_allclose([xs.mean(), ys.mean()], expected, atol=0.3)  # px; measured 0.13
    # Magnified by source-detector / source-ball distance: measured 12.8 mm for 12.1 mm expected.
    magnified = radius_mm * 1500.0 / ((centre_ras - source) @ detector.normal_ras)
    assert abs(np.sqrt(radiograph.mask.sum() / np.pi) * detector.spacing_mm[0] - magnified) < 1.0
    # The brightest part of the DRR is the ball.
    assert radiograph.image[int(round(expected[1])), int(round(expected[0]))] > np.percentile(radiograph.image, 95)


def test_default_case_runs_with_a_perspective_projection(default_case, demo_model):
    from SAMFusionLib.pipeline import PipelineOptions

    result = run_pipeline(Segmenter(demo_model), default_case.inputs, PipelineOptions(projection="perspective"))
    assert result.report["ct"]["projection"] == "perspective"
    # The fused image lies on the detector plane, 500 mm beyond the CT's centre along the rays.
    plane = result.fixed.plane
    assert plane.shape_hw == result.fused.shape and result.xray_registered.shape == result.fused.shape
    assert abs(plane.depth_mm) > 400
    assert result.registration.report["dice_after"] > result.registration.report["dice_before"]


def test_a_rerun_can_reuse_the_output_nodes(default_case, demo_model):
    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray", "kidney")
    segmenter = Segmenter(demo_model)
    outputs, _ = run_on_scene(core.scene, nodes, segmenter)
    before = mrml.node_ids(core.scene)
    again, result = run_on_scene(core.scene, nodes, segmenter, reuse=outputs)
    assert again.node_ids() == outputs.node_ids()
    assert mrml.node_ids(core.scene) == before  # nothing new in the scene
    assert outputs.ct_segmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(mrml.segment_array(outputs.ct_segmentation, "kidney", nodes.ct), result.ct_mask_kji)
    np.testing.assert_allclose(mrml.array_from_volume(outputs.fused)[0][0], result.fused)


def test_run_on_a_2d_ct_image_the_papers_case(tmp_path):
    """A 2D CT slice and an X-ray-like copy turned by 5.7 degrees and shifted: no projection step,
    a rigid result (scale 1), and the CT's kidney point maps onto the X-ray's."""
    import SimpleITK as sitk

    from SAMFusionLib.cases.phantom import ct_volume

    phantom = ct_volume(np.random.default_rng(3), (24, 128, 128), stone_count=2, kidney_hu=300.0)
    ct = sitk.GetImageFromArray(phantom.hu_kji[12].astype(np.float32))
    sitk.WriteImage(ct, str(tmp_path / "ct2d.nrrd"))
    turn = sitk.Euler2DTransform((64.0, 64.0), 0.1, (5.0, -3.0))  # X-ray(p) = CT(turn(p))
    moved = sitk.GetArrayFromImage(sitk.Resample(ct, ct, turn, sitk.sitkLinear, -1000.0))
    xray = sitk.GetImageFromArray((255 * (moved - moved.min()) / np.ptp(moved)).astype(np.float32))
    sitk.WriteImage(xray, str(tmp_path / "xray.nrrd"))
    ys, xs = np.nonzero(phantom.masks["kidney_left"][12])
    centre = (float(xs.mean()), float(ys.mean()))
    moved_centre = turn.GetInverse().TransformPoint(centre)
    core = mrml.headless_scene()
    for name, (x, y) in (("ct points", centre), ("xray points", moved_centre)):
        node = mrml.add_fiducials(core.scene, np.array([[-x, -y, 0.0]]), name)  # a 2D image lies on z = 0, RAS = -LPS
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(tmp_path / f"{name.replace(' ', '_')}.mrk.json"))
        assert node.GetStorageNode().WriteData(node)
    out = tmp_path / "out"
    code = main(["run", "--model", "samfusion-demo", "--ct", str(tmp_path / "ct2d.nrrd"), "--xray", str(tmp_path / "xray.nrrd"), "--prompts",
                 str(tmp_path / "ct_points.mrk.json"), str(tmp_path / "xray_points.mrk.json"), "--out", str(out), "--transform", "rigid"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0, report["registration"]["reason"]
    assert report["ct"]["dimensions"] == 2 and report["ct"]["projection"] is None
    assert report["ct"]["slice_step"] == 1  # auto on one slice, whatever spacing the image's header gives across it
    assert report["registration"]["parameters"]["log_scale"] == 0.0
    assert report["registration"]["prompt_distance_mm"] < 3.0


def test_phantom_pairs_carry_a_consistent_known_transform():
    """Random phantom CT/X-ray pairs: the X-ray's target is where the known transform puts the
    projection's target; some pairs carry a collimation edge."""
    import cv2

    from SAMFusionLib.cases.demo_case import phantom_pair
    from SAMFusionLib.registration.radiograph import project_ct

    seen_collimated = False
    for seed in (100, 101, 104):
        case = phantom_pair(np.random.default_rng(seed))
        inputs = case.inputs
        fixed = project_ct(inputs.ct_kji, case.ct_target_mask, inputs.ct_geometry, "AP")
        inside = cv2.erode(fixed.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        ys, xs = np.nonzero(inside)
        points = fixed.plane.grid().to_physical(np.c_[xs, ys].astype(float))
        mapped = np.array([case.truth.TransformPoint(tuple(p)) for p in points])
        pixels = np.round(inputs.xray_plane.grid().to_index(mapped)).astype(int)
        hits = case.xray_target_mask[pixels[:, 1], pixels[:, 0]]
        assert hits.mean() > 0.97  # interior points land inside the X-ray's target
        seen_collimated |= bool(np.ptp(inputs.xray[2, 10:-10]) == 0 and inputs.xray[2, 10:-10][0] in (0.0, 255.0))
    assert seen_collimated


def test_cancel_inside_the_registration_stops_it_and_leaves_the_scene(default_case, demo_model):
    from SAMFusionLib.errors import Cancelled

    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray", "kidney")
    before = scene_state(core.scene)
    seen = []
    # "register" is reported after the step's own check, so the next poll is the optimiser's.
    with pytest.raises(Cancelled, match="cancelled during registration"):
        run_on_scene(core.scene, nodes, Segmenter(demo_model), progress=lambda step, fraction: seen.append(step),
                     cancelled=lambda: "register" in seen)
    assert scene_state(core.scene) == before


def test_progress_is_reported_while_the_registration_runs_and_a_cancel_then_stops_it(default_case, demo_model):
    """A GUI processes events only in its progress callback: the registration must report while it
    runs (not only at its start), and a Cancel clicked then must stop it with the scene untouched."""
    from SAMFusionLib.errors import Cancelled

    reports = []
    result = run_pipeline(Segmenter(demo_model), default_case.inputs, progress=lambda step, fraction: reports.append((step, fraction)))
    during = [fraction for step, fraction in reports if step == "register" and fraction > 0]
    assert len(during) >= 2, reports
    assert during == sorted(during) and 0 < during[0] < during[-1] < 1
    assert result.report["timings_s"]["register"] >= 0.045 * (len(during) - 1)  # at most one report per 0.05 s

    core = mrml.headless_scene()
    nodes = add_case_nodes(core.scene, default_case.inputs, "CT", "X-ray", "kidney")
    before = scene_state(core.scene)
    clicks = []

    def progress(step, fraction):
        if step == "register" and fraction > 0:
            clicks.append(fraction)  # the user clicks Cancel at the first report inside the registration

    with pytest.raises(Cancelled, match="cancelled during registration"):
        run_on_scene(core.scene, nodes, Segmenter(demo_model), progress=progress, cancelled=lambda: len(clicks) >= 1)
    assert len(clicks) == 1 and scene_state(core.scene) == before
