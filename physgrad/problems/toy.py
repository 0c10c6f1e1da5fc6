r"""Small problems with closed-form answers, used throughout chapters 2–6.

* :func:`toy` — the book's running example ``y = c·(x_1, x_2^2)`` with target ``y* = 0``,
  start ``x0 = (3, 3)``: a linear and a quadratic component, so GD, Newton, IG and PG all
  behave differently, and all have closed-form trajectories.
* :func:`linear` — ``P(x) = A x``; every inverted method solves it in one step.
* :func:`rosenbrock` — Rosenbrock's valley as least squares, ``r = c·(10(x_2 − x_1^2), 1 − x_1)``,
  badly scaled for GD, with an exact global inverse.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import InverseSimulatorError
from ..problem import Problem

__all__ = ["toy", "toy_x0", "linear", "rosenbrock"]


def _tensor(v, dtype, device):
    return torch.as_tensor(v, dtype=dtype, device=device)


def toy_x0(dtype=torch.float64, device=None) -> torch.Tensor:
    """The book's starting point ``x0 = (3, 3)``."""
    return _tensor([3.0, 3.0], dtype, device)


def toy(c: float = 1.0, target=None, dtype=torch.float64, device=None) -> Problem:
    r"""``P(x) = c·(x_1, x_2^2)`` with ``y* = 0`` (or ``target``), and its local inverse.

    The local inverse picks the branch of the square root on the side of the current guess:
    ``P^{-1}(y; x_0) = (y_1/c, sign(x_{0,2}) sqrt(y_2/c))`` (chapter 5: the solution closest to
    ``x_0``). A ``y_2/c < 0`` has no real pre-image, and the inverse says so.
    """
    c = float(c)
    y_star = torch.zeros(2, dtype=dtype, device=device) if target is None else _tensor(target, dtype, device)

    def forward(x):
        return c * torch.stack([x[..., 0], x[..., 1] ** 2], dim=-1)

    def inverse(y, x0):
        y2 = y[..., 1] / c
        if bool((y2 < 0).any()):
            raise InverseSimulatorError(
                f"y_2 = {float(y[..., 1].min()):.3g} has no real pre-image under c*x_2^2 (c={c:g})")
        sign = torch.where(x0[..., 1] >= 0, 1.0, -1.0).to(y)
        return torch.stack([y[..., 0] / c, sign * y2.sqrt()], dim=-1)

    return Problem(forward, y_star, inverse, name="toy" if c == 1 else f"toy (c={c:g})")


def linear(A: torch.Tensor, target: torch.Tensor) -> Problem:
    r"""``P(x) = A x`` with the exact inverse ``P^{-1}(y) = A^{-1} y`` (A square, invertible)."""
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square, got shape {tuple(A.shape)}")

    def inverse(y, x0):
        return torch.linalg.solve(A.to(y), y)

    return Problem(lambda x: A.to(x) @ x, target, inverse, name="linear")


def rosenbrock(c: float = 1.0, dtype=torch.float64, device=None, target: Optional[list] = None) -> Problem:
    r"""Rosenbrock's function as a least-squares problem (Moré, Garbow & Hillstrom, problem 1):
    ``P(x) = c·(10(x_2 − x_1^2), 1 − x_1)``, ``y* = 0``, minimum at ``x = (1, 1)``; the classic
    start is ``(−1.2, 1)``. The map is a bijection of the plane, with the exact inverse
    ``x_1 = 1 − y_2/c``, ``x_2 = y_1/(10c) + x_1^2``."""
    c = float(c)
    y_star = torch.zeros(2, dtype=dtype, device=device) if target is None else _tensor(target, dtype, device)

    def forward(x):
        return c * torch.stack([10.0 * (x[..., 1] - x[..., 0] ** 2), 1.0 - x[..., 0]], dim=-1)

    def inverse(y, x0):
        x1 = 1.0 - y[..., 1] / c
        return torch.stack([x1, y[..., 0] / (10.0 * c) + x1 ** 2], dim=-1)

    return Problem(forward, y_star, inverse, name="rosenbrock" if c == 1 else f"rosenbrock (c={c:g})")
