r"""Experiment 1 of chapter 8: learn ``x`` from ``y = x^2`` when the labels pick a random branch."""

from __future__ import annotations

import torch

from ..nn import mlp, train

__all__ = ["square", "square_inverse", "run"]


def square(x: torch.Tensor) -> torch.Tensor:
    return x ** 2


def square_inverse(y: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """Local inverse of ``x -> x^2``: the root on the branch of ``x0`` (``x0 = 0`` -> positive)."""
    sign = torch.where(x0 >= 0, torch.ones_like(x0), -torch.ones_like(x0))
    return sign * y.clamp_min(0).sqrt()


def run(method: str, n: int = 128, steps: int = 500, lr: float = 1e-2, hidden: int = 16,
        seed: int = 0, dtype=torch.float64, progress: bool = False):
    r"""Train a ``1 -> hidden -> hidden -> 1`` tanh network on ``y`` in ``[0.05, 1]``.

    The ground truth ``x_true = ±sqrt(y)`` has a random sign per sample (both branches are
    correct answers). Returns ``(y, x_pred, result)`` with the network's predictions ``x_pred``
    on the training inputs ``y`` (sorted). ``supervised`` averages the branches (``x ≈ 0``);
    ``adam`` (through the simulator) and ``sip`` (via the local inverse) settle on a branch.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.linspace(0.05, 1.0, n, dtype=dtype).reshape(n, 1)
    sign = torch.where(torch.rand(n, 1, generator=g, dtype=dtype) < 0.5, -1.0, 1.0).to(dtype)
    x_true = sign * y.sqrt()
    net = mlp([1, hidden, hidden, 1], seed=seed, dtype=dtype)
    res = train(net, y, y, square, method, steps=steps, lr=lr, x_true=x_true,
                inverse=square_inverse, seed=seed, progress=progress)
    with torch.no_grad():
        xp = net(y)
    return y, xp, res
