"""``samfusion train``: command-line front end of ``training.train``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from .datasets import make_sources
from .training import DEMO_CONFIG, TrainConfig, train


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
