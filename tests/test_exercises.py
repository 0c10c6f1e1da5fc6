"""Independent checks of the exercise solutions of chapters 1, 5, 6 and 9 (chapters 2-4:
``test_exercises_ch24.py``).

Each test recomputes an answer from its closed form (plain Python/math) and compares it with
what physgrad returns; the notebooks' collapsed solution cells make the same assertions."""

import math

import pytest
import torch

import physgrad
from physgrad import theory, updates
from physgrad.problems.toy import linear, toy, toy_x0

X0 = toy_x0()


# ---------------------------------------------------------------- chapter 5
def test_ch5_pg_step():
    assert updates.pg(toy(), X0, 0.5).tolist() == pytest.approx([-1.5, math.sqrt(4.5) - 3.0])


def test_ch5_nearest_solution():
    xs = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x1 = xs + updates.pg(toy(target=[0.0, 4.0]), xs, 1.0)
    assert x1.tolist() == pytest.approx([0.0, -2.0], abs=1e-14)


def test_ch5_steps_for_1e6():
    r = physgrad.optimize(toy(), X0, "pg", steps=100, step_size=0.5, tol=1e-6)
    assert r.nit == 10
    assert 4.0 ** -10 == pytest.approx(r.rel_losses[-1].item(), rel=1e-9)


# ---------------------------------------------------------------- chapter 6
def test_ch6_path_average():
    d = torch.tensor([0.0, -5.0], dtype=torch.float64)
    avg = theory.path_average_inverse_jacobian(toy(), X0, d)[1].item() / -5.0
    assert avg == pytest.approx((2.0 - 3.0) / (4.0 - 9.0), rel=1e-12)


def test_ch6_pg_minus_ig():
    pg2, ig2 = updates.pg(toy(), X0, 0.5)[1].item(), updates.ig(toy(), X0, 0.5)[1].item()
    assert pg2 == pytest.approx(3 * (math.sqrt(0.5) - 1))
    assert ig2 == pytest.approx(-0.75)
    assert pg2 - ig2 == pytest.approx(-0.12868, abs=1e-5)


def test_ch6_newton_in_y():
    in_y = physgrad.Problem(lambda y: y, torch.zeros(2, dtype=torch.float64))
    y0 = toy().simulate(X0)
    assert updates.newton(in_y, y0, 1.0, line_search=None).tolist() == pytest.approx([-3.0, -9.0])


# ---------------------------------------------------------------- chapters 1 and 9
def test_ch1_toy_loss_values():
    assert toy(1.0).loss(X0).item() == pytest.approx(0.5 * (9 + 81))
    assert toy(10.0).loss(X0).item() == pytest.approx(0.5 * 100 * (9 + 81))


def test_ch1_one_pg_step_reaches_target():
    r = physgrad.optimize(toy(), X0, "pg", steps=1, step_size=1.0)
    assert r.losses[-1].item() == 0.0
    assert r.x.tolist() == [0.0, 0.0]


def test_ch9_hig_limits():
    assert updates.hig(toy(), X0, 0.5, kappa=1.0, line_search=None).tolist() == pytest.approx([-1.5, -0.75])
    assert updates.hig(toy(), X0, 0.01, kappa=-1.0, line_search=None).tolist() == pytest.approx([-0.03, -0.54])


def test_ch9_rosenbrock_one_pg_step():
    from physgrad.problems.toy import rosenbrock

    r = physgrad.optimize(rosenbrock(), torch.tensor([-1.2, 1.0], dtype=torch.float64), "pg", steps=1)
    assert r.x.tolist() == pytest.approx([1.0, 1.0], abs=1e-14)
