"""physgrad.runs: the headless runs behind both kinds of explorer.

Checked against closed forms of the toy problem ``P(x) = c·(x_1, x_2^2)``, ``y* = 0``,
``x0 = (3, 3)`` (``L = ½ c² (x_1² + x_2⁴)``) and of ``P(x) = c x`` (GD's factor per step is
``1 − η c²``), and against runs computed from scratch.
"""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import physgrad
from physgrad import runs
from physgrad.problems.toy import toy, toy_x0
from physgrad.runs import (METHOD_FACTS, RunCache, extendable, is_stable, learning_rate,
                           loss_grid, max_stable_step, run_method, y_path)


def linear(c):
    """P(x) = c x (one parameter), y* = 2c."""
    return physgrad.Problem(lambda x: c * x, c * torch.tensor([2.0], dtype=torch.float64),
                            lambda y, x0: y / c, name="cx")


def test_method_facts_cover_the_optimizers_methods():
    for m in METHOD_FACTS:  # every method named here is one that optimize runs
        assert run_method(toy(1.0), toy_x0(), m, 2, 0.1).nit == 2
    assert learning_rate("gd") and learning_rate("adam") and not learning_rate("pg")
    assert extendable("ig") and not extendable("ig", {"damping": "auto"})
    assert extendable("ig", {"damping": 0.1}) and not extendable("bfgs")
    with pytest.raises(ValueError, match="unknown method"):
        learning_rate("sgd")


def test_runs_module_draws_nothing():
    """runs is headless: it imports neither matplotlib nor ipywidgets nor the widgets module."""
    tree = ast.parse(Path(runs.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.startswith(("matplotlib", "ipywidgets", "PIL")) or n.endswith("widgets")
                   for n in names), names
    inter = Path(runs.__file__).with_name("interactive.py").read_text()
    assert "from .widgets" not in inter and "import widgets" not in inter


@pytest.mark.parametrize("method,eta", [("gd", 1e-3), ("newton", 0.5), ("pg", 0.3), ("hig", 0.5),
                                        ("ig", 0.5)])
def test_cache_prefix_and_extension_equal_fresh_runs(method, eta):
    cache, prob = RunCache(), toy(2.0)
    opt = {"line_search": None} if method in ("newton", "hig") else {}
    short = cache.run(prob, toy_x0(), method, 5, eta, key=2.0, **opt)
    assert short.nit == 5 and cache.computed == 1
    longer = cache.run(prob, toy_x0(), method, 12, eta, key=2.0, **opt)  # continued from step 5
    assert cache.computed == 2 and longer.nit == 12
    fresh = run_method(prob, toy_x0(), method, 12, eta, **opt)
    np.testing.assert_allclose(longer.xs.numpy(), fresh.xs.numpy(), rtol=1e-13, atol=0)
    np.testing.assert_allclose(longer.losses.numpy(), fresh.losses.numpy(), rtol=1e-12, atol=0)
    # the first sentence of optimize's message (a hint may follow it: ". For ig ...")
    assert fresh.message.startswith(longer.message) and longer.message.startswith("reached the step limit (12)")
    again = cache.run(prob, toy_x0(), method, 7, eta, key=2.0, **opt)  # a prefix: no new run
    assert cache.computed == 2
    np.testing.assert_array_equal(again.xs.numpy(), fresh.xs[:8].numpy())


def test_cache_recomputes_methods_with_state():
    cache, prob = RunCache(), toy(1.0)
    cache.run(prob, toy_x0(), "adam", 4, 0.1, key=1.0)
    longer = cache.run(prob, toy_x0(), "adam", 9, 0.1, key=1.0)
    fresh = run_method(prob, toy_x0(), "adam", 9, 0.1)
    np.testing.assert_array_equal(longer.xs.numpy(), fresh.xs.numpy())  # from x0, not step 4
    small = RunCache(maxsize=2)
    for eta in (0.1, 0.2, 0.3):
        small.run(prob, toy_x0(), "gd", 2, eta, key=1.0)
    assert len(small) == 2


def test_diverging_run_is_truncated_and_renumbered():
    prob = toy(1.0)
    cache = RunCache()
    cache.run(prob, toy_x0(), "gd", 1, 0.2, key=1.0)  # step 1 is finite: x₂ = 3(1 − 3.6) = −7.8
    run = cache.run(prob, toy_x0(), "gd", 30, 0.2, key=1.0)
    fresh = run_method(prob, toy_x0(), "gd", 30, 0.2)
    assert not run.ok and not fresh.ok and run.final
    assert run.nit == fresh.nit < 30
    assert not is_stable(run, 30)


def test_failing_inverse_keeps_the_steps_before_it():
    run = run_method(toy(1.0), toy_x0(), "pg", 10, 1.5)  # y₂ = −0.5 y₂: no real pre-image
    assert not run.ok and run.nit == 0 and "InverseSimulatorError" in run.message


def test_stability_from_the_stored_loss():
    """From (3, 3) GD on the toy problem is stable exactly for η < 1/(9c²): the x₂ factor of the
    first step is 1 − 18 η c², and it only shrinks as |x₂| falls (the x₁ part alone would allow
    η < 2/c²)."""
    for c in (0.5, 1.0, 4.0):
        bound = 1 / (9 * c**2)
        assert is_stable(run_method(toy(c), toy_x0(), "gd", 30, 0.97 * bound), 30)
        assert not is_stable(run_method(toy(c), toy_x0(), "gd", 30, 1.03 * bound), 30)
        eta = max_stable_step(toy, c, toy_x0(), "gd", steps=100, rtol=1e-3)
        assert eta == pytest.approx(bound, rel=3e-3) and eta <= bound


def test_max_stable_step_is_two_over_c_squared():
    x0 = torch.tensor([-1.0], dtype=torch.float64)
    for c in (0.1, 1.0, 10.0):
        eta = max_stable_step(linear, c, x0, "gd", steps=20, rtol=1e-3)
        assert eta == pytest.approx(2 / c**2, rel=2e-3)
        assert eta <= 2 / c**2


def test_loss_grid_and_y_path_closed_forms():
    c = 3.0
    X1, X2, L, Y = loss_grid(toy(c), toy_x0(), (-1.0, 2.0), (0.0, 1.5), points=7)
    assert X1.shape == X2.shape == L.shape == (7, 7) and Y.shape == (49, 2)
    np.testing.assert_allclose(L, 0.5 * c**2 * (X1**2 + X2**4), rtol=1e-13)
    np.testing.assert_allclose(Y[:, 1], c * X2.reshape(-1) ** 2, rtol=1e-13)
    x1, none, L1, _ = loss_grid(linear(2.0), torch.tensor([0.0], dtype=torch.float64), (0, 4))
    assert none is None and x1.shape == (400,)
    np.testing.assert_allclose(L1, 0.5 * 4.0 * (x1 - 2.0) ** 2, rtol=1e-12, atol=1e-15)
    xs = torch.tensor([[3.0, 3.0], [1.0, 2.0]], dtype=torch.float64)
    np.testing.assert_allclose(y_path(toy(c), xs), [[9.0, 27.0], [3.0, 12.0]])


def test_relative_losses_have_a_floor():
    run = run_method(linear(1.0), torch.tensor([0.0], dtype=torch.float64), "ig", 3, 1.0)
    rel = run.relative_losses()  # IG with η = 1 on a linear problem: exact after one step
    assert rel[0].item() == 1.0 and rel[1:].min().item() == runs.LOSS_FLOOR
