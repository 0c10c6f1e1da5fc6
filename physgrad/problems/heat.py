r"""The heat equation as an inverse problem (chapter 7, eqs. ``heat-forward`` and ``heat-inverse``).

Given the initial temperature ``x = u(·, 0)`` on a periodic grid, the simulator returns the
state after time ``T``, ``y = u(·, T)``, of ``∂_t u = ν ∇² u``. In Fourier space every mode
decays independently and the solution is exact (no time stepping):

.. math:: \hat y_k = e^{-\nu |k|^2 T}\, \hat x_k .

The inverse problem "which initial state produced this blurred field?" is badly conditioned:
the singular values of ``P`` are the factors ``d_k = e^{-\nu |k|^2 T}``, which for ``νT = 8`` on a
unit-spaced grid span from 1 down to about ``e^{-8π^2} ≈ 10^{-34}`` in 1-D and ``e^{-16π^2} ≈ 10^{-69}`` in 2-D (Holl et al. 2022).

Local inverse (the choice documented in chapter 7): backward diffusion ``1/d_k`` would amplify
round-off by up to ``10^{34}``, so each frequency is inverted with Tikhonov damping ``ε``,

.. math:: P^{-1}(y; x_0) = x_0 + \mathcal F^{-1}\Big[\frac{d_k}{d_k^2 + ε}\,
          \big(\hat y_k - d_k \hat x_{0,k}\big)\Big] ,

i.e. the minimizer of ``||P(x) − y||² + ε||x − x_0||²``. Frequencies with ``d_k² ≫ ε`` are
inverted exactly; those with ``d_k² ≪ ε`` keep their value from ``x_0`` (the closest pre-image);
the largest amplification is ``1/(2√ε)``. Repeated PG steps with this inverse are iterated
Tikhonov regularization: the error in mode ``k`` shrinks by ``ε/(d_k² + ε)`` per step.

Grid spacing is 1 by default (domain length ``n``), the setting of Holl et al.; pass
``length`` to change it. Forward and inverse act on the last one (``heat_1d``) or two
(``heat_2d``) dimensions, so leading batch dimensions work.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..problem import Problem

__all__ = ["heat_1d", "heat_2d", "decay_factors", "random_field", "random_boxes"]

Tensor = torch.Tensor


def _wavenumbers(shape, length, dtype, device):
    """|k|^2 on the rfft grid of a periodic box with ``shape`` points and side ``length``."""
    ks = []
    for i, n in enumerate(shape):
        dx = length[i] / n
        if i == len(shape) - 1:
            f = torch.fft.rfftfreq(n, d=dx, dtype=dtype, device=device)
        else:
            f = torch.fft.fftfreq(n, d=dx, dtype=dtype, device=device)
        ks.append(2 * math.pi * f)
    grids = torch.meshgrid(*ks, indexing="ij")
    return sum(g ** 2 for g in grids)


def decay_factors(shape, nu_T: float, length=None, dtype=torch.float64, device=None) -> Tensor:
    r"""``d_k = exp(−ν T |k|^2)`` on the rfft grid (the singular values of the heat simulator)."""
    length = [float(n) for n in shape] if length is None else [float(length)] * len(shape)
    return torch.exp(-nu_T * _wavenumbers(shape, length, dtype, device))


def random_field(shape, corr: float = 4.0, seed: int = 0, dtype=torch.float64, device=None) -> Tensor:
    r"""A smooth periodic random field with a Gaussian spectrum ``exp(−(|k|·corr)²/2)``
    (``corr`` in grid cells), zero mean and unit standard deviation, from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(*shape, generator=g, dtype=torch.float64)
    k2 = _wavenumbers(shape, [float(n) for n in shape], torch.float64, None)
    dims = tuple(range(-len(shape), 0))
    f = torch.fft.irfftn(torch.fft.rfftn(white, dim=dims) * torch.exp(-0.5 * k2 * corr ** 2), s=shape, dim=dims)
    f = f - f.mean()
    return (f / f.std()).to(dtype=dtype, device=device)


def random_boxes(shape, count: int = 8, size=(0.1, 0.35), seed: int = 0, dtype=torch.float64,
                 device=None) -> Tensor:
    r"""A sharp-edged periodic field: the sum of ``count`` axis-aligned boxes (intervals in 1-D)
    with random corners, side lengths between ``size[0]`` and ``size[1]`` of the domain and
    amplitudes uniform in ``[−1, 1]``, as in the heat experiment of Holl et al. (2022); zero mean and
    unit standard deviation, from a seeded generator. Its edges carry energy at every wavenumber,
    which is exactly what gradient-based reconstructions lose."""
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(*shape, dtype=torch.float64)
    for _ in range(count):
        box = torch.ones(*shape, dtype=torch.float64)
        for ax, n in enumerate(shape):
            lo = int(torch.randint(0, n, (1,), generator=g))
            w = max(1, int(round(n * (size[0] + (size[1] - size[0]) * float(torch.rand(1, generator=g))))))
            mask = torch.zeros(n, dtype=torch.float64)
            mask[(torch.arange(lo, lo + w) % n)] = 1.0
            view = [1] * len(shape)
            view[ax] = n
            box = box * mask.reshape(view)
        f += (2 * float(torch.rand(1, generator=g)) - 1) * box
    f = f - f.mean()
    return (f / f.std()).to(dtype=dtype, device=device)


def _heat(shape, nu_T, length, inv_damping, corr, seed, noise, dtype, device, name, field="smooth"):
    ndim = len(shape)
    dims = tuple(range(-ndim, 0))
    d = decay_factors(shape, nu_T, length, dtype, device)
    eps = float(inv_damping)
    if eps < 0:
        raise ValueError(f"inv_damping must be >= 0, got {eps}")
    cache = {}

    def factors(t):
        key = (t.dtype, t.device)
        if key not in cache:
            dd = d.to(dtype=t.dtype if not t.is_complex() else d.dtype, device=t.device)
            cache[key] = (dd, dd / (dd ** 2 + eps) if eps > 0 else 1.0 / dd)
        return cache[key]

    def forward(x: Tensor) -> Tensor:
        dd, _ = factors(x)
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * dd, s=shape, dim=dims)

    def inverse(y: Tensor, x0: Tensor) -> Tensor:
        dd, rinv = factors(y)
        r = torch.fft.rfftn(y, dim=dims) - dd * torch.fft.rfftn(x0, dim=dims)
        return x0 + torch.fft.irfftn(rinv * r, s=shape, dim=dims)

    if field == "smooth":
        x_true = random_field(shape, corr=corr, seed=seed, dtype=dtype, device=device)
    elif field == "boxes":
        x_true = random_boxes(shape, seed=seed, dtype=dtype, device=device)
    else:
        raise ValueError(f"field must be 'smooth' or 'boxes', got {field!r}")
    y_true = forward(x_true)
    target = y_true
    if noise > 0:
        g = torch.Generator().manual_seed(seed + 1)
        target = y_true + noise * torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    prob = Problem(forward, target, inverse, name=name)
    prob.x_true, prob.y_true = x_true, y_true
    prob.x0 = torch.zeros(shape, dtype=dtype, device=device)
    prob.params = {"n": shape[0], "nu_T": nu_T, "inv_damping": eps, "corr": corr, "seed": seed, "noise": noise,
                   "field": field,
                   "length": length if length is not None else shape[0]}
    prob.decay = d
    return prob


def heat_1d(n: int = 256, nu_T: float = 8.0, length: Optional[float] = None, inv_damping: float = 1e-10,
            corr: float = 4.0, seed: int = 0, noise: float = 0.0, dtype=torch.float64, device=None,
            field: str = "smooth") -> Problem:
    r"""1-D periodic heat equation, ``y = u(T)`` from ``x = u(0)`` on ``n`` points (eq. ``heat-forward``).

    Returns a :class:`~physgrad.problem.Problem` with the damped spectral inverse of the module docstring
    (``inv_damping`` = ``ε``), and extra attributes ``x_true`` (a smooth random field,
    :func:`random_field` with ``corr`` and ``seed``), ``y_true = P(x_true)``, ``x0`` (zeros, the
    usual start), ``decay`` (the factors ``d_k``) and ``params``. The target is ``y_true`` plus
    Gaussian noise of standard deviation ``noise``. ``field="boxes"`` draws ``x_true`` from
    :func:`random_boxes` (sharp edges) instead.
    """
    return _heat((n,), nu_T, length, inv_damping, corr, seed, noise, dtype, device, f"heat-1d N={n}", field)


def heat_2d(n: int = 64, nu_T: float = 8.0, length: Optional[float] = None, inv_damping: float = 1e-10,
            corr: float = 3.0, seed: int = 0, noise: float = 0.0, dtype=torch.float64, device=None,
            field: str = "smooth") -> Problem:
    r"""2-D periodic heat equation on an ``n × n`` grid; ``νT = 8`` with unit grid spacing is the
    strongly ill-conditioned case of Holl et al. (2022). Same attributes and ``field`` option as
    :func:`heat_1d`."""
    return _heat((n, n), nu_T, length, inv_damping, corr, seed, noise, dtype, device, f"heat-2d {n}x{n}",
                 field)
