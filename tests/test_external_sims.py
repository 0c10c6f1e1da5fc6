"""Checks of the foreign simulators of the appendix "Your simulator" (notebooks A3, A4):
PhiFlow's torch backend and torchdiffeq give derivatives that physgrad can use."""

import math

import pytest
import torch

import physgrad

phi_flow = pytest.importorskip("phi.torch.flow")
torchdiffeq = pytest.importorskip("torchdiffeq")


@pytest.fixture(scope="module")
def phiflow_diffusion():
    # 1-D periodic explicit diffusion through PhiFlow, in float64
    phi_flow.math.set_global_precision(64)
    n, nu, dt, steps = 16, 0.01, 0.1, 4

    def simulate(x):
        values = phi_flow.math.tensor(x, phi_flow.spatial("x"))
        u = phi_flow.CenteredGrid(values, phi_flow.extrapolation.PERIODIC, x=n,
                                  bounds=phi_flow.Box(x=(0, 1)))
        for _ in range(steps):
            u = phi_flow.diffuse.explicit(u, nu, dt)
        return u.values.native("x")

    return simulate, n, nu, dt, steps


def test_phiflow_diffusion_is_the_textbook_stencil(phiflow_diffusion):
    simulate, n, nu, dt, steps = phiflow_diffusion
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, c = x, nu * dt * n ** 2  # dx = 1/n
    for _ in range(steps):
        u = u + c * (u.roll(1) - 2 * u + u.roll(-1))
    y = simulate(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, u, rtol=0, atol=1e-14)


def test_phiflow_diffusion_gradient_matches_finite_differences(phiflow_diffusion):
    simulate, n, *_ = phiflow_diffusion
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, dtype=torch.float64, generator=g)
    w = torch.randn(n, dtype=torch.float64, generator=g)  # a fixed weighting of the output
    v = torch.randn(n, dtype=torch.float64, generator=g)  # a direction in x

    def f(x):
        return (w * simulate(x) ** 2).sum()  # non-linear in the PhiFlow output

    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xr), xr)
    h = 1e-6
    fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert abs((grad @ v).item() - fd.item()) < 1e-8 * max(1.0, abs(fd.item()))
    # and physgrad's Jacobian (torch.func through PhiFlow) is that of the linear map
    J = physgrad.Problem(simulate, simulate(x)).jacobian(x)
    torch.testing.assert_close(J @ v, (simulate(x + h * v) - simulate(x - h * v)) / (2 * h),
                               rtol=0, atol=1e-8)


def test_phiflow_diffusion_inverted_by_ig(phiflow_diffusion):
    simulate, n, *_ = phiflow_diffusion
    x_true = torch.sin(2 * math.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)
    prob = physgrad.Problem(simulate, simulate(x_true))
    res = physgrad.optimize(prob, torch.zeros(n, dtype=torch.float64), "ig", steps=3, tol=1e-20)
    assert res.nit == 1  # a linear simulator: one pure IG step solves it
    # the error is round-off amplified by J's condition number (the top mode decays ~3e-7 fold)
    cond = torch.linalg.cond(prob.jacobian(x_true)).item()
    assert 1e6 < cond < 1e8
    torch.testing.assert_close(res.x, x_true, rtol=0, atol=100 * cond * 2.2e-16)


class _Decay(torch.nn.Module):
    # du/dt = -k u with u(0) = 1: u(t) = exp(-k t)
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, t, u):
        return -self.k * u


def test_torchdiffeq_adjoint_gradient_equals_backprop_and_closed_form():
    t = torch.linspace(0, 2, 5, dtype=torch.float64)
    u0 = torch.ones(1, dtype=torch.float64)
    target = torch.tensor([1.0, 0.7, 0.4, 0.3, 0.2], dtype=torch.float64)
    opts = {"method": "rk4", "options": {"step_size": 0.01}}
    grads = []
    for adjoint in (False, True):
        k = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        if adjoint:
            u = torchdiffeq.odeint_adjoint(_Decay(k), u0, t, adjoint_params=(k,), **opts)[:, 0]
        else:
            u = torchdiffeq.odeint(_Decay(k), u0, t, **opts)[:, 0]
        (g,) = torch.autograd.grad(0.5 * ((u - target) ** 2).sum(), k)
        grads.append(g.item())
    # closed form: L = 1/2 sum (e^{-k t} - y)^2, dL/dk = sum (e^{-k t} - y) (-t e^{-k t})
    e = torch.exp(-0.8 * t)
    exact = ((e - target) * (-t * e)).sum().item()
    assert abs(grads[0] - grads[1]) < 1e-9 * abs(exact)
    assert abs(grads[0] - exact) < 1e-8 * abs(exact)


def test_torchdiffeq_decay_rate_recovered_by_ig_and_lbfgs():
    t = torch.linspace(0, 2, 9, dtype=torch.float64)
    u0 = torch.ones(1, dtype=torch.float64)

    def simulate(logk):
        k = torch.exp(logk)
        return torchdiffeq.odeint(_Decay(k[0]), u0, t, method="rk4",
                                  options={"step_size": 0.05})[1:, 0]

    x_true = torch.tensor([math.log(1.3)], dtype=torch.float64)
    prob = physgrad.Problem(simulate, simulate(x_true), jacobian_mode="fwd")
    x0 = torch.tensor([math.log(0.5)], dtype=torch.float64)
    for method in ("ig", "lbfgs"):
        res = physgrad.optimize(prob, x0, method, steps=50, tol=1e-24)
        assert res.converged, (method, res.message)
        assert abs(res.x.item() - x_true.item()) < 1e-9, method
