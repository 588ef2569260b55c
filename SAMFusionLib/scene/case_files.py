"""A case as files: read its CT, X-ray and markups prompts into a scene, and write a run's outputs.

What ``samfusion run`` and ``samfusion run-batch`` share. Prompt files (Slicer markups ``.mrk.json``:
point lists or ROIs) are assigned by name, file name first, then the markups node's name:
- a name containing ``xray`` / ``x-ray`` / ``x_ray`` belongs to the X-ray, else one containing
  ``ct`` as a word belongs to the CT; otherwise the points decide (all on the X-ray's plane ->
  X-ray, all inside the CT -> CT);
- a point list whose name contains ``neg`` holds negative points; otherwise each point's selected
  state decides (selected = positive, Slicer's default).

The outputs (``write_outputs``): every node MRML can store, the ``.mrml`` scene, ``report.json``
and ``report.png``, written into a staging folder and moved into place only when complete.

A generated case with its truth (``write_case_files``; its ``truth.json`` gives ``landmark_tre_mm``
its points): what the sample cohort, the CT-size benchmark and the tests pass to the commands.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import staged_folder
from SAMFusionLib.scene import mrml
from SAMFusionLib.scene.run import SceneInputs

XRAY_NAME = re.compile(r"x[-_ ]?ray", re.IGNORECASE)
CT_NAME = re.compile(r"(^|[^a-z])ct([^a-z]|$)", re.IGNORECASE)
NEGATIVE_NAME = re.compile(r"neg", re.IGNORECASE)
NOT_MEDICAL = "SAMFusion is a research tool, not a medical device; not for clinical use"


def load_file_case(scene, ct_path: Path, xray_path: Path, prompt_paths: list[Path]) -> SceneInputs:
    """Read a CT (volume or 2D slice), an X-ray and its markups prompts into ``scene``."""
    from SAMFusionLib.imaging.io import grey_array, read_image_2d, read_volume_or_slice
    from SAMFusionLib.imaging.plane import Plane

    ct_kji, ct_geometry = read_volume_or_slice(ct_path)
    ct = mrml.add_volume(scene, ct_kji, ct_geometry, Path(ct_path).name.split(".")[0] or "CT")
    del ct_kji  # the node holds its own copy; this one would double a large CT's memory to the end
    xray_image = read_image_2d(xray_path)
    xray = mrml.add_image_2d(scene, grey_array(xray_image), Plane.from_geometry(xray_image.geometry), Path(xray_path).name.split(".")[0] or "X-ray")
    markups = [mrml.load_markups(scene, path) for path in prompt_paths]
    if not markups:
        raise SamFusionError("no prompts: give --prompts FILE.mrk.json for the CT and the X-ray")
    return assign_prompts(markups, ct, xray)


def assign_prompts(nodes: list, ct_node, xray_node) -> SceneInputs:
    """Sort markups nodes into the CT's and the X-ray's prompts (rules in the module docstring)."""
    ct_geometry = mrml.volume_geometry(ct_node)  # the geometry alone: no copy of a CT's voxels
    _, plane = mrml.xray_from_volume(xray_node)
    inputs = SceneInputs(ct_node, xray_node)
    for node in nodes:
        name = node.GetName()
        is_roi = node.IsA("vtkMRMLMarkupsROINode")
        if XRAY_NAME.search(name):
            side = "xray"
        elif CT_NAME.search(name):
            side = "ct"
        else:
            side = _side_by_geometry(node, ct_geometry, plane, is_roi)
        if is_roi:
            slot = f"{side}_roi"
        else:
            slot = f"{side}_negative_points" if NEGATIVE_NAME.search(name) else f"{side}_points"
        if getattr(inputs, slot) is not None:
            raise SamFusionError(f"two prompt files for the {slot.replace('_', ' ')}: {getattr(inputs, slot).GetName()} and {name}")
        setattr(inputs, slot, node)
    return inputs


def _side_by_geometry(node, ct_geometry, plane, is_roi: bool) -> str:
    points = mrml.roi_corners(node).mean(0, keepdims=True) if is_roi else mrml.control_points_ras(node)[0]
    on_xray = True
    try:
        plane.ras_to_pixel(points)
    except SamFusionError:
        on_xray = False
    in_ct = bool(ct_geometry.contains_ijk(ct_geometry.ras_to_ijk(points)).all())
    if on_xray == in_ct:
        where = "both images" if on_xray else "neither image"
        raise SamFusionError(f"prompts {node.GetName()!r} fit {where}: put 'ct' or 'xray' in the file name")
    return "xray" if on_xray else "ct"


def model_report(segmenter) -> dict:
    """The report's ``model`` entry: what produced the masks (a ``Segmenter``: the model and the
    image encoder's precision)."""
    from SAMFusionLib.sam.models import load_table

    model, models = segmenter.model, load_table().models
    return {"id": model.model_id, "architecture": model.architecture, "device": model.device, "fingerprint": model.fingerprint,
            "encoder_precision": segmenter.precision,
            "title": models[model.model_id].title if model.model_id in models else "", "note": NOT_MEDICAL}


def source_copies(nodes: SceneInputs, ct_path: Path) -> dict:
    """``mrml.save_scene``'s ``copies`` for a case just read by ``load_file_case``: the CT volume, as
    its file holds it (a 2D CT image became a grey slice, and is written)."""
    ct = nodes.ct
    if ct.GetImageData().GetDimensions()[2] > 1 and mrml.copyable_suffix(ct_path):
        return {ct.GetID(): (Path(ct_path).resolve(), ct.GetImageData().GetMTime())}
    return {}


def write_outputs(scene, result, report: dict, out: Path, process_seconds: Callable[[], float | None] | None = None,
                  copies: dict | None = None) -> None:
    """Write the scene's nodes, the ``.mrml``, ``report.json`` and ``report.png`` into ``out``, all or
    nothing. ``report`` gains ``files`` (and ``process_seconds``, measured just before it is written).
    ``copies``: see ``mrml.save_scene`` (``source_copies``)."""
    from SAMFusionLib.scene.report_png import write_report_png

    with staged_folder(out) as staging:
        files = mrml.save_scene(scene, staging, "SAMFusion.mrml", copies)
        report["files"] = sorted(p.name for p in files) + ["report.json", "report.png"]
        if process_seconds is not None:
            report["process_seconds"] = process_seconds()
        (staging / "report.json").write_text(json.dumps(_finite(report), indent=2, default=_json_default, allow_nan=False))
        write_report_png(result, staging / "report.png")


def _finite(value):
    """JSON has no infinity or NaN: such figures (e.g. Match_Loss with no overlap) become null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_case_files(case, folder: Path) -> dict:
    """A generated case (``DemoCase``) as the files a user passes: ``CT.nrrd``, ``X-ray.nrrd``, the
    prompts as Slicer markups and ``truth.json`` (``landmark_tre_mm``'s points) in ``folder``;
    returns {"ct", "xray", "prompts": [...], "truth"} paths."""
    from SAMFusionLib.scene.run import add_case_nodes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    core = mrml.headless_scene()
    add_case_nodes(core.scene, case.inputs, "CT", "X-ray", "kidney")
    mrml.save_scene(core.scene, folder)
    expected = [case.truth.TransformPoint(tuple(p)) for p in case.test_points]
    (folder / "truth.json").write_text(json.dumps({"points_mm": case.test_points.tolist(), "expected_mm": expected}))
    prompts = [folder / f"{stem}.mrk.json" for stem in ("CT_points", "CT_ROI", "X-ray_points", "X-ray_ROI")]
    return {"ct": folder / "CT.nrrd", "xray": folder / "X-ray.nrrd", "prompts": prompts, "truth": folder / "truth.json"}


def landmark_tre_mm(sitk_transform, truth_path: Path) -> float:
    """Mean distance (mm) between where the transform puts the truth's ``points_mm`` and ``expected_mm``."""
    try:
        truth = json.loads(Path(truth_path).read_text())
        points, expected = np.asarray(truth["points_mm"], float), np.asarray(truth["expected_mm"], float)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SamFusionError(f"cannot read the truth file {truth_path}: {error}") from None
    if points.ndim != 2 or points.shape[1] != 2 or points.shape != expected.shape or not len(points):
        raise SamFusionError(f"truth file {truth_path}: points_mm and expected_mm must be the same (N, 2) lists")
    estimated = np.array([sitk_transform.TransformPoint(tuple(p)) for p in points])
    return float(np.linalg.norm(estimated - expected, axis=1).mean())
