"""Item 5 of issue 22 (robust on real models): Newton's safeguard does not depend on the units,
and gd/adam have a documented step-size heuristic. Each test failed before its change."""

import itertools

import pytest
import torch

import physgrad
from physgrad import Problem

F64 = torch.float64
T = torch.linspace(0, 1e5, 60, dtype=F64)        # seconds
UNITS = torch.tensor([1e6, 1e-5, 1e2], dtype=F64)  # counts, 1/s, counts: x_SI = UNITS * x_rescaled
X_TRUE = torch.tensor([2e6, 3e-5, 5e2], dtype=F64)


def decay(x):
    """A decay curve with an offset, ``A exp(-k t) + c``: its SI parameters are 11 orders apart."""
    return x[0] * torch.exp(-x[1] * T) + x[2]


STARTS = [torch.tensor(f, dtype=F64) for f in itertools.product([0.3, 3.0], [0.2, 5.0], [0.1, 10.0])]


@pytest.mark.parametrize("factors", STARTS, ids=lambda f: "x".join(f"{v:g}" for v in f.tolist()))
def test_newton_is_the_same_run_in_si_and_in_rescaled_units(factors):
    """Before: flooring Hessian eigenvalues at sqrt(eps) max|lambda| modified the SI Hessian at
    every step and crawled (500 steps, L/L0 ~ 0.04-0.999) from these starts, while the rescaled
    problem converged. Now the modification is made on the Jacobi-scaled Hessian, so both runs
    are one run seen in two unit systems, and both converge."""
    y = decay(X_TRUE)
    x0 = X_TRUE * factors
    si = physgrad.optimize(Problem(decay, y), x0, "newton", steps=100, tol=1e-20)
    rescaled = physgrad.optimize(Problem(lambda z: decay(UNITS * z), y), x0 / UNITS, "newton", steps=100, tol=1e-20)
    assert si.success and rescaled.success, (si.message, rescaled.message)
    assert si.nit == rescaled.nit <= 30
    torch.testing.assert_close(si.x, X_TRUE, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(si.x / UNITS, rescaled.x, rtol=1e-8, atol=0.0)
