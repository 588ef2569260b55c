"""``samfusion train``: command-line front end of ``training.train``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from SAMFusionLib.training.datasets import make_sources
from SAMFusionLib.training.train import DEMO_CONFIG, TrainConfig, train


def run_training(args) -> int:
    config = DEMO_CONFIG if args.preset == "demo" else TrainConfig()
    overrides = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "architecture": args.arch,
        "init_checkpoint": str(args.init) if args.init else None, "trainable": args.trainable, "seed": args.seed,
        "sources": args.source,
    }
    config = replace(config, device=args.device, **{k: v for k, v in overrides.items() if v is not None})
    figures = train(config, args.out, make_sources(config.sources), resume=not args.no_resume)
    if args.export:
        # The final model (end of the cosine schedule) is exported: deterministic for a given recipe.
        shutil.copyfile(Path(args.out) / "final.pth", args.export)
        print(f"exported {args.export}")
    print(figures)
    return 0


def add_parser(commands) -> None:
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
    train.set_defaults(func=run_training)
