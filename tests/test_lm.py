"""The adaptive Levenberg-Marquardt mode of IG (damping="auto") on classic hard least-squares
problems (Moré, Garbow & Hillstrom 1981), against scipy.optimize.least_squares(method="lm")."""

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import physgrad


def mgh(name):
    """(residual function on torch tensors, standard start) for some MGH problems."""
    t = torch
    if name == "rosenbrock":
        return (lambda x: t.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]), [-1.2, 1.0])
    if name == "powell_badly_scaled":
        return (lambda x: t.stack([1e4 * x[0] * x[1] - 1, t.exp(-x[0]) + t.exp(-x[1]) - 1.0001]), [0.0, 1.0])
    if name == "brown_badly_scaled":
        return (lambda x: t.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2]), [1.0, 1.0])
    if name == "beale":
        y = [1.5, 2.25, 2.625]
        return (lambda x: t.stack([y[i] - x[0] * (1 - x[1] ** (i + 1)) for i in range(3)]), [1.0, 1.0])
    if name == "helical_valley":
        def f(x):
            th = t.atan2(x[1], x[0]) / (2 * torch.pi)
            return t.stack([10 * (x[2] - 10 * th), 10 * (t.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])
        return (f, [-1.0, 0.0, 0.0])
    if name == "powell_singular":
        return (lambda x: t.stack([x[0] + 10 * x[1], 5 ** 0.5 * (x[2] - x[3]), (x[1] - 2 * x[2]) ** 2,
                                   10 ** 0.5 * (x[0] - x[3]) ** 2]), [3.0, -1.0, 0.0, 1.0])
    if name == "bard":
        y = torch.tensor([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39],
                         dtype=torch.float64)
        u = torch.arange(1, 16, dtype=torch.float64)
        v, w = 16 - u, torch.minimum(u, 16 - u)
        return (lambda x: y - (x[0] + u / (v * x[1] + w * x[2])), [1.0, 1.0, 1.0])
    if name == "box3d":
        tt = 0.1 * torch.arange(1, 11, dtype=torch.float64)
        return (lambda x: t.exp(-tt * x[0]) - t.exp(-tt * x[1]) - x[2] * (t.exp(-tt) - t.exp(-10 * tt)),
                [0.0, 10.0, 20.0])
    if name == "jennrich_sampson":
        i = torch.arange(1, 11, dtype=torch.float64)
        return (lambda x: 2 + 2 * i - (t.exp(i * x[0]) + t.exp(i * x[1])), [0.3, 0.4])
    raise KeyError(name)


NAMES = ["rosenbrock", "powell_badly_scaled", "brown_badly_scaled", "beale", "helical_valley",
         "powell_singular", "bard", "box3d", "jennrich_sampson"]


@pytest.mark.parametrize("name", NAMES)
def test_auto_lm_as_good_as_scipy_lm(name):
    f, x0 = mgh(name)
    x0 = torch.tensor(x0, dtype=torch.float64)
    m = f(x0).numel()
    prob = physgrad.Problem(f, torch.zeros(m, dtype=torch.float64))
    res = physgrad.optimize(prob, x0, "ig", steps=500, damping="auto", tol=1e-30)
    ref = least_squares(lambda z: f(torch.tensor(z)).numpy(), x0.numpy(), method="lm",
                        jac=lambda z: torch.autograd.functional.jacobian(f, torch.tensor(z)).numpy(),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
    ours, theirs = res.losses[-1].item(), float(ref.cost)
    # as good as scipy's MINPACK LM: same final cost up to a relative 1e-6, or both zero to within
    # round-off of the problem's own scale (1e-28 of the starting loss, i.e. ~eps^2 relative)
    assert ours <= theirs * (1 + 1e-6) + 1e-28 * res.losses[0].item(), (name, ours, theirs)
    assert bool((res.losses.diff() <= 0).all()), "accepted LM steps never increase the loss"


def test_auto_lm_is_scale_invariant_in_the_units_of_x():
    # Marquardt scaling: rescaling one parameter's units changes nothing but the units of the answer
    f, x0 = mgh("beale")
    x0 = torch.tensor(x0, dtype=torch.float64)
    prob = physgrad.Problem(f, torch.zeros(3, dtype=torch.float64))
    a = physgrad.optimize(prob, x0, "ig", steps=8, damping="auto")
    s = torch.tensor([1e3, 1e-3], dtype=torch.float64)
    prob_s = physgrad.Problem(lambda z: f(z / s), torch.zeros(3, dtype=torch.float64))
    b = physgrad.optimize(prob_s, x0 * s, "ig", steps=8, damping="auto")
    assert a.nit == b.nit == 8 and a.losses[-1] < 1e-12
    torch.testing.assert_close(b.xs / s, a.xs, rtol=1e-7, atol=1e-10)
