"""Every update against its closed form on the book's toy problem y = (x1, x2^2), y* = 0, x0 = (3, 3),
plus the scale-invariance and one-step properties the book claims."""

import math

import numpy as np
import pytest
import torch

import physgrad
from physgrad import updates
from physgrad.problems.toy import linear, rosenbrock, toy, toy_x0

STEPS = 12


def closed_form(method, eta, steps=STEPS, x0=(3.0, 3.0)):
    """Trajectories derived by hand for L = 1/2 (x1^2 + x2^4):
    gd:     x1 <- (1-eta) x1,            x2 <- x2 - 2 eta x2^3
    newton: x1 <- (1-eta) x1,            x2 <- (1 - eta/3) x2          (H = diag(1, 6 x2^2))
    ig:     x1 <- (1-eta) x1,            x2 <- (1 - eta/2) x2          (J = diag(1, 2 x2))
    pg:     x1 <- (1-eta) x1,            x2 <- sqrt(1-eta) x2          (x2^2 <- (1-eta) x2^2)
    hig:    x1 <- (1-eta) x1,            x2 <- x2 - eta x2^2 / sqrt(2 x2)  (Sigma^-1/2)
    """
    x1, x2 = x0
    out = [(x1, x2)]
    for _ in range(steps):
        if method == "gd":
            x1, x2 = (1 - eta) * x1, x2 - 2 * eta * x2 ** 3
        elif method == "newton":
            x1, x2 = (1 - eta) * x1, (1 - eta / 3) * x2
        elif method == "ig":
            x1, x2 = (1 - eta) * x1, (1 - eta / 2) * x2
        elif method == "pg":
            x1, x2 = (1 - eta) * x1, math.sqrt(1 - eta) * x2
        elif method == "hig":
            x1, x2 = (1 - eta) * x1, x2 - eta * x2 ** 2 / math.sqrt(2 * x2)
        out.append((x1, x2))
    return np.array(out)


@pytest.mark.parametrize("method,eta", [("gd", 0.01), ("newton", 0.5), ("newton", 1.0), ("ig", 0.5),
                                        ("ig", 1.0), ("pg", 0.5), ("pg", 0.9), ("hig", 0.3)])
def test_toy_trajectory_matches_closed_form(method, eta):
    pure = {"line_search": None} if method in ("newton", "hig") else {}  # the textbook fixed step
    res = physgrad.optimize(toy(), toy_x0(), method, steps=STEPS, step_size=eta, **pure)
    assert res.xs.shape == (STEPS + 1, 2)
    np.testing.assert_allclose(res.xs.numpy(), closed_form(method, eta), rtol=1e-10, atol=1e-12)
    L = 0.5 * (res.xs[:, 0] ** 2 + res.xs[:, 1] ** 4)
    np.testing.assert_allclose(res.losses.numpy(), L.numpy(), rtol=1e-12)


def test_closed_form_newton_is_geometric():
    # Newton's x2 shrinks by exactly (1 - eta/3) per step: the closed form is (1-eta/3)^k * 3.
    res = physgrad.optimize(toy(), toy_x0(), "newton", steps=30, step_size=1.0, line_search=None)
    k = torch.arange(31, dtype=torch.float64)
    torch.testing.assert_close(res.xs[:, 1], 3 * (2 / 3) ** k, rtol=1e-12, atol=0)


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize("method", ["newton", "ig", "pg", "hig"])
def test_scale_invariance_of_inverted_methods(method, c):
    steps = 1 if method == "hig" else 10  # HIG's steps grow with sqrt(c): more would diverge at c=1e3
    pure = {"line_search": None} if method in ("newton", "hig") else {}
    ref = physgrad.optimize(toy(), toy_x0(), method, steps=steps, step_size=0.5, **pure)
    res = physgrad.optimize(toy().scaled(c), toy_x0(), method, steps=steps, step_size=0.5, **pure)
    if method == "hig":
        # HIG is only half-inverted: Sigma^{-1/2} leaves a factor sqrt(c) (it is *not* scale invariant)
        d_ref = ref.xs[1] - ref.xs[0]
        d = res.xs[1] - res.xs[0]
        torch.testing.assert_close(d, d_ref * math.sqrt(c), rtol=1e-10, atol=0)
    else:
        torch.testing.assert_close(res.xs, ref.xs, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(res.losses, ref.losses * c ** 2, rtol=1e-10, atol=1e-300)


@pytest.mark.parametrize("c", [1e-3, 1.0, 1e3])
def test_gd_first_step_scales_with_c_squared(c):
    eta = 1e-3
    d1 = updates.gd(toy(), toy_x0(), eta)
    dc = updates.gd(toy().scaled(c), toy_x0(), eta)
    torch.testing.assert_close(dc, d1 * c ** 2, rtol=1e-12, atol=0)
    assert torch.allclose(d1, torch.tensor([-3e-3, -54e-3], dtype=torch.float64))


def test_linear_problem_one_step():
    g = torch.Generator().manual_seed(0)
    n = 6
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(1, 4, n, dtype=torch.float64)) @ Q.T  # cond = 4
    x_true = torch.randn(n, generator=g, dtype=torch.float64)
    prob = linear(A, A @ x_true)
    x0 = torch.zeros(n, dtype=torch.float64)
    for method in ["ig", "pg", "newton"]:
        res = physgrad.optimize(prob, x0, method, steps=1, step_size=1.0)
        torch.testing.assert_close(res.x, x_true, rtol=1e-10, atol=1e-12)
        assert res.losses[-1].item() < 1e-24
    gd = physgrad.optimize(prob, x0, "gd", steps=1, step_size=0.1)
    assert gd.losses[-1].item() > 1e-2 * gd.losses[0].item()
    assert not torch.allclose(gd.x, x_true, atol=1e-3)


def test_hig_kappa1_equals_gauss_newton_lstsq():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y_star = torch.randn(7, generator=g, dtype=torch.float64)
    prob = physgrad.Problem(lambda x: torch.tanh(W @ x) + 0.1 * (W @ x) ** 2, y_star)
    x = torch.randn(4, generator=g, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(prob.forward, x)
    gn = torch.linalg.lstsq(J, y_star - prob.forward(x)).solution
    for eta in [1.0, 0.3]:
        torch.testing.assert_close(updates.hig(prob, x, eta, kappa=1.0, truncation=0.0, line_search=None), eta * gn,
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(updates.ig(prob, x, 1.0), gn, rtol=1e-10, atol=1e-12)


def test_hig_truncation_drops_not_clamps():
    # J with singular values 1, 1e-3, 1e-9 along known directions; truncation 1e-6 must DROP the third
    U, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    S = torch.tensor([1.0, 1e-3, 1e-9], dtype=torch.float64)
    J = U @ torch.diag(S) @ V.T
    r = -(U @ torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))  # residual P - y*; y* - P = U·1
    prob = physgrad.Problem(lambda x: J @ x + r, torch.zeros(3, dtype=torch.float64))
    x = torch.zeros(3, dtype=torch.float64)
    dx = updates.hig(prob, x, 1.0, kappa=0.5, truncation=1e-6, line_search=None)
    coeffs = V.T @ dx
    torch.testing.assert_close(coeffs, torch.tensor([1.0, 1e-3 ** -0.5, 0.0], dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)
    # a clamp to 1e-6 * sigma_max would have produced 1e3 in the third component


def test_adam_matches_reference_equations():
    prob = rosenbrock()
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    res = physgrad.optimize(prob, x, "adam", steps=5, step_size=0.05)
    # independent Adam (Kingma & Ba, Alg. 1) in numpy
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.05
    xn, m, v = x.numpy().copy(), np.zeros(2), np.zeros(2)
    for t in range(1, 6):
        gr = prob.grad(torch.tensor(xn)).numpy()
        m = b1 * m + (1 - b1) * gr
        v = b2 * v + (1 - b2) * gr ** 2
        xn = xn - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(res.x.numpy(), xn, rtol=1e-12)


def test_bfgs_first_step_is_gd_and_secant_equation_holds():
    prob = rosenbrock()
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    st = updates.BFGSState()
    d0 = updates.bfgs(prob, x, 1e-3, state=st, line_search=None)
    torch.testing.assert_close(d0, -1e-3 * prob.grad(x))
    x1 = x + d0
    updates.bfgs(prob, x1, 1e-3, state=st, line_search=None)
    s, yv = d0, prob.grad(x1) - prob.grad(x)
    torch.testing.assert_close(st.B @ yv, s, rtol=1e-10, atol=1e-14)  # B_{k+1} y_k = s_k
    torch.testing.assert_close(st.B, st.B.T)
    assert torch.linalg.eigvalsh(st.B).min() > 0


def test_bfgs_with_line_search_solves_rosenbrock():
    res = physgrad.optimize(rosenbrock(), torch.tensor([-1.2, 1.0], dtype=torch.float64), "bfgs",
                            steps=200, step_size=1.0, line_search="wolfe", tol=1e-20)
    torch.testing.assert_close(res.x, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-7)


def test_lbfgs_two_loop_equals_explicit_bfgs_product():
    prob = rosenbrock()
    st = updates.LBFGSState(history=50)
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    for _ in range(6):
        x = x + updates.lbfgs(prob, x, 1.0, state=st)
    g = prob.grad(x)
    dx = updates.lbfgs(prob, x, 1.0, state=st, line_search=None)
    # explicit product: B0 = gamma I, then BFGS updates with every stored pair (Nocedal & Wright 7.19)
    S, Y = st.s, st.y
    B = (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) * torch.eye(2, dtype=torch.float64)
    for s, yv in zip(S, Y):
        rho = 1 / (yv @ s)
        Vm = torch.eye(2, dtype=torch.float64) - rho * torch.outer(yv, s)
        B = Vm.T @ B @ Vm + rho * torch.outer(s, s)
    torch.testing.assert_close(dx, -(B @ g), rtol=1e-9, atol=1e-14)


def test_lbfgs_converges_on_rosenbrock():
    res = physgrad.optimize(rosenbrock(), torch.tensor([-1.2, 1.0], dtype=torch.float64), "lbfgs",
                            steps=300, tol=1e-24)
    torch.testing.assert_close(res.x, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)


def test_pg_lands_exactly_on_requested_y():
    prob = toy()
    x0 = toy_x0()
    for eta in [0.1, 0.5, 1.0]:
        dx = updates.pg(prob, x0, eta)
        y0 = prob.forward(x0)
        torch.testing.assert_close(prob.forward(x0 + dx), y0 + eta * (prob.target - y0), rtol=1e-13, atol=1e-13)
    # while IG only matches to first order: the quadratic component misses by (dx2)^2
    dx = updates.ig(prob, x0, 0.5)
    assert abs(prob.forward(x0 + dx)[1].item() - 4.5) == pytest.approx(0.75 ** 2, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.complex128])
def test_adam_takes_torch_optim_adams_steps_operation_for_operation(dtype):
    # physgrad's Adam keeps its moments per sample; for one problem it is torch's, bit for bit
    from physgrad import Problem

    if dtype.is_complex:
        A = torch.tensor([[2.0 + 1.0j, 0.5j], [0.0, 1.0 - 0.5j]], dtype=dtype)
        prob, x0 = Problem(lambda x: A @ x, torch.tensor([1 + 1j, 2 - 1j], dtype=dtype)), torch.zeros(2, dtype=dtype)
    else:
        prob, x0 = toy(dtype=dtype), toy_x0().to(dtype)
    res = physgrad.optimize(prob, x0, "adam", steps=30, step_size=0.05, progress=False)
    xr = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([xr], lr=0.05)
    xs = [x0.clone()]
    for _ in range(30):
        opt.zero_grad()
        prob.loss(xr).backward()
        before = xr.detach().clone()
        opt.step()
        xs.append(before + (xr.detach() - before))  # physgrad steps by x + dx, dx = (torch's new x) - x
    assert torch.equal(res.xs, torch.stack(xs))
