"""Poisson problem: exact inverse round-trips, eigenvalues, and the solution satisfies ∇²y = x."""

import math

import pytest
import torch

import physgrad
from physgrad.problems.poisson import laplacian, poisson_2d


@pytest.mark.parametrize("bc", ["periodic", "dirichlet"])
def test_forward_solves_the_discrete_poisson_equation(bc):
    prob = poisson_2d(n=32, bc=bc)
    x = prob.x_true
    y = prob.forward(x)
    lap = laplacian(y, bc)
    ref = x - x.mean() if bc == "periodic" else x
    assert torch.allclose(lap, ref, atol=1e-9 * ref.abs().max().item(), rtol=0)


@pytest.mark.parametrize("bc", ["periodic", "dirichlet"])
def test_exact_inverse_round_trips(bc):
    prob = poisson_2d(n=48, bc=bc)
    x0 = torch.full((48, 48), 0.7, dtype=torch.float64)
    x = prob.x_true + (0.7 if bc == "periodic" else 0.0)
    x_rec = prob.apply_inverse(prob.forward(x), x0)
    assert torch.allclose(x_rec, x, atol=1e-10, rtol=0)
    y = prob.target
    assert torch.allclose(prob.forward(prob.apply_inverse(y, x0)), y, atol=1e-14)


def test_single_mode_periodic_eigenvalue():
    n = 32
    prob = poisson_2d(n=n)
    g = torch.arange(n, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    x = torch.cos(2 * math.pi * 3 * X / n) * torch.cos(2 * math.pi * 2 * Y / n)
    lam = -(4 * n * n) * (math.sin(math.pi * 3 / n) ** 2 + math.sin(math.pi * 2 / n) ** 2)
    assert torch.allclose(prob.forward(x), x / lam, atol=1e-15)


def test_dirichlet_single_sine_mode():
    n = 20
    prob = poisson_2d(n=n, bc="dirichlet")
    j = torch.arange(1, n + 1, dtype=torch.float64)
    x = torch.sin(math.pi * 2 * j[:, None] / (n + 1)) * torch.sin(math.pi * 5 * j[None, :] / (n + 1))
    h = 1 / (n + 1)
    lam = -(4 / h ** 2) * (math.sin(math.pi * 2 / (2 * (n + 1))) ** 2 + math.sin(math.pi * 5 / (2 * (n + 1))) ** 2)
    assert torch.allclose(prob.forward(x), x / lam, atol=1e-15)


def test_periodic_mean_is_null_space_and_batched():
    prob = poisson_2d(n=16)
    assert prob.forward(torch.ones(16, 16, dtype=torch.float64)).abs().max() < 1e-15
    xb = torch.randn(2, 16, 16, dtype=torch.float64)
    yb = prob.forward(xb)
    assert torch.allclose(yb[1], prob.forward(xb[1]))
    with pytest.raises(ValueError):
        poisson_2d(bc="neumann")


@pytest.mark.parametrize("bc", ["periodic", "dirichlet"])
def test_pg_one_step(bc):
    prob = poisson_2d(n=32, bc=bc)
    res = physgrad.optimize(prob, prob.x0, method="pg", steps=3, tol=1e-12)
    assert res.converged and res.nit == 1
    assert torch.allclose(res.x, prob.x_true, atol=1e-9)
