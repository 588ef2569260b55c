"""Prompt -> mask on one 2D image, through ``segment_anything.SamPredictor``.

The official predictor stays authoritative for preprocessing, prompt transforms and
postprocessing. This module adds the embedding cache, batched encoding of many slices, autocast
of the image encoder (bf16 by default on CPUs with native bf16 instructions), input checks and
best-score selection.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from SAMFusionLib.errors import Cancelled, SamFusionError
from SAMFusionLib.imaging.geometry import check_pixel_inside, clip_box
from SAMFusionLib.sam.embedding_cache import Embedding, EmbeddingCache, image_key
from SAMFusionLib.sam.encoder_fold import batch_norm_pairs
from SAMFusionLib.sam.models import LoadedModel


@dataclass
class Prediction:
    """SAM's answer to one prompt on one image.

    Attributes:
        mask: (H, W) bool, the chosen mask (with several candidates: the best predicted IoU x stability).
        score: SAM's predicted IoU of ``mask``.
        low_res_logits: (1, h, w) float32 logits of ``mask`` (h = w = img_size / 4), usable as the
            next ``mask_input``.
        masks: (C, H, W) bool, all candidate masks (C = 3 with multimask output, else 1).
        scores: (C,) float32 predicted IoUs.
        all_low_res_logits: (C, h, w) float32.
        stability: (C,) SAM's stability score of each candidate, or None.
        zoomed: whether the answer came from a crop around the prompt (``zoom.predict_zoomed``).
    """

    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    all_low_res_logits: np.ndarray
    stability: np.ndarray | None = None
    zoomed: bool = False


STABILITY_OFFSET = 1.0  # SAM's automatic mask generator uses the same logit offset


def stability_scores(logits: np.ndarray, offset: float = STABILITY_OFFSET) -> np.ndarray:
    """(C,) SAM's stability score of each (C, H, W) logit map: |logit > +offset| / |logit > -offset|.

    A crisp object gives a mask that barely changes with the threshold (stability near 1).
    """
    strict = (logits > offset).sum(axis=(1, 2))
    loose = (logits > -offset).sum(axis=(1, 2))
    return strict / np.maximum(loose, 1)


def check_rgb(rgb: np.ndarray) -> None:
    """Raise unless ``rgb`` is an (H, W, 3) uint8 image SAM can take."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", None)
        raise SamFusionError(f"SAM needs an (H, W, 3) uint8 RGB image, got shape {shape}")
    if min(rgb.shape[:2]) < 2:
        raise SamFusionError(f"image of {rgb.shape[1]}x{rgb.shape[0]} pixels is too small to segment")


def image_transform(sam):
    """The resize of ``sam``'s input: the model's own filter where it brings one (LiteMedSAM:
    ``sam.lite``), else SAM's ``ResizeLongestSide``. The one place that rule lives: the engine,
    the trainer and the benchmark's naive loop all resize alike."""
    from segment_anything.utils.transforms import ResizeLongestSide

    return getattr(sam, "resize", None) or ResizeLongestSide(sam.image_encoder.img_size)


def sam_predictor(sam):
    """A ``SamPredictor`` for ``sam`` that resizes with ``image_transform(sam)``."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam)
    predictor.transform = image_transform(sam)
    return predictor


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), where oneDNN's bf16
    kernels are fast; elsewhere bf16 autocast on the CPU is emulated and slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the query: assume not
        return False


def resolve_precision(precision: str, device: str, bf16_measured: bool = True) -> str:
    """The encoder's precision for ``precision`` on ``device`` ("cpu", "cuda", "cuda:1").

    ``auto`` is bf16 on a CPU with native bf16 for an architecture whose masks were measured
    within tolerance of fp32 (``bf16_measured``; ``"bf16_on_cpu": true`` in the model table: the
    TinyViT encoder runs 2.4x faster there, mask Dice 0.99 against fp32, in the README), and fp32
    elsewhere; ``$SAMFUSION_PRECISION`` overrides ``auto`` (``fp32`` for bit-for-bit runs). fp16 is
    for CUDA only.
    """
    if precision not in PRECISIONS:
        raise SamFusionError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = os.environ.get("SAMFUSION_PRECISION", "auto")
        if precision not in PRECISIONS:
            raise SamFusionError(f"SAMFUSION_PRECISION={precision!r} is not one of {', '.join(PRECISIONS)}")
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return "bf16" if bf16_measured and not on_cuda and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not on_cuda:
        raise SamFusionError("fp16 autocast needs a CUDA device; on a CPU use bf16 or fp32")
    return precision


def architecture_flag(model: LoadedModel, name: str) -> bool:
    """A true/false property that the model table gives ``model``'s architecture (false when absent)."""
    from SAMFusionLib.sam.models import load_table

    return bool(load_table().architectures.get(model.architecture, {}).get(name, False))


def bf16_measured(model: LoadedModel) -> bool:
    """Whether the model table marks ``model``'s architecture as measured under bf16 on a CPU."""
    return architecture_flag(model, "bf16_on_cpu")


def encoder_precision(model: LoadedModel, precision: str = "auto") -> str:
    """The precision a ``Segmenter(model, precision=precision)`` encodes at. The model table is
    read only for ``auto``: an explicit choice does not depend on it."""
    return resolve_precision(precision, model.device, precision == "auto" and bf16_measured(model))


class Segmenter:
    """A SAM predictor with a shared embedding cache.

    Args:
        model: the loaded model.
        cache: shared cache; a private 1 GiB in-memory cache when None.
        precision: the image encoder's autocast: "auto" (``resolve_precision``: bf16 for LiteMedSAM on
            a CPU with native bf16, else fp32), "fp32",
            "bf16", or "fp16" (CUDA). The prompt encoder and mask decoder always run in fp32.
    """

    def __init__(self, model: LoadedModel, cache: EmbeddingCache | None = None, precision: str = "auto") -> None:
        self.model = model
        self.precision = encoder_precision(model, precision)
        self.predictor = sam_predictor(model.sam)
        self.cache = cache if cache is not None else EmbeddingCache()
        # Embeddings of another precision, or of the encoder with its batch norms folded (``encoder_fold``;
        # equal within rounding), are other numbers: they never share a cache entry.
        self.cache_id = model.fingerprint if self.precision == "fp32" else f"{model.fingerprint}+{self.precision}"
        if batch_norm_pairs(model.sam.image_encoder):  # what ``model.inference_encoder`` folds, without building it
            self.cache_id += "+bn-folded"
        self.current_key: str | None = None
        self.images_encoded = 0  # encoder runs so far, one per image (the cache's misses that were encoded)

    def _autocast(self):
        import torch

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast("cuda" if self.model.device.startswith("cuda") else "cpu", dtype=dtype)

    def _preprocess(self, rgb: np.ndarray):
        """(H, W, 3) uint8 -> (1, 3, H', W') tensor resized the official way (``ResizeLongestSide``)."""
        import torch

        resized = self.predictor.transform.apply_image(rgb)
        tensor = torch.as_tensor(resized, device=self.predictor.device)
        return tensor.permute(2, 0, 1).contiguous()[None]

    def _encode(self, tensors: list) -> list:
        """Encode same-sized preprocessed tensors in one batch; returns (1, C, h, w) float32 each."""
        import torch

        batch = torch.cat(tensors, dim=0)
        self.images_encoded += len(tensors)
        with torch.inference_mode(), self._autocast():
            features = self.model.inference_encoder(self.model.sam.preprocess(batch))
        return [f[None].float() for f in features]

    def _activate(self, key: str, embedding: Embedding) -> None:
        predictor = self.predictor
        predictor.reset_image()
        predictor.features = embedding.features
        predictor.input_size = tuple(embedding.input_size)
        predictor.original_size = tuple(embedding.original_size)
        predictor.is_image_set = True
        self.current_key = key

    def set_image(self, rgb: np.ndarray) -> str:
        """Make ``rgb`` the current image, computing its embedding only if the cache lacks it."""
        check_rgb(rgb)
        key = image_key(self.cache_id, rgb)
        if key == self.current_key:
            return key
        embedding = self.cache.get(key, self.model.device)
        if embedding is None:
            tensor = self._preprocess(rgb)
            (features,) = self._encode([tensor])
            embedding = Embedding(features, tuple(tensor.shape[-2:]), tuple(rgb.shape[:2]))
            self.cache.put(key, embedding)
        self._activate(key, embedding)
        return key

    def embed_many(
        self,
        images: Sequence[np.ndarray],
        batch_size: int = 4,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[str]:
        """Put the embeddings of many (H, W, 3) uint8 images in the cache, batching the encoder.

        Images already cached are skipped. Returns their keys in order. ``progress(done, total)``
        is called after each batch; ``cancelled()`` returning True stops with SamFusionError.
        """
        keys = []
        for rgb in images:
            check_rgb(rgb)
            keys.append(image_key(self.cache_id, rgb))
        todo = [(key, rgb) for key, rgb in zip(keys, images) if self.cache.get(key, self.model.device) is None]
        unique = list(dict((key, rgb) for key, rgb in todo).items())
        for start in range(0, len(unique), max(1, batch_size)):
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled while encoding slices")
            chunk = unique[start : start + max(1, batch_size)]
            groups: dict[tuple, list] = {}
            for key, rgb in chunk:
                groups.setdefault(rgb.shape, []).append((key, rgb, self._preprocess(rgb)))
            for members in groups.values():
                features = self._encode([tensor for _, _, tensor in members])
                for (key, rgb, tensor), feature in zip(members, features):
                    self.cache.put(key, Embedding(feature, tuple(tensor.shape[-2:]), tuple(rgb.shape[:2])))
            if progress is not None:
                progress(min(start + len(chunk), len(unique)), len(unique))
        return keys

    def predict(
        self,
        points_xy: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Segment the current image from prompts in pixel coordinates (x = column, y = row).

        Args:
            points_xy: (N, 2) points; ``labels`` (N,) with 1 = positive, 0 = negative.
            box_xyxy: (4,) box, corners in any order.
            mask_input: (1, h, w) low-res logits from a previous prediction.
            multimask: ask for 3 candidates and keep the best-scored one.
        """
        if not self.predictor.is_image_set:
            raise SamFusionError("no image set: call set_image first")
        height, width = self.predictor.original_size
        if points_xy is None and box_xyxy is None and mask_input is None:
            raise SamFusionError("no prompt given: need at least one point or a box")
        coords = label_array = box = None
        if points_xy is not None:
            coords = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
            label_array = np.ones(len(coords), dtype=np.int64) if labels is None else np.asarray(labels).reshape(-1)
            if len(label_array) != len(coords) or not set(np.unique(label_array)) <= {0, 1}:
                raise SamFusionError("each point needs a label, 1 (positive) or 0 (negative)")
            check_pixel_inside(coords, height, width, "point")
        if box_xyxy is not None:
            box, _ = clip_box(box_xyxy, height, width)
        full_logits, scores, logits = self.predictor.predict(
            point_coords=coords, point_labels=label_array, box=box, mask_input=mask_input, multimask_output=multimask, return_logits=True
        )
        masks = full_logits > self.model.sam.mask_threshold  # exactly what SamPredictor returns as masks
        # Between candidates, SAM's predicted IoU alone can prefer a large, blurry mask on a small target;
        # its automatic mask generator also weighs stability, and so do we.
        stability = stability_scores(full_logits)
        best = int(np.argmax(scores * stability))
        return Prediction(masks[best], float(scores[best]), logits[best : best + 1], masks, scores, logits, stability)


def disk_cached_segmenter(model: LoadedModel, precision: str = "auto") -> Segmenter:
    """A ``Segmenter`` whose embeddings also persist in ``cache_dir()/embeddings`` (bounded on disk,
    ``embedding_cache.disk_limit_bytes``): a CT or radiograph seen before is not encoded again, in
    this process or a later one."""
    from SAMFusionLib.sam.weights import cache_dir

    return Segmenter(model, EmbeddingCache(disk_dir=cache_dir() / "embeddings"), precision)
