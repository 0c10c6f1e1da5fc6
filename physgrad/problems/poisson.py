r"""The Poisson equation as an inverse problem (chapter 7, eq. ``poisson-forward``).

The simulator maps a source ``x`` to the potential ``y = P(x) = ∇^{-2} x``, the solution of

.. math:: ∇_h^2\, y = x

with the 5-point finite-difference Laplacian ``∇_h^2`` on the unit square (spacing ``h``). The
inverse problem asks for the source that produced a measured potential; its exact inverse
simulator simply applies the discrete Laplacian, ``P^{-1}(y) = ∇_h^2 y``.

Boundary conditions:

* ``"periodic"`` (``h = 1/n``): solved with the FFT, using the eigenvalues
  ``−(4/h²)[sin²(π k_1/n) + sin²(π k_2/n)]``. The constant mode is in the null space of
  ``∇_h^2``, so ``P`` returns the zero-mean solution and ignores the mean of ``x``; the local
  inverse keeps the mean of ``x_0`` (the closest pre-image) and applies the Laplacian to
  ``y`` minus its mean.
* ``"dirichlet"`` (``y = 0`` on the boundary, ``n × n`` interior points, ``h = 1/(n+1)``):
  solved with the discrete sine transform (the eigenvectors of ``∇_h^2``, applied as dense
  ``n × n`` matrices, which is exact and cheap for the sizes used here).

The singular values of ``P`` are ``1/|λ_k|``: from ``1/(2π²)`` down to about ``h²/8``, a
condition number of order ``n²`` — mild compared to the heat equation, but enough to slow
gradient descent down by that factor. Leading batch dimensions are supported.
"""

from __future__ import annotations

import math

import torch

from ..problem import Problem
from .heat import random_field

__all__ = ["poisson_2d", "laplacian"]

Tensor = torch.Tensor


def laplacian(y: Tensor, bc: str = "periodic") -> Tensor:
    r"""The 5-point Laplacian ``∇_h^2 y`` over the last two dims (``h = 1/n`` periodic,
    ``1/(n+1)`` Dirichlet with zero boundary values)."""
    n = y.shape[-1]
    if bc == "periodic":
        h2 = (1.0 / n) ** 2
        return (torch.roll(y, 1, -1) + torch.roll(y, -1, -1) + torch.roll(y, 1, -2) + torch.roll(y, -1, -2) - 4 * y) / h2
    if bc == "dirichlet":
        h2 = (1.0 / (n + 1)) ** 2
        p = torch.nn.functional.pad(y, (1, 1, 1, 1)) if y.ndim >= 3 else \
            torch.nn.functional.pad(y[None], (1, 1, 1, 1))[0]
        return (p[..., 1:-1, :-2] + p[..., 1:-1, 2:] + p[..., :-2, 1:-1] + p[..., 2:, 1:-1] - 4 * y) / h2
    raise ValueError(f"bc must be 'periodic' or 'dirichlet', got {bc!r}")


def poisson_2d(n: int = 64, bc: str = "periodic", corr: float = 3.0, seed: int = 0, noise: float = 0.0,
               dtype=torch.float64, device=None) -> Problem:
    r"""2-D Poisson problem on an ``n × n`` grid: ``P(x) = ∇_h^{-2} x`` (module docstring).

    Returns a :class:`~physgrad.problem.Problem` with the exact inverse (the Laplacian) and attributes
    ``x_true`` (smooth random source; zero mean in the periodic case), ``y_true``, ``x0`` (zeros),
    ``eigenvalues`` (of ``∇_h^2``) and ``params``.
    """
    if bc not in ("periodic", "dirichlet"):
        raise ValueError(f"bc must be 'periodic' or 'dirichlet', got {bc!r}")
    if bc == "periodic":
        h = 1.0 / n
        s1 = torch.sin(math.pi * torch.fft.fftfreq(n, dtype=dtype, device=device)) ** 2
        s2 = torch.sin(math.pi * torch.fft.rfftfreq(n, dtype=dtype, device=device)) ** 2
        lam = -(4.0 / h ** 2) * (s1[:, None] + s2[None, :])
        inv_lam = torch.where(lam < 0, 1.0 / torch.where(lam < 0, lam, -torch.ones_like(lam)), torch.zeros_like(lam))

        def forward(x: Tensor) -> Tensor:
            return torch.fft.irfft2(torch.fft.rfft2(x) * inv_lam.to(x.device), s=(n, n))

        def inverse(y: Tensor, x0: Tensor) -> Tensor:
            y = y - y.mean(dim=(-2, -1), keepdim=True)
            return laplacian(y, "periodic") + x0.mean(dim=(-2, -1), keepdim=True)
    else:
        h = 1.0 / (n + 1)
        j = torch.arange(1, n + 1, dtype=dtype, device=device)
        S = math.sqrt(2.0 / (n + 1)) * torch.sin(math.pi * j[:, None] * j[None, :] / (n + 1))  # orthonormal DST-I
        s = torch.sin(math.pi * j / (2 * (n + 1))) ** 2
        lam = -(4.0 / h ** 2) * (s[:, None] + s[None, :])
        inv_lam = 1.0 / lam

        def forward(x: Tensor) -> Tensor:
            Sx = S.to(x)
            return Sx @ ((Sx @ x @ Sx) * inv_lam.to(x)) @ Sx

        def inverse(y: Tensor, x0: Tensor) -> Tensor:
            return laplacian(y, "dirichlet")

    x_true = random_field((n, n), corr=corr, seed=seed, dtype=dtype, device=device)
    y_true = forward(x_true)
    target = y_true
    if noise > 0:
        g = torch.Generator().manual_seed(seed + 1)
        target = y_true + noise * y_true.std() * torch.randn(n, n, generator=g, dtype=torch.float64).to(y_true)
    prob = Problem(forward, target, inverse, name=f"poisson-2d {n}x{n} {bc}")
    prob.x_true, prob.y_true = x_true, y_true
    prob.x0 = torch.zeros(n, n, dtype=dtype, device=device)
    prob.eigenvalues = lam
    prob.params = {"n": n, "bc": bc, "corr": corr, "seed": seed, "noise": noise}
    return prob
