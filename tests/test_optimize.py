"""The optimize() contract, input checks and the documented errors."""

import pytest
import torch

import physgrad
from physgrad import errors, updates
from physgrad.problems.toy import toy, toy_x0


def test_result_contract():
    res = physgrad.optimize(toy(), toy_x0(), "ig", steps=50, step_size=0.5)
    assert res.xs.shape == (51, 2) and res.losses.shape == (51,) and res.times.shape == (51,)
    assert torch.equal(res.xs[0], toy_x0()) and torch.equal(res.x, res.xs[-1])
    assert res.times[0] == 0 and bool((res.times.diff() >= 0).all())
    assert res.nit == 50 and res.losses[-1] < 1e-10 * res.losses[0]
    assert res.counts["jacobian"] == 50
    assert res.losses[0].item() == pytest.approx(0.5 * (9 + 81))  # L(x0) = 1/2 (3^2 + (3^2)^2)


def test_tol_stops_early_and_reports():
    res = physgrad.optimize(toy(), toy_x0(), "pg", steps=100, step_size=0.5, tol=1e-6)
    assert res.converged and res.nit < 100
    assert res.rel_losses[-1] <= 1e-6 < res.rel_losses[-2]


def test_callback_can_stop():
    res = physgrad.optimize(toy(), toy_x0(), "ig", steps=100, step_size=0.5, callback=lambda k, x, L: k == 2)
    assert res.nit == 3 and "callback" in res.message


def test_float32_is_followed():
    x0 = toy_x0(dtype=torch.float32)
    res = physgrad.optimize(toy(dtype=torch.float32), x0, "newton", steps=3, step_size=1.0)
    assert res.x.dtype == torch.float32 and res.losses.dtype == torch.float32
    # float64 target with a float32 x: the target follows x
    res = physgrad.optimize(toy(), x0, "ig", steps=3, step_size=1.0)
    assert res.x.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", ["gd", "adam", "newton", "bfgs", "lbfgs", "ig", "pg", "hig"])
def test_cuda_runs_on_device(method):
    x0 = toy_x0(device="cuda")
    res = physgrad.optimize(toy(), x0, method, steps=5, step_size=0.1)
    assert res.x.device.type == "cuda" and res.losses.device.type == "cuda"
    cpu = physgrad.optimize(toy(), toy_x0(), method, steps=5, step_size=0.1)
    torch.testing.assert_close(res.xs.cpu(), cpu.xs, rtol=1e-9, atol=1e-12)


def test_gd_without_step_size_uses_the_documented_heuristic():
    from physgrad.updates import default_learning_rate
    from physgrad.views import SingleView

    prob, x0 = toy(), toy_x0()
    res = physgrad.optimize(prob, x0, "gd", steps=3)
    assert res.step_size == default_learning_rate("gd", SingleView(prob, x0.shape), x0.reshape(1, -1))
    J = torch.func.jacrev(prob.forward)(x0)
    assert res.step_size == pytest.approx(1 / float(torch.linalg.matrix_norm(J, 2)) ** 2, rel=1e-6)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method"):
        physgrad.optimize(toy(), toy_x0(), "newtn")


def test_shape_mismatch():
    prob = physgrad.Problem(lambda x: x ** 2, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(errors.ShapeError, match=r"shape \(2,\) but the target y\* has shape \(3,\)"):
        physgrad.optimize(prob, toy_x0(), "ig")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_x0(bad):
    with pytest.raises(errors.NonFiniteError, match="x0 contains 1 non-finite"):
        physgrad.optimize(toy(), torch.tensor([3.0, bad], dtype=torch.float64), "ig")


def test_non_finite_target():
    with pytest.raises(errors.NonFiniteError, match="target"):
        physgrad.Problem(lambda x: x, torch.tensor([float("nan")]))


def test_diverging_run_raises_with_step_number():
    with pytest.raises(errors.NonFiniteError, match=r"step \d+: the loss became inf"):
        physgrad.optimize(toy(), toy_x0(), "gd", steps=50, step_size=1.0)


def test_diverging_run_stop_mode_returns_finite_prefix():
    res = physgrad.optimize(toy(), toy_x0(), "gd", steps=50, step_size=1.0, on_nonfinite="stop")
    assert "diverged" in res.message and res.nit < 50
    assert bool(torch.isfinite(res.xs).all()) and bool(torch.isfinite(res.losses).all())


def test_singular_hessian_raises_and_fallbacks():
    # P(x) = (x1 + x2, x1 + x2): H = J^T J is rank one everywhere
    prob = physgrad.Problem(lambda x: torch.stack([x.sum(), x.sum()]), torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(errors.SingularMatrixError, match="Hessian is singular"):
        physgrad.optimize(prob, x, "newton", steps=1, line_search=None)
    dx = updates.newton(prob, x, 1.0, fallback="pinv", line_search=None)
    torch.testing.assert_close(dx, torch.tensor([-1.5, -1.5], dtype=torch.float64))  # min-norm solution
    dx = updates.newton(prob, x, 0.1, fallback="gd", line_search=None)
    torch.testing.assert_close(dx, -0.1 * prob.grad(x))


def test_zero_jacobian_raises_rank_deficient_falls_back_to_pinv():
    prob = physgrad.Problem(lambda x: x ** 2, torch.ones(2, dtype=torch.float64))
    with pytest.raises(errors.SingularMatrixError, match="numerically zero"):
        updates.ig(prob, torch.zeros(2, dtype=torch.float64), 1.0)
    # one zero singular value: the pseudo-inverse updates only the invertible direction
    dx = updates.ig(prob, torch.tensor([0.0, 2.0], dtype=torch.float64), 1.0)
    torch.testing.assert_close(dx, torch.tensor([0.0, -0.75], dtype=torch.float64))


def test_pg_without_inverse_explains_how_to_supply_one():
    prob = physgrad.Problem(lambda x: x ** 2, torch.ones(2, dtype=torch.float64))
    with pytest.raises(errors.MissingInverseError, match=r"inverse=lambda y, x0"):
        physgrad.optimize(prob, toy_x0(), "pg")


@pytest.mark.parametrize("inverse,err,match", [
    (lambda y, x0: y[:1], errors.ShapeError, "returned shape"),
    (lambda y, x0: y * float("nan"), errors.NonFiniteError, "non-finite"),
    (lambda y, x0: 1 / 0, errors.InverseSimulatorError, "ZeroDivisionError"),
    (lambda y, x0: [1.0, 2.0], errors.InverseSimulatorError, "not a torch.Tensor"),
])
def test_bad_inverse_simulator(inverse, err, match):
    prob = physgrad.Problem(lambda x: x ** 2, torch.ones(2, dtype=torch.float64), inverse=inverse)
    with pytest.raises(err, match=match):
        physgrad.optimize(prob, toy_x0(), "pg", steps=2)


def test_toy_inverse_refuses_unreachable_target():
    prob = toy(target=[0.0, -1.0])
    with pytest.raises(errors.InverseSimulatorError, match="no real pre-image"):
        physgrad.optimize(prob, toy_x0(), "pg", steps=2, step_size=1.0)


def test_all_errors_share_a_base_class():
    for e in [errors.ShapeError, errors.NonFiniteError, errors.SingularMatrixError,
              errors.MissingInverseError, errors.InverseSimulatorError, errors.MemoryBudgetError]:
        assert issubclass(e, physgrad.PhysgradError)


def test_grad_and_hessian_match_separate_transforms():
    from physgrad.problems.toy import rosenbrock

    prob = rosenbrock()
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    g, H = prob.grad_and_hessian(x)
    torch.testing.assert_close(g, prob.grad(x))
    torch.testing.assert_close(H, prob.hessian(x))
    # closed form for L = 1/2 (100 (x2 - x1^2)^2 + (1 - x1)^2) = 50 (x2 - x1^2)^2 + (1 - x1)^2 / 2
    x1, x2 = x.tolist()
    H_ref = torch.tensor([[600 * x1 ** 2 - 200 * x2 + 1, -200 * x1], [-200 * x1, 100.0]], dtype=torch.float64)
    torch.testing.assert_close(H, H_ref, rtol=1e-12, atol=1e-10)


def _projectile_like(x):
    # not vectorised on purpose: indexing to 0-dim tensors mixed with Python floats; under
    # torch.func.jacfwd this promotes to float64 in torch 2.13 unless physgrad casts back
    v, a, k = x[0], x[1], x[2]
    return torch.stack([v * torch.cos(a) / 9.81, v * torch.sin(a) / 9.81 - k, k * v / 2.0])


@pytest.mark.parametrize("method", ["newton", "ig", "hig", "bfgs"])
def test_float32_with_python_float_arithmetic_in_P(method):
    x0 = torch.tensor([10.0, 0.5, 0.1], dtype=torch.float32)
    prob = physgrad.Problem(_projectile_like, torch.tensor([5.0, 2.0, 0.3]))
    assert prob.jacobian(x0).dtype == torch.float32
    res = physgrad.optimize(prob, x0, method, steps=3, step_size=0.1)
    assert res.x.dtype == torch.float32 and bool(torch.isfinite(res.losses).all())


def test_auto_lm_float32_stalls_cleanly_instead_of_overflowing():
    prob = physgrad.Problem(_projectile_like, torch.tensor([5.0, 2.0, 0.3]))
    res = physgrad.optimize(prob, torch.tensor([10.0, 0.5, 0.1]), "ig", steps=200, damping="auto")
    assert res.x.dtype == torch.float32 and bool(torch.isfinite(res.losses).all())
    # it ends cleanly: at L = 0 (the trust-region LM of MINPACK gets there in float32), stalled at
    # round-off, or at the step limit, never with an overflowing damping
    assert res.losses[-1] < 1e-8 and (res.converged or "stalled" in res.message or res.nit == 200)


def test_misspelled_ig_option_is_rejected():
    with pytest.raises(TypeError, match="dampng"):
        physgrad.optimize(toy(), toy_x0(), "ig", steps=2, dampng=1e-3)
    with pytest.raises(TypeError, match="only apply to solver"):
        physgrad.optimize(toy(), toy_x0(), "ig", steps=2, maxiter=3)


def test_error_mid_run_names_step_and_keeps_trajectory():
    # an inverse simulator that fails at its third call: steps 1-2 succeed and must be kept
    calls = {"n": 0}

    def inverse(y, x0):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("solver diverged")
        return toy().inverse(y, x0)

    prob = physgrad.Problem(toy().forward, torch.zeros(2, dtype=torch.float64), inverse)
    with pytest.raises(errors.InverseSimulatorError, match=r"step 3 of method 'pg'.*solver diverged") as ei:
        physgrad.optimize(prob, toy_x0(), "pg", steps=10, step_size=0.5)
    part = ei.value.result
    assert part.nit == 2 and part.xs.shape == (3, 2) and "step 3" in part.message


def test_integer_target_list_becomes_float():
    prob = physgrad.Problem(lambda x: x, [1, 2])
    assert prob.target.is_floating_point()


def test_infinite_time_budget_means_none():
    """time_budget=float('inf') is accepted (no budget) and gives the same run as None."""
    from physgrad.problems.toy import toy, toy_x0

    a = physgrad.optimize(toy(), toy_x0(), "pg", steps=5, time_budget=float("inf"))
    b = physgrad.optimize(toy(), toy_x0(), "pg", steps=5)
    assert torch.equal(a.xs, b.xs) and a.status == b.status
    with pytest.raises(ValueError, match="time_budget"):
        physgrad.optimize(toy(), toy_x0(), "pg", steps=5, time_budget=-1.0)


def test_pg_costs_k_plus_one_forwards_and_takes_the_inverse_output_as_the_iterate():
    # k PG steps: one forward at x0 and one per new iterate, one inverse per step; the iterate
    # is the inverse's output itself, and at eta = 1 the inverse is asked for y* bit for bit
    asked = []
    base = toy()

    def inverse(y, x0):
        asked.append(y.clone())
        return base.inverse(y, x0)

    prob = physgrad.Problem(base.forward, base.target, inverse)
    res = physgrad.optimize(prob, toy_x0(), "pg", steps=4, step_size=0.5, keep_xs=True)
    assert res.nit == 4 and res.counts == {"forward": 5, "inverse": 4}
    for k in range(4):
        x_inv = base.inverse(asked[k], res.xs[k])
        assert torch.equal(res.xs[k + 1], x_inv)
        y_k = base.forward(res.xs[k])
        assert torch.allclose(asked[k], y_k + 0.5 * (base.target - y_k), rtol=0, atol=1e-15)
    asked.clear()
    physgrad.optimize(prob, toy_x0(), "pg", steps=1)
    assert torch.equal(asked[0], base.target)


def test_large_finite_values_are_not_mistaken_for_a_divergence():
    # the one-reduction finiteness probes overflow to inf on entries near the float64 limit;
    # the exact check behind them must clear the run, which stays finite throughout
    big = 1e308
    prob = physgrad.Problem(lambda x: 1e-300 * x, torch.zeros(4, dtype=torch.float64),
                            inverse=lambda y, x0: y * 1e300)
    x0 = torch.full((4,), big, dtype=torch.float64)
    assert not torch.isfinite(x0.sum())  # the probe would say NaN/Inf
    res = physgrad.optimize(prob, x0, "pg", steps=3, step_size=0.5)
    assert res.status == 1 and res.nit == 3 and bool(torch.isfinite(res.xs).all())
    assert float(res.losses[-1]) == pytest.approx(float(res.losses[0]) / 64, rel=1e-12)
    with pytest.raises(errors.NonFiniteError, match="1 non-finite value"):
        prob.check_x(torch.tensor([big, big, float("nan"), 1.0], dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matfree_ig_batched_pg_and_bench_follow_the_device():
    from physgrad import bench
    from physgrad.matfree import Forcing
    from physgrad.problems.heat import heat_2d

    cpu, gpu = heat_2d(n=32, nu_T=8.0), heat_2d(n=32, nu_T=8.0, device="cuda")
    def ig(p):  # a Forcing object serves one run: a fresh one for each
        return physgrad.optimize(p, p.x0, "ig", steps=3, solver="cg", solver_tol=Forcing(1e-3, first=0.0), tol=1e-6)

    rc, rg = ig(cpu), ig(gpu)
    assert rg.x.device.type == "cuda" and rg.nit == rc.nit == 1
    # heat-2d is so ill-conditioned that x itself is not determined to more than ~1e-3 by a solve
    # that stops at L/L0 = 1e-6 (on the H100, CPU and GPU iterates differed by 1.2e-3): compare
    # what is determined, the loss
    assert float(rg.rel_losses[-1]) <= 1e-6 and float(rc.rel_losses[-1]) <= 1e-6
    pc, pg = physgrad.optimize(cpu, cpu.x0, "pg", steps=4, step_size=0.5), \
        physgrad.optimize(gpu, gpu.x0, "pg", steps=4, step_size=0.5)
    torch.testing.assert_close(pg.losses.cpu(), pc.losses, rtol=1e-9, atol=1e-20)
    rows, extra = bench.run(["heat-2d"], ["pg", "ig", "scipy-lbfgsb"], budget=20.0, device="cuda", repeats=1,
                            sizes={"heat-2d": 32}, progress=False)
    assert all(r["reached"] for r in rows)
    assert extra["heat-2d@32"]["pg_step_vs_limit"]["median"] > 0


def test_zero_update_is_a_stall_never_xtol_and_ends_the_run():
    # round() has a zero derivative: gd's update is exactly zero. Before, "reached ||dx|| <= xtol",
    # success after 1 step, or 50 steps of zero updates without xtol
    prob = physgrad.Problem(lambda x: torch.round(x), torch.tensor([2.4], dtype=torch.float64))
    x0 = torch.tensor([0.2], dtype=torch.float64)
    for kw in (dict(xtol=1e-8), {}):
        res = physgrad.optimize(prob, x0, "gd", steps=50, step_size=0.1, **kw)
        assert res.status == -2 and not res.success and res.nit == 1, res.message
        assert "xtol" not in res.message and "stalled" in res.message


def test_lbfgs_first_step_is_scaled_like_torch_lbfgs():
    # no curvature pair yet: the first trial length is eta * min(1, 1/||g||_1) (torch.optim.LBFGS)
    prob = physgrad.Problem(lambda x: 10 * x ** 3, torch.tensor([1.0, 2.0], dtype=torch.float64))
    x = torch.tensor([3.0, 2.0], dtype=torch.float64)
    g = prob.grad(x)
    dx = updates.lbfgs(prob, x, 0.5, line_search=None)
    torch.testing.assert_close(dx, -0.5 * min(1.0, 1.0 / float(g.abs().sum())) * g, rtol=1e-14, atol=0)
    # and the search then starts from a sensible length: the default run makes progress at once
    res = physgrad.optimize(prob, x, "lbfgs", steps=30, tol=1e-20)
    assert res.success and res.losses[1] < res.losses[0]


def test_pure_ig_growth_guard_ends_a_runaway_run():
    # atan(x) = 1.6 has no solution (atan < pi/2): the undamped step sends x off to infinity
    prob = physgrad.Problem(torch.atan, torch.tensor([1.6], dtype=torch.float64))
    res = physgrad.optimize(prob, torch.tensor([1.0], dtype=torch.float64), "ig", steps=100)
    assert res.status == -1 and not res.success and "ran away" in res.message and "damping='auto'" in res.message
    assert float(res.x.abs().max()) < 1e20
    auto = physgrad.optimize(prob, torch.tensor([1.0], dtype=torch.float64), "ig", steps=100, damping="auto")
    assert auto.status != -1


def test_growth_guard_takes_its_scale_from_the_first_step_when_x0_is_almost_zero():
    # x0 = 1e-16: one exact IG step lands on x = 0.5, 5e15 times ||x0|| -- that is the scale of
    # the problem, not a runaway (the guard compares with max(||x0||, ||x1||)); single and batched
    target = torch.ones(3, dtype=torch.float64)
    x0 = torch.full((3,), 1e-16, dtype=torch.float64)
    res = physgrad.optimize(physgrad.Problem(lambda x: 2 * x, target), x0, "ig", steps=5, tol=1e-20)
    assert res.success and res.status == 0 and torch.allclose(res.x, 0.5 * target, rtol=1e-14)
    batch = physgrad.Problem(lambda x: 2 * x, target.expand(2, 3).clone(), batched=True)
    resb = physgrad.optimize(batch, x0.expand(2, 3).clone(), "ig", steps=5, tol=1e-20)
    assert resb.success.all() and (resb.status == 0).all()


@pytest.mark.parametrize("method", ["pg", "ig", "gd"])
def test_keep_xs_false_keeps_x0_and_the_last_iterate(method):
    # the two-row record of keep_xs=False holds exactly what keep_xs=True holds first and last
    kw = dict(step_size=0.01) if method == "gd" else dict(step_size=0.5)
    full = physgrad.optimize(toy(), toy_x0(), method, steps=6, **kw)
    short = physgrad.optimize(toy(), toy_x0(), method, steps=6, keep_xs=False, **kw)
    assert short.xs.shape == (2, 2) and torch.equal(short.xs, full.xs[[0, -1]])
    assert torch.equal(short.x, full.x) and torch.equal(short.losses, full.losses)
    assert short.times.dtype == torch.float64 and short.times.shape == (7,) and short.times[0] == 0
    assert bool((short.times.diff() >= 0).all())
    assert short.fun == short.losses[-1].item() == full.fun
    # no step taken (x0 already meets atol): one row, a tensor of its own
    none = physgrad.optimize(toy(), toy_x0(), method, steps=6, keep_xs=False, atol=1e9, **kw)
    assert none.nit == 0 and none.xs.shape == (1, 2) and torch.equal(none.xs[0], toy_x0())
    assert none.xs.untyped_storage().nbytes() == 2 * 8 and none.fun == none.losses[0].item()


@pytest.mark.parametrize("keep_xs", [True, False])
def test_an_inverse_that_writes_into_its_x0_cannot_change_the_recorded_x0(keep_xs):
    # a careless user inverse (x0 += ...) changes the iterate it was given, but not the record
    base = toy()

    def careless(y, x0):
        x = base.inverse(y, x0)
        x0.zero_()
        return x

    res = physgrad.optimize(physgrad.Problem(base.forward, base.target, careless), toy_x0(), "pg", steps=3,
                            step_size=0.5, keep_xs=keep_xs)
    assert torch.equal(res.xs[0], toy_x0())


def test_fun_is_the_last_recorded_loss_after_a_nonfinite_stop():
    res = physgrad.optimize(toy(), toy_x0(), "gd", steps=50, step_size=10.0, on_nonfinite="stop", keep_xs=False)
    assert res.status == -1 and res.fun == res.losses[-1].item() and res.xs.shape == (2, 2)
