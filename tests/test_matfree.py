"""Matrix-free LSQR / CGLS against dense least-squares references (float64)."""

import numpy as np
import pytest
import torch

import physgrad
from physgrad import matfree


def _prob(A, x_shape=None):
    m = A.shape[0]
    return physgrad.Problem(lambda x: A @ x, torch.zeros(m, dtype=A.dtype), name="linear")


def _random(m, n, rank=None, seed=0, cond=1e3):
    g = torch.Generator().manual_seed(seed)
    k = min(m, n) if rank is None else rank
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -np.log10(cond), k, dtype=torch.float64)
    A = U[:, :k] @ torch.diag(s) @ V[:, :k].T
    b = torch.randn(m, generator=g, dtype=torch.float64)
    return A, b


@pytest.mark.parametrize("method", ["lsqr", "cg"])
@pytest.mark.parametrize("m,n,rank", [(20, 20, None), (30, 12, None), (12, 30, None), (25, 25, 15), (30, 18, 10)])
def test_undamped_equals_pinv(method, m, n, rank):
    A, b = _random(m, n, rank, cond=1e2)
    prob = _prob(A)
    x = torch.zeros(n, dtype=torch.float64)
    d, info = matfree.solve_ls(prob, x, b, method=method, tol=1e-14, maxiter=500)
    ref = torch.linalg.pinv(A, rtol=1e-10) @ b
    assert info["converged"]
    assert torch.allclose(d, ref, atol=1e-8, rtol=0)
    assert info["jvp"] >= info["iterations"] and info["vjp"] >= info["iterations"]


@pytest.mark.parametrize("method", ["lsqr", "cg"])
@pytest.mark.parametrize("m,n,rank", [(25, 25, 10), (30, 12, None), (12, 30, 8)])
def test_damped_equals_dense(method, m, n, rank):
    A, b = _random(m, n, rank, seed=3, cond=1e4)
    lam = 1e-3
    x = torch.zeros(n, dtype=torch.float64)
    d, info = matfree.solve_ls(_prob(A), x, b, damping=lam, method=method, tol=1e-14, maxiter=500)
    ref = torch.linalg.solve(A.T @ A + lam * torch.eye(n, dtype=torch.float64), A.T @ b)
    assert info["converged"]
    assert torch.allclose(d, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize("method", ["lsqr", "cg"])
def test_damped_with_scale_matches_scipy_and_dense_linalg(method):
    A, b = _random(20, 15, seed=5, cond=1e3)
    scale = (A * A).sum(0)  # Marquardt's diag(J^T J)
    lam = 1e-2
    x = torch.zeros(15, dtype=torch.float64)
    d, _ = matfree.solve_ls(_prob(A), x, b, damping=lam, method=method, tol=1e-14, scale=scale)
    ref = physgrad.linalg.damped_solve(A, b, lam, scale)
    assert torch.allclose(d, ref, atol=1e-8, rtol=0)


def test_lsqr_matches_scipy_lsqr_with_damp():
    from scipy.sparse.linalg import lsqr

    A, b = _random(40, 25, seed=7, cond=1e3)
    lam = 1e-4
    d, _ = matfree.solve_ls(_prob(A), torch.zeros(25, dtype=torch.float64), b, damping=lam, tol=1e-14)
    ref = lsqr(A.numpy(), b.numpy(), damp=lam ** 0.5, atol=1e-14, btol=1e-14, iter_lim=1000)[0]
    assert np.allclose(d.numpy(), ref, atol=1e-8, rtol=0)


def test_nonlinear_field_shapes_and_dense_ig_agree():
    """2-D x and y fields: the matrix-free IG step equals J^+ Δy of the dense Jacobian."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 6, generator=g, dtype=torch.float64) / 3

    def P(x):
        return torch.tanh(W @ x) + 0.1 * x ** 3

    y = torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.3
    prob = physgrad.Problem(P, y)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64) * 0.5
    dy = 0.7 * (y - P(x))
    for method in ("lsqr", "cg"):
        d, info = matfree.solve_ls(prob, x, dy, method=method, tol=1e-14)
        assert d.shape == x.shape
        J = prob.jacobian(x)
        ref = (torch.linalg.pinv(J) @ dy.reshape(-1)).reshape(x.shape)
        assert torch.allclose(d, ref, atol=1e-8, rtol=0)


def test_zero_rhs_and_bad_args():
    A, b = _random(5, 5)
    x = torch.zeros(5, dtype=torch.float64)
    d, info = matfree.solve_ls(_prob(A), x, torch.zeros(5, dtype=torch.float64))
    assert d.abs().max() == 0 and info["converged"] and info["iterations"] == 0
    with pytest.raises(ValueError):
        matfree.solve_ls(_prob(A), x, b, method="qr")
    with pytest.raises(ValueError):
        matfree.solve_ls(_prob(A), x, b, damping=-1.0)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_float32_follows_dtype(mode):
    A, b = _random(8, 8, cond=10)
    A32, b32 = A.float(), b.float()
    prob = physgrad.Problem(lambda x: A32 @ x, torch.zeros(8))
    d, _ = matfree.solve_ls(prob, torch.zeros(8), b32, tol=1e-6, jvp_mode=mode)
    assert d.dtype == torch.float32
    assert torch.allclose(d.double(), torch.linalg.solve(A, b), atol=1e-3)


@pytest.mark.parametrize("method", ["lsqr", "cg"])
def test_forward_mode_products_agree(method):
    A, b = _random(15, 10, seed=11, cond=1e2)
    x = torch.zeros(10, dtype=torch.float64)
    d1, i1 = matfree.solve_ls(_prob(A), x, b, method=method, tol=1e-14, jvp_mode="fwd")
    d2, i2 = matfree.solve_ls(_prob(A), x, b, method=method, tol=1e-14, jvp_mode="rev")
    assert torch.allclose(d1, d2, atol=1e-10, rtol=0)
    with pytest.raises(ValueError):
        matfree.solve_ls(_prob(A), x, b, jvp_mode="both")


@pytest.mark.parametrize("method", ["lsqr", "cg"])
def test_stops_at_predicted_residual_and_reports_it_without_extra_product(method):
    """tol is the relative residual ||J d - b|| / ||b|| the solve aims for; the reported residual is
    the solver's estimate, equal to the true one, and no product beyond the iterations is made."""
    A, b = _random(60, 40, seed=2, cond=1e3)
    b = A @ torch.randn(40, dtype=torch.float64, generator=torch.Generator().manual_seed(9))  # consistent
    x = torch.zeros(40, dtype=torch.float64)
    d, info = matfree.solve_ls(_prob(A), x, b, method=method, tol=1e-3)
    true = (A @ d - b).norm().item()
    assert true <= 1e-3 * b.norm().item()
    assert info["residual_norm"] == pytest.approx(true, rel=1e-6)
    assert info["stop"].startswith("predicted residual")
    # one product each per iteration (LSQR/CGLS start with one J^T b)
    assert info["jvp"] == info["iterations"] and info["vjp"] == info["iterations"] + 1
    d2, info2 = matfree.solve_ls(_prob(A), x, b, method=method, tol=1e-4)
    assert info2["iterations"] > info["iterations"]


def test_lsqr_iterations_match_scipy_pure_residual_test():
    """With atol = 0 scipy's LSQR stops on ||r|| <= btol ||b||, our rule: same iterate, same count."""
    from scipy.sparse.linalg import lsqr

    A, b = _random(50, 30, seed=4, cond=10)
    b = A @ torch.ones(30, dtype=torch.float64)
    d, info = matfree.solve_ls(_prob(A), torch.zeros(30, dtype=torch.float64), b, tol=1e-6)
    ref = lsqr(A.numpy(), b.numpy(), atol=0.0, btol=1e-6, conlim=1e14, iter_lim=500)
    assert info["iterations"] == ref[2]
    assert np.allclose(d.numpy(), ref[0], atol=1e-6, rtol=0)  # round-off in the Krylov basis grows


def test_forcing_terms_follow_eisenstat_walker():
    f = matfree.Forcing(1e-3, first=0.5)
    assert f.threshold(10.0) == pytest.approx(5.0)  # eta_0 = 0.5
    # eta_1 = 0.9 (1/10)^2 = 9e-3; safeguard 0.9 * 0.5^2 = 0.225 > 0.1 wins
    assert f.threshold(1.0) == pytest.approx(0.225)
    # eta_2 = 0.9 (0.01)^2 = 9e-5, safeguard 0.9*0.225^2 = 0.0456 < 0.1: not applied; floor 0.9e-3*10
    assert f.threshold(0.01) == pytest.approx(0.9 * 1e-3 * 10.0)
    lin = matfree.Forcing(1e-3, first=0.0)
    assert lin.threshold(4.0) == pytest.approx(0.9 * 1e-3 * 4.0)  # straight to the outer target
    with pytest.raises(ValueError):
        matfree.Forcing(0.0)


@pytest.mark.parametrize("solver", ["lsqr", "cg"])
def test_ig_with_forcing_finishes_linear_heat_in_one_step(solver):
    from physgrad.problems.heat import heat_1d

    p = heat_1d(n=128)
    res = physgrad.optimize(p, p.x0, "ig", steps=10, tol=1e-6, solver=solver,
                            solver_tol=matfree.Forcing(1e-3, first=0.0))
    assert res.nit == 1
    assert (res.losses[-1] / res.losses[0]).item() <= 1e-6


def test_ig_with_forcing_on_burgers_uses_fewer_products_than_fixed_tol():
    from physgrad.problems.burgers import burgers_1d

    p = burgers_1d(n=64)
    fixed = physgrad.optimize(p, p.x0, "ig", steps=20, tol=1e-6, solver="cg", solver_tol=1e-3)
    ew = physgrad.optimize(p, p.x0, "ig", steps=20, tol=1e-6, solver="cg",
                           solver_tol=matfree.Forcing(1e-3, first=0.5))
    for r in (fixed, ew):
        assert (r.losses[-1] / r.losses[0]).item() <= 1e-6
    assert ew.counts["jvp"] < fixed.counts["jvp"]


@pytest.mark.parametrize("method", ["lsqr", "cg"])
def test_products_where_p_ignores_part_of_x_or_all_of_it(method):
    # P uses only x[:3]: the other columns of J are zero, and the minimum-norm solution leaves
    # them at zero; a P that ignores x altogether gives J = 0 and d = 0 (no autograd error)
    A, b = _random(3, 3, seed=5, cond=10)
    part = physgrad.Problem(lambda x: A @ x[:3], torch.zeros(3, dtype=torch.float64))
    d, info = matfree.solve_ls(part, torch.zeros(6, dtype=torch.float64), b, method=method, tol=1e-13)
    assert torch.allclose(d[:3], torch.linalg.solve(A, b), atol=1e-9) and d[3:].abs().max() == 0
    const = physgrad.Problem(lambda x: torch.ones(3, dtype=x.dtype), torch.zeros(3, dtype=torch.float64))
    d0, info0 = matfree.solve_ls(const, torch.zeros(6, dtype=torch.float64), b, method=method)
    assert d0.abs().max() == 0 and d0.shape == (6,)

