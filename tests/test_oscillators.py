"""Tests of physgrad.problems.oscillators (chapter 8 control experiment)."""

import pytest
import torch

from physgrad.problems.oscillators import oscillators

D = torch.float64


def test_free_linear_chain_matches_matrix_power():
    osc = oscillators(n=2, steps=24, dt=0.5, coupling=0.2)
    s0 = osc.sample_states(3, seed=1)
    y = osc.simulate(torch.zeros(3, osc.x_size, dtype=D), s0)
    # one symplectic-Euler step as a matrix: p' = p - dt K q ; q' = q + dt p'
    K = torch.tensor([[1.2, -0.2], [-0.2, 1.2]], dtype=D)
    I = torch.eye(2, dtype=D)
    step = torch.cat([torch.cat([I - 0.25 * K, 0.5 * I], 1), torch.cat([-0.5 * K, I], 1)], 0)
    expect = s0 @ torch.linalg.matrix_power(step, 24).T
    torch.testing.assert_close(y, expect)


def test_symplectic_euler_conserves_a_modified_energy_without_control():
    # for the linear chain the map has determinant 1 (area preserving)
    osc = oscillators()
    J = torch.func.jacrev(lambda s: osc.simulate(torch.zeros(1, 48, dtype=D), s[None])[0])(
        torch.ones(4, dtype=D))
    assert abs(torch.linalg.det(J).item() - 1.0) < 1e-10


def test_linear_inverse_is_exact_and_closest():
    osc = oscillators()
    g = torch.Generator().manual_seed(0)
    s0 = osc.sample_states(5, seed=2)
    u0 = torch.randn(5, osc.x_size, dtype=D, generator=g)
    u = osc.inverse(s0, u0, s0)
    torch.testing.assert_close(osc.simulate(u, s0), s0)
    # closest to u0: the change is orthogonal to the null space of G, i.e. in the row space
    G = torch.func.jacrev(lambda v: osc.simulate(v[None], s0[:1])[0])(u0[0])
    du = u[0] - u0[0]
    torch.testing.assert_close(du, torch.linalg.pinv(G) @ (G @ du))


def test_nonlinear_inverse_and_problem_wrapper():
    osc = oscillators(nonlinear=True, coupling=0.2)
    s0 = 0.5 * osc.sample_states(2, seed=3)
    u0 = torch.zeros(2, osc.x_size, dtype=D)
    u = osc.inverse(s0, u0, s0)
    assert (osc.simulate(u, s0) - s0).abs().max().item() < 1e-8
    prob = osc.problem(s0[0])
    assert prob.loss(u[0]).item() < 1e-15
    x = prob.apply_inverse(s0[0], u0[0])
    torch.testing.assert_close(x, u[0])


def test_rk4_free_chain_matches_matrix_exponential_to_rk4_order():
    # linear chain, no control: RK4 with dt = 0.5 against the exact flow exp(A t)
    osc = oscillators(n=2, steps=24, dt=0.5, coupling=0.2, integrator="rk4", actuated="last")
    assert osc.x_size == 24
    s0 = osc.sample_states(3, seed=2, uniform=True)
    assert float(s0.abs().max()) <= 1.0
    y = osc.simulate(torch.zeros(3, 24, dtype=D), s0)
    K = torch.tensor([[1.2, -0.2], [-0.2, 1.2]], dtype=D)
    Z, I = torch.zeros(2, 2, dtype=D), torch.eye(2, dtype=D)
    A = torch.cat([torch.cat([Z, I], 1), torch.cat([-K, Z], 1)], 0)
    exact = s0 @ torch.linalg.matrix_exp(12.0 * A).T
    err = (y - exact).abs().max().item()
    assert 1e-6 < err < 2e-2  # RK4's global error ~ dt^4: small but not round-off
    # the RK4 one-step matrix is the degree-4 Taylor polynomial of exp(A dt)
    h = 0.5 * A
    M = I4 = torch.eye(4, dtype=D)
    term = I4
    for k in range(1, 5):
        term = term @ h / k
        M = M + term
    torch.testing.assert_close(y, s0 @ torch.linalg.matrix_power(M, 24).T)


def test_last_mass_actuation_pushes_only_the_last_mass():
    osc = oscillators(n=2, steps=1, dt=0.5, integrator="symplectic", actuated="last")
    s0 = torch.zeros(1, 4, dtype=D)
    y = osc.simulate(torch.ones(1, 1, dtype=D), s0)
    torch.testing.assert_close(y, torch.tensor([[0.0, 0.25, 0.0, 0.5]], dtype=D))
    # the exact local inverse still reaches any final state (24 controls > 4 states)
    osc = oscillators(integrator="rk4", actuated="last")
    s0 = osc.sample_states(4, seed=0, uniform=True)
    u = osc.inverse(s0, torch.zeros(4, 24, dtype=D), s0)
    torch.testing.assert_close(osc.simulate(u, s0), s0)


def test_uniform_states_on_the_reference_notebooks_range():
    """low=0 draws from [0, 1)^4 as the pbdl-book notebook's np.random.rand; the default stays
    [-1, 1) and is the same affine map of the same uniform numbers."""
    osc = oscillators(integrator="rk4", actuated="last")
    a = osc.sample_states(2000, seed=5, uniform=True, low=0.0)
    b = osc.sample_states(2000, seed=5, uniform=True)
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.02
    assert torch.allclose(b, 2 * a - 1, atol=1e-15)
    with pytest.raises(ValueError, match="low"):
        osc.sample_states(3, uniform=True, low=1.0)
