"""optimize(..., bounds=, x_scale=) through physgrad.bounds: a positive-rate model whose unbounded
run leaves the domain, checked against scipy.optimize.least_squares with bounds from the same start."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import physgrad
from physgrad.bounds import BoxMap
from physgrad.inverse import numerical_inverse

D = torch.float64
# a dye released at xi = 0 spreads by diffusion; sensors at 11 positions (0..5 mm) read the
# concentration at three times. Unknowns: the released amount M (mol/m^2) and the diffusivity
# D (m^2/s), six orders of magnitude apart. D < 0 makes sqrt(4 pi D t) NaN.
XI, T = torch.meshgrid(torch.linspace(0, 5e-3, 11, dtype=D), torch.tensor([600.0, 1800.0, 3600.0], dtype=D),
                       indexing="ij")
X_TRUE = torch.tensor([1e-3, 1e-9], dtype=D)
X0 = torch.tensor([2e-3, 5e-9], dtype=D)


def dye(p):
    M, Dc = p[0], p[1]
    return M / torch.sqrt(4 * math.pi * Dc * T) * torch.exp(-XI ** 2 / (4 * Dc * T))


def dye_problem(**kw):
    return physgrad.Problem(dye, dye(X_TRUE), **kw)


def scipy_bounded(x0):
    res = least_squares(lambda p: (dye(torch.tensor(p)) - dye(X_TRUE)).reshape(-1).numpy(), x0.numpy(),
                        bounds=([0, 0], [np.inf, np.inf]), x_scale=np.array([1e-3, 1e-9]),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert res.success
    return torch.tensor(res.x)


def test_unbounded_run_leaves_the_domain_and_bounded_run_converges():
    prob = dye_problem()
    with pytest.raises(physgrad.NonFiniteError) as ei:  # the Gauss-Newton step makes D negative
        physgrad.optimize(prob, X0, "ig", steps=50)
    assert ei.value.result.nit == 0
    res = physgrad.optimize(prob, X0, "ig", steps=50, tol=1e-24, bounds=(0, None))
    assert res.converged and res.success
    assert bool((res.xs > 0).all())  # every iterate inside the domain
    ref = scipy_bounded(X0)
    assert torch.allclose(res.x, ref, rtol=1e-6)
    assert torch.allclose(res.x, X_TRUE, rtol=1e-8)


@pytest.mark.parametrize("method,opts", [("lbfgs", {}), ("bfgs", {"x_scale": "jac"}), ("hig", {}),
                                         ("newton", {}), ("ig", {"damping": "auto"}), ("pg", {})])
def test_every_method_runs_bounded(method, opts):
    prob = dye_problem(inverse=numerical_inverse(dye)) if method == "pg" else dye_problem()
    res = physgrad.optimize(prob, X0, method, steps=300, tol=1e-16, bounds=([0, 0], None), **opts)
    assert res.converged and bool((res.xs > 0).all())
    assert torch.allclose(res.x, scipy_bounded(X0), rtol=1e-5)


def test_x_scale_rescues_bfgs_in_si_units():
    prob = dye_problem()
    raw = physgrad.optimize(prob, X0, "bfgs", steps=100, tol=1e-16)
    assert not raw.converged and raw.fun > 0.1 * raw.losses[0].item()  # no progress in SI units
    for method in ("bfgs", "lbfgs"):
        for s in ("jac", [1e-3, 1e-9]):
            res = physgrad.optimize(prob, X0, method, steps=100, tol=1e-16, x_scale=s)
            assert res.converged and torch.allclose(res.x, X_TRUE, rtol=1e-5)


def test_x_scale_jac_is_inverse_column_norms_and_gd_becomes_jacobi_preconditioned():
    # in z = x / s, gd's step in x is -eta s^2 g: with s = 1/||J_j|| the diagonal of J^T J is one
    A = torch.tensor([[1000.0, 0.0], [0.0, 0.001]], dtype=D)
    prob = physgrad.Problem(lambda x: A @ x, torch.tensor([1.0, 1.0], dtype=D))
    x0 = torch.zeros(2, dtype=D)
    res = physgrad.optimize(prob, x0, "gd", steps=1, step_size=1.0, x_scale="jac")
    assert torch.allclose(res.x, torch.tensor([1e-3, 1e3], dtype=D))  # the exact solution in one step
    manual = physgrad.optimize(prob, x0, "gd", steps=1, step_size=1.0, x_scale=[1e-3, 1e3])
    assert torch.allclose(manual.x, res.x)


def test_box_map_round_trip_and_derivative():
    lo = torch.tensor([0.0, -math.inf, -1.0, -math.inf], dtype=D)
    hi = torch.tensor([math.inf, 2.0, 3.0, math.inf], dtype=D)
    box = BoxMap(lo, hi, torch.tensor([1e-3, 2.0, 1.0, 5.0], dtype=D))
    x = torch.tensor([1e-6, 1.5, 2.9, -7.0], dtype=D)
    z = box.to_z(x)
    assert torch.allclose(box.to_x(z), x, rtol=1e-12)
    zr = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(box.to_x(zr).sum(), zr)
    assert torch.allclose(g, box.dx_dz(z), rtol=1e-12)
    # on or beyond a bound: moved just inside, finite
    zb = box.to_z(torch.tensor([0.0, 2.0, -1.0, 0.0], dtype=D))
    assert bool(torch.isfinite(zb).all())
    xb = box.to_x(zb)
    assert xb[0] > 0 and xb[1] < 2 and xb[2] > -1


def test_bad_bounds_and_scales_are_refused():
    prob = dye_problem()
    with pytest.raises(ValueError, match="outside the bounds"):
        physgrad.optimize(prob, -X0, "ig", bounds=(0, None))
    with pytest.raises(ValueError, match="lo < hi"):
        physgrad.optimize(prob, X0, "ig", bounds=(1.0, 0.5))
    with pytest.raises(ValueError, match="x_scale"):
        physgrad.optimize(prob, X0, "ig", x_scale=[1.0, -1.0])
    with pytest.raises(ValueError, match="x_scale"):
        physgrad.optimize(prob, X0, "ig", x_scale="auto")


def test_user_derivatives_and_err_result_in_x():
    # the transform chains user-supplied derivatives; the partial result of an error is in x
    def vjp(x, u):
        return torch.func.vjp(dye, x)[1](u)[0]

    prob = physgrad.Problem(dye, dye(X_TRUE), vjp=vjp)
    res = physgrad.optimize(prob, X0, "lbfgs", steps=200, tol=1e-16, bounds=(0, None))
    assert res.converged and torch.allclose(res.x, X_TRUE, rtol=1e-5)

    def stop(k, x, L):
        assert bool((x > 0).all()) and x[1] < 1e-7  # the callback sees x, not z
        if k == 1:
            raise KeyError("stop")

    with pytest.raises(KeyError) as ei:
        physgrad.optimize(dye_problem(), X0, "ig", steps=10, bounds=(0, None), callback=stop)
    r = ei.value.result
    assert torch.allclose(r.xs[0], X0) and r.xs.shape[0] == 3
