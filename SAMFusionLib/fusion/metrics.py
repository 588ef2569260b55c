"""Fusion quality metrics.

Images are (H, W) arrays in a 0..255 scale (values are rounded into 256 bins where a histogram is
needed). Conventions: EN and MI in bits; MI and SSIM are summed over both sources, MI(A, F) + MI(B, F)
and SSIM(A, F) + SSIM(B, F), as in the fusion literature.
"""

from __future__ import annotations

import numpy as np


def _bins(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, float)), 0, 255).astype(np.int64)


def entropy_bits(image: np.ndarray) -> float:
    """EN: Shannon entropy of the 256-bin grey histogram, in bits."""
    counts = np.bincount(_bins(image).ravel(), minlength=256).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def standard_deviation(image: np.ndarray) -> float:
    """SD: population standard deviation of the grey values."""
    return float(np.std(np.asarray(image, float)))


def spatial_frequency(image: np.ndarray) -> float:
    """SF = sqrt(RF^2 + CF^2), RF/CF the RMS of horizontal/vertical first differences over the M x N grid."""
    x = np.asarray(image, float)
    count = x.size
    row_frequency = np.sum(np.diff(x, axis=1) ** 2) / count
    column_frequency = np.sum(np.diff(x, axis=0) ** 2) / count
    return float(np.sqrt(row_frequency + column_frequency))


def mutual_information_bits(a: np.ndarray, b: np.ndarray) -> float:
    """MI(A, B) from the joint 256x256 histogram, in bits."""
    joint = np.zeros((256, 256))
    np.add.at(joint, (_bins(a).ravel(), _bins(b).ravel()), 1)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / (pa @ pb)[nonzero])).sum())


def fusion_mi(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """MI of a fusion: MI(A, F) + MI(B, F), in bits."""
    return mutual_information_bits(a, fused) + mutual_information_bits(b, fused)


def _sobel(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    x = np.asarray(image, np.float64)
    return cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE), cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)


def qabf(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """Xydeas-Petrovic edge-preservation metric Q^{AB/F} in [0, 1].

    Sobel strength g and orientation alpha = atan(sy / sx) per image; for each source X,
    G = min(g_X, g_F) / max(g_X, g_F), A = 1 - |alpha_X - alpha_F| / (pi / 2),
    Q = Gamma_g / (1 + exp(k_g (G - s_g))) * Gamma_a / (1 + exp(k_a (A - s_a))) with the
    paper's constants (0.9994, -15, 0.5; 0.9879, -22, 0.8), weighted by g_X (L = 1).
    """

    def strength_orientation(image):
        sx, sy = _sobel(image)
        strength = np.hypot(sx, sy)
        with np.errstate(divide="ignore", invalid="ignore"):
            orientation = np.where(sx == 0, np.pi / 2, np.arctan(sy / np.where(sx == 0, 1, sx)))
        return strength, orientation

    g_f, a_f = strength_orientation(fused)
    total, weights = 0.0, 0.0
    for source in (a, b):
        g_x, a_x = strength_orientation(source)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(g_x > g_f, g_f / g_x, np.where(g_f > 0, g_x / g_f, 1.0))
        ratio = np.nan_to_num(ratio, nan=1.0)
        agreement = 1 - np.abs(a_x - a_f) / (np.pi / 2)
        q = 0.9994 / (1 + np.exp(-15 * (ratio - 0.5))) * 0.9879 / (1 + np.exp(-22 * (agreement - 0.8)))
        total += float((q * g_x).sum())
        weights += float(g_x.sum())
    return total / weights if weights > 0 else 0.0


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): Gaussian window sigma 1.5 (11x11), K1 = 0.01, K2 = 0.03."""
    import cv2

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(z):
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(ssim_map.mean())


def fusion_ssim(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> float:
    """SSIM(A, F) + SSIM(B, F)."""
    return ssim(a, fused) + ssim(b, fused)


def fusion_metrics(a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """EN, SD, SF of F; MI, Qabf, SSIM of F against both sources."""
    return {
        "EN": entropy_bits(fused),
        "SD": standard_deviation(fused),
        "SF": spatial_frequency(fused),
        "MI": fusion_mi(a, b, fused),
        "Qabf": qabf(a, b, fused),
        "SSIM": fusion_ssim(a, b, fused),
    }
