"""Fine-tuning SAM with its own losses (focal + dice, 20:1, plus IoU MSE), on CPU or GPU.

Each step draws fresh samples from the data sources, simulates prompts from the ground truth
(``prompts_sim``), optionally adds one correction click fed back with the previous low-res
logits, and backpropagates through the chosen parts of the model. The data of step ``n`` depends
only on (seed, n), so a resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.atomic import atomic_path
from SAMFusionLib.training.datasets import DEMO_SOURCES
from SAMFusionLib.training.encoder_tail import is_tinyvit, tail, tail_modules, trunk
from SAMFusionLib.training.losses import dice_loss, sam_loss
from SAMFusionLib.training.prompts_sim import correction_click, simulate

Sample = tuple[np.ndarray, np.ndarray]  # ((H, W, 3) uint8 image, (H, W) bool target mask)


@dataclass
class TrainConfig:
    architecture: str = "samfusion_tiny"
    base: str | None = None  # a model-table id to fine-tune (its verified weights); sets the architecture
    init_checkpoint: str | None = None
    steps: int = 1000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    trainable: str = "all"  # "all", "heads" (prompt encoder + mask decoder), "decoder", or "last-stage" (heads + TinyViT's last stage and neck)
    encoder_lr_factor: float = 0.1  # "last-stage": the encoder's learning rate, relative to ``lr``
    pool_size: int = 0  # > 0: a frozen encoder's embeddings of this many samples, computed once (``pool``)
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    correction_probability: float = 0.5
    loose_box_probability: float = 0.0  # share of boxes loosened like a user's ROI (``prompts_sim.loosened_box``)
    val_size: int = 48
    val_every: int = 100
    seed: int = 0
    device: str = "auto"
    sources: list[str] = field(default_factory=lambda: ["phantom"])


# The embedded demo model's recipe (``make demo-model``): about 40 minutes on a 2-core CPU.
# focal_alpha=-1 (no class weighting) made training from scratch leave the all-background phase sooner.
# Its sources are phantoms plus the training split of ../shared/data (datasets.DEMO_SOURCES).
DEMO_CONFIG = TrainConfig(
    steps=4000, batch_size=8, lr=8e-4, focal_alpha=-1.0, warmup_steps=100, val_every=250, val_size=48, seed=0,
    sources=list(DEMO_SOURCES),
)


# Fine-tuning LiteMedSAM the paper's way (``samfusion train --base lite_medsam``): focal + dice on box
# and point prompts with correction clicks; encoder frozen, its embeddings pooled; prompt encoder and
# mask decoder trained. Sources: the training split of ../shared/data (stones, lungs, the abdomen CT's
# caudal kidney halves in the pipeline's view and window) and CT / X-ray phantoms.
# Against the previous recipe (1200 steps, lungs once, tight boxes only), validation split: stones
# 0.526 -> 0.526, lungs 0.862 -> 0.889, kidneys 0.851 -> 0.895. Lungs three times and 2000 steps were
# tried too: 0.421 / 0.898 / 0.876, not shipped.
LITE_CONFIG = TrainConfig(
    architecture="lite_medsam", base="lite_medsam", trainable="heads", pool_size=640, steps=1600, batch_size=6,
    lr=1e-4, warmup_steps=50, val_every=100, val_size=48, seed=0, focal_alpha=0.25, loose_box_probability=0.5,
    sources=["shared-stones", "shared-stones", "shared-lungs", "shared-lungs", "shared-kidneys", "phantom-xray", "phantom-ct"],
)


def _prepare(sam, rgb: np.ndarray, mask: np.ndarray):
    """Resize (longest side = img_size) and pad an image and its mask the way SamPredictor does.

    Returns ((3, S, S) normalised float tensor, (S, S) bool padded mask).
    """
    import cv2
    import torch

    from SAMFusionLib.sam.segmenter import image_transform

    size = sam.image_encoder.img_size
    resized = image_transform(sam).apply_image(rgb)
    tensor = torch.as_tensor(resized).permute(2, 0, 1).contiguous()
    image = sam.preprocess(tensor[None].float())[0]
    target = np.zeros((size, size), bool)
    # NEAREST_EXACT samples pixel centres like the image resize; plain INTER_NEAREST shifts the mask by
    # up to half a pixel, which a model trained on it learns as a systematic offset.
    small = cv2.resize(mask.astype(np.uint8), (resized.shape[1], resized.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    target[: small.shape[0], : small.shape[1]] = small.astype(bool)
    return image, target


def decode(sam, embedding, prompt: dict, mask_input=None, multimask: bool = False):
    """Prompt encoder + mask decoder for one image, with gradients.

    Args:
        embedding: (1, C, h, w) image embedding.
        prompt: {"points": (N, 2) | None, "labels": (N,) | None, "box": (4,) | None} in input-frame pixels.
        mask_input: (1, 1, 4h, 4w) logits or None.
    Returns:
        ((1, M, S, S) logits upsampled to the input size, (1, M) IoU predictions, (1, M, 4h, 4w) low-res logits).
    """
    import torch
    import torch.nn.functional as F

    device = embedding.device
    points = None
    if prompt["points"] is not None:
        coords = torch.as_tensor(prompt["points"], dtype=torch.float, device=device)[None]
        labels = torch.as_tensor(prompt["labels"], dtype=torch.int, device=device)[None]
        points = (coords, labels)
    boxes = None if prompt["box"] is None else torch.as_tensor(prompt["box"], dtype=torch.float, device=device)[None]
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    size = sam.image_encoder.img_size
    return F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False), iou, low_res


def _sample_loss(sam, embedding, target_np: np.ndarray, rng: np.random.Generator, config: TrainConfig):
    """Loss for one (embedding, target): simulated prompt, optional correction round, min over multimask."""
    import torch

    target = torch.as_tensor(target_np, dtype=torch.float, device=embedding.device)[None]
    prompt = simulate(target_np, rng, config.loose_box_probability)
    mask_input = None
    single_point = prompt["box"] is None and prompt["points"] is not None and len(prompt["points"]) == 1
    if rng.random() < config.correction_probability:
        with torch.no_grad():
            logits, iou, low_res = decode(sam, embedding.detach(), prompt, multimask=single_point)
        best = int(iou[0].argmax())
        click = correction_click((logits[0, best] > 0).cpu().numpy(), target_np, rng)
        if click is not None:
            point, label = click
            old_points = prompt["points"] if prompt["points"] is not None else np.zeros((0, 2))
            old_labels = prompt["labels"] if prompt["labels"] is not None else np.zeros(0, int)
            prompt = {**prompt, "points": np.vstack([old_points, point]), "labels": np.r_[old_labels, label]}
            mask_input = low_res[:, best : best + 1].detach()
            single_point = False
    logits, iou, _ = decode(sam, embedding, prompt, mask_input, multimask=single_point)
    count = logits.shape[1]
    losses = sam_loss(logits[0], target.expand(count, -1, -1), iou[0], config.focal_weight, config.dice_weight, config.iou_weight, config.focal_alpha)
    return losses.min()


def _batch(sources: list[Callable[[np.random.Generator], Sample]], rng: np.random.Generator, size: int) -> list[Sample]:
    return [sources[rng.integers(len(sources))](rng) for _ in range(size)]


def validation_set(sources, config: TrainConfig) -> list[tuple[Sample, dict]]:
    """A fixed set of samples with fixed prompts (seed + 10**6), for comparable validation losses."""
    rng = np.random.default_rng([config.seed, 10**6])
    return [((rgb, mask), simulate(mask, rng, config.loose_box_probability)) for rgb, mask in _batch(sources, rng, config.val_size)]


def evaluate(sam, val: list[tuple[Sample, dict]], config: TrainConfig, device: str, embeddings: list | None = None,
             from_pool: Callable = lambda pooled: pooled) -> dict:
    """Mean loss and mean Dice of the model on a fixed validation set, prompts without correction.

    ``embeddings``: the samples' pooled encoder outputs when (part of) the encoder is frozen (computed
    once); ``from_pool`` turns one into the (1, C, h, w) image embedding.
    """
    import torch

    losses, dices = [], []
    sam.eval()
    with torch.no_grad():
        for number, ((rgb, mask), prompt) in enumerate(val):
            image, target_np = _prepare(sam, rgb, mask)
            scale = sam.image_encoder.img_size / max(mask.shape)
            scaled = {
                "points": None if prompt["points"] is None else prompt["points"] * scale,
                "labels": prompt["labels"],
                "box": None if prompt["box"] is None else prompt["box"] * scale,
            }
            embedding = sam.image_encoder(image[None].to(device)) if embeddings is None else from_pool(embeddings[number].float().to(device))
            single = scaled["box"] is None and len(scaled["points"]) == 1
            logits, iou, _ = decode(sam, embedding, scaled, multimask=single)
            best = int(iou[0].argmax())
            target = torch.as_tensor(target_np, dtype=torch.float, device=device)[None]
            chosen = logits[:, best]
            losses.append(float(sam_loss(chosen, target, iou[:, best], config.focal_weight, config.dice_weight, config.iou_weight, config.focal_alpha)[0]))
            hard = (chosen > 0).float() * 20 - 10  # logits of the thresholded mask, for a hard Dice
            dices.append(1.0 - float(dice_loss(hard, target, smooth=1e-6)[0]))
    return {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dices))}


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _steps(config: TrainConfig, start: int) -> Iterator[int]:
    from tqdm import tqdm

    yield from tqdm(range(start, config.steps), initial=start, total=config.steps, desc="training", unit="step")


def train(
    config: TrainConfig,
    out_dir: Path,
    sources: list[Callable[[np.random.Generator], Sample]],
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train; writes ``last.pt`` (resumable), ``best.pth`` (state dict of the best validation Dice),
    ``final.pth`` (state dict at the end), ``history.csv`` and ``loss.png``.

    Returns the final validation figures.
    """
    import torch

    from SAMFusionLib.device import select_device
    from SAMFusionLib.sam.models import build_sam, load_model, load_table, read_state_dict
    from SAMFusionLib.training.pool import build_pool

    out_dir = Path(out_dir)
    device = select_device(config.device)
    torch.manual_seed(config.seed)
    table = load_table()
    if config.base is not None:
        sam = load_model(config.base, device=device, table=table).sam
    elif config.architecture not in table.architectures:
        raise SamFusionError(f"unknown architecture {config.architecture!r}")
    else:
        sam = build_sam(table.architectures[config.architecture]).to(device)
    if config.init_checkpoint:
        sam.load_state_dict(read_state_dict(Path(config.init_checkpoint)))
    frozen = {"all": (), "heads": (sam.image_encoder,), "decoder": (sam.image_encoder, sam.prompt_encoder), "last-stage": (sam.image_encoder,)}
    if config.trainable not in frozen:
        raise SamFusionError("trainable must be 'all', 'heads', 'decoder' or 'last-stage'")
    if config.pool_size and config.trainable == "all":
        raise SamFusionError("an embedding pool needs a frozen encoder: trainable 'heads', 'decoder' or 'last-stage'")
    last_stage = config.trainable == "last-stage"
    if last_stage and not (config.pool_size and is_tinyvit(sam.image_encoder)):
        raise SamFusionError("trainable 'last-stage' needs a TinyViT encoder (LiteMedSAM) and a pool")
    for module in frozen[config.trainable]:
        module.requires_grad_(False)
    encoder_tail = tail_modules(sam.image_encoder) if last_stage else ()
    for module in encoder_tail:
        module.requires_grad_(True)
    tail_parameters = [p for module in encoder_tail for p in module.parameters()]
    heads_parameters = [p for p in sam.parameters() if p.requires_grad and all(p is not q for q in tail_parameters)]
    parameters = heads_parameters + tail_parameters
    groups = [{"params": heads_parameters, "factor": 1.0}] + ([{"params": tail_parameters, "factor": config.encoder_lr_factor}] if last_stage else [])
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    out_dir.mkdir(parents=True, exist_ok=True)  # after the checks above: a refused run writes nothing

    def from_pool(pooled):
        """The image embeddings of pooled encoder outputs: the last stage and neck run on them when trained."""
        return tail(sam.image_encoder, pooled) if last_stage else pooled

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
        # A plain float: a numpy scalar in the optimiser state would make last.pt unloadable with weights_only=True.
        return float(config.lr * warm * 0.5 * (1 + np.cos(np.pi * step / max(1, config.steps))))

    history: list[dict] = []
    start, best = 0, -1.0
    last_path = out_dir / "last.pt"
    if resume and last_path.exists():
        state = torch.load(last_path, weights_only=True, map_location=device)
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best, history = state["step"], state["best"], json.loads(state["history"])
        log(f"resumed at step {start}")
    val = validation_set(sources, config)
    pool = val_embeddings = None
    if config.pool_size:
        log(f"encoding the sample pool ({config.pool_size} samples) and the validation set once")
        sam.eval()
        from tqdm import tqdm

        with tqdm(total=config.pool_size, desc="encoding", unit="image") as bar:
            samples = _batch(sources, np.random.default_rng([config.seed, 2 * 10**6]), config.pool_size)
            encode = (lambda images: trunk(sam.image_encoder, images)) if last_stage else None
            pool = build_pool(sam, samples, _prepare, device, progress=lambda done, total: bar.update(done - bar.n), encode=encode)
        val_embeddings = build_pool(sam, [sample for sample, _ in val], _prepare, device, encode=encode).batch(range(len(val)), "cpu")[0].split(1)
    figures = history[-1] if history else {}
    running = []
    for step in _steps(config, start):
        sam.train()
        for module in frozen[config.trainable]:
            module.eval()  # a frozen encoder keeps its BatchNorm statistics (TinyViT has them); so does its trained last stage
        rng = np.random.default_rng([config.seed, step])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step) * group.get("factor", 1.0)
        if pool is not None:
            pooled, targets = pool.batch(rng.integers(len(pool.targets), size=config.batch_size), device)
            embeddings = from_pool(pooled)
        else:
            prepared = [_prepare(sam, rgb, mask) for rgb, mask in _batch(sources, rng, config.batch_size)]
            images = torch.stack([image for image, _ in prepared]).to(device)
            embeddings = sam.image_encoder(images) if config.trainable == "all" else sam.image_encoder(images).detach()
            targets = [target for _, target in prepared]
        loss = torch.stack([_sample_loss(sam, embeddings[b : b + 1], target, rng, config) for b, target in enumerate(targets)]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        running.append(float(loss.detach()))
        if (step + 1) % config.val_every == 0 or step + 1 == config.steps:
            figures = {"step": step + 1, "train_loss": float(np.mean(running)), **evaluate(sam, val, config, device, val_embeddings, from_pool)}
            running = []
            history.append(figures)
            log(json.dumps(figures))
            # The validation loss is noisy (IoU-head term, mixed sources); Dice is what users see.
            if figures["val_dice"] > best:
                best = figures["val_dice"]
                _atomic_torch_save(sam.state_dict(), out_dir / "best.pth")
            _atomic_torch_save(
                {"model": sam.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1, "best": best,
                 "history": json.dumps(history), "config": json.dumps(asdict(config))},
                last_path,
            )
            _write_history(history, out_dir)
    _atomic_torch_save(sam.state_dict(), out_dir / "final.pth")
    return figures


def _write_history(history: list[dict], out_dir: Path) -> None:
    """history.csv and loss.png (train and validation loss against step)."""
    import cv2

    with open(out_dir / "history.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    width, height, pad = 640, 360, 40
    canvas = np.full((height, width, 3), 255, np.uint8)
    steps = np.array([h["step"] for h in history], float)
    series = {"train_loss": (200, 80, 0), "val_loss": (0, 0, 200)}
    values = np.array([[h[name] for name in series] for h in history], float)
    low, high = values.min(), values.max() + 1e-9
    span = max(steps.max() - steps.min(), 1.0)
    for column, (name, colour) in enumerate(series.items()):
        xs = pad + (steps - steps.min()) / span * (width - 2 * pad)
        ys = height - pad - (values[:, column] - low) / (high - low) * (height - 2 * pad)
        cv2.polylines(canvas, [np.c_[xs, ys].astype(np.int32)], False, colour, 2)
        cv2.putText(canvas, name, (pad + 150 * column, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2)
    cv2.putText(canvas, f"loss {low:.3f}..{high:.3f}, steps {int(steps.min())}..{int(steps.max())}", (pad, height - 10),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(out_dir / "loss.png"), canvas)
