r"""Viscous Burgers' equation as a non-linear inverse problem (chapter 7, eq. ``burgers-step``).

.. math:: ∂_t u + ∂_x (u^2/2) = ν\, ∂_x^2 u \quad\text{on } [0, 2π)\ \text{(periodic)}.

The simulator maps the initial velocity ``x = u(·, 0)`` (``n`` points) to ``y = u(·, T)``,
``T = steps · dt``, with a semi-implicit pseudo-spectral scheme: advection explicit, diffusion
implicit in Fourier space,

.. math:: \hat u^{m+1}_k = \frac{\hat u^m_k - Δt\, i k\, \widehat{(u^m)^2/2}_k}{1 + ν k^2 Δt} .

The advection term is a derivative, and the ``k = 0`` factor is 1, so the mean of ``u`` is
conserved exactly (up to round-off). All operations are differentiable torch ops, so
``jvp``/``vjp``/Jacobians come from :mod:`torch.func`.

Approximate inverse simulator (``inverse="approx"``, default): integrate backwards in time.
One step is inverted by undoing the diffusion, ``w = a_k \hat u^{m+1}`` with
``a_k = 1 + ν k^2 Δt``, regularized by clamping ``a_k`` at ``inv_max_amp^{1/steps}`` so that no
frequency is amplified by more than ``inv_max_amp`` over the whole backward run (undamped
backward diffusion would amplify round-off in the top modes by ``(1 + ν k_{max}^2 Δt)^{steps}``,
about ``10^{14}`` with the defaults), and then solving ``u^m − Δt\,∂_x((u^m)^2/2) = w`` by ``inv_iters`` fixed-point
iterations started at ``u^m = w``. The fixed-point map contracts when
``Δt · k_max · max|u| < 1`` (``k_max = n/2``), which the defaults satisfy (about 0.77). With ``ε = 0`` and enough iterations this is the exact
inverse of a step wherever that map contracts; the inverse
of the full simulator chains ``steps`` such backward steps. It ignores ``x_0``.

``inverse="numerical"`` uses :func:`physgrad.inverse.numerical_inverse` instead (damped
Gauss–Newton on ``P(x) = y`` from ``x_0``; exact to its tolerance, but each call costs several
Jacobians). ``inverse=None`` gives a problem without inverse.
"""

from __future__ import annotations

import math

import torch

from ..problem import Problem
from .heat import random_field

__all__ = ["burgers_1d"]

Tensor = torch.Tensor


def burgers_1d(n: int = 128, nu: float = 0.02, dt: float = 0.008, steps: int = 40, inverse: str = "approx",
               inv_max_amp: float = 1e3, inv_iters: int = 8, amplitude: float = 0.5, corr: float = 8.0,
               seed: int = 0, noise: float = 0.0, numerical_options=None, dtype=torch.float64,
               device=None) -> Problem:
    r"""1-D viscous Burgers problem (module docstring) with a known ground truth.

    Attributes of the returned problem: ``x_true`` (smooth random field times ``amplitude`` plus
    a mean of 0.5, so the flow also travels), ``y_true = P(x_true)``, ``x0`` (the constant field
    with the mean of ``y_true``; the mean is conserved, so this is a natural guess),
    ``params``. ``inverse`` is ``"approx"``, ``"numerical"`` or ``None``.
    """
    L = 2 * math.pi
    k = 2 * math.pi * torch.fft.rfftfreq(n, d=L / n, dtype=dtype, device=device)
    ik = 1j * k
    ik = ik.clone()
    if n % 2 == 0:
        ik[-1] = 0  # odd derivative of the Nyquist mode is dropped (standard for real fields)
    a = 1 + nu * k ** 2 * dt
    if not inv_max_amp >= 1:
        raise ValueError(f"inv_max_amp must be >= 1, got {inv_max_amp}")
    a_inv_reg = torch.clamp(a, max=float(inv_max_amp) ** (1.0 / max(steps, 1)))

    def step(u: Tensor) -> Tensor:
        uh = torch.fft.rfft(u)
        nl = ik.to(uh.device) * torch.fft.rfft(0.5 * u * u)
        return torch.fft.irfft((uh - dt * nl) / a.to(u.device), n=n)

    def forward(x: Tensor) -> Tensor:
        u = x
        for _ in range(steps):
            u = step(u)
        return u

    def back_step(u1: Tensor) -> Tensor:
        w = torch.fft.irfft(torch.fft.rfft(u1) * a_inv_reg.to(u1.device), n=n)
        wh = torch.fft.rfft(w)
        u = w
        for _ in range(inv_iters):
            u = torch.fft.irfft(wh + dt * ik.to(wh.device) * torch.fft.rfft(0.5 * u * u), n=n)
        return u

    def approx_inverse(y: Tensor, x0: Tensor) -> Tensor:
        u = y
        for _ in range(steps):
            u = back_step(u)
        return u

    if inverse == "approx":
        inv = approx_inverse
    elif inverse == "numerical":
        from ..inverse import numerical_inverse

        inv = numerical_inverse(forward, **dict({"iters": 10, "tol": 1e-8, "on_fail": "best"}, **(numerical_options or {})))
    elif inverse is None:
        inv = None
    else:
        raise ValueError(f"inverse must be 'approx', 'numerical' or None, got {inverse!r}")

    x_true = 0.5 + amplitude * random_field((n,), corr=corr, seed=seed, dtype=dtype, device=device)
    y_true = forward(x_true)
    target = y_true
    if noise > 0:
        g = torch.Generator().manual_seed(seed + 1)
        target = y_true + noise * torch.randn(n, generator=g, dtype=torch.float64).to(y_true)
    prob = Problem(forward, target, inv, name=f"burgers-1d N={n}")
    prob.x_true, prob.y_true = x_true, y_true
    prob.x0 = torch.full((n,), y_true.mean().item(), dtype=dtype, device=device)
    prob.approx_inverse = approx_inverse
    prob.params = {"n": n, "nu": nu, "dt": dt, "steps": steps, "T": steps * dt, "inverse": inverse,
                   "inv_max_amp": inv_max_amp, "inv_iters": inv_iters, "seed": seed, "noise": noise}
    return prob
