"""L-BFGS with a strong-Wolfe line search, in NumPy, for the registration's parameters.

The textbook method (Nocedal & Wright, *Numerical Optimization*, 2nd ed.: the two-loop recursion,
Algorithm 7.4; the line search with bracketing and zoom, Algorithms 3.5 and 3.6, with cubic
interpolation, eq. 3.59), with the defaults of ``torch.optim.LBFGS(lr=1, line_search_fn="strong_wolfe")``,
which the registration's settings were tuned with (a test checks both reach the same point).
Not torch's: constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (1.5-5.5 s in a
fresh process), and the registration runs without torch; SciPy (L-BFGS-B, another line search)
is not a dependency of the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _cubic_minimum(t1: float, f1: float, g1: float, t2: float, f2: float, g2: float, low: float, high: float) -> float:
    """The minimiser in [low, high] of the cubic through (t1, f1) and (t2, f2) with slopes g1, g2
    (N&W eq. 3.59); the interval's middle when the cubic has no real minimiser."""
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    squared = d1 * d1 - g1 * g2
    if squared < 0:
        return (low + high) / 2
    d2 = math.sqrt(squared)
    if t1 <= t2:
        t = t2 - (t2 - t1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        t = t1 - (t1 - t2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(t, low), high) if math.isfinite(t) else (low + high) / 2


class _Point:
    """A trial step ``t`` along the search direction: loss, gradient and directional derivative."""

    __slots__ = ("t", "f", "g", "slope")

    def __init__(self, t: float, f: float, g, slope: float) -> None:
        self.t, self.f, self.g, self.slope = t, f, g, slope


def _strong_wolfe(evaluate: Callable, x, d, start: _Point, t: float, c1: float = 1e-4, c2: float = 0.9,
                  tolerance: float = 1e-9, max_steps: int = 25) -> tuple[_Point, int]:
    """A step along ``d`` from ``x`` meeting the strong Wolfe conditions (or the best found within
    ``max_steps`` iterations after the first trial). ``start`` is step 0. Returns the chosen point and
    the evaluations made."""

    def trial(step: float) -> _Point:
        f, g = evaluate(x + step * d)
        return _Point(step, f, g, float(g.dot(d)))

    def sufficient_decrease(point: _Point) -> bool:
        return point.f <= start.f + c1 * point.t * start.slope

    def curvature(point: _Point) -> bool:
        return abs(point.slope) <= -c2 * start.slope

    previous, current = start, trial(t)
    evaluations, steps, bracket = 1, 0, None  # steps: line-search iterations after the first trial
    # Bracketing (Algorithm 3.5): grow the step until an interval must hold an acceptable one.
    while steps < max_steps:
        if not sufficient_decrease(current) or (steps > 1 and current.f >= previous.f):
            bracket = [previous, current]
            break
        if curvature(current):
            return current, evaluations
        if current.slope >= 0:
            bracket = [previous, current]
            break
        low, high = current.t + 0.01 * (current.t - previous.t), current.t * 10
        step = _cubic_minimum(previous.t, previous.f, previous.slope, current.t, current.f, current.slope, low, high)
        previous, current = current, trial(step)
        evaluations += 1
        steps += 1
    if bracket is None:
        bracket = [start, current]
    # Zoom (Algorithm 3.6): shrink the bracket by cubic interpolation; ``best`` has the lower loss.
    scale = float(np.abs(d).max())
    stalled = False
    while steps < max_steps:
        best, other = (bracket[0], bracket[1]) if bracket[0].f <= bracket[1].f else (bracket[1], bracket[0])
        low, high = sorted((bracket[0].t, bracket[1].t))
        if (high - low) * scale < tolerance:
            break
        step = _cubic_minimum(bracket[0].t, bracket[0].f, bracket[0].slope, bracket[1].t, bracket[1].f, bracket[1].slope, low, high)
        # Keep trial steps off the bracket's ends, where progress would be slow (a safeguard).
        margin = 0.1 * (high - low)
        if min(high - step, step - low) < margin:
            if stalled or step >= high or step <= low:
                step = high - margin if abs(step - high) < abs(step - low) else low + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        point = trial(step)
        evaluations += 1
        steps += 1
        if not sufficient_decrease(point) or point.f >= best.f:
            bracket = [best, point]
        else:
            if curvature(point):
                return point, evaluations
            if point.slope * (other.t - best.t) >= 0:
                other = best
            bracket = [point, other]
    best = bracket[0] if bracket[0].f <= bracket[1].f else bracket[1]
    return best, evaluations


def minimise(evaluate: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, max_iterations: int,
             history_size: int = 100, tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9) -> tuple[np.ndarray, float]:
    """Minimise ``evaluate(x) -> (loss, gradient)`` from ``x0`` (a float64 vector) with L-BFGS.

    At most ``max_iterations`` iterations and 1.25 times as many loss evaluations. Returns the point
    reached and its loss.
    """
    x = np.asarray(x0, float).copy()
    f, g = evaluate(x)
    evaluations, max_evaluations = 1, max_iterations * 5 // 4
    if float(np.abs(g).max(initial=0.0)) <= tolerance_grad:
        return x, f
    steps: list = []  # (s, y, 1 / y.s), oldest first
    d, t = -g, 0.0
    for iteration in range(1, max_iterations + 1):
        if iteration > 1:
            # Two-loop recursion (Algorithm 7.4), with the initial Hessian scaled by y.s / y.y.
            q = -g
            alphas = []
            for s, y, rho in reversed(steps):
                alpha = rho * float(s.dot(q))
                alphas.append(alpha)
                q = q - alpha * y
            if steps:  # the initial Hessian: y.s / y.y of the newest pair
                newest_s, newest_y, _ = steps[-1]
                q = q * (float(newest_y.dot(newest_s)) / float(newest_y.dot(newest_y)))
            r = q
            for (s, y, rho), alpha in zip(steps, reversed(alphas)):
                r = r + s * (alpha - rho * float(y.dot(r)))
            d = r
        slope = float(g.dot(d))
        if slope > -tolerance_change:
            break
        # The first step is scaled so that it moves no parameter far (|g|_1 may be large).
        t = min(1.0, 1.0 / float(np.abs(g).sum())) if iteration == 1 else 1.0
        point, used = _strong_wolfe(evaluate, x, d, _Point(0.0, f, g, slope), t, tolerance=tolerance_change)
        evaluations += used
        step = point.t * d
        y = point.g - g
        curvature = float(y.dot(step))
        if curvature > 1e-10:
            steps.append((step, y, 1.0 / curvature))
            if len(steps) > history_size:
                steps.pop(0)
        x, f_previous, f, g = x + step, f, point.f, point.g
        if iteration == max_iterations or evaluations >= max_evaluations:
            break
        if float(np.abs(g).max()) <= tolerance_grad or float(np.abs(step).max()) <= tolerance_change or abs(f - f_previous) < tolerance_change:
            break
    return x, f
