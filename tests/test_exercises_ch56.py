"""Checks of the coding exercises and cross-checks of chapters 5 and 6.

Each test recomputes an answer from a closed form (plain Python/math) or from a hand-written
update and compares it with what physgrad returns; the notebooks' collapsed solution cells make
the same assertions."""

import math

import numpy as np
import pytest
import torch

import physgrad
from physgrad import theory, updates
from physgrad.problems.toy import toy, toy_x0

X0 = toy_x0()


def _forward(x):
    return torch.stack([x[0], x[1] ** 2])


def _local_inverse(y, x_near):
    side = 1.0 if x_near[1] >= 0 else -1.0
    return torch.stack([y[0], side * y[1].sqrt()])


# ---------------------------------------------------------------- chapter 5
@pytest.mark.parametrize("eta", [0.1, 0.5, 0.9])
def test_ch5_from_scratch_pg_and_ig(eta):
    y0 = _forward(X0)
    dy = -eta * y0
    dx_pg = _local_inverse(y0 + dy, X0) - X0
    dx_ig = torch.linalg.solve(torch.func.jacrev(_forward)(X0), dy)
    assert torch.allclose(updates.pg(toy(), X0, eta), dx_pg, rtol=0, atol=1e-14)
    assert torch.allclose(updates.ig(toy(), X0, eta), dx_ig, rtol=0, atol=1e-14)
    # closed forms: x2 -> 3 sqrt(1 - eta) (PG) and x2 -> 3 (1 - eta / 2) (IG)
    assert dx_pg[1].item() == pytest.approx(3 * math.sqrt(1 - eta) - 3, abs=1e-14)
    assert dx_ig[1].item() == pytest.approx(-1.5 * eta, abs=1e-14)


def test_ch5_pg_is_the_secant_step():
    # 1-D x2 component at x2 = 3, eta = 0.5: y2 goes from 9 to 4.5
    dx2 = updates.pg(toy(), X0, 0.5)[1].item()
    chord = (4.5 - 9.0) / dx2
    assert chord == pytest.approx(math.sqrt(4.5) + 3.0, rel=1e-12)  # (a^2 - b^2)/(a - b)
    assert chord < 6.0  # below the tangent slope 2 x2 that IG uses


@pytest.mark.parametrize("method, eta, end", [
    ("gd", 0.02, ("2.451", "0.962")),        # public book: GD eta = 0.01 without the 1/2
    ("newton", 1 / 3, ("0.052", "0.924")),
    ("pg", 0.3, ("0.0847", "0.504")),
])
def test_ch5_public_book_end_points(method, eta, end):
    opts = {"line_search": None} if method == "newton" else {}
    r = physgrad.optimize(toy(), X0, method, steps=10, step_size=eta, **opts)
    for ours, theirs in zip(r.x.tolist(), end):
        assert abs(ours - float(theirs)) <= 0.5 * 10.0 ** -len(theirs.split(".")[1])


def test_ch5_pg_end_point_closed_form():
    # PG with eta: y -> (1 - eta)^k y0, so x = (3 (0.7)^10, 3 sqrt(0.7)^10)
    r = physgrad.optimize(toy(), X0, "pg", steps=10, step_size=0.3)
    assert r.x.tolist() == pytest.approx([3 * 0.7 ** 10, 3 * 0.7 ** 5], rel=1e-12)


def test_ch5_composition_consistency():
    prob = toy()

    def h(x):
        return torch.stack([2 * x[0], x[1] ** 3])

    def h_inv(z, x_near):
        return torch.stack([z[0] / 2, z[1] ** (1 / 3)])

    chain = physgrad.Problem(lambda x: prob.forward(h(x)), prob.target,
                             inverse=lambda y, xn: h_inv(prob.inverse(y, h(xn)), xn))
    x0 = torch.tensor([1.5, 3.0 ** (1 / 3)], dtype=torch.float64)
    z0, Jh = h(x0), torch.func.jacrev(h)(x0)
    # PG: the change in z equals the PG step computed in z, exactly
    dx = updates.pg(chain, x0, 0.7)
    assert torch.allclose(h(x0 + dx) - z0, updates.pg(prob, z0, 0.7), atol=1e-12)
    # IG: equal to first order
    dx = updates.ig(chain, x0, 0.7)
    assert torch.allclose(Jh @ dx, updates.ig(prob, z0, 0.7), atol=1e-12)
    # GD: the first-order change in z is -eta J J^T grad_z L, not -eta grad_z L
    dx = updates.gd(chain, x0, 0.01)
    gz = prob.grad(z0)
    assert torch.allclose(Jh @ dx, -0.01 * Jh @ Jh.T @ gz, atol=1e-12)
    assert not torch.allclose(Jh @ dx, updates.gd(prob, z0, 0.01), atol=1e-3)


def test_ch5_wrong_branch_exercise():
    two = toy(target=[0.0, 4.0])
    wrong = physgrad.Problem(two.forward, two.target,
                             inverse=lambda y, x_near: two.inverse(y, -x_near))
    right_run = physgrad.optimize(two, X0, "pg", steps=12, step_size=0.5)
    wrong_run = physgrad.optimize(wrong, X0, "pg", steps=12, step_size=0.5)
    assert torch.allclose(wrong_run.losses, right_run.losses, rtol=1e-12, atol=0)
    assert torch.sign(wrong_run.xs[:, 1]).tolist() == [(-1.0) ** k for k in range(13)]
    # y2 after 12 halvings of the residual: 4 + 5 / 2^12; the step crosses from -x2 to +x2
    x2 = math.sqrt(4 + 5 / 2 ** 12)
    last = (wrong_run.xs[-1] - wrong_run.xs[-2]).norm().item()
    assert last == pytest.approx(math.hypot(3 * 0.5 ** 11 - 3 * 0.5 ** 12,
                                            x2 + math.sqrt(4 + 5 / 2 ** 11)), rel=1e-12)
    assert right_run.x[1] > 0 and (right_run.xs[-1] - right_run.xs[-2]).norm() < 1e-3


# ---------------------------------------------------------------- chapter 6
def test_ch6_from_scratch_path_average():
    dy = -0.9 * _forward(X0)
    t, w = np.polynomial.legendre.leggauss(24)
    dinv = torch.func.jacrev(_local_inverse)
    avg = sum(0.5 * wk * dinv(_forward(X0) + 0.5 * (tk + 1) * dy, X0) @ dy
              for tk, wk in zip(t, w))
    assert torch.allclose(avg, updates.pg(toy(), X0, 0.9), rtol=0, atol=1e-10)
    assert torch.allclose(avg, theory.path_average_inverse_jacobian(toy(), X0, dy), atol=1e-10)
    assert avg[1].item() == pytest.approx(3 * math.sqrt(0.1) - 3, rel=1e-12)


def test_ch6_midpoint_rule_exercise():
    slope = torch.func.grad(lambda y2: y2.sqrt())
    err = {}
    for n in (8, 32, 128):
        mids = 9.0 - 8.0 * (torch.arange(n, dtype=torch.float64) + 0.5) / n
        err[n] = abs(sum(slope(m) for m in mids).item() / n - 0.25)
    assert 14 < err[8] / err[32] < 17 and 14 < err[32] / err[128] < 17


@pytest.mark.parametrize("h", [1e-3, 1.0, 2.0, 4.0, 8.0])
def test_ch6_error_bound(h):
    y0 = _forward(X0)
    dy = torch.tensor([0.0, -h], dtype=torch.float64)
    gap = (_local_inverse(y0 + dy, X0) - theory.linear_inverse(toy(), X0, y0 + dy)).norm().item()
    assert gap == pytest.approx(abs(math.sqrt(9 - h) - 3 + h / 6), rel=1e-9, abs=1e-15)
    d2 = torch.func.hessian(_local_inverse)
    curv = max(d2(y0 + s * dy, X0).norm().item() for s in np.linspace(0, 1, 51))
    assert curv == pytest.approx(0.25 * (9 - h) ** -1.5, rel=1e-12)  # worst at the end
    bound = 0.5 * curv * h * h
    assert gap <= bound
    if h == 8.0:
        assert gap / bound == pytest.approx(1 / 12, rel=1e-12)
    if h == 1e-3:
        assert gap / bound > 0.999


def test_ch6_time_reversal_inverse():
    def leapfrog(state, dt=0.1, n=100):
        q, p = state[0], state[1]
        for _ in range(n):
            p = p - 0.5 * dt * torch.sin(q)
            q = q + dt * p
            p = p - 0.5 * dt * torch.sin(q)
        return torch.stack([q, p])

    flip = torch.tensor([1.0, -1.0], dtype=torch.float64)
    start = torch.tensor([1.0, 0.0], dtype=torch.float64)
    target = torch.tensor([-0.5, 0.8], dtype=torch.float64)
    # the energy p^2/2 - cos q is nearly conserved by leapfrog, a check independent of reversal
    energy = lambda s: 0.5 * s[1] ** 2 - torch.cos(s[0])  # noqa: E731
    assert abs(energy(leapfrog(start)) - energy(start)) < 1e-2
    assert torch.allclose(flip * leapfrog(flip * leapfrog(start)), start, rtol=0, atol=1e-12)
    prob = physgrad.Problem(leapfrog, target, inverse=lambda y, x: flip * leapfrog(flip * y))
    assert torch.allclose(leapfrog(start + updates.pg(prob, start, 1.0)), target, atol=1e-12)
    assert (leapfrog(start + updates.ig(prob, start, 1.0)) - target).norm() > 0.1
