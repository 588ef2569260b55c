"""A 2D transform with its gradient, fixed physical point p -> moving physical point q (ITK's convention):

    q = A (p + d(p) - c) + c + t,    A = R(theta) [[e^(s + a), h], [0, e^(s - a)]]

c is the fixed mask's centroid. The stage chooses what may move: rigid (theta, t), similarity
(+ s), affine (+ a, h), non-rigid (+ d, a displacement on a coarse control grid over the fixed
image, interpolated with cubic convolution, like a cubic B-spline).

NumPy only, with the gradient written out (``backward``): the registration needs no torch, whose
import alone (1.4 s) was a third of a cold ``samfusion register``.
"""

from __future__ import annotations

import numpy as np

from SAMFusionLib.errors import SamFusionError
from SAMFusionLib.imaging.grid2d import Grid2D

STAGES = ("rigid", "similarity", "affine", "nonrigid")
FREE_PARAMETERS = {"rigid": ("theta", "t"), "similarity": ("theta", "t", "s"), "affine": ("theta", "t", "s", "a", "h"),
                   "nonrigid": ("theta", "t", "s", "a", "h", "d")}
TRANSLATION_UNIT_MM = 10.0  # parameters are scaled so that all are of order 1 for the optimiser
CUBIC_A = -0.75  # Keys' cubic convolution parameter (as torch's and OpenCV's bicubic interpolation)


def _keys(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel at ``distance`` (any shape, >= 0)."""
    a, x = CUBIC_A, np.abs(distance)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def cubic_weights(index, length: int, knots: int) -> np.ndarray:
    """(N, knots) float64: the weights by which the control knots are interpolated along one axis at
    continuous pixel indices ``index`` (N,) of an axis ``length`` pixels long.

    The knots span the axis end to end (knot 0 at pixel 0, the last at pixel length - 1); the four
    nearest knots get cubic-convolution weights, and taps beyond the ends read the end knot (the
    border rule of torch's ``grid_sample(mode="bicubic", padding_mode="border", align_corners=True)``,
    which a test checks against).
    """
    position = np.asarray(index, float) * (knots - 1) / max(length - 1, 1)
    base = np.floor(position)
    fraction = position - base
    weights = np.zeros((len(position), knots))
    rows = np.arange(len(position))
    for tap in range(-1, 3):
        knot = np.clip(base + tap, 0, knots - 1).astype(int)
        np.add.at(weights, (rows, knot), _keys(fraction - tap))
    return weights


def _rotation(theta: float) -> np.ndarray:
    cos, sin = np.cos(theta), np.sin(theta)
    return np.array([[cos, -sin], [sin, cos]])


class Transform2D:
    def __init__(self, center: np.ndarray, translation: np.ndarray, angle: float = 0.0, log_scale: float = 0.0,
                 control_shape: tuple[int, int] = (8, 8)):
        self.center = np.asarray(center, float).copy()
        self.params = {
            "theta": np.array([angle], float),
            "t": np.asarray(translation, float) / TRANSLATION_UNIT_MM,
            "s": np.array([log_scale], float),
            "a": np.zeros(1),
            "h": np.zeros(1),
            "d": np.zeros((2, *control_shape)),  # control displacements / TRANSLATION_UNIT_MM, (x, y) channels
        }

    def copy(self) -> Transform2D:
        """An independent copy."""
        twin = Transform2D.__new__(Transform2D)
        twin.center = self.center.copy()
        twin.params = {name: value.copy() for name, value in self.params.items()}
        return twin

    @staticmethod
    def free_names(stage: str) -> tuple[str, ...]:
        """The names of the parameters that ``stage`` frees, in the order of ``flat``."""
        if stage not in STAGES:
            raise SamFusionError(f"unknown transform {stage!r}: use {', '.join(STAGES)}")
        return FREE_PARAMETERS[stage]

    def flat(self, stage: str) -> np.ndarray:
        """The free parameters of ``stage`` as one float64 vector."""
        return np.concatenate([self.params[name].ravel() for name in self.free_names(stage)])

    def set_flat(self, stage: str, vector: np.ndarray) -> None:
        """Set the free parameters of ``stage`` from ``flat``'s layout."""
        start = 0
        for name in self.free_names(stage):
            value = self.params[name]
            self.params[name] = np.asarray(vector[start : start + value.size], float).reshape(value.shape).copy()
            start += value.size

    def shape_matrix(self) -> np.ndarray:
        p = self.params
        return np.array([[np.exp(p["s"][0] + p["a"][0]), p["h"][0]], [0.0, np.exp(p["s"][0] - p["a"][0])]])

    def matrix(self) -> np.ndarray:
        """A, the 2 x 2 linear part."""
        return _rotation(self.params["theta"][0]) @ self.shape_matrix()

    def translation_mm(self) -> np.ndarray:
        return self.params["t"] * TRANSLATION_UNIT_MM

    def displacement_on_lattice(self, weights_y: np.ndarray, weights_x: np.ndarray) -> np.ndarray:
        """(H * W, 2) displacement in mm on a lattice of fixed points, row-major (y, then x).

        ``weights_y`` (H, cy) and ``weights_x`` (W, cx) are ``cubic_weights`` of the lattice's rows and
        columns: the interpolation is separable, two small matrix products per channel.
        """
        lattice = weights_y @ (self.params["d"] * TRANSLATION_UNIT_MM) @ weights_x.T  # (2, H, W)
        return lattice.reshape(2, -1).T

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with q = A (p + d) + b: the linear part (2, 2) and the offset b = c + t - A c (2,) mm."""
        matrix = self.matrix()
        return matrix, self.center + self.translation_mm() - matrix @ self.center

    def __call__(self, points: np.ndarray, displacement: np.ndarray | None = None) -> np.ndarray:
        """Map (N, 2) fixed physical points to moving physical points; ``displacement`` (N, 2) mm is
        the non-rigid displacement at those points (None: the linear transform alone)."""
        if displacement is not None:
            points = points + displacement
        matrix, offset = self.affine()
        return points @ matrix.T + offset

    def backward(self, grad_matrix: np.ndarray, grad_translation_mm: np.ndarray, grad_lattice: np.ndarray | None = None,
                 weights_y: np.ndarray | None = None, weights_x: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The gradient of a loss with respect to every parameter, given its gradient with respect to
        the linear part A (2, 2), the translation in mm (2,) and, for ``d``, the displacement on a
        lattice of fixed points (2, H, W), whose ``cubic_weights`` are ``weights_y`` (H, cy) and
        ``weights_x`` (W, cx); without a lattice gradient, ``d``'s is zero."""
        p = self.params
        rotation, shape = _rotation(p["theta"][0]), self.shape_matrix()
        sin, cos = np.sin(p["theta"][0]), np.cos(p["theta"][0])
        grad_shape = rotation.T @ grad_matrix
        stretch_x, stretch_y = grad_shape[0, 0] * shape[0, 0], grad_shape[1, 1] * shape[1, 1]
        gradient = {
            "theta": np.array([np.sum(grad_matrix * (np.array([[-sin, -cos], [cos, -sin]]) @ shape))]),
            "t": np.asarray(grad_translation_mm, float) * TRANSLATION_UNIT_MM,
            "s": np.array([stretch_x + stretch_y]),
            "a": np.array([stretch_x - stretch_y]),
            "h": np.array([grad_shape[0, 1]]),
            "d": np.zeros_like(p["d"]),
        }
        if grad_lattice is not None:
            gradient["d"] = weights_y.T @ grad_lattice @ weights_x * TRANSLATION_UNIT_MM
        return gradient

    def bending_energy(self) -> tuple[float, np.ndarray]:
        """Squared second differences of the control displacements (mm^2), a discrete bending penalty,
        and its gradient with respect to ``params["d"]``."""
        d = self.params["d"] * TRANSLATION_UNIT_MM
        dxx = d[:, :, 2:] - 2 * d[:, :, 1:-1] + d[:, :, :-2]
        dyy = d[:, 2:, :] - 2 * d[:, 1:-1, :] + d[:, :-2, :]
        energy = float(np.mean(dxx**2) + np.mean(dyy**2))
        gxx, gyy = 2 * dxx / dxx.size, 2 * dyy / dyy.size
        grad = np.zeros_like(d)
        grad[:, :, 2:] += gxx
        grad[:, :, 1:-1] -= 2 * gxx
        grad[:, :, :-2] += gxx
        grad[:, 2:, :] += gyy
        grad[:, 1:-1, :] -= 2 * gyy
        grad[:, :-2, :] += gyy
        return energy, grad * TRANSLATION_UNIT_MM

    def displacement_field(self, fixed: Grid2D) -> np.ndarray:
        """(H, W, 2) displacement in mm at every pixel of the fixed grid."""
        height, width = fixed.shape_hw
        knots_y, knots_x = self.params["d"].shape[1:]
        weights_y = cubic_weights(np.arange(height), height, knots_y)
        weights_x = cubic_weights(np.arange(width), width, knots_x)
        return self.displacement_on_lattice(weights_y, weights_x).reshape(height, width, 2)

    def to_sitk(self, fixed: Grid2D, nonrigid: bool):
        """The SimpleITK transform (fixed -> moving): an AffineTransform, or a composite of the affine
        and a displacement field on the fixed grid, the field applied first."""
        import SimpleITK as sitk

        affine = sitk.AffineTransform(2)
        affine.SetMatrix(tuple(self.matrix().ravel()))
        affine.SetCenter(tuple(self.center))
        affine.SetTranslation(tuple(self.translation_mm()))
        if not nonrigid:
            return affine
        image = sitk.GetImageFromArray(self.displacement_field(fixed), isVector=True)
        fixed.apply_to(image)
        composite = sitk.CompositeTransform(2)
        composite.AddTransform(affine)
        # ITK applies a composite's transforms last-added first: the displacement acts on fixed points first.
        composite.AddTransform(sitk.DisplacementFieldTransform(image))
        return composite

    def summary(self) -> dict:
        return {
            "angle_deg": float(np.degrees(self.params["theta"][0])),
            "log_scale": float(self.params["s"][0]),
            "anisotropy": float(self.params["a"][0]),
            "shear": float(self.params["h"][0]),
            "translation_mm": [float(v) for v in self.translation_mm()],
            "max_displacement_mm": float(np.abs(self.params["d"] * TRANSLATION_UNIT_MM).max()),
        }
