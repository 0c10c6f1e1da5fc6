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
