"""Safe defaults, pure forms on request, honest results (issue 12, items 1-3 and 5).

The "done means" demo is a smooth non-linear problem made for this file (not one from the
review): an exponential-decay fit y(t) = a exp(-k t) + c at 25 times, started far away."""

import math
import threading

import pytest
import torch

import physgrad
from physgrad import errors, updates
from physgrad.inverse import numerical_inverse
from physgrad.problem import count_calls

D = torch.float64
T = torch.linspace(0, 4, 25, dtype=D)
X_TRUE = torch.tensor([2.0, 1.3, 0.5], dtype=D)
X0 = torch.tensor([0.5, 4.0, 0.0], dtype=D)


def decay(x):
    return x[0] * torch.exp(-x[1] * T) + x[2]


def decay_problem():
    return physgrad.Problem(decay, decay(X_TRUE), numerical_inverse(decay, on_fail="best"), name="decay")


# (method, options) at their defaults; gd/adam have no default learning rate by design
DEFAULT_RUNS = [(m, {"step_size": 1e-2} if spec.learning_rate else {}) for m, spec in physgrad.METHODS.items()] + [
    ("ig", {"damping": "auto"})]


@pytest.mark.parametrize("method,kw", DEFAULT_RUNS, ids=[m + ("-auto" if kw.get("damping") else "")
                                                         for m, kw in DEFAULT_RUNS])
def test_every_method_at_defaults_ends_at_or_below_L0_and_says_so(method, kw):
    res = physgrad.optimize(decay_problem(), X0, method, steps=100, **kw)
    L0, L = res.losses[0].item(), res.losses[-1].item()
    assert L <= L0 and res.fun == L
    assert bool((res.losses.diff() <= 1e-12 * L0).all()) or method in ("gd", "adam", "ig")  # monotone where globalized
    # pure ig gets stuck on this problem: its updates fall below round-off of x, a stall it reports
    assert res.status in (0, 1) or (method == "ig" and not kw and res.status == -2 and "stalled" in res.message)
    assert res.converged == res.success == (res.status == 0)  # the step limit is not a success (as in scipy)
    if res.status == 1:
        assert res.message.startswith("reached the step limit") and res.nit == 100
        assert f"L/L0 = {L / L0:.3g}" in res.message
    elif res.status == -2:
        assert not res.success
    else:
        assert "reached" in res.message or "converged" in res.message
    assert math.isfinite(res.grad_norm)


@pytest.mark.parametrize("method", ["newton", "hig"])
def test_pure_forms_fail_where_the_defaults_work(method):
    # the textbook fixed step: newton meets a singular Hessian, hig grows by 15 orders of magnitude
    prob = decay_problem()
    if method == "newton":
        with pytest.raises(errors.SingularMatrixError) as ei:
            physgrad.optimize(prob, X0, method, steps=100, line_search=None)
        part = ei.value.result
        assert part.status == -4 and not part.success and part.nit > 0
    else:
        res = physgrad.optimize(prob, X0, method, steps=100, line_search=None)
        assert res.fun > res.losses[0].item() and res.status == -3 and not res.success
        assert "above the starting loss" in res.message
    safe = physgrad.optimize(prob, X0, method, steps=100)
    assert safe.success and safe.fun < 1e-20


def test_line_search_none_is_exactly_the_textbook_step():
    prob = decay_problem()
    x = X0.clone()
    g, H = prob.grad_and_hessian(x)
    ref = -0.7 * torch.linalg.solve(H, g)
    torch.testing.assert_close(updates.newton(prob, x, 0.7, line_search=None), ref, rtol=1e-10, atol=0)
    st = updates.BFGSState()
    torch.testing.assert_close(updates.bfgs(prob, x, 1e-3, state=st, line_search=None), -1e-3 * g)


def test_newton_default_descends_on_an_indefinite_hessian():
    # report bug 9: L = 1/2 ((x1² - x2² - 1)² + (x1 x2 - 0.5)²) at (0.1, 0.1) has an indefinite Hessian
    prob = physgrad.Problem(lambda x: torch.stack([x[0] ** 2 - x[1] ** 2, x[0] * x[1]]),
                            torch.tensor([1.0, 0.5], dtype=D))
    x0 = torch.tensor([0.1, 0.1], dtype=D)
    assert torch.linalg.eigvalsh(prob.hessian(x0)).min() < 0
    pure = physgrad.optimize(prob, x0, "newton", steps=5, line_search=None)
    assert pure.losses[1] > pure.losses[0]  # the textbook step goes uphill here
    res = physgrad.optimize(prob, x0, "newton", steps=5)
    assert bool((res.losses.diff() < 0).all())
    assert res.counts["hessian_modified"] >= 1 and "not positive definite" in res.message
    g = prob.grad(x0).reshape(-1)
    p, modified = updates.descent_newton_direction(prob.hessian(x0), g)
    assert modified and float(g @ p) < 0


def test_default_bfgs_uses_wolfe_and_converges_on_rosenbrock():
    from physgrad.problems.toy import rosenbrock

    res = physgrad.optimize(rosenbrock(), torch.tensor([-1.2, 1.0], dtype=D), "bfgs", steps=200, tol=1e-20)
    assert res.converged and res.success and torch.allclose(res.x, torch.ones(2, dtype=D), atol=1e-8)


# ---------------------------------------------------------------------------- honest results
def test_converged_at_zero_loss_and_status_codes():
    prob = physgrad.Problem(lambda x: 2 * x, torch.ones(3, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "ig", steps=20)
    assert res.fun == 0.0 and res.converged and res.status == 0 and "L = 0" in res.message
    assert res.nit == 20  # the trajectory keeps its length at L = 0; tol=0 would stop at once
    assert physgrad.optimize(prob, torch.zeros(3, dtype=D), "ig", steps=20, tol=0.0).nit == 1
    at = physgrad.optimize(prob, torch.full((3,), 0.5, dtype=D), "ig", steps=5, damping="auto")
    assert at.converged and at.success and "L = 0" in at.message  # report case 42


def test_atol_is_an_absolute_floor_discrepancy_principle():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 30, generator=g, dtype=D) @ torch.diag(torch.logspace(0, -8, 30, dtype=D))
    x_true = torch.randn(30, generator=g, dtype=D)
    sigma = 1e-3
    y = A @ x_true + sigma * torch.randn(30, generator=g, dtype=D)
    prob = physgrad.Problem(lambda x: A @ x, y)
    atol = 0.5 * 30 * sigma ** 2
    res = physgrad.optimize(prob, torch.zeros(30, dtype=D), "lbfgs", steps=500, atol=atol)
    assert res.converged and res.fun <= atol < res.losses[-2].item() and "atol" in res.message
    # the pure pseudo-inverse fits the noise: loss ~ 0 but a huge x error
    pinv = physgrad.optimize(prob, torch.zeros(30, dtype=D), "ig", steps=1)
    assert torch.linalg.vector_norm(pinv.x - x_true) > 100 * torch.linalg.vector_norm(res.x - x_true)


def test_gtol_and_xtol_stop():
    prob = physgrad.Problem(lambda x: x + 0.1 * x ** 3, torch.ones(3, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=1000, step_size=0.3, gtol=1e-6)
    assert res.converged and res.grad_norm <= 1e-6 and "gtol" in res.message and res.nit < 1000
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=1000, step_size=0.3, xtol=1e-8)
    dx = (res.xs[-1] - res.xs[-2]).norm()
    assert res.converged and dx <= 1e-8 * (1e-8 + res.x.norm()) and "xtol" in res.message


def test_stall_is_reported_not_hidden():
    # report case 22e: an inverse that makes no progress
    prob = physgrad.Problem(lambda x: 2 * x, torch.ones(3, dtype=D), inverse=lambda y, x0: x0.clone())
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "pg", steps=10)
    assert res.status == -2 and not res.success and "stalled" in res.message and res.fun == 1.5
    # report case 35: newton at a maximum of L (g = 0, H < 0)
    prob = physgrad.Problem(lambda x: x ** 2, torch.ones(1, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(1, dtype=D), "newton", steps=10)
    assert res.status == -2 and not res.success and res.fun == 0.5


def test_uphill_run_is_flagged():
    prob = physgrad.Problem(lambda x: x + 0.1 * x ** 3, torch.ones(3, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=3, step_size=2.5)
    assert res.fun > res.losses[0].item() and res.status == -3 and not res.success


# ---------------------------------------------------------------------------- nothing lost
def test_divergence_error_carries_result():
    # report bug 6
    prob = physgrad.Problem(torch.sqrt, torch.full((2,), 0.01, dtype=D))
    with pytest.raises(errors.NonFiniteError) as ei:
        physgrad.optimize(prob, torch.ones(2, dtype=D), "ig", steps=5)
    assert ei.value.result.status == -1 and not ei.value.result.success
    assert bool(torch.isfinite(ei.value.result.losses).all())


def test_user_forward_and_callback_exceptions_carry_result():
    calls = {"n": 0}

    def P(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyError("mesh")
        return 2 * x

    prob = physgrad.Problem(P, torch.ones(3, dtype=D))
    with pytest.raises(KeyError) as ei:
        physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=10, step_size=0.01)
    assert ei.value.result.nit >= 1 and ei.value.result.status == -4

    def cb(k, x, L):
        if k == 2:
            raise RuntimeError("plot failed")

    prob = physgrad.Problem(lambda x: 2 * x, torch.ones(3, dtype=D))
    with pytest.raises(RuntimeError, match="plot failed") as ei:
        physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=10, step_size=0.01, callback=cb)
    assert ei.value.result.nit == 3 and "callback" in ei.value.result.message

    def interrupt(k, x, L):
        if k == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as ei:
        physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=10, step_size=0.01, callback=interrupt)
    assert ei.value.result.nit == 5


def test_user_state_is_honoured_or_rejected():
    # report bug 2: warm start of LM's lambda and of BFGS's matrix
    prob = physgrad.Problem(lambda x: 2 * x + 0.1 * x ** 3, torch.ones(3, dtype=D))
    st = updates.LMState(lam=1e3)
    physgrad.optimize(prob, torch.zeros(3, dtype=D), "ig", steps=2, damping="auto", state=st)
    assert st.lam != 1e3  # used and adapted in place
    bs = updates.BFGSState()
    r1 = physgrad.optimize(prob, torch.zeros(3, dtype=D), "bfgs", steps=2, state=bs)
    assert bs.B is not None and not torch.equal(bs.B, torch.eye(3, dtype=D))
    with pytest.raises(TypeError, match="must be a LMState"):
        physgrad.optimize(prob, r1.x, "ig", steps=1, damping="auto", state=bs)
    with pytest.raises(TypeError, match="has no state"):
        physgrad.optimize(prob, r1.x, "newton", steps=1, state=st)


def test_counts_are_per_run_across_threads_and_include_the_inverse():
    prob = physgrad.Problem(lambda x: x + 0.1 * x ** 3, torch.ones(4, dtype=D), numerical_inverse(
        lambda x: x + 0.1 * x ** 3))
    out = {}

    def run(method, kw):
        out[method] = physgrad.optimize(prob, torch.zeros(4, dtype=D), method, steps=20, **kw)

    th = [threading.Thread(target=run, args=a) for a in (("gd", {"step_size": 0.1}), ("ig", {}))]
    [t.start() for t in th]
    [t.join() for t in th]
    gd, ig = out["gd"], out["ig"]
    assert "jacobian" not in gd.counts and gd.counts["grad"] == gd.nit
    assert ig.counts["jacobian"] == ig.nit
    pg = physgrad.optimize(prob, torch.zeros(4, dtype=D), "pg", steps=3, step_size=0.5)
    assert pg.nit == 3 and pg.counts["inverse"] == 3 and pg.counts["inverse_jacobian"] >= 3
    with count_calls() as c:
        prob.loss(torch.zeros(4, dtype=D))
    assert c == {"forward": 1}


def test_pg_costs_k_plus_one_forwards_and_k_inverses():
    from physgrad.problems.toy import toy, toy_x0

    res = physgrad.optimize(toy(), toy_x0(), "pg", steps=7, step_size=0.5)
    assert res.nit == 7 and res.counts == {"forward": 8, "inverse": 7}


# ---------------------------------------------------------------------------- memory and cost
@pytest.mark.parametrize("method", ["newton", "ig", "hig", "bfgs"])
def test_dense_methods_raise_memory_budget_error_before_allocating(method, monkeypatch):
    # report bug 10 at a size that is cheap to run: budget 1 MB, n = 1000 (8 MB per dense matrix)
    monkeypatch.setenv("PHYSGRAD_MEMORY_BUDGET", "1M")
    n = 1000
    prob = physgrad.Problem(lambda x: x + 0.1 * x ** 3, torch.ones(n, dtype=D))
    kw = {"solver": "dense"} if method == "ig" else {}
    with pytest.raises(errors.MemoryBudgetError, match="lbfgs.*lsqr") as ei:
        physgrad.optimize(prob, torch.zeros(n, dtype=D), method, steps=1, **kw)
    assert ei.value.result.nit == 0
    # the matrix-free methods run under the same budget
    assert physgrad.optimize(prob, torch.zeros(n, dtype=D), "lbfgs", steps=3).status == 1  # step limit, no error
    monkeypatch.setenv("PHYSGRAD_MEMORY_BUDGET", "1G")
    assert physgrad.optimize(prob, torch.zeros(n, dtype=D), method, steps=1, **kw).nit == 1


def test_ig_auto_solver_goes_matrix_free_when_large():
    n = 2100  # J would have 4.4e6 entries > 4e6
    prob = physgrad.Problem(lambda x: 2 * x, torch.ones(n, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(n, dtype=D), "ig", steps=1)
    assert "jacobian" not in res.counts and res.counts.get("vjp", 0) + res.counts.get("jvp", 0) >= 0
    assert res.fun < 1e-6 * res.losses[0].item()


def test_autograd_jacobian_matches_jacrev():
    prob = decay_problem()
    J = prob.jacobian(X0)
    pa = physgrad.Problem(decay, decay(X_TRUE), jacobian_mode="autograd")
    torch.testing.assert_close(pa.jacobian(X0), J, rtol=1e-12, atol=1e-14)


def test_autograd_only_paths_do_not_import_torch_func_machinery():
    import subprocess
    import sys

    code = ("import sys, torch, physgrad\n"
            "from physgrad.problems.toy import toy, toy_x0\n"
            "for m, kw in (('gd', {'step_size': 0.01}), ('adam', {'step_size': 0.01}), ('pg', {}), ('lbfgs', {})):\n"
            "    physgrad.optimize(toy(), toy_x0(), m, steps=3, **kw)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_auto_jacobian_mode_keeps_the_size_rule_when_cheap_and_measures_when_slow(monkeypatch):
    import time as _time

    import physgrad.problem as pp

    real = pp._dense_jacobian
    calls = []
    clock = [0.0]  # a fake clock: only the "slow" mode advances it, so the machine's load cannot

    def fake(f, xf, mode, slow=None):
        calls.append(mode)
        if mode == slow_mode[0]:
            clock[0] += 0.06  # a forward mode that is slow on this simulator (Python time loop)
        return real(f, xf, mode)

    monkeypatch.setattr(_time, "perf_counter", lambda: clock[0])
    slow_mode = [None]
    monkeypatch.setattr(pp, "_dense_jacobian", fake)
    prob = decay_problem()  # n = 3 <= m = 25: the size rule says forward mode
    J = prob.jacobian(X0)
    assert calls == ["fwd"] and list(prob._auto_modes.values()) == ["fwd"]
    slow_mode[0] = "fwd"
    calls.clear()
    prob = decay_problem()
    J2 = prob.jacobian(X0)
    assert calls == ["fwd", "fwd", "rev", "rev"] and list(prob._auto_modes.values()) == ["rev"]
    torch.testing.assert_close(J2, J, rtol=1e-12, atol=1e-14)
    calls.clear()
    prob.jacobian(X0)
    assert calls == ["rev"]  # cached


def test_result_pickles_with_a_lambda_forward():
    import pickle

    prob = physgrad.Problem(lambda x: 2 * x, torch.ones(3, dtype=D))
    res = physgrad.optimize(prob, torch.zeros(3, dtype=D), "gd", steps=3, step_size=0.1)
    back = pickle.loads(pickle.dumps(res))
    assert torch.equal(back.xs, res.xs) and back.status == res.status and back.grad_norm == res.grad_norm
