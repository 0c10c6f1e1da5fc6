"""physgrad.theory against closed forms on the toy problem y = c*(x1, x2^2)."""

import math

import numpy as np
import pytest
import torch

import physgrad
from physgrad import theory, updates
from physgrad.problems.toy import toy, toy_x0


def test_rescale_inputs_gd_step_shrinks_with_square_of_unit_factor():
    prob, x0 = toy(), toy_x0()
    s = torch.tensor([100.0, 1.0], dtype=torch.float64)
    cm = theory.rescale_inputs(prob, s)
    dx_m = updates.gd(prob, x0, 0.01)
    dx_cm = updates.gd(cm, x0 * s, 0.01) / s  # back to metres
    assert dx_cm[0].item() == pytest.approx(dx_m[0].item() / 1e4, rel=1e-12)
    assert dx_cm[1].item() == pytest.approx(dx_m[1].item(), rel=1e-12)
    # the inverse gradient and the physical gradient are unit-independent
    for m in ("ig", "pg", "newton"):
        a = getattr(updates, m)(prob, x0, 0.5)
        b = getattr(updates, m)(cm, x0 * s, 0.5) / s
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_rescaled_inverse_is_an_inverse():
    s = torch.tensor([100.0, 0.5], dtype=torch.float64)
    cm = theory.rescale_inputs(toy(), s)
    x0 = torch.tensor([250.0, 1.2], dtype=torch.float64)
    y = torch.tensor([0.7, 2.0], dtype=torch.float64)
    x = cm.apply_inverse(y, x0)
    assert torch.allclose(cm.simulate(x), y, atol=1e-14)


def test_sensitivity_exponents():
    cs = np.geomspace(0.1, 10.0, 7)
    x0 = toy_x0()
    gd = theory.sensitivity_scan(toy, cs, x0, "gd", 1e-4)
    assert theory.power_law_exponent(cs, gd["step"]) == pytest.approx(2.0, abs=1e-9)
    # loss change of GD: -eta |g|^2 + O(eta^2), g ~ c^2 -> c^4 for small eta*c^2
    small = theory.sensitivity_scan(toy, cs[:3], x0, "gd", 1e-7)
    assert theory.power_law_exponent(cs[:3], small["dloss"]) == pytest.approx(4.0, abs=1e-3)
    for m in ("newton", "ig", "pg"):
        r = theory.sensitivity_scan(toy, cs, x0, m, 0.5)
        assert np.allclose(r["step"], r["step"][0], rtol=1e-12)
        assert theory.power_law_exponent(cs, r["dloss"]) == pytest.approx(2.0, abs=1e-9)


def test_path_average_equals_pg_step():
    prob, x0 = toy(2.0), toy_x0()
    dy = updates.y_step(prob, x0, 0.5)
    avg = theory.path_average_inverse_jacobian(prob, x0, dy)
    pg = updates.pg(prob, x0, 0.5)
    assert torch.allclose(avg, pg, atol=1e-12)
    # closed form: x2 -> 3 sqrt(0.5)
    assert pg[1].item() == pytest.approx(3 * math.sqrt(0.5) - 3, abs=1e-14)


def test_linear_inverse_error_is_second_order():
    prob, x0 = toy(), toy_x0()
    y0 = prob.simulate(x0)
    d = torch.tensor([0.0, -1.0], dtype=torch.float64)
    errs = []
    for h in (1e-1, 1e-2):
        y = y0 + h * d
        errs.append((theory.linear_inverse(prob, x0, y) - prob.apply_inverse(y, x0)).norm().item())
    assert errs[0] / errs[1] == pytest.approx(100.0, rel=0.02)
    # exact: x2 = sqrt(9 - h) vs 3 - h/6
    h = 1e-1
    assert errs[0] == pytest.approx(abs(math.sqrt(9 - h) - (3 - h / 6)), rel=1e-9)


def test_hessian_cost_memory():
    rows = theory.hessian_cost([4, 8])
    assert [r["hessian_bytes"] for r in rows] == [8 * 16, 8 * 64]
    assert all(r["t_hessian"] >= 0 for r in rows)
