"""Batched problems (physgrad.batched): every sample of a batched run must follow the trajectory
of the single-problem ``optimize`` run on that sample alone (float64, 1e-12), failures stay per
sample, and memory stays linear in the batch size."""

import math

import pytest
import torch

import physgrad
from physgrad import Problem, optimize
from physgrad.batched import BatchResult, batch_jacobian
from physgrad.inverse import numerical_inverse
from physgrad.problems import heat, toy

D = torch.float64
B = 5
#: batched vs single trajectories: round-off amplified over a few steps, on any machine (see _assert_same)
TOL, RTOL = 1e-8, 1e-7


def _toy_batch():
    g = torch.Generator().manual_seed(0)
    Y = torch.rand(B, 2, generator=g, dtype=D) * 2 + 0.1  # y2 > 0: a real pre-image exists
    X0 = torch.rand(B, 2, generator=g, dtype=D) * 2 + 1
    p = toy.toy()
    return Problem(p.forward, Y, p.inverse, batched=True), X0, lambda b: toy.toy(target=Y[b])


def _curve(x):
    """A small non-linear simulator R^3 -> R^4 of our own (row-wise, so it works batched)."""
    a, b, c = x[..., 0], x[..., 1], x[..., 2]
    return torch.stack([torch.sin(a) + b ** 2, b * c + 0.5 * a, torch.exp(0.3 * c) + a, a ** 3 / 3 + c - b],
                       dim=-1)


def _curve_batch(with_inverse=True):
    g = torch.Generator().manual_seed(1)
    Xt = torch.randn(B, 3, generator=g, dtype=D) * 0.5
    Y = _curve(Xt)  # reachable targets
    X0 = Xt + 0.3 * torch.randn(B, 3, generator=g, dtype=D)
    inv = numerical_inverse(_curve, batched=True, on_fail="best") if with_inverse else None
    bp = Problem(_curve, Y, inv, batched=True)

    def single(b):
        return Problem(_curve, Y[b], numerical_inverse(_curve, on_fail="best") if with_inverse else None)

    return bp, X0, single


CASES = [
    ("gd", dict(step_size=0.05)),
    ("adam", dict(step_size=0.05)),
    ("newton", dict(line_search=None)),
    ("newton", dict(line_search="armijo")),
    ("newton", dict(line_search="armijo", fallback="pinv")),
    ("bfgs", dict(line_search=None, step_size=0.3)),
    ("bfgs", dict(line_search="wolfe")),
    ("bfgs", dict(line_search="armijo", init_scale=True)),
    ("lbfgs", dict()),
    ("lbfgs", dict(line_search="armijo", history=2)),
    ("ig", dict()),
    ("ig", dict(damping=0.1)),
    ("ig", dict(damping="auto")),
    ("ig", dict(solver="lsqr", solver_tol=1e-14)),
    ("pg", dict()),
    ("pg", dict(step_size=0.5)),
    ("hig", dict(line_search=None)),
    ("hig", dict(line_search="armijo")),
]


def _assert_same(rb: BatchResult, singles, steps):
    """Each sample's trajectory is the single run's, to round-off. The batched and the single runs
    solve their small systems through different LAPACK/BLAS paths, so iterates agree to about 1e-12
    on this machine but only to 1e-8 elsewhere (seen on an Intel machine with torch 2.11): the
    tolerance is that of round-off amplified by a few Newton-type steps, far below any step. A run
    that ends because it stalled at working precision (L = 0 or round-off) may end one step earlier
    or later; the comparison then stops at the shorter run."""
    assert rb.xs.shape[1] == B and rb.losses.shape[1] == B
    for b, rs in enumerate(singles):
        k, nb = rs.xs.shape[0], int(rb.nits[b])
        L0 = float(rs.losses[0])
        # both reached round-off (L = 0 or 1e-20 L0): a zero update there ends a run, which may
        # happen a few steps earlier in one of them
        at_precision = float(rs.losses[-1]) <= 1e-20 * L0 and float(rb.losses[nb, b]) <= 1e-20 * L0
        if at_precision:
            k = min(k, nb + 1)
        else:
            assert nb == rs.nit and k <= rb.xs.shape[0]
            assert int(rb.status[b]) == rs.status  # one status vocabulary
        torch.testing.assert_close(rb.xs[:k, b], rs.xs[:k], rtol=RTOL, atol=TOL)
        torch.testing.assert_close(rb.losses[:k, b], rs.losses[:k], rtol=RTOL, atol=TOL * max(L0, 1.0))
        # a sample that stopped early (LM stalled / tol) stays frozen at its last iterate
        last = rb.xs[nb, b]
        assert bool((rb.xs[nb:, b] == last).all())
        if not at_precision:
            torch.testing.assert_close(last, rs.xs[min(nb, rs.nit)], rtol=RTOL, atol=TOL)


@pytest.mark.parametrize("method,kw", CASES, ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in kw.items())}"
                                                  for m, kw in CASES])
@pytest.mark.parametrize("case", ["toy", "curve"])
def test_each_sample_follows_the_single_run(case, method, kw):
    bp, X0, single = _toy_batch() if case == "toy" else _curve_batch()
    steps = 12
    rb = optimize(bp, X0, method, steps=steps, progress=False, **kw)
    singles = [optimize(single(b), X0[b], method, steps=steps, progress=False, **kw) for b in range(B)]
    _assert_same(rb, singles, steps)
    assert rb.x.shape == X0.shape and rb.losses.shape[1] == B
    assert rb.converged.shape == (B,) and rb.converged.dtype == torch.bool


@pytest.mark.parametrize("method,kw", [("newton", dict(line_search="armijo")), ("ig", dict(damping="auto")),
                                       ("pg", dict()), ("hig", dict(line_search="armijo"))])
def test_tol_freezes_each_sample_like_the_single_run(method, kw):
    bp, X0, single = _curve_batch()
    rb = optimize(bp, X0, method, steps=30, tol=1e-14, progress=False, **kw)
    singles = [optimize(single(b), X0[b], method, steps=30, tol=1e-14, progress=False, **kw) for b in range(B)]
    _assert_same(rb, singles, 30)
    for b, rs in enumerate(singles):
        assert bool(rb.converged[b]) == rs.converged


def _nan_forward(x):
    # sqrt is NaN for x_1 < 0: a large gd step sends one sample there
    return torch.stack([torch.sqrt(x[..., 0]), x[..., 1]], dim=-1)


def test_nonfinite_sample_does_not_poison_the_others():
    Y = torch.tensor([[1.0, 1.0], [1.2, 0.5], [0.9, 2.0], [0.0, 0.0]], dtype=D)
    X0 = torch.tensor([[1.0, 0.0], [1.1, 1.0], [0.8, 0.3], [0.1, 2.0]], dtype=D)  # sample 3 overshoots
    r_all = optimize(Problem(_nan_forward, Y, batched=True), X0, "gd", steps=8, step_size=0.5, progress=False)
    assert int(r_all.status[3]) == physgrad.errors.NONFINITE and not bool(r_all.success[3])  # frozen
    assert bool(torch.isfinite(r_all.losses).all()) and bool(torch.isfinite(r_all.x).all())
    r_good = optimize(Problem(_nan_forward, Y[:3], batched=True), X0[:3], "gd", steps=8, step_size=0.5,
                      progress=False)
    assert torch.equal(r_all.xs[:, :3], r_good.xs)
    assert bool((r_all.status[:3] == physgrad.errors.STEP_LIMIT).all())
    # and the failing sample alone, run singly, fails the same way
    with pytest.raises(physgrad.NonFiniteError):
        optimize(Problem(_nan_forward, Y[3]), X0[3], "gd", steps=8, step_size=0.5, progress=False)


def test_finite_rows_flags_nan_and_inf_rows_but_not_a_finite_row_whose_sum_overflows():
    from physgrad.updates import _finite_rows

    big = torch.finfo(D).max
    J = torch.ones(5, 3, 2, dtype=D)
    J[1, 2, 0] = float("nan")
    J[2, 0, 1] = -float("inf")
    J[3] = big  # finite, but its sum is +inf
    J[4, :, 0], J[4, :, 1] = big, -big  # finite, its sum is finite
    active = torch.tensor([True, True, True, True, False])
    ok = _finite_rows(active, J)
    assert ok.tolist() == [True, False, False, True, False]  # (an inactive row is never ok)
    assert _finite_rows(active, J[:, 0], J).tolist() == ok.tolist()
    assert _finite_rows(None, J) is None  # one problem: the loop's own probe checks it


@pytest.mark.parametrize("method,kw", [("newton", dict(line_search="armijo")), ("newton", dict(line_search=None)),
                                       ("ig", dict()), ("hig", dict(line_search="armijo"))])
def test_singular_sample_does_not_poison_the_others(method, kw):
    # P(x) = (x1^2, x2^2): J and the Hessian vanish at x = 0 (with y* = 0), so sample 2 fails at once
    fwd = lambda x: x ** 2  # noqa: E731
    Y = torch.tensor([[1.0, 2.0], [0.5, 3.0], [0.0, 0.0], [2.0, 1.0]], dtype=D)
    X0 = torch.tensor([[2.0, 1.0], [1.0, 2.5], [0.0, 0.0], [0.7, 0.4]], dtype=D)
    rb = optimize(Problem(fwd, Y, batched=True), X0, method, steps=6, progress=False, **kw)
    if method == "newton" and kw.get("line_search") is not None:
        # the safe Newton replaces a zero Hessian by the gradient direction (here 0): no step,
        # no failure -- as the single run does
        assert torch.equal(rb.x[2], X0[2]) and float(rb.losses[-1, 2]) == 0.0
    else:
        assert int(rb.status[2]) == physgrad.errors.SINGULAR and int(rb.nits[2]) == 0 and torch.equal(rb.x[2], X0[2])
    keep = [0, 1, 3]
    r3 = optimize(Problem(fwd, Y[keep], batched=True), X0[keep], method, steps=6, progress=False, **kw)
    torch.testing.assert_close(rb.xs[:, keep], r3.xs, rtol=0, atol=0)
    for i, b in enumerate(keep):
        rs = optimize(Problem(fwd, Y[b]), X0[b], method, steps=6, progress=False, **kw)
        torch.testing.assert_close(rb.xs[:, b], rs.xs, rtol=0, atol=TOL)
    if method == "newton" and kw.get("line_search") is not None:
        rs = optimize(Problem(fwd, Y[2]), X0[2], method, steps=6, progress=False, **kw)
        assert torch.equal(rs.x, X0[2]) and rs.fun == 0.0
    else:
        with pytest.raises(physgrad.SingularMatrixError):
            optimize(Problem(fwd, Y[2]), X0[2], method, steps=6, progress=False, **kw)


def test_failed_inverse_sample_is_frozen():
    # target y = (-1, -1) is out of the range of x^2: the batched numerical inverse gives NaN there
    fwd = lambda x: x ** 2 + 0.1 * x  # noqa: E731
    Y = torch.tensor([[1.0, 2.0], [-1.0, -1.0], [2.0, 1.0]], dtype=D)
    X0 = torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.7, 0.4]], dtype=D)
    inv = numerical_inverse(fwd, batched=True, on_fail="nan")
    rb = optimize(Problem(fwd, Y, inv, batched=True), X0, "pg", steps=4, progress=False)
    assert int(rb.status[1]) == physgrad.errors.INVERSE_FAILED and torch.equal(rb.x[1], X0[1])
    assert float(rb.losses[-1, [0, 2]].max()) < 1e-20
    with pytest.raises(physgrad.InverseSimulatorError):
        numerical_inverse(fwd, batched=True)(Y, X0)


def test_batched_numerical_inverse_matches_single():
    bp, X0, _ = _curve_batch(with_inverse=False)
    inv_b = numerical_inverse(_curve, batched=True)
    xb = inv_b(bp.target, X0)
    for b in range(B):
        xs = numerical_inverse(_curve)(bp.target[b], X0[b])
        torch.testing.assert_close(xb[b], xs, rtol=0, atol=TOL)
    torch.testing.assert_close(_curve(xb), bp.target, rtol=0, atol=1e-9)
    assert bool(inv_b.last_info["converged"].all())


def test_batch_jacobian_matches_per_sample_jacobians():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(4, 3, generator=g, dtype=D)
    for mode in ("fwd", "rev", "autograd"):
        J = batch_jacobian(_curve, X, mode)
        assert J.shape == (4, 4, 3)
        for b in range(4):
            ref = torch.autograd.functional.jacobian(_curve, X[b])
            torch.testing.assert_close(J[b], ref, rtol=0, atol=1e-14)


def test_heat_batch_pg_and_ig_reach_each_target():
    n = 16
    base = heat.heat_1d(n=n, nu_T=1.0)
    Xt = torch.stack([heat.random_field((n,), seed=s) for s in range(B)])
    Y = base.forward(Xt)
    bp = Problem(base.forward, Y, base.inverse, batched=True)
    X0 = torch.zeros(B, n, dtype=D)
    for method in ("pg", "ig"):
        rb = optimize(bp, X0, method, steps=3, progress=False)
        for b in range(B):
            rs = optimize(Problem(base.forward, Y[b], base.inverse), X0[b], method, steps=3, progress=False)
            torch.testing.assert_close(rb.xs[:, b], rs.xs, rtol=0, atol=1e-10)
        torch.testing.assert_close(rb.x, Xt, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method,kw", [("newton", dict(line_search="armijo")), ("ig", dict(damping="auto")),
                                       ("hig", dict(line_search="armijo")), ("pg", dict()),
                                       ("bfgs", dict(line_search="armijo")), ("gd", dict(step_size=0.1))])
def test_memory_is_linear_in_the_batch(method, kw):
    # B*n = 1e5: one (B*n)^2 float64 matrix (or a (B, m, B, n) Jacobian) would need 80 GB, far
    # more than the test machines have, so a run that completes formed none; the per-sample
    # blocks need B*n*n*8 = 0.8 MB.
    Bbig = 50_000
    g = torch.Generator().manual_seed(4)
    Y = torch.rand(Bbig, 2, generator=g, dtype=D) + 0.5
    X0 = torch.rand(Bbig, 2, generator=g, dtype=D) + 1.0
    p = toy.toy()
    rb = optimize(Problem(p.forward, Y, p.inverse, batched=True), X0, method, steps=2, progress=False, **kw)
    assert rb.x.shape == (Bbig, 2) and rb.losses.shape == (3, Bbig)
    assert bool((rb.losses[-1] < rb.losses[0]).all())
    assert batch_jacobian(p.forward, X0).shape == (Bbig, 2, 2)


def test_validation():
    Y = torch.zeros(3, 2, dtype=D)
    with pytest.raises(physgrad.ShapeError, match=r"shape \(B, \.\.\.\)"):  # a 0-dim target has no batch axis
        Problem(lambda x: x, torch.zeros((), dtype=D), batched=True)
    with pytest.raises(physgrad.ShapeError, match="x0 of shape"):
        optimize(Problem(lambda x: x, torch.zeros(1, dtype=D), batched=True), torch.zeros((), dtype=D), "gd", steps=1)
    bp = Problem(lambda x: x, Y, batched=True)
    with pytest.raises(physgrad.ShapeError):
        optimize(bp, torch.zeros(4, 2, dtype=D), "ig", steps=1)
    with pytest.raises(ValueError, match="unknown method"):
        optimize(bp, torch.zeros(3, 2, dtype=D), "lbgfs", steps=1)
    with pytest.raises(TypeError):
        optimize(bp, torch.zeros(3, 2, dtype=D), "ig", steps=1, kappa=0.5)
    with pytest.raises(physgrad.MissingInverseError):
        optimize(bp, torch.zeros(3, 2, dtype=D), "pg", steps=1)
    assert math.isclose(float(optimize(bp, torch.ones(3, 2, dtype=D), "ig", steps=1).losses[-1].max()), 0.0)


def test_batch_benchmark_runs_and_batch_equals_loop(tmp_path):
    from physgrad import bench_batch

    out = tmp_path / "bb.json"
    rows = bench_batch.main(["--sizes", "1,4", "--cases", "toy,heat-1d", "--methods", "pg,ig", "--repeats", "3",
                             "--loop-max", "2", "--n", "8", "--json", str(out)])
    assert len(rows) == 8
    for r in rows:
        assert r["max_abs_diff"] < 1e-9 and r["converged"] == r["B"] and r["loop_samples"] == min(r["B"], 2)
        assert len(r["batch_per_problem_s"]) == 3 and r["batch_vs_loop"] > 0
    import json

    d = json.loads(out.read_text())
    assert {"cpu", "cores", "torch_threads", "versions", "date", "env_memory",
            "transparent_hugepage"} <= set(d["machine"])
    assert set(d["machine"]["env_memory"]) == {"THP_MEM_ALLOC_ENABLE", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_",
                                               "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"}


@pytest.mark.parametrize("dtype,method", [(torch.float16, "ig"), (torch.bfloat16, "newton"),
                                          (torch.complex128, "newton"), (torch.complex128, "hig")])
def test_batched_entrance_applies_the_dtype_policy(dtype, method):
    """The same clear TypeError at the start as for a single problem, not a torch error later."""
    prob = Problem(lambda x: x ** 2, torch.ones(3, 2, dtype=dtype), batched=True)
    with pytest.raises(TypeError, match="float32|complex"):
        optimize(prob, 2 * torch.ones(3, 2, dtype=dtype), method, steps=2, progress=False)


def test_batched_memory_guard(monkeypatch):
    """B per-sample Hessians are checked against the memory budget before they are formed."""
    monkeypatch.setenv("PHYSGRAD_MEMORY_BUDGET", "1K")
    prob = Problem(lambda x: x ** 2, torch.ones(100, 20, dtype=D), batched=True)
    with pytest.raises(physgrad.MemoryBudgetError, match="per-sample"):
        optimize(prob, 2 * torch.ones(100, 20, dtype=D), "newton", steps=2, progress=False)
    optimize(prob, 2 * torch.ones(100, 20, dtype=D), "gd", steps=2, step_size=0.1, progress=False)


def test_batched_stopping_options_freeze_each_sample_like_the_single_run():
    """atol, gtol and xtol stop each sample at the step where its single run stops."""
    bp, X0, single = _curve_batch()
    for kw in (dict(atol=1e-6), dict(gtol=1e-5), dict(xtol=1e-4)):
        rb = optimize(bp, X0, "ig", steps=30, progress=False, damping="auto", **kw)
        singles = [optimize(single(b), X0[b], "ig", steps=30, progress=False, damping="auto", **kw) for b in range(B)]
        _assert_same(rb, singles, 30)
        assert bool(rb.success.all()) and all(rs.success for rs in singles)


# ---------------------------------------------------------------------------- one sample: one library
#: every option of every method (read from physgrad.METHODS) with a value to run it with
OPTION_CASES = {
    "line_search": [None, "armijo", "wolfe"], "fallback": ["pinv"], "rcond": [1e-10], "init_scale": [True],
    "history": [2], "betas": [(0.8, 0.99)], "eps": [1e-6], "damping": [0.1, "auto"], "solver": ["dense", "lsqr"],
    "damping_scale": ["identity"], "maxiter": [50], "solver_tol": [1e-12], "jvp_mode": ["fwd"], "scale": [None],
    "kappa": [1.0], "truncation": [1e-8],
}
_MATFREE = {"maxiter", "solver_tol", "jvp_mode", "scale"}


def _option_cases():
    cases = []
    for m, spec in physgrad.METHODS.items():
        base = {"step_size": 0.01} if spec.learning_rate else {}
        cases.append((m, dict(base)))
        for opt in spec.options + spec.state_options:
            for v in OPTION_CASES[opt]:
                if m != "newton" and opt == "line_search" and v == "wolfe" and m == "hig":
                    continue
                kw = dict(base, **{opt: v})
                if opt in _MATFREE:
                    kw["solver"] = "lsqr"
                cases.append((m, kw))
    return cases


def _one_sample():
    p, x0 = toy.toy(), toy.toy_x0()
    pb = Problem(p.forward, p.target.reshape(1, -1), lambda y, a: p.inverse(y[0], a[0]).unsqueeze(0), batched=True)
    return p, x0, pb, x0.unsqueeze(0)


def test_option_table_covers_every_declared_option():
    for m, spec in physgrad.METHODS.items():
        assert set(spec.options + spec.state_options) <= set(OPTION_CASES), m


@pytest.mark.parametrize("method,kw", _option_cases(), ids=[f"{m}-{kw}" for m, kw in _option_cases()])
def test_one_sample_batched_run_ends_like_the_single_run(method, kw):
    """The same status, success and call counts, single vs batched with B = 1, at the step limit and at tol."""
    p, x0, pb, xb = _one_sample()
    for run in (dict(steps=2), dict(steps=40, tol=1e-12)):
        rs = optimize(p, x0, method, progress=False, **run, **kw)
        rb = optimize(pb, xb, method, progress=False, **run, **kw)
        assert int(rb.status[0]) == rs.status, (rs.message, rb.message)
        assert bool(rb.success[0]) == rs.success == (rs.status == 0)
        torch.testing.assert_close(rb.x[0], rs.x, rtol=RTOL, atol=TOL)
        assert rb.counts == rs.counts  # the same calls of the simulator and its derivatives


BAD_INPUTS = [dict(step_size=True), dict(step_size=-1.0), dict(step_size="1"), dict(tol=float("inf")),
              dict(tol=True), dict(atol=-1.0), dict(gtol=float("nan")), dict(xtol=float("inf")), dict(steps=-1),
              dict(steps=2.5), dict(time_budget=-1.0), dict(on_nonfinite="ignore"), dict(no_such_option=1),
              dict(state=physgrad.updates.LMState())]


@pytest.mark.parametrize("method", list(physgrad.METHODS))
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[next(iter(b)) + "=" + repr(next(iter(b.values()))) for b in BAD_INPUTS])
def test_one_sample_bad_input_raises_the_same_error(method, bad):
    p, x0, pb, xb = _one_sample()
    kw = dict(steps=2, step_size=0.3, progress=False)
    kw.update(bad)
    errs = []
    for prob, x in ((p, x0), (pb, xb)):
        with pytest.raises((TypeError, ValueError)) as ei:
            optimize(prob, x, method, **kw)
        errs.append((type(ei.value), str(ei.value)))
    assert errs[0] == errs[1]


BAD_X0 = {"meta": lambda x: x.to("meta"), "int": lambda x: x.long(), "nan": lambda x: x * float("nan"),
          "inf": lambda x: x / 0.0, "list": lambda x: x.tolist(), "ndarray": lambda x: x.numpy()}


@pytest.mark.parametrize("method", list(physgrad.METHODS))
@pytest.mark.parametrize("bad", list(BAD_X0))
def test_one_sample_bad_x0_raises_the_same_error(method, bad):
    p, x0, pb, xb = _one_sample()
    errs = []
    for prob, x in ((p, x0), (pb, xb)):
        with pytest.raises(Exception) as ei:
            optimize(prob, BAD_X0[bad](x), method, steps=2, step_size=0.3, progress=False)
        errs.append((type(ei.value), str(ei.value)))
    assert errs[0] == errs[1] and issubclass(errs[0][0], (TypeError, ValueError, physgrad.PhysgradError))


@pytest.mark.parametrize("kw", [dict(xtol=1e-3), dict(gtol=1e-9), dict(atol=0.0), dict(tol=0.0), {}])
def test_a_run_that_hits_the_solution_exactly_ends_alike_single_and_batched(kw):
    # pg with the exact inverse reaches L = 0 at step 1, then takes zero updates: xtol (and gtol,
    # atol = 0, tol = 0) is met at once, without them the run goes on to the step limit
    p, x0, pb, xb = _one_sample()
    rs = optimize(p, x0, "pg", steps=6, progress=False, **kw)
    rb = optimize(pb, xb, "pg", steps=6, progress=False, **kw)
    assert float(rs.losses[1]) == 0.0 and rs.success and bool(rb.success[0])
    assert rs.nit == rb.nit == (6 if not kw else 2 if "xtol" in kw else 1), (rs.message, rb.message)


def test_step_limit_at_defaults_is_not_a_success_single_and_batched():
    p, x0, pb, xb = _one_sample()
    rs = optimize(p, x0, "gd", steps=5, step_size=0.01, tol=1e-12, progress=False)
    rb = optimize(pb, xb, "gd", steps=5, step_size=0.01, tol=1e-12, progress=False)
    assert float(rs.rel_losses[-1]) > 1e-12 and rs.status == 1 and not rs.success and not rs.converged
    assert int(rb.status[0]) == 1 and not bool(rb.success[0])
    assert f"L/L0 = {float(rs.rel_losses[-1]):.3g}" in rs.message and "L/L0" in rb.message
    assert physgrad.STATUS[rs.status] == rb.status_message(0)
    assert physgrad.batched.LEGACY_STATUS[0] == 1 and physgrad.batched.LEGACY_STATUS[1] == 0


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.complex128, torch.complex64]


@pytest.mark.parametrize("method", list(physgrad.METHODS))
@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).split(".")[1] for d in DTYPES])
def test_one_sample_batched_run_matches_the_single_run_in_every_dtype(method, dtype):
    """The dtype policy and the steps, single vs batched with B = 1: the same error, or the same
    status and (to the dtype's precision) the same x."""
    if dtype.is_complex:  # the toy's map, holomorphic, with its inverse on the principal branch
        p = Problem(lambda x: torch.stack([x[..., 0], x[..., 1] ** 2], -1), toy.toy().target.to(dtype),
                    lambda y, a: torch.stack([y[..., 0], torch.sqrt(y[..., 1])], -1))
    else:
        p = toy.toy(dtype=dtype)
    x0 = toy.toy_x0().to(dtype)
    pb = Problem(p.forward, p.target.reshape(1, -1), lambda y, a: p.inverse(y[0], a[0]).unsqueeze(0), batched=True)
    kw = dict(steps=3, progress=False, step_size=0.01 if physgrad.METHODS[method].learning_rate else None)
    outcomes = []
    for prob, x in ((p, x0), (pb, x0.unsqueeze(0))):
        try:
            r = optimize(prob, x, method, **kw)
        except TypeError as e:
            outcomes.append(str(e))
        else:
            outcomes.append((int(r.status if prob is p else r.status[0]), r.x.reshape(-1).to(torch.complex128)))
    if isinstance(outcomes[0], str) or isinstance(outcomes[1], str):
        assert outcomes[0] == outcomes[1]  # refused alike, with the same words
        return
    assert outcomes[0][0] == outcomes[1][0]
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(outcomes[1][1], outcomes[0][1], rtol=tol, atol=tol)


@pytest.mark.parametrize("method,eta", [("gd", 0.1), ("adam", 0.1), ("pg", 0.5)])
def test_complex_batch_follows_the_single_runs(method, eta):
    # the methods that accept complex x, on P(x) = A x with a complex A: each sample of the batch
    # takes the steps of its own single run (one loss formula, real for a complex residual)
    A = torch.tensor([[2.0 + 1.0j, 0.5j], [0.0, 1.0 - 0.5j]], dtype=torch.complex128)
    fwd = lambda x: x @ A.T  # noqa: E731  (rows are samples; for one sample, A x)
    inv = lambda y, x0: torch.linalg.solve(A, y.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    Y = torch.tensor([[1 + 1j, 2 - 1j], [0.5 + 0j, 1j], [-1j, 0.25]], dtype=torch.complex128)
    X0 = torch.zeros(3, 2, dtype=torch.complex128)
    rb = optimize(Problem(fwd, Y, inv, batched=True), X0, method, steps=6, step_size=eta, progress=False)
    assert rb.losses.dtype == torch.float64 and rb.losses.shape == (7, 3)
    for b in range(3):
        r = optimize(Problem(fwd, Y[b], inv), X0[b], method, steps=6, step_size=eta, progress=False)
        torch.testing.assert_close(rb.xs[:, b], r.xs, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(rb.losses[:, b], r.losses, rtol=1e-12, atol=1e-14)
        assert int(rb.status[b]) == r.status and bool(rb.success[b]) == r.success


@pytest.mark.parametrize("method", list(physgrad.METHODS))
def test_a_simulator_with_trainable_weights_gives_plain_results_single_and_batched(method):
    # forward and inverse close over a weight with requires_grad (an nn.Module surrogate would
    # do the same): the runs take their steps from values only, keep no graph, return none, and
    # warn nothing; the weight gets no gradient; a sample of the batch follows its single run
    import warnings

    w = torch.tensor(2.0, dtype=D, requires_grad=True)
    fwd = lambda x: w * x + 0.1 * x ** 3  # noqa: E731
    inv = lambda y, x0: y / w  # noqa: E731  (a rough local inverse: the cubic term is left out)
    Y = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=D)
    X0 = torch.full((2, 2), 0.5, dtype=D)
    kw = dict(steps=3, progress=False, step_size=0.05 if physgrad.METHODS[method].learning_rate else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*requires_grad.*")
        rb = optimize(Problem(fwd, Y, inv, batched=True), X0, method, **kw)
        rs = [optimize(Problem(fwd, Y[b], inv), X0[b], method, **kw) for b in range(2)]
    for r in [rb] + rs:
        assert not any(getattr(r, a).requires_grad for a in ("x", "xs", "losses"))
        assert not (torch.is_tensor(r.fun) and r.fun.requires_grad)
    assert w.grad is None
    for b in range(2):
        torch.testing.assert_close(rb.xs[:, b], rs[b].xs, rtol=1e-10, atol=1e-12)
        assert int(rb.status[b]) == rs[b].status


@pytest.mark.parametrize("method", list(physgrad.METHODS))
def test_bounds_and_x_scale_in_a_batch_follow_each_samples_single_run(method):
    # bounds shared (hi) or per sample (lo), x_scale shared or from each sample's Jacobian
    p = toy.toy()
    Y = torch.tensor([[1.0, 2.0], [0.5, 0.3], [2.0, 1.5]], dtype=D)
    X0 = torch.tensor([[1.0, 1.0], [0.8, 0.9], [1.5, 1.2]], dtype=D)
    lo, hi = torch.tensor([[0.5, 0.2], [0.1, 0.6], [0.0, 0.0]], dtype=D), torch.tensor([3.0, 3.0], dtype=D)
    kw = dict(steps=8, progress=False, step_size=0.05 if physgrad.METHODS[method].learning_rate else None)
    for extra in (dict(bounds=(lo, hi)), dict(x_scale=torch.tensor([1.0, 2.0], dtype=D)),
                  dict(bounds=(lo, None), x_scale="jac")):
        rb = optimize(Problem(p.forward, Y, p.inverse, batched=True), X0, method, **kw, **extra)
        if "bounds" in extra:  # every iterate of every sample inside its own box
            assert bool((rb.xs >= lo).all()) and (extra["bounds"][1] is None or bool((rb.xs <= hi).all()))
        for b in range(3):
            e = dict(extra, bounds=(lo[b], extra["bounds"][1])) if "bounds" in extra else extra
            rs = optimize(Problem(p.forward, Y[b], p.inverse), X0[b], method, **kw, **e)
            assert int(rb.status[b]) == rs.status and int(rb.nits[b]) == rs.nit, (rs.message, rb.message)
            torch.testing.assert_close(rb.xs[: rs.nit + 1, b], rs.xs, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="outside the bounds"):
        optimize(Problem(p.forward, Y, p.inverse, batched=True), X0, method, bounds=(lo, 1.2), **kw)


class _WrongGrad(torch.autograd.Function):
    """y = 2x with a backward that says 3: only a derivative check can tell."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 3 * g


def _writes_into_x(x):
    x.mul_(2.0)
    return x * 1.0


def _cuts_the_graph(x):
    return x.detach() * 2.0


@pytest.mark.parametrize("method", ["gd", "lbfgs", "ig", "hig"])
@pytest.mark.parametrize("forward,kw", [(_writes_into_x, {}), (_cuts_the_graph, {}),
                                        (_WrongGrad.apply, dict(check_derivatives=True))],
                         ids=["writes-into-x", "cuts-the-graph", "wrong-derivative"])
def test_a_broken_forward_is_refused_alike_single_and_batched(method, forward, kw):
    # the entrance checks run for a batch too (before, a batch ran on, or failed deep in torch)
    Y = torch.tensor([[1.0, 2.0]], dtype=D)
    errs = []
    for prob, x in ((Problem(forward, Y[0]), torch.ones(2, dtype=D)), (Problem(forward, Y, batched=True),
                                                                       torch.ones(1, 2, dtype=D))):
        with pytest.raises(Exception) as ei:
            optimize(prob, x, method, steps=2, step_size=0.1, progress=False, **kw)
        errs.append((type(ei.value), str(ei.value)))
    assert errs[0] == errs[1] and issubclass(errs[0][0], (TypeError, ValueError))


def _np_batch_simulator():
    # a numpy simulator with its own adjoint and tangent, written for any leading batch shape
    import numpy as np
    from physgrad.external import numpy_simulator

    A = np.array([[2.0, 0.5, 0.0], [0.3, 1.5, 0.2]])

    def vjp(x, u):
        g = u @ A
        g[..., :2] += 0.3 * x[..., :2] ** 2 * u
        return g

    return numpy_simulator(lambda x: x @ A.T + 0.1 * x[..., :2] ** 3, vjp=vjp,
                           jvp=lambda x, v: v @ A.T + 0.3 * x[..., :2] ** 2 * v[..., :2])


@pytest.mark.parametrize("method,kw", [("gd", dict(step_size=0.05)), ("adam", dict(step_size=0.05)), ("bfgs", {}),
                                       ("lbfgs", {}), ("ig", {}), ("ig", dict(solver="lsqr")),
                                       ("ig", dict(damping="auto")), ("hig", {}), ("newton", {})])
def test_user_derivatives_in_a_batch_follow_each_samples_single_run(method, kw):
    # vjp/jvp act on the whole batch; the per-sample Jacobians are assembled from batched products
    sim = _np_batch_simulator()
    Y = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 0.3]], dtype=D)
    X0 = torch.tensor([[0.1, 0.2, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], dtype=D)
    if method == "newton":  # refused alike: no second derivatives from first ones
        errs = []
        for prob, x in ((Problem(sim, Y[0]), X0[0]), (Problem(sim, Y, batched=True), X0)):
            with pytest.raises(TypeError) as ei:
                optimize(prob, x, method, steps=3, progress=False)
            errs.append(str(ei.value))
        assert errs[0] == errs[1]
        return
    rb = optimize(Problem(sim, Y, batched=True), X0, method, steps=3, progress=False, **kw)
    for b in range(3):
        rs = optimize(Problem(sim, Y[b]), X0[b], method, steps=3, progress=False, **kw)
        assert int(rb.status[b]) == rs.status and int(rb.nits[b]) == rs.nit, (rs.message, rb.message)
        torch.testing.assert_close(rb.xs[: rs.nit + 1, b], rs.xs, rtol=1e-10, atol=1e-12)
    r1 = optimize(Problem(sim, Y[:1], batched=True), X0[:1], method, steps=3, progress=False, **kw)
    assert r1.counts == optimize(Problem(sim, Y[0]), X0[0], method, steps=3, progress=False, **kw).counts


def test_a_batched_problem_refuses_a_per_sample_jacobian_in_plain_words():
    with pytest.raises(TypeError, match="jacobian= is not supported"):
        Problem(lambda x: 2 * x, torch.ones(2, 2, dtype=D), jacobian=lambda x: 2 * torch.eye(2, dtype=D),
                batched=True)


def test_the_callback_gets_copies_and_a_nonfinite_start_is_refused_alike():
    p, x0, pb, xb = _one_sample()
    # a callback that writes into what it is given cannot steer the run (single and batched)
    plain = optimize(pb, xb, "gd", steps=3, step_size=0.1, progress=False)

    def vandal(k, x, L):
        x.zero_()
        L.zero_()

    rb = optimize(pb, xb, "gd", steps=3, step_size=0.1, progress=False, callback=vandal)
    assert torch.equal(rb.xs, plain.xs) and torch.equal(rb.losses, plain.losses)
    # P(x0) not finite: the same words at B = 1; a larger batch names the samples
    nan_at_start = lambda x: x * float("nan")  # noqa: E731
    msgs = []
    for prob, x in ((Problem(nan_at_start, p.target), x0), (Problem(nan_at_start, pb.target, batched=True), xb)):
        with pytest.raises(physgrad.NonFiniteError) as ei:
            optimize(prob, x, "gd", steps=2, step_size=0.1, progress=False)
        msgs.append(str(ei.value))
    assert msgs[0] == msgs[1] and "P(x0) is not finite" in msgs[0]
    Y2 = torch.cat([pb.target, pb.target])
    with pytest.raises(physgrad.NonFiniteError, match=r"in sample\(s\) \[1\]"):
        optimize(Problem(lambda x: x * torch.tensor([[1.0], [float("nan")]], dtype=D), Y2, batched=True),
                 torch.cat([xb, xb]), "gd", steps=2, step_size=0.1, progress=False)
    # steps=0 with x0 already converged: no "step limit" in the message of a converged batch
    r0 = optimize(pb, xb, "gd", steps=0, atol=1e9, progress=False)
    assert bool(r0.success[0]) and "step limit" not in r0.message


@pytest.mark.parametrize("method", list(physgrad.METHODS))
def test_one_unknown_and_one_observation_per_sample(method):
    # x0 and the target of shape (B,): each sample is a scalar problem P(x) = x^3 + x = y*
    fwd = lambda x: x ** 3 + x  # noqa: E731
    Y, X0 = torch.tensor([2.0, 10.0, 0.5], dtype=D), torch.tensor([0.5, 1.0, 0.0], dtype=D)
    kw = dict(steps=4, progress=False, step_size=0.02 if physgrad.METHODS[method].learning_rate else None)
    rb = optimize(Problem(fwd, Y, numerical_inverse(fwd, batched=True), batched=True), X0, method, **kw)
    assert rb.x.shape == (3,) and rb.losses.shape == (5, 3)
    for b in range(3):
        rs = optimize(Problem(fwd, Y[b], numerical_inverse(fwd)), X0[b], method, **kw)
        assert int(rb.status[b]) == rs.status and int(rb.nits[b]) == rs.nit, (rs.message, rb.message)
        torch.testing.assert_close(rb.xs[: rs.nit + 1, b], rs.xs, rtol=1e-9, atol=1e-12)


class _ClassicFunction(torch.autograd.Function):
    """A classic autograd.Function (forward and backward only): torch.func cannot run it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.stack([x[..., 0] + x[..., 1] ** 3, x[..., 1]], -1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.stack([g[..., 0], 3 * x[..., 1] ** 2 * g[..., 0] + g[..., 1]], -1)


def test_jacobian_mode_autograd_and_the_random_forward_hint_apply_to_batches():
    Y, X0 = torch.tensor([[9.0, 2.0], [2.0, 1.0]], dtype=D), torch.tensor([[0.5, 1.5], [0.0, 0.5]], dtype=D)
    rb = optimize(Problem(_ClassicFunction.apply, Y, batched=True, jacobian_mode="autograd"), X0, "ig", steps=3,
                  progress=False)
    for b in range(2):
        rs = optimize(Problem(_ClassicFunction.apply, Y[b], jacobian_mode="autograd"), X0[b], "ig", steps=3,
                      progress=False)
        torch.testing.assert_close(rb.xs[:, b], rs.xs, rtol=1e-12, atol=1e-14)
    noisy = lambda x: x + 1e-6 * torch.randn_like(x)  # noqa: E731
    msgs = []
    for prob, x in ((Problem(noisy, Y[0]), X0[0]), (Problem(noisy, Y[:1], batched=True), X0[:1])):
        with pytest.raises(RuntimeError, match="draws random numbers") as ei:
            optimize(prob, x, "ig", steps=2, progress=False)
        msgs.append(str(ei.value))
    assert msgs[0] == msgs[1]


@pytest.mark.parametrize("method,S", [("lbfgs", physgrad.updates.LBFGSState), ("bfgs", physgrad.updates.BFGSState),
                                      ("adam", physgrad.updates.AdamState)])
def test_a_warm_start_continues_each_sample_like_its_single_warm_start(method, S):
    # sample 0 meets tol before sample 1: its state must stay where its own run left it
    fwd = lambda x: torch.stack([x[..., 0] + x[..., 1] ** 3, torch.sinh(x[..., 1]) - x[..., 0]], -1)  # noqa: E731
    Y, X0 = torch.tensor([[1.0, 0.5], [2.0, -1.0]], dtype=D), torch.tensor([[0.5, 0.5], [0.0, 0.0]], dtype=D)
    sb, kw = S(), dict(step_size=0.1, tol=0.1) if method == "adam" else dict(tol=0.01)
    r1 = optimize(Problem(fwd, Y, batched=True), X0, method, steps=4, state=sb, progress=False, **kw)
    r2 = optimize(Problem(fwd, Y, batched=True), r1.x, method, steps=4, state=sb, progress=False, **kw)
    assert int(r1.nits[0]) < int(r1.nits[1])
    for b in range(2):
        ss = S()
        q1 = optimize(Problem(fwd, Y[b]), X0[b], method, steps=4, state=ss, progress=False, **kw)
        q2 = optimize(Problem(fwd, Y[b]), q1.x, method, steps=4, state=ss, progress=False, **kw)
        torch.testing.assert_close(r2.x[b], q2.x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(solver="lsqr", maxiter=2), dict(solver="cg", maxiter=2),
                                dict(solver="lsqr", solver_tol=0.3), dict(solver="cg", solver_tol=0.3),
                                dict(solver="lsqr", damping=0.1, maxiter=3), dict(solver="cg", damping=0.1)])
def test_matrix_free_ig_runs_each_samples_own_krylov_iteration(kw):
    # stopped early (maxiter, a loose solver_tol), a Krylov solve depends on its right-hand side:
    # each sample runs its own iteration, with its own scalars and its own stopping test
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, generator=g, dtype=D) @ torch.diag(torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=D))
    fwd = lambda x: x @ A.T  # noqa: E731  (rows are samples; one sample: A x)
    Y = torch.randn(3, 6, generator=g, dtype=D) * torch.tensor([[1.0], [10.0], [0.1]], dtype=D)
    X0 = torch.zeros(3, 4, dtype=D)
    rb = optimize(Problem(fwd, Y, batched=True), X0, "ig", steps=3, progress=False, **kw)
    for b in range(3):
        rs = optimize(Problem(fwd, Y[b]), X0[b], "ig", steps=3, progress=False, **kw)
        torch.testing.assert_close(rb.xs[: rs.nit + 1, b], rs.xs, rtol=1e-10, atol=1e-12)
        assert int(rb.status[b]) == rs.status


def test_a_forcing_sequence_per_sample():
    from physgrad.matfree import Forcing, solve_ls

    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 5, generator=g, dtype=D) + 3 * torch.eye(5, dtype=D)
    Y = torch.randn(2, 5, generator=g, dtype=D) * torch.tensor([[1.0], [100.0]], dtype=D)
    pb = Problem(lambda x: x @ A.T, Y, batched=True)
    X0 = torch.zeros(2, 5, dtype=D)
    fb = Forcing(1e-3)
    d, info = solve_ls(pb, X0, Y, method="cg", solver_tol=fb)
    for b in range(2):
        fs = Forcing(1e-3)
        ds, infos = solve_ls(Problem(lambda x: A @ x, Y[b]), X0[b], Y[b], method="cg", solver_tol=fs)
        torch.testing.assert_close(d[b], ds, rtol=1e-10, atol=1e-12)
        assert info["iterations"][b] == infos["iterations"] and info["threshold"][b] == infos["threshold"]
