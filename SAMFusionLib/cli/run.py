"""``samfusion run``: the whole pipeline from files (or the embedded default case) to a Slicer scene.

The inputs are loaded into a real headless MRML scene, the pipeline runs on the nodes
(``scene.run``), and MRML writes everything into a fresh folder beside DIR: the inputs, both
segmentations (``.seg.nrrd``), the projection, the transform(s) (``.h5``), the fused volume, the
prompts (``.mrk.json``), the ``.mrml`` scene, ``report.json`` and ``report.png``. Only a complete
folder is moved into DIR, so a failed run leaves no partial output.

Prompt files (``--prompts``, Slicer markups ``.mrk.json``: point lists or ROIs) are assigned by
name, file name first, then the markups node's name:
- a name containing ``xray`` / ``x-ray`` / ``x_ray`` belongs to the X-ray, else one containing
  ``ct`` as a word belongs to the CT; otherwise the points decide (all on the X-ray's plane ->
  X-ray, all inside the CT -> CT);
- a point list whose name contains ``neg`` holds negative points; otherwise each point's selected
  state decides (selected = positive, Slicer's default).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from SAMFusionLib.cli.common import EXIT_QUALITY_FAILED, add_model_options, holding_out_folder, load_model_from_args, process_seconds
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import staged_folder
from SAMFusionLib.pipeline import PipelineOptions
from SAMFusionLib.registration.register import RegistrationOptions
from SAMFusionLib.scene import mrml
from SAMFusionLib.scene.run import SceneInputs, add_case_nodes, run_on_scene

XRAY_NAME = re.compile(r"x[-_ ]?ray", re.IGNORECASE)
CT_NAME = re.compile(r"(^|[^a-z])ct([^a-z]|$)", re.IGNORECASE)
NEGATIVE_NAME = re.compile(r"neg", re.IGNORECASE)


def model_title(model_id: str) -> str:
    """The model table's title of ``model_id`` ("" for a checkpoint file outside the table)."""
    from SAMFusionLib.sam.models import load_table

    models = load_table().models
    return models[model_id].title if model_id in models else ""


def assign_prompts(nodes: list, ct_node, xray_node) -> SceneInputs:
    """Sort markups nodes into the CT's and the X-ray's prompts (rules in the module docstring)."""
    _, ct_geometry = mrml.array_from_volume(ct_node)
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


def _demo_scene(slicer_core):
    """The embedded default case as nodes: (SceneInputs, case)."""
    from SAMFusionLib.cases.demo_case import make_demo_case

    case = make_demo_case()
    return add_case_nodes(slicer_core.scene, case.inputs, "phantom CT", "phantom X-ray", "kidney_left"), case


def _file_scene(slicer_core, args):
    from SAMFusionLib.imaging.io import grey_array, read_image_2d, read_volume_or_slice
    from SAMFusionLib.imaging.plane import Plane

    scene = slicer_core.scene
    ct_kji, ct_geometry = read_volume_or_slice(args.ct)
    xray_image = read_image_2d(args.xray)
    ct = mrml.add_volume(scene, ct_kji, ct_geometry, Path(args.ct).name.split(".")[0] or "CT")
    xray = mrml.add_image_2d(scene, grey_array(xray_image), Plane.from_geometry(xray_image.geometry), Path(args.xray).name.split(".")[0] or "X-ray")
    markups = [mrml.load_markups(scene, path) for path in args.prompts or []]
    if not markups:
        raise SamFusionError("no prompts: give --prompts FILE.mrk.json for the CT and the X-ray")
    return assign_prompts(markups, ct, xray)


@holding_out_folder
def cmd_run(args) -> int:
    from SAMFusionLib.sam.segmenter import Segmenter
    from SAMFusionLib.scene.report_png import write_report_png

    out = Path(args.out)  # checked, and locked, by holding_out_folder
    if (args.ct is None) != (args.xray is None):
        raise SamFusionError("give both --ct and --xray, or neither (the embedded default case)")
    if args.ct is None and args.prompts:
        raise SamFusionError("--prompts needs --ct and --xray")

    slicer_core = mrml.headless_scene()
    if args.ct is None:
        nodes, case = _demo_scene(slicer_core)
    else:
        nodes, case = _file_scene(slicer_core, args), None
    model = load_model_from_args(args)
    options = PipelineOptions(view=args.view, projection=args.projection, source_to_centre_mm=args.source_distance,
                              source_to_detector_mm=args.detector_distance, fusion_levels=args.levels,
                              registration=RegistrationOptions(transform=args.transform), box_fallback=not args.no_box_fallback)
    progress = _progress_bar()
    try:
        outputs, result = run_on_scene(slicer_core.scene, nodes, Segmenter(model), options, progress=progress)
    finally:
        progress.close()

    report = result.report
    report["model"] = {"id": model.model_id, "architecture": model.architecture, "device": model.device,
                       "fingerprint": model.fingerprint, "title": model_title(model.model_id),
                       "note": "SAMFusion is a research tool, not a medical device; not for clinical use"}
    if case is not None:
        from SAMFusionLib.cases.demo_case import tre_mm
        from SAMFusionLib.imaging.metrics import dice

        report["case"] = {
            "name": "embedded default case",
            "description": case.description,
            "ct_dice_vs_truth": round(dice(result.ct_mask_kji, case.ct_target_mask), 4),
            "xray_dice_vs_truth": round(dice(result.xray_mask, case.xray_target_mask), 4),
            "registration_tre_mm": round(tre_mm(case, result.registration.sitk_transform), 3),
        }
    with staged_folder(out) as staging:
        files = mrml.save_scene(slicer_core.scene, staging, "SAMFusion.mrml")
        report["files"] = sorted(p.name for p in files) + ["report.json", "report.png"]
        # What the user waited for so far: interpreter start-up, imports, model, pipeline, scene.
        report["process_seconds"] = process_seconds()
        (staging / "report.json").write_text(json.dumps(_finite(report), indent=2, default=_json_default, allow_nan=False))
        write_report_png(result, staging / "report.png")
    passed = report["registration"]["passed"]
    print(f"samfusion run: {len(report['files'])} files in {out}; registration {'passed' if passed else 'FAILED'}: {report['registration']['reason']}")
    if case is not None:
        print(f"  default case: CT Dice {report['case']['ct_dice_vs_truth']:.3f}, X-ray Dice {report['case']['xray_dice_vs_truth']:.3f}, "
              f"TRE {report['case']['registration_tre_mm']:.2f} mm")
    return 0 if passed else EXIT_QUALITY_FAILED


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


class _progress_bar:
    """tqdm over the pipeline's steps, callable as the pipeline's ``progress``."""

    def __init__(self):
        from tqdm import tqdm

        from SAMFusionLib.pipeline import STEPS

        self.steps = STEPS
        self.bar = tqdm(total=len(STEPS), desc="samfusion run", unit="step", leave=False)
        self.done = 0

    def __call__(self, step: str, fraction: float) -> None:
        index = self.steps.index(step) if step in self.steps else 0
        if index > self.done or self.done == 0 and not self.bar.postfix:
            self.bar.set_postfix_str(step)
        if index > self.done:
            self.bar.update(index - self.done)
            self.done = index

    def close(self) -> None:
        self.bar.close()


def add_parser(commands) -> None:
    run = commands.add_parser("run", help="the whole pipeline: segment, project, register, fuse; writes a Slicer scene")
    run.add_argument("--ct", type=Path, help="CT volume (or a 2D CT image); omit with --xray for the embedded default case")
    run.add_argument("--xray", type=Path, help="X-ray image")
    run.add_argument("--prompts", type=Path, nargs="+", action="extend", help="Slicer markups files (.mrk.json): point lists and ROIs")
    run.add_argument("--out", type=Path, default=Path("samfusion-run"), help="output folder (default: samfusion-run)")
    run.add_argument("--transform", default="nonrigid", help="rigid, similarity, affine or nonrigid (default)")
    run.add_argument("--view", default="AP", help="projection view of a 3D CT: AP (default), LAT or SI")
    run.add_argument("--projection", choices=["parallel", "perspective"], default="parallel",
                     help="DRR geometry: parallel rays (default) or a point source and a flat detector")
    run.add_argument("--source-distance", type=float, default=1000.0, help="perspective: source to the CT's centre (mm)")
    run.add_argument("--detector-distance", type=float, default=1500.0, help="perspective: source to the detector (mm)")
    run.add_argument("--levels", type=int, default=3, help="fusion pyramid levels (default 3)")
    run.add_argument("--no-box-fallback", action="store_true",
                     help="report a registration on SAM's masks that fails as failed, without retrying on the prompt boxes")
    add_model_options(run)
    run.set_defaults(func=cmd_run)
