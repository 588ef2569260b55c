"""SAM's losses against hand-computed values, and a short fine-tuning run that learns."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from SAMFusionLib.sam.models import build_sam, load_table
from SAMFusionLib.training.datasets import make_sources
from SAMFusionLib.training.losses import dice_loss, focal_loss, mask_iou
from SAMFusionLib.training.prompts_sim import correction_click, jittered_box, loosened_box, simulate
from SAMFusionLib.training.train import LITE_CONFIG, TrainConfig, evaluate, train, validation_set


def test_focal_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    expected = []
    for z, y in ((0.0, 1), (2.0, 0), (-1.0, 0)):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y == 1 else 1 - p
        alpha_t = 0.25 if y == 1 else 0.75
        expected.append(-alpha_t * (1 - p_t) ** 2 * math.log(p_t))
    assert focal_loss(logits, targets).item() == pytest.approx(sum(expected) / 3, rel=1e-5)
    without_alpha = [e / a for e, a in zip(expected, (0.25, 0.75, 0.75), strict=True)]
    assert focal_loss(logits, targets, alpha=-1).item() == pytest.approx(sum(without_alpha) / 3, rel=1e-5)


def test_dice_loss_by_hand():
    logits = torch.tensor([[[20.0, 20.0], [-20.0, -20.0]]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # p ~ (1, 1, 0, 0): |X∩Y| = 1, |X| = 2, |Y| = 2 -> 1 - (2 + 1) / (4 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(0.4, abs=1e-6)
    assert dice_loss(logits, (logits > 0).float()).item() == pytest.approx(0.0, abs=1e-6)
    assert mask_iou(logits, targets).item() == pytest.approx(1 / 3)


def test_simulated_prompts_lie_on_the_target(rng):
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:55] = True
    for _ in range(20):
        prompt = simulate(mask, rng)
        if prompt["points"] is not None:
            for (x, y), label in zip(prompt["points"], prompt["labels"], strict=True):
                assert mask[int(y), int(x)] == bool(label)
        if prompt["box"] is not None:
            x0, y0, x1, y1 = prompt["box"]
            assert x0 <= x1 and y0 <= y1 and abs(x0 - 30) <= 20 and abs(y1 - 39) <= 20
    box = jittered_box(mask, np.random.default_rng(0), fraction=0.0)
    assert box.tolist() == [30, 20, 54, 39]
    predicted = mask.copy()
    predicted[20:40, 30:40] = False  # a missed part -> a positive click inside it
    (x, y), label = correction_click(predicted, mask, rng)
    assert label == 1 and 30 <= x < 40 and 20 <= y < 40


def test_loosened_boxes_hold_the_tight_box_and_stay_on_the_image():
    mask = np.zeros((60, 80), bool)
    mask[20:40, 30:55] = True
    tight = jittered_box(mask, np.random.default_rng(0), fraction=0.0)  # [30, 20, 54, 39]
    rng = np.random.default_rng(1)
    loose = np.array([loosened_box(tight, rng, mask.shape) for _ in range(200)])
    assert np.all(loose[:, :2] <= tight[:2]) and np.all(loose[:, 2:] >= tight[2:])
    assert np.all(loose >= 0) and np.all(loose[:, 2] <= 79) and np.all(loose[:, 3] <= 59)
    # Each side moves by at most a quarter of its length plus 4 px (the x side is 25 px, the y side 20).
    assert np.all(tight[0] - loose[:, 0] <= 0.25 * 25 + 4) and np.all(tight[1] - loose[:, 1] <= 0.25 * 20 + 4)
    assert np.mean(loose[:, 2] - loose[:, 0]) > np.mean(tight[2] - tight[0]) + 4  # looser on average
    loosened = [simulate(mask, np.random.default_rng(n), loose_box_probability=1.0)["box"] for n in range(40)]
    widths = [box[2] - box[0] for box in loosened if box is not None]
    assert widths and np.mean(widths) > 26


def test_short_training_lowers_validation_loss(tmp_path):
    # Seeded, so deterministic; measured here: validation loss 4.44 -> 2.52.
    config = TrainConfig(steps=40, batch_size=4, lr=4e-4, focal_alpha=-1.0, warmup_steps=4, val_every=20, val_size=8, seed=5, device="cpu")
    sources = make_sources(["phantom"])
    torch.manual_seed(config.seed)
    initial = evaluate(build_sam(load_table().architectures[config.architecture]), validation_set(sources, config), config, "cpu")
    final = train(config, tmp_path, sources, resume=False, log=lambda _: None)
    assert final["val_loss"] < initial["val_loss"]
    for name in ("best.pth", "final.pth", "last.pt", "history.csv", "loss.png"):
        assert (tmp_path / name).exists()
    # Resuming continues from the saved step instead of starting again.
    more = train(replace(config, steps=44), tmp_path, sources, resume=True, log=lambda _: None)
    assert more["step"] == 44


def test_the_encoder_cut_before_its_last_stage_gives_the_whole_encoders_embeddings(default_model):
    from SAMFusionLib.training.encoder_tail import is_tinyvit, tail, trunk

    encoder = default_model.sam.image_encoder
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = trunk(encoder, images)
        assert tokens.shape == (1, 64 * 64, 320)  # what enters LiteMedSAM's last stage
        assert torch.equal(tail(encoder, tokens), encoder(images))
    assert is_tinyvit(encoder) and not is_tinyvit(build_sam(load_table().architectures["samfusion_tiny"]).image_encoder)


def test_a_last_stage_fine_tuning_trains_only_that_stage_the_neck_and_the_heads(tmp_path, capsys):
    """Two steps on a pool of what enters the last stage: the stage, the neck and the heads move,
    the rest of the encoder stays bit for bit."""
    from SAMFusionLib.cli.main import main
    from SAMFusionLib.sam.models import load_model, read_state_dict

    before = {k: v.clone() for k, v in load_model("lite_medsam").sam.state_dict().items()}
    config = replace(LITE_CONFIG, trainable="last-stage", steps=2, batch_size=1, pool_size=2, val_size=2, warmup_steps=1, sources=["phantom"], device="cpu")
    train(config, tmp_path / "run", make_sources(config.sources), resume=False, log=lambda _: None)
    after = read_state_dict(tmp_path / "run" / "final.pth")
    assert after.keys() == before.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    trained = ("image_encoder.layers.3.", "image_encoder.neck.", "prompt_encoder.", "mask_decoder.")
    assert any(k.startswith("image_encoder.layers.3.") for k in moved) and any(k.startswith("image_encoder.neck.") for k in moved)
    assert all(k.startswith(trained) for k in moved), sorted(k for k in moved if not k.startswith(trained))
    # The demo architecture has no TinyViT to cut: one line, before anything is written.
    capsys.readouterr()
    assert main(["train", "--trainable", "last-stage", "--steps", "1", "--pool-size", "2", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == "samfusion: error: trainable 'last-stage' needs a TinyViT encoder (LiteMedSAM) and a pool"
    assert not (tmp_path / "demo").exists()
