r"""Small helpers behind the theory chapters (2–6): unit changes, sensitivity scans, the
path-average view of the physical gradient, first-order inverses and the cost of Hessians.

Every function works on a :class:`~physgrad.problem.Problem` and uses only its public methods,
so the notebooks stay short and each claim of the chapters has one tested function behind it.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

from . import updates as U
from .linalg import pinv_solve, symmetric_solve
from .problem import Problem

__all__ = ["rescale_inputs", "step_and_loss_change", "sensitivity_scan", "power_law_exponent",
           "linear_inverse", "path_average_inverse_jacobian", "hessian_cost"]

Tensor = torch.Tensor


def rescale_inputs(prob: Problem, scales) -> Problem:
    r"""The same problem with the parameters measured in other units (chapter 2, units section).

    With ``x' = s ⊙ x`` (e.g. ``s_1 = 100`` turns metres into centimetres) the new simulator is
    ``P'(x') = P(x' / s)`` and the local inverse becomes ``P'^{-1}(y; x'_0) = s ⊙ P^{-1}(y; x'_0/s)``.
    A physically meaningful update gives the same physical step in both unit systems; plain GD,
    eq. ``gd-update``, does not.
    """
    s = torch.as_tensor(scales, dtype=prob.target.dtype, device=prob.target.device)
    if not bool((s != 0).all()):
        raise ValueError("unit scales must be non-zero")
    fwd, inv0 = prob.forward, prob.inverse
    inv = None
    if inv0 is not None:
        inv = lambda y, x0: s.to(y) * inv0(y, x0 / s.to(x0))  # noqa: E731
    return Problem(lambda x: fwd(x / s.to(x)), prob.target, inv, name=f"{prob.name} (rescaled x)",
                   jacobian_mode=prob.jacobian_mode)


def step_and_loss_change(prob: Problem, x: Tensor, method: str, step_size: float, **options):
    r"""One update ``Δx`` of ``method`` at ``x`` (``physgrad.updates.<method>``) and the loss
    change ``L(x + Δx) − L(x)`` it causes. Returns ``(dx, dL)``."""
    fn = getattr(U, method)
    dx = fn(prob, x, step_size, **options)
    dL = prob.loss(x + dx) - prob.loss(x)
    return dx, dL


def sensitivity_scan(make_problem: Callable[[float], Problem], cs: Sequence[float], x: Tensor,
                     method: str, step_size: float, **options) -> Dict[str, np.ndarray]:
    r"""Step length ``||Δx||`` and loss change ``|ΔL|`` of one update for each scale ``c``
    (chapters 2–4, sensitivity sections). ``make_problem(c)`` builds the problem at scale ``c``.

    For the toy problem ``y = c·(x_1, x_2^2)`` the loss scales with ``c^2``; GD (eq. ``gd-update``)
    then steps ``∝ c^2`` and changes the loss ``∝ c^4``; Newton (eq. ``newton-update``) and IG
    (eq. ``ig-update``) with a relative ``Δy`` take the same step for every ``c``.
    Returns numpy arrays ``c``, ``step`` and ``dloss``.
    """
    steps, dls = [], []
    for c in cs:
        dx, dL = step_and_loss_change(make_problem(float(c)), x, method, step_size, **options)
        steps.append(dx.norm().item())
        dls.append(abs(dL.item()))
    return {"c": np.asarray(cs, dtype=float), "step": np.asarray(steps), "dloss": np.asarray(dls)}


def power_law_exponent(c, v) -> float:
    r"""Least-squares slope of ``log v`` over ``log c``: the exponent ``p`` in ``v ∝ c^p``."""
    c, v = np.asarray(c, dtype=float), np.asarray(v, dtype=float)
    return float(np.polyfit(np.log(c), np.log(v), 1)[0])


def linear_inverse(prob: Problem, x0: Tensor, y: Tensor) -> Tensor:
    r"""The first-order local inverse ``x_0 + (∂x/∂y)(y − y_0)`` with ``y_0 = P(x_0)`` and the
    pseudo-inverse of the Jacobian (chapter 6): what the IG update, eq. ``ig-update``, uses in
    place of the true inverse ``P^{-1}(y; x_0)``."""
    y0 = prob.simulate(x0)
    J = prob.jacobian(x0)
    return x0 + pinv_solve(J, (y - y0).reshape(-1)).reshape(x0.shape)


def path_average_inverse_jacobian(prob: Problem, x0: Tensor, dy: Tensor, nodes: int = 48) -> Tensor:
    r"""``∫_0^1 (∂x/∂y)(y_0 + t Δy) Δy dt``: the inverse Jacobian averaged along the straight
    path from ``y_0 = P(x_0)`` to ``y_0 + Δy`` and applied to ``Δy`` (chapter 6, eq. ``pg-ftc``).

    The points ``x(t) = P^{-1}(y_0 + tΔy; x_0)`` on the path come from the problem's local
    inverse, and ``(∂x/∂y)`` is the pseudo-inverse of ``∂P/∂x`` there; the integral uses
    Gauss–Legendre quadrature with ``nodes`` points. By the fundamental theorem of calculus the
    result equals the PG step ``P^{-1}(y_0 + Δy; x_0) − x_0`` (eq. ``pg-update``) whenever the
    inverse Jacobian exists along the whole path.
    """
    t, w = np.polynomial.legendre.leggauss(nodes)
    t, w = 0.5 * (t + 1.0), 0.5 * w
    y0 = prob.simulate(x0)
    total = torch.zeros_like(x0)
    for tk, wk in zip(t, w):
        xt = prob.apply_inverse(y0 + float(tk) * dy, x0)
        J = prob.jacobian(xt)
        total = total + float(wk) * pinv_solve(J, dy.reshape(-1)).reshape(x0.shape)
    return total


def hessian_cost(ns: Sequence[int], seed: int = 0, dtype=torch.float64, repeats: int = 3) -> List[dict]:
    r"""Measured cost of Newton's ingredients (chapter 3, "the price of the Hessian").

    For each ``n`` builds ``P(x) = tanh(A x)`` with a random ``n × n`` matrix ``A`` and reports the
    Hessian's memory (``8 n^2`` bytes in float64), the wall time to form it with
    :meth:`physgrad.problem.Problem.hessian` and to solve ``H Δx = g`` (eq. ``newton-update``), next to the time
    for one gradient (the best of ``repeats`` runs each). Timings vary from run to run; only
    their growth with ``n`` matters.
    """

    def best(fn):
        times, out = [], None
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, min(times)

    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in ns:
        A = torch.randn(n, n, generator=g, dtype=dtype) / n ** 0.5
        y = torch.randn(n, generator=g, dtype=dtype) * 0.1
        prob = Problem(lambda x, A=A: torch.tanh(A @ x), y, name=f"tanh n={n}")
        x = torch.randn(n, generator=g, dtype=dtype)
        grad, t_grad = best(lambda: prob.grad(x))
        H, t_hess = best(lambda: prob.hessian(x))
        _, t_solve = best(lambda: symmetric_solve(H, grad, fallback="pinv"))
        rows.append({"n": n, "hessian_bytes": H.numel() * H.element_size(), "t_grad": t_grad,
                     "t_hessian": t_hess, "t_solve": t_solve})
    return rows
