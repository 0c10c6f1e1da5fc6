"""Burgers: mean conservation, linear (small-amplitude) limit, inverses, PG convergence."""

import math

import pytest
import torch

import physgrad
from physgrad.problems.burgers import burgers_1d


def test_mean_is_conserved():
    prob = burgers_1d()
    x = prob.x_true
    y = prob.forward(x)
    assert abs(y.mean().item() - x.mean().item()) < 1e-13
    assert abs(prob.target.mean().item() - prob.x0.mean().item()) < 1e-13


def test_small_amplitude_limit_is_the_heat_equation():
    n, nu, dt, steps = 64, 0.05, 0.01, 10
    prob = burgers_1d(n=n, nu=nu, dt=dt, steps=steps)
    g = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    eps = 1e-7
    x = eps * torch.sin(3 * g)
    # semi-implicit diffusion: factor 1/(1 + nu k^2 dt) per step; advection is O(eps^2)
    expected = x / (1 + nu * 9 * dt) ** steps
    assert torch.allclose(prob.forward(x), expected, atol=1e-6 * eps, rtol=0)  # advection adds ~ eps^2 k T


def test_constant_state_is_a_fixed_point_and_batched():
    prob = burgers_1d(n=32)
    c = torch.full((32,), 0.8, dtype=torch.float64)
    assert torch.allclose(prob.forward(c), c, atol=1e-14)
    xb = torch.stack([prob.x_true[:32] * 0 + 0.3, c])
    assert torch.allclose(prob.forward(xb)[1], c, atol=1e-14)


def test_approximate_inverse_is_close():
    prob = burgers_1d()
    x_rec = prob.apply_inverse(prob.target, prob.x0)
    rel_y = ((prob.forward(x_rec) - prob.target).norm() / prob.target.norm()).item()
    assert rel_y < 1e-4


def test_pg_with_both_inverses_reaches_1e_minus_6():
    prob = burgers_1d()
    res = physgrad.optimize(prob, prob.x0, method="pg", steps=10, tol=1e-6)
    assert res.converged
    prob_n = burgers_1d(inverse="numerical")
    res_n = physgrad.optimize(prob_n, prob_n.x0, method="pg", steps=10, tol=1e-6)
    assert res_n.converged


def test_bad_options():
    with pytest.raises(ValueError):
        burgers_1d(inverse="exact")
    with pytest.raises(ValueError):
        burgers_1d(inv_max_amp=0.5)
    assert burgers_1d(inverse=None).inverse is None
