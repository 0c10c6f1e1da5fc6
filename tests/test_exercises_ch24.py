"""Independent checks of the exercise solutions of chapters 2-4 (and of the hand-written
updates the notebooks compare with ``physgrad.updates``).

Each test recomputes an answer from its closed form or from a few lines of ``torch.func`` and
compares it with what physgrad returns; the notebooks' collapsed solution cells make the same
assertions."""

import math

import pytest
import torch
from torch.func import grad, hessian, jacrev

import physgrad
from physgrad import theory, updates
from physgrad.problems.toy import linear, toy, toy_x0

F64 = torch.float64
X0 = toy_x0()
PURE = dict(line_search=None)


def _t(*v):
    return torch.tensor(v, dtype=F64)


def _toy_forward(x):
    return torch.stack([x[0], x[1] ** 2])


# ---------------------------------------------------------------- chapter 2
def test_ch2_linear_loss_step_and_change():
    c, eta = 20.0, 0.1
    g = grad(lambda x: c * x)(torch.tensor(0.0, dtype=F64)).item()
    step = -eta * g
    assert step == pytest.approx(-2.0)
    assert c * step == pytest.approx(-40.0)


def test_ch2_millimetres_shrink_factor():
    s = _t(1000.0, 1.0)
    d_mm = updates.gd(theory.rescale_inputs(toy(), s), X0 * s, 0.01) / s
    d_m = updates.gd(toy(), X0, 0.01)
    assert (d_m[0] / d_mm[0]).item() == pytest.approx(1e6, rel=1e-9)


def test_ch2_first_gd_step():
    # grad L = (x1, 2 x2^3) = (3, 54)
    assert updates.gd(toy(), X0, 0.01).tolist() == pytest.approx([-0.03, -0.54])


def _gd_does_not_blow_up(eta, c, steps=100):
    r = physgrad.optimize(toy(c), X0, "gd", steps=steps, step_size=eta, on_nonfinite="stop")
    return r.nit == steps and r.losses[-1].item() < r.losses[0].item()


@pytest.mark.parametrize("c", [1.0, 10.0])
def test_ch2_largest_stable_learning_rate(c):
    # x2 <- x2 (1 - 2 eta c^2 x2^2): from x2 = 3 the first step overshoots to |x2| > 3 once
    # eta > 1 / (9 c^2); the x1 part only needs eta < 2 / c^2.
    eta_star = 1.0 / (9.0 * c * c)
    assert _gd_does_not_blow_up(0.999 * eta_star, c)
    assert not _gd_does_not_blow_up(1.001 * eta_star, c)


def test_ch2_gd_from_scratch_matches_and_public_book_end_point():
    def step(x, eta):
        return -eta * jacrev(_toy_forward)(x).T @ _toy_forward(x)

    assert torch.allclose(step(X0, 0.02), updates.gd(toy(), X0, 0.02), rtol=0, atol=1e-12)
    x = X0.clone()
    for _ in range(10):
        x = x + step(x, 0.02)
    # the public book (loss without the 1/2, eta = 0.01) prints (2.451, 0.962)
    assert x.tolist() == pytest.approx([2.451, 0.962], abs=5e-4)


# ---------------------------------------------------------------- chapter 3
@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
def test_ch3_newton_step_independent_of_c(c):
    dx = updates.newton(toy(c), X0, 1.0, **PURE)
    assert dx.tolist() == pytest.approx([-3.0, -1.0], abs=1e-12)


def test_ch3_hessian_memory():
    n = 10**6
    assert 8 * n * n == 8e12


def test_ch3_change_in_y_from_the_newton_step():
    x0, k = _t(1.0), 0.25
    p = physgrad.Problem(lambda x: x + k * (x - x0) ** 2, torch.zeros(1, dtype=F64))
    # d2L/dx2 = L'' g'^2 + L' g'' = 1 + 2k, g' = 1 at x0: dy = g' dx = -1/(1 + 2k)
    dx = updates.newton(p, x0, 1.0, **PURE)
    assert p.jvp(x0, dx).item() == pytest.approx(-1.0 / (1.0 + 2 * k))
    # Newton computed in y itself (L = y^2 / 2 at y = 1) asks for -1, and so does IG's change
    assert p.jvp(x0, updates.ig(p, x0, 1.0)).item() == pytest.approx(-1.0)


def test_ch3_matrix_composite_hessian():
    def y_of(x):
        return torch.stack([x[0] * x[1], torch.sin(x[1])])

    y_t, x = _t(1.0, 0.5), _t(0.7, -1.3)
    J, r = jacrev(y_of)(x), y_of(x) - y_t
    curv = sum(r[i] * hessian(lambda x, i=i: y_of(x)[i])(x) for i in range(2))
    H = hessian(lambda x: 0.5 * ((y_of(x) - y_t) ** 2).sum())(x)
    assert torch.allclose(H, J.T @ J + curv, rtol=0, atol=1e-12)
    assert curv.abs().max() > 0.1


def test_ch3_newton_from_scratch_and_public_book_end_point():
    def loss(x):
        return 0.5 * (_toy_forward(x) ** 2).sum()

    def step(x, eta):
        return -eta * torch.linalg.solve(hessian(loss)(x), grad(loss)(x))

    assert torch.allclose(step(X0, 1 / 3), updates.newton(toy(), X0, 1 / 3, **PURE),
                          rtol=0, atol=1e-12)
    x = X0.clone()
    for _ in range(10):
        x = x + step(x, 1 / 3)
    assert x.tolist() == pytest.approx([0.052, 0.924], abs=5e-4)


def test_ch3_newton_iterates_scale_invariant_bfgs_not():
    def path(method, c, **opts):
        return physgrad.optimize(toy(c), X0, method, steps=15, step_size=1.0, **opts).xs

    ref = path("newton", 1.0, **PURE)
    for c in (0.1, 10.0):
        assert torch.allclose(path("newton", c, **PURE), ref, rtol=0, atol=1e-12)
    # BFGS starts from B0 = I: its first direction is -grad L, which grows like c^2
    b_small = path("bfgs", 0.1, line_search="wolfe")
    b_big = path("bfgs", 10.0, line_search="wolfe")
    assert (b_small - b_big).norm(dim=1).max() > 0.1


# ---------------------------------------------------------------- chapter 4
def test_ch4_ig_step():
    assert updates.ig(toy(), X0, 0.5).tolist() == pytest.approx([-1.5, -0.75])


def test_ch4_fixed_dy_scales_with_inverse_c():
    prob = linear(torch.tensor([[4.0]], dtype=F64), torch.zeros(1, dtype=F64))
    dx = physgrad.linalg.pinv_solve(prob.jacobian(torch.ones(1, dtype=F64)), _t(-1.0))
    assert dx.item() == pytest.approx(-0.25)


def test_ch4_minimum_norm_step():
    row = physgrad.Problem(lambda x: x.sum().reshape(1), _t(2.0))
    dx = updates.ig(row, torch.zeros(2, dtype=F64), 1.0)
    assert dx.tolist() == pytest.approx([1.0, 1.0])


def test_ch4_ig_from_scratch_and_end_point():
    def step(x, eta):
        return torch.linalg.pinv(jacrev(_toy_forward)(x)) @ (-eta * _toy_forward(x))

    assert torch.allclose(step(X0, 0.5), updates.ig(toy(), X0, 0.5), rtol=0, atol=1e-12)
    x = X0.clone()
    for _ in range(10):
        x = x + step(x, 0.3)
    # closed form: x1 = 3 * 0.7^10, x2 = 3 * (1 - 0.3/2)^10
    assert x.tolist() == pytest.approx([3 * 0.7**10, 3 * 0.85**10], rel=1e-12)
    assert x.tolist() == pytest.approx([0.0847, 0.591], abs=5e-4)


def test_ch4_own_problem_ig_against_pg():
    def forward(x):
        return torch.stack([x[0] * x[1], x[1]])

    def inverse(y, x_start):
        return torch.stack([y[0] / y[1], y[1]])

    prob = physgrad.Problem(forward, _t(4.0, 1.0), inverse)
    start = _t(1.0, 2.0)
    pg = physgrad.optimize(prob, start, "pg", steps=1, step_size=1.0)
    assert pg.x.tolist() == pytest.approx([4.0, 1.0], abs=1e-14)
    # IG: J = [[x2, x1], [0, 1]] = [[2, 1], [0, 1]], dy = (2, -1) -> dx = (1.5, -1)
    ig = physgrad.optimize(prob, start, "ig", steps=2, step_size=1.0)
    assert ig.xs[1].tolist() == pytest.approx([2.5, 1.0], abs=1e-14)
    # second step: J = [[1, 2.5], [0, 1]], dy = (1.5, 0) -> dx = (1.5, 0)
    assert ig.xs[2].tolist() == pytest.approx([4.0, 1.0], abs=1e-14)
