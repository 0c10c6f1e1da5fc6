"""The numerical local inverse against analytic inverses."""

import math

import pytest
import torch

import physgrad
from physgrad.inverse import numerical_inverse
from physgrad.problems.toy import rosenbrock, toy


def toy_forward(x):
    return torch.stack([x[..., 0], x[..., 1] ** 2], dim=-1)


@pytest.mark.parametrize("solver", ["dense", "lsqr", "cg"])
@pytest.mark.parametrize("y,x0", [((1.0, 4.0), (3.0, 3.0)), ((-2.0, 0.25), (3.0, -3.0)), ((0.5, 9.0), (0.1, 0.2))])
def test_toy_analytic_inverse(solver, y, x0):
    inv = numerical_inverse(toy_forward, solver=solver, tol=1e-14, iters=60)
    y = torch.tensor(y, dtype=torch.float64)
    x0 = torch.tensor(x0, dtype=torch.float64)
    x = inv(y, x0)
    exact = torch.tensor([y[0].item(), math.copysign(math.sqrt(y[1].item()), x0[1].item())], dtype=torch.float64)
    assert torch.allclose(x, exact, atol=1e-10, rtol=0)
    assert inv.last_info["converged"]


def test_matches_toy_problem_inverse_and_pg_runs():
    prob = toy()
    inv = numerical_inverse(prob.forward, tol=1e-14, iters=60)
    x0 = torch.tensor([3.0, 3.0], dtype=torch.float64)
    y = prob.forward(x0) * 0.5
    assert torch.allclose(inv(y, x0), prob.inverse(y, x0), atol=1e-10, rtol=0)
    num = physgrad.Problem(prob.forward, prob.target, inv, name="toy, numerical inverse")
    res = physgrad.optimize(num, x0, method="pg", steps=8, step_size=0.5)
    ref = physgrad.optimize(prob, x0, method="pg", steps=8, step_size=0.5)
    assert torch.allclose(res.xs, ref.xs, atol=1e-9, rtol=0)


def test_rosenbrock_global_inverse():
    prob = rosenbrock()
    inv = numerical_inverse(prob.forward, tol=1e-14, iters=100)
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    y = torch.tensor([0.3, -0.4], dtype=torch.float64)
    assert torch.allclose(inv(y, x0), prob.inverse(y, x0), atol=1e-10, rtol=0)


def test_failure_raises_or_returns_best():
    # y2 < 0 has no real pre-image under x2^2: the residual cannot reach zero
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    x0 = torch.tensor([3.0, 3.0], dtype=torch.float64)
    with pytest.raises(physgrad.InverseSimulatorError, match="did not converge"):
        numerical_inverse(toy_forward)(y, x0)
    inv = numerical_inverse(toy_forward, on_fail="best")
    x = inv(y, x0)
    assert not inv.last_info["converged"]
    assert abs(x[0].item() - 1.0) < 1e-8 and abs(x[1].item()) < 0.1  # best: x1 exact, x2 -> 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        numerical_inverse(toy_forward, solver="qr")
    with pytest.raises(ValueError):
        numerical_inverse(toy_forward, on_fail="ignore")


def test_one_levenberg_marquardt_serves_ig_auto_and_the_numerical_inverse():
    import physgrad.inverse
    import physgrad.lm
    import physgrad.updates

    assert physgrad.inverse.lm_step is physgrad.updates.lm_step is physgrad.lm.lm_step
    assert physgrad.updates.LMState is physgrad.lm.LMState


def test_numerical_inverse_from_a_start_near_zero_takes_the_gauss_newton_step_first():
    """A trust region started at MINPACK's factor * ||x0|| is ~1e-10 here, and 10 iterations of
    doubling it never reach the solution; the inverse starts from the Gauss-Newton step instead."""
    D = torch.float64
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.5]], dtype=D)

    def P(x):
        return A @ x + 0.1 * x ** 3

    x_true = torch.tensor([0.7, -0.4, 1.1], dtype=D)
    inv = numerical_inverse(P, iters=10, tol=1e-12)
    x = inv(P(x_true), torch.full((3,), 1e-12, dtype=D))
    torch.testing.assert_close(x, x_true, rtol=1e-10, atol=1e-12)
    assert inv.last_info["converged"] and inv.last_info["iterations"] <= 6
