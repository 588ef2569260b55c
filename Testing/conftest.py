"""Shared fixtures. The cache goes to a temporary folder so tests never touch ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    os.environ["SAMFUSION_CACHE_DIR"] = str(tmp_path_factory.mktemp("samfusion-cache"))
    os.environ.setdefault("SAMFUSION_DEVICE", "cpu")
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; missing data fails under CI=true (never a silent skip) and skips elsewhere."""
    from SAMFusionLib.cases.shared_data import shared_data_dir

    root = shared_data_dir()
    if not (root / "abdomen_ct").is_dir():
        message = f"shared data not found at {root} (set SAMFUSION_SHARED_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised small SAM (the demo architecture), seeded."""
    import torch

    from SAMFusionLib.sam.models import build_sam, from_module, load_table

    torch.manual_seed(0)
    return from_module(build_sam(load_table().architectures["samfusion_tiny"]), "tiny-random", "samfusion_tiny")


@pytest.fixture(scope="session")
def demo_model():
    """The from-scratch demo model (``samfusion-demo``) through the model table: a real model, and
    fast (about 30x cheaper per image than LiteMedSAM on a CPU), for tests of the engine's mechanics."""
    from SAMFusionLib.sam.models import load_model

    return load_model("samfusion-demo", device="cpu")


@pytest.fixture(scope="session")
def default_model():
    """The table's default model, loaded exactly as users get it, for tests of segmentation quality."""
    from SAMFusionLib.sam.models import load_model

    return load_model(device="cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def checkpoint(tiny_model, tmp_path_factory) -> Path:
    """The random tiny model saved as a checkpoint file, for ``--checkpoint`` in command tests."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(tiny_model.sam.state_dict(), path)
    return path


@pytest.fixture
def png(tmp_path) -> Path:
    """A 160x120 grey PNG with a bright disc of radius 25 px centred at pixel (80, 60)."""
    import cv2

    image = np.zeros((120, 160), np.uint8)
    cv2.circle(image, (80, 60), 25, 200, -1)
    path = tmp_path / "image.png"
    cv2.imwrite(str(path), image)
    return path
