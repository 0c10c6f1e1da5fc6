"""Chapter 7, exercise 4: regularize the heat inverse for a given noise level (reference solution)."""

import math

import numpy as np
import pytest

from physgrad.problems.heat import heat_1d

SIGMA = 1e-2


def _scan(sigma=SIGMA):
    out = []
    for eps in 10.0 ** np.arange(-12, 1):
        p = heat_1d(n=256, nu_T=8.0, inv_damping=float(eps), noise=sigma)
        x = p.apply_inverse(p.target, p.x0)  # one PG step from x0 = 0
        err = ((x - p.x_true).norm() / p.x_true.norm()).item()
        out.append((float(eps), err, (p.forward(x) - p.target).norm().item()))
    return out


def _discrepancy(scan, sigma, n=256, tau=1.1):
    return max((s for s in scan if s[2] <= tau * sigma * math.sqrt(n)), key=lambda s: s[0])


def test_exercise4_best_damping_and_discrepancy_principle():
    scan = _scan()
    best = min(scan, key=lambda s: s[1])
    assert best[0] == pytest.approx(1e-2)
    assert best[1] == pytest.approx(0.050, abs=0.002)
    errs = dict((e, r) for e, r, _ in scan)
    assert errs[1e-10] > 5  # noise amplified by up to 1/(2 sqrt(eps)) = 5e4
    assert 0.5 < errs[1.0] < 0.7  # too strongly damped: most modes not inverted
    pick = _discrepancy(scan, SIGMA)
    assert pick[0] == pytest.approx(1e-3)
    assert pick[1] == pytest.approx(0.055, abs=0.002) and pick[1] < 1.15 * best[1]


def test_exercise4_damping_scales_like_noise_squared():
    """Ten times less noise (the notebook's 1e-3) moves the best damping down about a hundredfold."""
    best_hi = min(_scan(1e-2), key=lambda s: s[1])[0]
    best_lo = min(_scan(1e-3), key=lambda s: s[1])[0]
    assert best_hi / best_lo == pytest.approx(100.0)
