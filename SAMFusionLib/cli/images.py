"""``samfusion segment | register | fuse | compare | overlay``: the commands on 2D image files (design-card contracts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from SAMFusionLib.cli.common import (
    EXIT_QUALITY_FAILED,
    add_cache_option,
    add_model_options,
    load_model_from_args,
    pairs,
    segmenter_from_args,
)
from SAMFusionLib.errors import SamFusionError


def cmd_segment(args) -> int:
    from SAMFusionLib.imaging.geometry import check_pixel_inside, clip_box, normalize_box
    from SAMFusionLib.imaging.intensity import check_finite_nonconstant, resolve_range, to_sam_rgb
    from SAMFusionLib.imaging.io import check_distinct, check_output_path, read_image_2d, write_mask_2d

    points = pairs(args.point, "--point")
    negatives = pairs(args.negative, "--negative")
    if points is None and args.box is None:
        raise SamFusionError("give at least one --point X Y or a --box X0 Y0 X1 Y1")
    if negatives is not None and points is None and args.box is None:
        raise SamFusionError("--negative points need a --point or a --box as well")
    box = normalize_box(args.box) if args.box is not None else None
    out = check_output_path(args.out)
    check_distinct([out], [args.image])
    image = read_image_2d(args.image)
    check_finite_nonconstant(image.array, Path(args.image).name)
    rgb = to_sam_rgb(image.array, resolve_range(image.array, args.window))
    all_points = labels = None
    clipped = False
    if points is not None or negatives is not None:
        parts = [p for p in (points, negatives) if p is not None]
        all_points = np.vstack(parts)
        labels = np.r_[np.ones(0 if points is None else len(points)), np.zeros(0 if negatives is None else len(negatives))]
    height, width = rgb.shape[:2]
    if all_points is not None:
        check_pixel_inside(all_points, height, width, "point")
    if box is not None:
        box, clipped = clip_box(box, height, width)
    from SAMFusionLib.sam.zoom import predict_zoomed

    segmenter = segmenter_from_args(args, load_model_from_args(args))
    result = predict_zoomed(segmenter, rgb, all_points, labels, box, args.zoom)
    write_mask_2d(result.mask, out, image.reference)
    if clipped:
        print(f"samfusion: note: the box reaches past the {width}x{height} image; clipped to "
              f"({box[0]:g}, {box[1]:g}, {box[2]:g}, {box[3]:g})", file=sys.stderr)
    print(json.dumps({"out": str(out), "score": round(result.score, 4), "pixels": int(result.mask.sum()), "model": segmenter.model.model_id}))
    return 0


def cmd_fuse(args) -> int:
    from SAMFusionLib.fusion.files import fuse_files

    fuse_files(args.a, args.b, args.out, args.levels, args.mask_a, args.mask_b, args.base, args.threshold, args.normalize, args.detail_gain)
    print(json.dumps({"out": str(args.out)}))
    return 0


def cmd_register(args) -> int:
    from SAMFusionLib.registration.files import register_files

    result = register_files(args.fixed, args.moving, args.out_transform, args.fixed_mask, args.moving_mask,
                            args.transform, args.out_resampled, args.out_report)
    print(json.dumps({"passed": result.passed, "reason": result.reason, "seconds": result.report["seconds"]}))
    if not result.passed:
        print(f"samfusion: registration quality check failed: {result.reason}", file=sys.stderr)
        return EXIT_QUALITY_FAILED
    return 0


def cmd_compare(args) -> int:
    from SAMFusionLib.imaging.io import read_image_2d
    from SAMFusionLib.imaging.metrics import dice, iou

    a, b = read_image_2d(args.mask), read_image_2d(args.reference)
    figures = {"dice": round(dice(a.array > 0, b.array > 0), 4), "iou": round(iou(a.array > 0, b.array > 0), 4)}
    print(json.dumps(figures))
    return 0


def cmd_overlay(args) -> int:
    from SAMFusionLib.imaging.overlay import overlay_files

    overlay_files(args.image, args.masks, args.out, args.scale)
    print(args.out)
    return 0


def add_parsers(commands) -> None:
    seg = commands.add_parser("segment", help="segment a 2D image from point and/or box prompts")
    seg.add_argument("image", type=Path, help="2D image: PNG, JPEG, NRRD, NIfTI or DICOM")
    seg.add_argument("--point", nargs="+", action="append", metavar="X Y", help="positive point(s), pixel x (column) y (row)")
    seg.add_argument("--negative", nargs="+", action="append", metavar="X Y", help="negative point(s)")
    seg.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="box corners, any order")
    seg.add_argument("--window", default="auto", help="intensity: auto, raw, percentile, bone, soft_tissue, stone, lung or LEVEL,WIDTH")
    seg.add_argument("--zoom", default="auto", choices=["auto", "on", "off"], help="crop around small targets before segmenting (default auto)")
    seg.add_argument("--out", type=Path, required=True, help="mask: .png (0/255) or .nrrd/.nii.gz (0/1, image geometry)")
    add_model_options(seg)
    add_cache_option(seg)
    seg.set_defaults(func=cmd_segment)

    register = commands.add_parser("register", help="register a moving 2D image to a fixed one (SAM masks + Match_Loss)")
    register.add_argument("--fixed", type=Path, required=True)
    register.add_argument("--moving", type=Path, required=True)
    register.add_argument("--fixed-mask", type=Path, help="SAM mask of the target in the fixed image")
    register.add_argument("--moving-mask", type=Path, help="SAM mask of the target in the moving image")
    register.add_argument("--out-transform", type=Path, required=True, help="ITK transform (.h5 or .tfm), fixed -> moving points")
    register.add_argument("--transform", default="nonrigid", choices=["rigid", "similarity", "affine", "nonrigid"])
    register.add_argument("--out-resampled", type=Path, help="the moving image resampled onto the fixed grid")
    register.add_argument("--out-report", type=Path, help="JSON report: timings, losses, Dice, verdict")
    register.set_defaults(func=cmd_register)

    fuse = commands.add_parser("fuse", help="Laplacian-pyramid fusion of two images on the same grid")
    fuse.add_argument("a", type=Path)
    fuse.add_argument("b", type=Path)
    fuse.add_argument("--out", type=Path, required=True, help="float image (.nrrd, .nii.gz, .mha) or .png (rounded to 0..255)")
    fuse.add_argument("--levels", type=int, default=3, help="pyramid detail levels (default 3)")
    fuse.add_argument("--mask-a", type=Path, help="SAM mask of the target in A (mask-guided fusion)")
    fuse.add_argument("--mask-b", type=Path, help="SAM mask of the target in B")
    fuse.add_argument("--base", default="gradient", choices=["gradient", "average", "energy"], help="base-level rule")
    fuse.add_argument("--threshold", type=float, default=0.75, help="match-measure threshold T of the detail rule")
    fuse.add_argument("--detail-gain", type=float, default=1.0,
                      help="multiply the fused detail bands (0.5-2; default 1; above 1 sharpens: higher SF, slightly lower Qabf)")
    fuse.add_argument("--normalize", default="auto", choices=["auto", "none", "percentile"])
    fuse.set_defaults(func=cmd_fuse)

    compare = commands.add_parser("compare", help="Dice and IoU of a mask against a reference mask")
    compare.add_argument("mask", type=Path)
    compare.add_argument("reference", type=Path)
    compare.set_defaults(func=cmd_compare)

    over = commands.add_parser("overlay", help="draw mask contours over an image (PNG)")
    over.add_argument("image", type=Path)
    over.add_argument("masks", type=Path, nargs="+", help="masks, drawn red, green, yellow, cyan, magenta")
    over.add_argument("--out", type=Path, required=True)
    over.add_argument("--scale", type=int, default=2)
    over.set_defaults(func=cmd_overlay)
