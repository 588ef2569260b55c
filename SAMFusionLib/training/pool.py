"""A fixed pool of training samples with their image embeddings computed once (frozen encoder).

Fine-tuning only the prompt encoder and mask decoder leaves the image encoder's output of each
image unchanged, and on a CPU that encoder is most of the cost (LiteMedSAM's TinyViT: about 1 s
per 256 px image on 2 cores, against 0.2 s for a decoder step). So the samples are drawn once
(seeded), each distinct image is encoded once, and every step reuses the embeddings with freshly
simulated prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Sample = tuple[np.ndarray, np.ndarray]  # ((H, W, 3) uint8 image, (H, W) bool target mask)


@dataclass
class EmbeddingPool:
    """Embeddings of distinct images and the targets drawn on them.

    Attributes:
        embeddings: one (1, C, h, w) float16 tensor per distinct image (on the CPU), or (1, tokens, C)
            when the pool stores what enters the encoder's last stage.
        targets: (embedding index, (S, S) bool target on the padded model input grid) per sample.
        samples: the drawn ((H, W, 3) uint8, (H, W) bool) samples, kept only when asked for.
    """

    embeddings: list = field(default_factory=list)
    targets: list[tuple[int, np.ndarray]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def batch(self, indices, device: str):
        """((B, C, h, w) float32 embeddings, [(S, S) bool targets]) of the given sample indices."""
        import torch

        chosen = [self.targets[i] for i in indices]
        stacked = torch.cat([self.embeddings[e] for e, _ in chosen]).float().to(device)
        return stacked, [target for _, target in chosen]


def build_pool(
    sam,
    samples: list[Sample],
    prepare: Callable,
    device: str,
    batch_size: int = 4,
    keep_samples: bool = False,
    progress: Callable[[int, int], None] | None = None,
    encode: Callable | None = None,
) -> EmbeddingPool:
    """Encode the distinct images of ``samples`` (``prepare(sam, rgb, mask) -> (image tensor, target)``).

    ``encode``: (B, 3, S, S) inputs -> what to store per image (default the whole image encoder; a
    fine-tuning of the encoder's last stage stores what enters it, ``encoder_tail.trunk``).
    """
    import torch

    encode = encode or sam.image_encoder

    pool = EmbeddingPool(samples=list(samples) if keep_samples else [])
    index_of: dict[str, int] = {}
    pending: list[tuple[str, object]] = []

    def flush() -> None:
        if not pending:
            return
        with torch.inference_mode():
            features = encode(torch.stack([image for _, image in pending]).to(device))
        for (key, _), feature in zip(pending, features):
            index_of[key] = len(pool.embeddings)
            pool.embeddings.append(feature[None].to("cpu", torch.float16))
        pending.clear()

    prepared = []
    for rgb, mask in samples:
        image, target = prepare(sam, rgb, mask)
        key = hashlib.sha1(image.numpy().tobytes()).hexdigest()
        prepared.append((key, target))
        if key not in index_of and all(key != k for k, _ in pending):
            pending.append((key, image))
        if len(pending) >= batch_size:
            flush()
            if progress is not None:
                progress(len(pool.embeddings), len(samples))
    flush()
    pool.targets = [(index_of[key], target) for key, target in prepared]
    return pool
