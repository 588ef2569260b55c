"""Fusion: the 3-level Laplacian pyramid with the local-energy match rule (``pyramid``), the fusion
quality metrics (``metrics``: EN, SD, SF, MI, Qabf, SSIM) and ``samfusion fuse``'s file handling
(``files``). It may import ``imaging`` and ``errors`` only.
"""
