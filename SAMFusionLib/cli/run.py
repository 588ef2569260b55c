"""``samfusion run``: the whole pipeline from files (or the embedded default case) to a Slicer scene.

The inputs are loaded into a real headless MRML scene, the pipeline runs on the nodes
(``scene.run``), and MRML writes everything into a fresh folder beside DIR: the inputs, both
segmentations (``.seg.nrrd``), the projection, the transform(s) (``.h5``), the fused volume, the
prompts (``.mrk.json``), the ``.mrml`` scene, ``report.json`` and ``report.png``. Only a complete
folder is moved into DIR, so a failed run leaves no partial output.

Prompt files (``--prompts``) are assigned to the CT or the X-ray by name (rules in ``scene.case_files``).
"""

from __future__ import annotations

from pathlib import Path

from SAMFusionLib.cli.common import (
    EXIT_QUALITY_FAILED,
    add_cache_option,
    add_model_options,
    add_pipeline_options,
    holding_out_folder,
    load_model_from_args,
    pipeline_options,
    process_seconds,
    segmenter_from_args,
)
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.scene import mrml
from SAMFusionLib.scene.case_files import load_file_case, model_report, source_copies, write_outputs
from SAMFusionLib.scene.run import add_case_nodes, run_on_scene


def _demo_scene(slicer_core):
    """The embedded default case as nodes: (SceneInputs, case)."""
    from SAMFusionLib.cases.demo_case import make_demo_case

    case = make_demo_case()
    return add_case_nodes(slicer_core.scene, case.inputs, "phantom CT", "phantom X-ray", "kidney_left"), case


@holding_out_folder
def cmd_run(args) -> int:
    out = Path(args.out)  # checked, and locked, by holding_out_folder
    if (args.ct is None) != (args.xray is None):
        raise SamFusionError("give both --ct and --xray, or neither (the embedded default case)")
    if args.ct is None and args.prompts:
        raise SamFusionError("--prompts needs --ct and --xray")
    options = pipeline_options(args)

    slicer_core = mrml.headless_scene()
    if args.ct is None:
        (nodes, case), copies = _demo_scene(slicer_core), None
    else:
        nodes, case = load_file_case(slicer_core.scene, args.ct, args.xray, args.prompts or []), None
        copies = source_copies(nodes, args.ct)  # the CT is saved as a copy of its file, not encoded again
    model = load_model_from_args(args)
    progress = _progress_bar()
    try:
        segmenter = segmenter_from_args(args, model)
        outputs, result = run_on_scene(slicer_core.scene, nodes, segmenter, options, progress=progress, copy_ct=False)  # nothing else runs
    finally:
        progress.close()

    report = result.report
    report["model"] = model_report(segmenter)
    if case is not None:
        from SAMFusionLib.cases.demo_case import truth_report

        report["case"] = truth_report(case, result)
    # process_seconds: what the user waited for: interpreter start-up, imports, model, pipeline, scene.
    write_outputs(slicer_core.scene, result, report, out, process_seconds, copies)
    passed = report["registration"]["passed"]
    print(f"samfusion run: {len(report['files'])} files in {out}; registration {'passed' if passed else 'FAILED'}: {report['registration']['reason']}")
    ct = report["ct"]
    if ct["slice_step"] > 1:  # say so when SAM skipped slices (e.g. "auto" on thin slices)
        print(f"  CT: SAM on {ct['slices_segmented']} slices, a step of {ct['slice_step']} (--slice-step {args.slice_step}), "
              f"{ct['slices_interpolated']} interpolated")
    if case is not None:
        print(f"  default case: CT Dice {report['case']['ct_dice_vs_truth']:.3f}, X-ray Dice {report['case']['xray_dice_vs_truth']:.3f}, "
              f"TRE {report['case']['registration_tre_mm']:.2f} mm")
    return 0 if passed else EXIT_QUALITY_FAILED


class _progress_bar:
    """tqdm over the pipeline's steps, callable as the pipeline's ``progress``. The bar counts
    steps; its text names the step and how far into it the pipeline is, so that the CT's
    segmentation (most of a first run: half a minute on a 2-core CPU) does not look stalled."""

    REFRESH_S = 0.5  # the step's percentage is redrawn at most this often (a slice takes about 0.7 s)

    def __init__(self):
        import time

        from tqdm import tqdm

        from SAMFusionLib.pipeline import STEPS

        self.clock = time.monotonic
        self.steps = STEPS
        self.bar = tqdm(total=len(STEPS), desc="samfusion run", unit="step", leave=False)
        self.done = 0
        self.shown_step, self.shown_text, self.drawn_at = "", "", 0.0  # what was drawn last, and when

    @staticmethod
    def text(step: str, fraction: float) -> str:
        """The bar's text: ``step`` and the whole percent of it done (none at its start)."""
        percent = int(100 * min(max(fraction, 0.0), 1.0))
        return f"{step} {percent}%" if percent > 0 else step

    def __call__(self, step: str, fraction: float) -> None:
        index = self.steps.index(step) if step in self.steps else 0
        if index > self.done:
            self.bar.update(index - self.done)
            self.done = index
        text, now = self.text(step, fraction), self.clock()
        if text != self.shown_text and (step != self.shown_step or now - self.drawn_at >= self.REFRESH_S):
            self.bar.set_postfix_str(text)
            self.shown_step, self.shown_text, self.drawn_at = step, text, now

    def close(self) -> None:
        self.bar.close()


def add_parser(commands) -> None:
    run = commands.add_parser("run", help="the whole pipeline: segment, project, register, fuse; writes a Slicer scene")
    run.add_argument("--ct", type=Path, help="CT volume (or a 2D CT image); omit with --xray for the embedded default case")
    run.add_argument("--xray", type=Path, help="X-ray image")
    run.add_argument("--prompts", type=Path, nargs="+", action="extend", help="Slicer markups files (.mrk.json): point lists and ROIs")
    run.add_argument("--out", type=Path, default=Path("samfusion-run"), help="output folder (default: samfusion-run)")
    add_pipeline_options(run)
    add_model_options(run)
    add_cache_option(run)
    run.set_defaults(func=cmd_run)
