"""``samfusion evaluate`` and ``samfusion annotate`` argument handling (the work is in
``evaluate`` and ``annotate``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from SAMFusionLib.cli.common import (
    EXIT_SOME_FILES_FAILED,
    add_cluster_options,
    add_model_options,
    dask_client,
    holding_out_folder,
    load_model_from_args,
    slice_step_arg,
)
from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import staged_folder


def add_label_options(parser, markups: bool = False) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    if markups:
        group.add_argument("--markups", type=Path, nargs="+", metavar="FILE", help="volume input: Slicer markups files (.mrk.json), one target each")
    group.add_argument("--yolo", type=Path, metavar="LABELS_DIR", help="YOLO box files <image stem>.txt")
    group.add_argument("--coco", type=Path, metavar="FILE", help="a COCO JSON (boxes, optional segmentations)")
    group.add_argument("--masks", type=Path, metavar="MASKS_DIR", help="mask files <image stem>.* or <image stem>__*.*")
    group.add_argument("--points-csv", type=Path, metavar="FILE", help="CSV: image,x,y[,label][,object]")
    parser.add_argument("--classes", help="comma-separated class names for YOLO class numbers")
    parser.add_argument("--target-value", type=int, help="masks: only this label value is a target")
    parser.add_argument("--components", action="store_true", help="masks: each connected component is a target")
    parser.add_argument("--min-component", type=int, default=1, help="masks: ignore components smaller than this (px)")


def label_reader(args):
    """(image path, (H, W)) -> targets, for the chosen label format."""
    from SAMFusionLib.annotation import labels_io

    if args.yolo is not None:
        if not args.yolo.is_dir():
            raise SamFusionError(f"YOLO label folder not found: {args.yolo}")
        names = args.classes.split(",") if args.classes else None
        return lambda path, shape: labels_io.yolo_targets(args.yolo, path, shape, names)
    if args.coco is not None:
        index = labels_io.coco_index(args.coco)
        return lambda path, shape: labels_io.coco_targets(index, path, shape)
    if args.masks is not None:
        if not args.masks.is_dir():
            raise SamFusionError(f"mask folder not found: {args.masks}")
        return lambda path, shape: labels_io.mask_targets(args.masks, path, shape, args.target_value, args.components, args.min_component)
    index = labels_io.csv_points(args.points_csv)
    return lambda path, shape: labels_io.point_targets(index, path, shape)


@holding_out_folder
def cmd_evaluate(args) -> int:
    import cv2

    from SAMFusionLib.annotation import evaluate
    from SAMFusionLib.annotation.evaluate_run import Job, MethodSpec, evaluate_folder, serial_runner

    out = Path(args.out)  # checked, and locked, by holding_out_folder
    if not args.images.is_dir():
        raise SamFusionError(f"image folder not found: {args.images}")
    protocols = ("prompted", "automatic") if args.protocol == "both" else (args.protocol,)
    target_filter = evaluate.TargetFilter(args.min_area, args.max_area, args.intensity_percentile, args.dark)
    spec = MethodSpec(tuple(args.model or [None]), None if args.checkpoint is None else str(args.checkpoint.resolve()),
                      args.device, args.zoom, args.points_per_side, args.pred_iou, args.stability, target_filter, not args.no_classical)
    job = Job(protocols, args.prompt, target_filter)
    select = None
    if args.subset != "all":
        from SAMFusionLib.cases.shared_data import split_of

        select = lambda path: split_of(path.stem) == args.subset  # noqa: E731
    reader = label_reader(args)
    if args.workers is None and args.scheduler is None:
        methods = spec.build()
        fingerprints = {name: method.fingerprint for name, method in methods.items()}
        result = evaluate_folder(args.images, reader, fingerprints, serial_runner(methods, job), job, out, args.bootstrap, select=select)
    else:
        from SAMFusionLib.batch import cluster

        with dask_client(args, "evaluate", segmenter=False) as client:  # the methods carry their own models
            fingerprints, runner = cluster.evaluate_methods(client, spec), cluster.evaluate_runner(client, reader, job)
            result = evaluate_folder(args.images, reader, fingerprints, runner, job, out, args.bootstrap, select=select)
    folder = args.images.resolve()
    title = args.title or (folder.parent.name if folder.name == "images" else folder.name)
    table = evaluate.format_table(result, title, args.prompt)
    with staged_folder(out) as staging:
        (staging / "table.md").write_text(table + "\n")
        payload = {"title": title, "subset": args.subset, "images": result.images, "prompt": args.prompt, "protocols": list(protocols),
                   "target_filter": vars(target_filter), "rows": result.rows, "failures": result.failures}
        (staging / "table.json").write_text(json.dumps(payload, indent=2))
        if not cv2.imwrite(str(staging / "overlays.png"), evaluate.overlay_examples(result)):
            raise SamFusionError("cannot write overlays.png")
    print(table)
    for failure in result.failures:
        print(f"samfusion: skipped: {failure}", flush=True, file=sys.stderr)
    return EXIT_SOME_FILES_FAILED if result.failures else 0


@holding_out_folder
def cmd_annotate(args) -> int:
    from SAMFusionLib.annotation.annotate import annotate_folder, annotate_volume
    from SAMFusionLib.sam.segmenter import disk_cached_segmenter
    from SAMFusionLib.sam.volume import check_slice_step

    out = Path(args.out)  # checked, and locked, by holding_out_folder
    source = Path(args.input)
    if not source.exists():
        raise SamFusionError(f"input not found: {source}")
    if source.is_dir():
        if getattr(args, "markups", None):
            raise SamFusionError("--markups prompts a volume; for a folder of images use --yolo, --coco or --points-csv")
        if args.slice_step != 1:
            raise SamFusionError("--slice-step applies to a volume's slices; a folder holds 2D images")
        reader = label_reader(args)
        if args.workers is None and args.scheduler is None:
            summary = annotate_folder(source, reader, out, disk_cached_segmenter(load_model_from_args(args)), args.mask_format, args.zoom)
        else:
            from SAMFusionLib.batch import cluster

            with dask_client(args, "annotate") as client:
                summary = annotate_folder(source, reader, out, None, args.mask_format, args.zoom, runner=cluster.annotate_runner(client, reader, args.zoom))
        for reason in summary.failures.values():
            print(f"samfusion: failed: {reason}", file=sys.stderr)
        print(f"samfusion annotate: {len(summary.done)} annotated, {len(summary.skipped)} already done, {len(summary.failures)} failed; "
              f"masks in {out / 'masks'}, COCO in {out / 'annotations.json'}")
        return EXIT_SOME_FILES_FAILED if summary.failures else 0
    if not getattr(args, "markups", None):
        raise SamFusionError("a volume is prompted with --markups FILE.mrk.json ...")
    check_slice_step(args.slice_step)
    paths = annotate_volume(source, args.markups, out, disk_cached_segmenter(load_model_from_args(args)), args.zoom, args.slice_step)
    print("samfusion annotate: wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_parsers(commands) -> None:
    an = commands.add_parser("annotate", help="semi-automatic annotation: prompts -> masks, COCO (RLE) and Slicer .seg.nrrd")
    an.add_argument("input", type=Path, help="a folder of 2D images, or a volume file")
    add_label_options(an, markups=True)
    an.add_argument("--mask-format", choices=["png", "nrrd", "nii"], default="png", help="label maps: 0 background, n = n-th target")
    an.add_argument("--slice-step", type=slice_step_arg, default=1, metavar="N|auto",
                    help="a volume: run SAM on every Nth slice of each target and interpolate the others (default 1: every slice, "
                         "as annotation asks; auto: SAM's slices about 3 mm apart)")
    an.add_argument("--zoom", choices=["auto", "on", "off"], default="auto")
    an.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    add_model_options(an)
    add_cluster_options(an)
    an.set_defaults(func=cmd_annotate)

    ev = commands.add_parser("evaluate", help="score models (and a classical baseline) on labelled images, as in the paper's tables")
    ev.add_argument("images", type=Path, help="folder of 2D images")
    add_label_options(ev)
    ev.add_argument("--protocol", choices=["prompted", "automatic", "both"], default="both")
    ev.add_argument("--prompt", choices=["point", "box", "points"], default="point", help="prompted protocol: one centre point, the box, or the CSV points")
    ev.add_argument("--zoom", choices=["auto", "on", "off"], default="auto")
    ev.add_argument("--points-per-side", type=int, default=16, help="automatic mask generator grid (default 16)")
    ev.add_argument("--pred-iou", type=float, default=0.7, help="automatic mask generator: predicted-IoU threshold")
    ev.add_argument("--stability", type=float, default=0.85, help="automatic mask generator: stability-score threshold")
    ev.add_argument("--subset", choices=["all", "val", "train"], default="all",
                    help="only the images of the demo model's validation (or training) split (hash of the file stem, as in training)")
    ev.add_argument("--min-area", type=int, default=3, help="target filter: smallest area (px)")
    ev.add_argument("--max-area", type=int, default=5000, help="target filter: largest area (px)")
    ev.add_argument("--intensity-percentile", type=float, default=97.0, help="target filter: mean intensity at least this image percentile")
    ev.add_argument("--dark", action="store_true", help="targets are darker than their surroundings (e.g. lungs)")
    ev.add_argument("--no-classical", action="store_true", help="leave out the classical baseline row")
    ev.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    ev.add_argument("--title")
    ev.add_argument("--out", type=Path, required=True, help="folder for table.md, table.json, overlays.png (resumable: evaluate-parts/)")
    group = ev.add_argument_group("models")
    group.add_argument("--model", action="append", help="model id (repeatable; default: the table's default model)")
    group.add_argument("--checkpoint", type=Path, help="also evaluate this checkpoint file")
    group.add_argument("--device", default="auto")
    add_cluster_options(ev)
    ev.set_defaults(func=cmd_evaluate)
