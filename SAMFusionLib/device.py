"""Compute device choice: CUDA, then Apple MPS, then CPU; ``SAMFUSION_DEVICE=cpu`` forces the CPU."""

from __future__ import annotations

import os

from SAMFusionLib.errors import SamFusionError


def select_device(preference: str = "auto") -> str:
    """Return a torch device string for ``preference`` ("auto", "cpu", "cuda", "cuda:N" or "mps").

    The environment variable ``SAMFUSION_DEVICE`` overrides "auto" (e.g. to force the CPU on a
    machine whose GPU is busy). Asking for a device that is absent is an error, not a silent fallback.
    """
    import torch

    if preference == "auto":
        preference = os.environ.get("SAMFUSION_DEVICE", "auto")
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if preference == "cpu":
        return "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SamFusionError("device 'cuda' was requested but no CUDA GPU is available")
        return preference
    if preference == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise SamFusionError("device 'mps' was requested but Apple MPS is not available")
        return "mps"
    raise SamFusionError(f"unknown device {preference!r}: use auto, cpu, cuda or mps")
