"""``samfusion weights | phantom | sample-data``: model weights and the data the project makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError


def cmd_weights(args) -> int:
    from SAMFusionLib.sam.models import import_weights, load_table
    from SAMFusionLib.sam.weights import ensure_cached

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


def write_demo_phantom(out_dir: Path, seed: int = 7) -> dict:
    """Write ``ct_slice.png`` (soft-tissue window), ground-truth masks and ``prompts.json``.

    Files: ``kidney_gt.png``, ``stone_gt.png`` (0/255), and ``point_args_kidney.txt`` /
    ``box_args_kidney.txt`` / ``point_args_stone.txt`` holding the ``samfusion segment`` prompt options.
    Returns the prompts as written to ``prompts.json`` (pixel x = column, y = row).
    """
    import cv2

    from SAMFusionLib.cases.phantom import ct_volume
    from SAMFusionLib.imaging.intensity import resolve_range, to_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    phantom = ct_volume(rng, (24, 192, 192), stone_count=2)
    stone_i, stone_j, stone_k = phantom.stone_centers_ijk[0]
    k = int(round(stone_k))
    image = to_uint8(phantom.hu_kji[k], resolve_range(phantom.hu_kji, "soft_tissue"))
    kidney = phantom.masks["kidney_left"][k]
    stone = phantom.masks["stones"][k]
    ys, xs = np.nonzero(kidney & ~stone)
    centre = (float(np.median(xs)), float(np.median(ys)))
    kidney_box = [float(xs.min() - 3), float(ys.min() - 3), float(xs.max() + 3), float(ys.max() + 3)]
    prompts = {"slice_k": k, "kidney_point": centre, "kidney_box": kidney_box, "stone_point": [float(stone_i), float(stone_j)]}
    cv2.imwrite(str(out_dir / "ct_slice.png"), image)
    cv2.imwrite(str(out_dir / "kidney_gt.png"), kidney.astype(np.uint8) * 255)
    cv2.imwrite(str(out_dir / "stone_gt.png"), stone.astype(np.uint8) * 255)
    (out_dir / "prompts.json").write_text(json.dumps(prompts, indent=2))
    (out_dir / "point_args_kidney.txt").write_text("--point {:.1f} {:.1f}\n".format(*centre))
    (out_dir / "box_args_kidney.txt").write_text("--box {:.1f} {:.1f} {:.1f} {:.1f}\n".format(*kidney_box))
    (out_dir / "point_args_stone.txt").write_text(f"--point {stone_i:.1f} {stone_j:.1f}\n")
    return prompts


def cmd_phantom(args) -> int:
    write_demo_phantom(Path(args.out_dir), args.seed)
    return 0


def cmd_sample_data(args) -> int:
    from SAMFusionLib.cases.sample_data import sample_table, write_sample_files
    from SAMFusionLib.sam.weights import sha256_file

    pinned = {entry["node"]: entry["sha256"] for entry in sample_table()["files"]}
    for name, path in write_sample_files(args.folder).items():
        digest = sha256_file(path)
        print(f"{path}  {digest}  {'matches the pinned SHA256' if digest == pinned.get(name) else 'DIFFERS from the pinned SHA256'}")
    return 0


def add_parsers(commands) -> None:
    weights = commands.add_parser("weights", help="list, download (SHA256-checked) or import model weights")
    weights.add_argument("action", choices=["list", "download", "import"])
    weights.add_argument("model_id", nargs="?")
    weights.add_argument("file", nargs="?", type=Path)
    weights.set_defaults(func=cmd_weights)

    phantom = commands.add_parser("phantom", help="write a synthetic CT slice with ground truth and prompts")
    phantom.add_argument("out_dir")
    phantom.add_argument("--seed", type=int, default=7)
    phantom.set_defaults(func=cmd_phantom)

    sample = commands.add_parser("sample-data", help="write the Slicer sample data set (the default case's CT and X-ray)")
    sample.add_argument("folder", type=Path)
    sample.set_defaults(func=cmd_sample_data)
