"""``samfusion train``: command-line front end of ``training.train``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from SAMFusionLib.training.datasets import make_sources
from SAMFusionLib.training.train import DEMO_CONFIG, LITE_CONFIG, TrainConfig, train


def run_training(args) -> int:
    if args.preset == "demo":
        config = DEMO_CONFIG
    elif args.preset == "lite" or args.base:
        config = LITE_CONFIG
    else:
        config = TrainConfig()
    overrides = {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "architecture": args.arch, "base": args.base,
        "init_checkpoint": str(args.init) if args.init else None, "trainable": args.trainable, "seed": args.seed,
        "sources": args.source, "pool_size": args.pool_size, "loose_box_probability": args.loose_boxes,
    }
    config = replace(config, device=args.device, **{k: v for k, v in overrides.items() if v is not None})
    figures = train(config, args.out, make_sources(config.sources), resume=not args.no_resume)
    if args.export:
        # The final model (end of the cosine schedule) is exported: deterministic for a given recipe. A
        # fine-tuning of the encoder's last stage changed more than the heads: its whole state dict goes.
        final = Path(args.out) / "final.pth"
        if config.base is not None and config.trainable != "last-stage":
            export_heads(final, args.export)
        else:
            shutil.copyfile(final, args.export)
        print(f"exported {args.export}")
    print(figures)
    return 0


def export_heads(state_file: Path, destination: Path) -> None:
    """Write only what fine-tuning on a base model changed (prompt encoder, mask decoder)."""
    import torch

    from SAMFusionLib.imaging.atomic import atomic_path
    from SAMFusionLib.sam.lite import decoder_keys
    from SAMFusionLib.sam.models import read_state_dict

    with atomic_path(Path(destination)) as tmp:
        torch.save(decoder_keys(read_state_dict(state_file)), tmp)


def add_parser(commands) -> None:
    train = commands.add_parser("train", help="fine-tune SAM with focal + dice loss")
    train.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, history, loss plot)")
    train.add_argument("--preset", choices=["demo", "lite"], help="demo: the from-scratch demo model's recipe; lite: fine-tuned LiteMedSAM's")
    train.add_argument("--base", help="fine-tune this model-table model (e.g. lite_medsam; implies --preset lite)")
    train.add_argument("--pool-size", type=int, help="samples whose frozen-encoder embeddings are computed once")
    train.add_argument("--steps", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--arch", help="architecture to train (default samfusion_tiny)")
    train.add_argument("--init", type=Path, help="checkpoint to start from (fine-tuning)")
    train.add_argument("--trainable", choices=["all", "heads", "decoder", "last-stage"],
                       help="heads: prompt encoder + mask decoder; last-stage: the heads and LiteMedSAM's last encoder stage and neck")
    train.add_argument("--source", action="append", help="phantom, phantom-ct, phantom-xray, shared-lungs, shared-stones, shared-kidneys, or IMAGES_DIR:MASKS_DIR")
    train.add_argument("--loose-boxes", type=float, metavar="P", help="share of box prompts loosened like a user's ROI (0..1)")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="auto")
    train.add_argument("--no-resume", action="store_true")
    train.add_argument("--export", type=Path, help="copy the final state dict here when done (with --base: only the heads)")
    train.set_defaults(func=run_training)
