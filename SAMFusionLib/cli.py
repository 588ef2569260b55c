"""The ``samfusion`` command line (contract in the design card).

Every failure of input is a single line ``samfusion: error: ...`` on stderr with exit code 2, and
no output file is left behind (outputs are written to a temporary name and renamed at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import SamFusionError

EXIT_BAD_INPUT = 2
EXIT_QUALITY_FAILED = 3
EXIT_CANCELLED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line like every other error."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse's API
        raise SamFusionError(message)


def _pairs(values: list[list[str]] | None, what: str) -> np.ndarray | None:
    """Flatten ``--point X Y [X Y ...]`` (repeatable) into an (N, 2) float array."""
    if not values:
        return None
    numbers = [v for group in values for v in group]
    if len(numbers) % 2:
        raise SamFusionError(f"{what} needs pairs of numbers X Y")
    try:
        return np.array(numbers, dtype=float).reshape(-1, 2)
    except ValueError:
        raise SamFusionError(f"{what} coordinates must be numbers") from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="model id from the model table (default: the embedded demo model)")
    group.add_argument("--checkpoint", type=Path, help="a SAM checkpoint file to use directly (offline import)")
    parser.add_argument("--arch", help="architecture of --checkpoint (inferred from its shapes when omitted)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda or mps")


def _load(args):
    from .models import load_model

    if args.arch and args.checkpoint is None:
        raise SamFusionError("--arch applies only with --checkpoint")
    return load_model(args.model, args.checkpoint, args.arch, args.device)


def cmd_segment(args) -> int:
    from .geometry import check_pixel_inside, normalize_box
    from .intensity import check_finite_nonconstant, resolve_range, to_sam_rgb
    from .io import check_output_path, read_image_2d, write_mask_2d
    from .segmenter import Segmenter

    points = _pairs(args.point, "--point")
    negatives = _pairs(args.negative, "--negative")
    if points is None and args.box is None:
        raise SamFusionError("give at least one --point X Y or a --box X0 Y0 X1 Y1")
    if negatives is not None and points is None and args.box is None:
        raise SamFusionError("--negative points need a --point or a --box as well")
    box = normalize_box(args.box) if args.box is not None else None
    out = check_output_path(args.out)
    image = read_image_2d(args.image)
    check_finite_nonconstant(image.array, Path(args.image).name)
    rgb = to_sam_rgb(image.array, resolve_range(image.array, args.window))
    all_points = labels = None
    if points is not None or negatives is not None:
        parts = [p for p in (points, negatives) if p is not None]
        all_points = np.vstack(parts)
        labels = np.r_[np.ones(0 if points is None else len(points)), np.zeros(0 if negatives is None else len(negatives))]
    height, width = rgb.shape[:2]
    if all_points is not None:
        check_pixel_inside(all_points, height, width, "point")
    if box is not None:
        check_pixel_inside(box.reshape(2, 2), height, width, "box corner")
    from .zoom import predict_zoomed

    segmenter = Segmenter(_load(args))
    result = predict_zoomed(segmenter, rgb, all_points, labels, box, args.zoom)
    write_mask_2d(result.mask, out, image.reference)
    print(json.dumps({"out": str(out), "score": round(result.score, 4), "pixels": int(result.mask.sum()), "model": segmenter.model.model_id}))
    return 0


def cmd_fuse(args) -> int:
    from .fusion_io import fuse_files

    fuse_files(args.a, args.b, args.out, args.levels, args.mask_a, args.mask_b, args.base, args.threshold, args.normalize)
    print(json.dumps({"out": str(args.out)}))
    return 0


def cmd_register(args) -> int:
    from .register_io import register_files

    result = register_files(args.fixed, args.moving, args.out_transform, args.fixed_mask, args.moving_mask,
                            args.transform, args.out_resampled, args.out_report)
    print(json.dumps({"passed": result.passed, "reason": result.reason, "seconds": result.report["seconds"]}))
    if not result.passed:
        print(f"samfusion: registration quality check failed: {result.reason}", file=sys.stderr)
        return EXIT_QUALITY_FAILED
    return 0


def cmd_weights(args) -> int:
    from .models import import_weights, load_table
    from .weights import ensure_cached

    table = load_table()
    if args.action == "list":
        for entry in table.models.values():
            source = "embedded" if entry.embedded else (entry.url or "local")
            print(f"{entry.id:16s} {entry.architecture:15s} {source}")
        return 0
    if not args.model_id:
        raise SamFusionError(f"'weights {args.action}' needs a model id")
    entry = table.entry(args.model_id)
    if args.action == "download":
        if entry.embedded:
            raise SamFusionError(f"model {entry.id!r} is embedded and needs no download")
        path = ensure_cached(entry.id, entry.url, entry.filename or f"{entry.id}.pth", entry.sha256)
    else:
        if args.file is None:
            raise SamFusionError("'weights import' needs the checkpoint FILE")
        path = import_weights(entry.id, args.file, table)
    print(path)
    return 0


def cmd_phantom(args) -> int:
    from .phantom_cli import write_demo_phantom

    write_demo_phantom(Path(args.out_dir), args.seed)
    return 0


def cmd_compare(args) -> int:
    from .io import read_image_2d
    from .metrics import dice, iou

    a, b = read_image_2d(args.mask), read_image_2d(args.reference)
    figures = {"dice": round(dice(a.array > 0, b.array > 0), 4), "iou": round(iou(a.array > 0, b.array > 0), 4)}
    print(json.dumps(figures))
    return 0


def cmd_overlay(args) -> int:
    from .overlay import overlay_files

    overlay_files(args.image, args.masks, args.out, args.scale)
    print(args.out)
    return 0


def cmd_bench(args) -> int:
    if args.what == "demo-model":
        from .evaluate_demo import figure_table, format_figures
        from .models import load_model

        figures = figure_table(load_model(args.model, args.checkpoint, args.arch, args.device))
        print(json.dumps(figures) if args.json else format_figures(figures))
        return 0
    if args.what == "register":
        from .bench_register import format_table, run_benchmark

        figures = run_benchmark(args.cases)
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    if args.what == "fuse":
        from .bench_fusion import format_table, run_benchmark

        figures = run_benchmark()
        print(json.dumps(figures) if args.json else format_table(figures))
        return 0
    from .bench_segment import run_benchmark

    figures = run_benchmark(args)
    print(json.dumps(figures, indent=None if args.json else 2))
    return 0


def cmd_train(args) -> int:
    from .train_cli import run_training

    return run_training(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="samfusion", description="SAM-driven CT / X-ray segmentation, registration and fusion.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = commands.add_parser("segment", help="segment a 2D image from point and/or box prompts")
    seg.add_argument("image", type=Path, help="2D image: PNG, JPEG, NRRD, NIfTI or DICOM")
    seg.add_argument("--point", nargs="+", action="append", metavar="X Y", help="positive point(s), pixel x (column) y (row)")
    seg.add_argument("--negative", nargs="+", action="append", metavar="X Y", help="negative point(s)")
    seg.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="box corners, any order")
    seg.add_argument("--window", default="auto", help="intensity: auto, raw, percentile, bone, soft_tissue, stone, lung or LEVEL,WIDTH")
    seg.add_argument("--zoom", default="auto", choices=["auto", "on", "off"], help="crop around small targets before segmenting (default auto)")
    seg.add_argument("--out", type=Path, required=True, help="mask: .png (0/255) or .nrrd/.nii.gz (0/1, image geometry)")
    _add_model_options(seg)
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
    fuse.add_argument("--normalize", default="auto", choices=["auto", "none", "percentile"])
    fuse.set_defaults(func=cmd_fuse)

    weights = commands.add_parser("weights", help="list, download (SHA256-checked) or import model weights")
    weights.add_argument("action", choices=["list", "download", "import"])
    weights.add_argument("model_id", nargs="?")
    weights.add_argument("file", nargs="?", type=Path)
    weights.set_defaults(func=cmd_weights)

    phantom = commands.add_parser("phantom", help="write a synthetic CT slice with ground truth and prompts")
    phantom.add_argument("out_dir")
    phantom.add_argument("--seed", type=int, default=7)
    phantom.set_defaults(func=cmd_phantom)

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

    bench = commands.add_parser("bench", help="benchmarks that print figures")
    bench.add_argument("what", choices=["segment", "fuse", "register", "demo-model"])
    bench.add_argument("--cases", type=int, default=20, help="register: number of cases")
    bench.add_argument("--json", action="store_true", help="one line of JSON")
    bench.add_argument("--slices", type=int, default=8, help="segment: ROI slices to segment (>= 8)")
    bench.add_argument("--batch-size", type=int, help="segment: slices per encoder call (default 1 on CPU, 4 on GPU)")
    bench.add_argument("--random-arch", help="time a randomly initialised model of this architecture (e.g. vit_b)")
    bench.add_argument("--precision", default="fp32", help="fp32, or bf16/fp16 autocast on CUDA")
    _add_model_options(bench)
    bench.set_defaults(func=cmd_bench)

    sample = commands.add_parser("sample-data", help="write the Slicer sample data set (the default case's CT and X-ray)")
    sample.add_argument("folder", type=Path)
    sample.set_defaults(func=cmd_sample_data)

    from .evaluate_cli import add_parsers as add_evaluate_parsers
    from .run_cli import add_parser as add_run_parser

    add_evaluate_parsers(commands)

    add_run_parser(commands)

    train = commands.add_parser("train", help="fine-tune SAM with focal + dice loss")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history, loss plot)")
    train.add_argument("--preset", choices=["demo"], help="the embedded demo model's recipe")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--arch", help="architecture to train (default samfusion_tiny)")
    train.add_argument("--init", type=Path, help="checkpoint to start from (fine-tuning)")
    train.add_argument("--trainable", choices=["all", "decoder"])
    train.add_argument("--source", action="append", help="phantom, phantom-ct, phantom-xray, shared-lungs, shared-stones, shared-kidneys, or IMAGES_DIR:MASKS_DIR")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="auto")
    train.add_argument("--no-resume", action="store_true")
    train.add_argument("--export", type=Path, help="copy the final state dict here when done")
    train.set_defaults(func=cmd_train)
    return parser


def cmd_sample_data(args) -> int:
    from .sample_data import sample_table, write_sample_files
    from .weights import sha256_file

    pinned = {entry["node"]: entry["sha256"] for entry in sample_table()["files"]}
    for name, path in write_sample_files(args.folder).items():
        digest = sha256_file(path)
        print(f"{path}  {digest}  {'matches the pinned SHA256' if digest == pinned.get(name) else 'DIFFERS from the pinned SHA256'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SamFusionError as error:
        print(f"samfusion: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("samfusion: error: interrupted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
