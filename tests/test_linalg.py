"""Dense linear algebra against independent references (numpy / explicit formulas)."""

import numpy as np
import pytest
import torch

from physgrad import linalg

G = torch.Generator().manual_seed(7)


def rand(*s):
    return torch.randn(*s, generator=G, dtype=torch.float64)


@pytest.mark.parametrize("m,n", [(5, 5), (8, 3), (3, 8)])
def test_pinv_solve_matches_numpy(m, n):
    J, r = rand(m, n), rand(m)
    np.testing.assert_allclose(linalg.pinv_solve(J, r).numpy(), np.linalg.pinv(J.numpy()) @ r.numpy(), rtol=1e-10)


@pytest.mark.parametrize("kappa", [-1.0, 0.5, 1.0])
def test_spectral_solve_kappa(kappa):
    J, r = rand(6, 4), rand(6)
    dx, info = linalg.spectral_solve(J, r, kappa=kappa, truncation=0.0)
    if kappa == -1.0:  # V Sigma U^T r = J^T r
        torch.testing.assert_close(dx, J.T @ r)
    if kappa == 1.0:
        torch.testing.assert_close(dx, torch.linalg.lstsq(J, r).solution)
    assert info["rank"] == 4 and info["dropped"] == 0


@pytest.mark.parametrize("lam", [1e-3, 1.0, 10.0])
@pytest.mark.parametrize("marquardt", [False, True])
def test_damped_solve_equals_regularized_normal_equations(lam, marquardt):
    J, r = rand(7, 4), rand(7)
    d = (J * J).sum(0) if marquardt else None
    D = torch.diag(d) if marquardt else torch.eye(4, dtype=torch.float64)
    ref = torch.linalg.solve(J.T @ J + lam * D, J.T @ r)  # fine here: small and well conditioned
    torch.testing.assert_close(linalg.damped_solve(J, r, lam, d), ref, rtol=1e-9, atol=1e-12)


def test_damped_solve_marquardt_is_scale_invariant():
    J, r = rand(7, 4), rand(7)
    a = linalg.damped_solve(J, r, 0.5, (J * J).sum(0))
    b = linalg.damped_solve(1e4 * J, 1e4 * r, 0.5, (1e8 * J * J).sum(0))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    c = linalg.damped_solve(1e4 * J, 1e4 * r, 0.5, None)  # plain lambda*I is not
    assert not torch.allclose(a, c, rtol=1e-3)


def test_symmetric_solve_matches_solve_and_detects_singular():
    A = rand(4, 4)
    H = A @ A.T + torch.eye(4, dtype=torch.float64)
    g = rand(4)
    torch.testing.assert_close(linalg.symmetric_solve(H, g), torch.linalg.solve(H, g))
    v = rand(4)
    with pytest.raises(Exception, match="singular"):
        linalg.symmetric_solve(torch.outer(v, v), g)


# ----------------------------------------------------------------------------- fast batched paths
def _batch(B=24, m=9, n=6, seed=3):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(B, m, n, generator=g, dtype=torch.float64)
    J[3] = 0.0                                                   # a zero block
    J[5, :, 2] = J[5, :, 0]                                      # rank deficient (two equal columns)
    J[7] = J[7] * torch.logspace(0, -9, n, dtype=torch.float64)  # badly conditioned (cond ~1e9)
    r = torch.randn(B, m, generator=g, dtype=torch.float64)
    return J, r


@pytest.mark.parametrize("shape", [(9, 6), (6, 6), (4, 7)])
def test_batched_pinv_fast_path_matches_numpy_lstsq_per_block(shape):
    """The Cholesky path of the batch (with its spectral fallback for the singular and badly
    conditioned blocks) gives numpy's minimum-norm least-squares solution for every block."""
    J, r = _batch(m=shape[0], n=shape[1])
    dx, singular = linalg.spectral(J, r)
    for b in range(J.shape[0]):
        ref = np.linalg.lstsq(J[b].numpy(), r[b].numpy(), rcond=max(shape) * np.finfo(float).eps)[0]
        np.testing.assert_allclose(dx[b].numpy(), ref, rtol=1e-7, atol=1e-9 * max(1.0, np.abs(ref).max()))
    assert singular.tolist() == [b == 3 for b in range(J.shape[0])]


@pytest.mark.parametrize("marquardt", [False, True])
def test_batched_damped_fast_path_matches_stacked_svd(marquardt):
    J, r = _batch()
    lam = torch.logspace(-8, 2, J.shape[0], dtype=torch.float64)
    scale = (J * J).sum(-2) if marquardt else None
    fast, s1 = linalg.damped(J, r, lam, scale)
    slow, s2 = linalg.damped(J, r, lam, scale, fast=False)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)
    assert s1.tolist() == s2.tolist()


def test_descent_direction_is_newton_where_pd_and_unit_invariant_where_modified():
    g = torch.Generator().manual_seed(0)
    B, n = 16, 5
    A = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    H = A @ A.mT + 0.1 * torch.eye(n, dtype=torch.float64)
    H[::2] = H[::2] - 2.0 * torch.eye(n, dtype=torch.float64) * H[::2].diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
    grad = torch.randn(B, n, generator=g, dtype=torch.float64)
    p, modified = linalg.descent_direction(H, grad)
    eig_min = torch.linalg.eigvalsh(H)[:, 0]
    assert modified.tolist() == (eig_min <= 0).tolist()
    pd = ~modified
    torch.testing.assert_close(p[pd], -torch.linalg.solve(H[pd], grad[pd]), rtol=1e-9, atol=1e-12)
    assert bool(((p * grad).sum(-1) < 0).all())  # every direction descends
    # x -> S x with units many orders apart: H -> S^-1 H S^-1, g -> S^-1 g, and p must map to S p
    S = torch.tensor([1e-6, 1.0, 1e4, 3e8, 1e-3], dtype=torch.float64)
    pS, modS = linalg.descent_direction(H / S[:, None] / S[None, :], grad / S)
    assert modS.tolist() == modified.tolist()
    torch.testing.assert_close(pS / S, p, rtol=1e-7, atol=0.0)
