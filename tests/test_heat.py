"""Heat equation: spectral solution against the analytic decay, the damped inverse, and PG."""

import math

import pytest
import torch

import physgrad
from physgrad.problems.heat import decay_factors, heat_1d, heat_2d, random_field


@pytest.mark.parametrize("m", [1, 3, 10])
def test_single_mode_1d_decays_exactly(m):
    n, nu_T = 256, 8.0
    prob = heat_1d(n=n, nu_T=nu_T)
    xs = torch.arange(n, dtype=torch.float64)  # unit spacing, domain length n
    k = 2 * math.pi * m / n
    x = torch.cos(k * xs) + 0.5 * torch.sin(k * xs)
    y = prob.forward(x)
    assert torch.allclose(y, math.exp(-nu_T * k ** 2) * x, atol=1e-14, rtol=0)


def test_single_mode_2d_decays_exactly_custom_length():
    n, nu_T, L = 32, 0.01, 2 * math.pi
    prob = heat_2d(n=n, nu_T=nu_T, length=L)
    g = torch.arange(n, dtype=torch.float64) * L / n
    X, Y = torch.meshgrid(g, g, indexing="ij")
    k1, k2 = 3, 5
    x = torch.sin(k1 * X) * torch.cos(k2 * Y)
    y = prob.forward(x)
    assert torch.allclose(y, math.exp(-nu_T * (k1 ** 2 + k2 ** 2)) * x, atol=1e-14, rtol=0)


def test_batched_and_float32():
    prob = heat_2d(n=16, nu_T=2.0)
    xb = torch.randn(3, 16, 16, dtype=torch.float64)
    yb = prob.forward(xb)
    for i in range(3):
        assert torch.allclose(yb[i], prob.forward(xb[i]), atol=1e-14)
    y32 = prob.forward(xb[0].float())
    assert y32.dtype == torch.float32


def test_low_frequencies_round_trip():
    prob = heat_1d(n=128, nu_T=8.0, inv_damping=1e-12)
    xs = torch.arange(128, dtype=torch.float64)
    x = sum(torch.cos(2 * math.pi * m * xs / 128 + m) for m in range(0, 6))
    x_rec = prob.apply_inverse(prob.forward(x), torch.zeros_like(x))
    assert torch.allclose(x_rec, x, atol=1e-9, rtol=0)


def test_inverse_keeps_unresolved_modes_of_x0():
    prob = heat_1d(n=64, nu_T=8.0, inv_damping=1e-10)
    xs = torch.arange(64, dtype=torch.float64)
    high = torch.cos(2 * math.pi * 30 * xs / 64)  # decay e^{-8 k^2} ~ 1e-32: not invertible
    x0 = 0.3 * high
    x = prob.apply_inverse(prob.forward(x0), x0)
    assert torch.allclose(x, x0, atol=1e-12)


def test_damping_trades_accuracy_for_amplification():
    d = decay_factors((256,), 8.0)
    for eps in (1e-4, 1e-8):
        amp = (d / (d ** 2 + eps)).max().item()
        assert amp <= 1 / (2 * math.sqrt(eps)) * (1 + 1e-12)


def test_ground_truth_and_target():
    prob = heat_2d()
    assert prob.x_true.shape == (64, 64) and prob.target.shape == (64, 64)
    assert torch.allclose(prob.target, prob.forward(prob.x_true))
    assert abs(prob.x_true.std().item() - 1) < 1e-12
    assert torch.equal(random_field((8,), seed=3), random_field((8,), seed=3))
    noisy = heat_1d(noise=0.01)
    assert 0.005 < (noisy.target - noisy.y_true).std().item() < 0.02


@pytest.mark.parametrize("make", [heat_1d, heat_2d])
def test_pg_reaches_1e_minus_6_in_a_few_steps(make):
    prob = make()
    res = physgrad.optimize(prob, prob.x0, method="pg", steps=5, tol=1e-6)
    assert res.converged and res.nit <= 3
    # half steps: L shrinks by (1 - eta)^2 = 1/4 per step in every well-resolved mode
    res = physgrad.optimize(prob, prob.x0, method="pg", steps=10, step_size=0.5, tol=1e-6)
    assert res.converged and res.nit == 10


def test_matrix_free_ig_equals_dense_ig_small():
    prob = heat_1d(n=32, nu_T=1.0)
    x = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    from physgrad import matfree
    dy = 0.5 * (prob.target - prob.forward(x))
    d, info = matfree.solve_ls(prob, x, dy, tol=1e-15, maxiter=200)
    J = prob.jacobian(x)
    ref = torch.linalg.pinv(J, rtol=1e-12) @ dy
    assert torch.allclose(d, ref, atol=1e-8, rtol=0)


def test_chapter7_exercise_solutions():
    """The numbers quoted in the solutions of chapter 7's exercises."""
    # 1: cut-off wavenumber where d_k^2 = eps for nu T = 8, n = 64
    eps, nu_T, n = 1e-10, 8.0, 64
    k_c = math.sqrt(math.log(1 / eps) / (2 * nu_T))
    assert abs(k_c - 1.1996) < 1e-4 and abs(k_c * n / (2 * math.pi) - 12.2) < 0.05
    d = decay_factors((n, n), nu_T)
    k2 = -torch.log(d) / nu_T
    assert bool(((d ** 2 > eps) == (k2 < k_c ** 2)).all())
    # 2: PG with eta = 0.5 on a linear problem with exact inverse: 10 steps to 1e-6
    assert math.ceil(math.log(1e-6) / math.log(0.25)) == 10
    prob = heat_1d()
    res = physgrad.optimize(prob, prob.x0, "pg", steps=50, step_size=0.5, tol=1e-6)
    assert res.nit == 10
    # 3: largest gain of d / (d^2 + eps) is 1/(2 sqrt(eps)) at d = sqrt(eps)
    dd = torch.logspace(-12, 0, 200001, dtype=torch.float64)
    gain = dd / (dd ** 2 + eps)
    assert abs(gain.max().item() - 5e4) / 5e4 < 1e-6
    assert abs(math.log10(dd[gain.argmax()].item()) + 5) < 1e-3


def test_random_boxes_are_sharp_seeded_and_normalized():
    from physgrad.problems.heat import random_boxes

    b = random_boxes((64, 64), seed=1)
    assert torch.equal(b, random_boxes((64, 64), seed=1)) and not torch.equal(b, random_boxes((64, 64), seed=2))
    assert abs(b.mean().item()) < 1e-12 and abs(b.std().item() - 1) < 1e-12
    # piecewise constant: few distinct levels, and most neighbours are equal (sharp edges between)
    assert torch.unique(b.round(decimals=9)).numel() <= 2 ** 8
    same = (b == torch.roll(b, 1, 0)).double().mean().item()
    assert same > 0.8
    # jumps of order one at the edges: far more high-frequency energy than the smooth field
    p_box, p_smooth = heat_2d(field="boxes"), heat_2d()
    hi = lambda x: torch.fft.rfft2(x).abs()[16:48, :].pow(2).sum().item()  # noqa: E731
    assert hi(p_box.x_true) > 1e6 * hi(p_smooth.x_true)
    assert torch.allclose(p_box.target, p_box.forward(p_box.x_true))
    with pytest.raises(ValueError):
        heat_1d(field="stripes")
