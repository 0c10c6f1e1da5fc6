r"""Benchmark: inverted updates against the optimizers a user would otherwise pick (chapter 7).

Run ``python -m physgrad.bench`` (add ``--quick`` for a run of at most about two minutes on two
CPU cores; ``--json PATH`` writes the rows and the machine information). For every case × method
it records the iterations and the wall time needed to reach a relative loss ``L/L_0 <= 1e-6``
from the case's start ``x_0``. A method that does not get there within its time budget (or step
limit) is charged the time it ran and marked ``>`` — its numbers are then lower bounds, and so is
every ratio computed from them.

Cases: ``heat-1d`` (N = 256, νT = 8), ``heat-2d`` (64 × 64, νT = 8, the ill-conditioned case of
Holl et al. 2022), ``poisson-2d`` (64 × 64, periodic, h = 1/n), ``burgers-1d`` (N = 128, 40
semi-implicit steps) and the book's ``toy`` problem.

Methods: ``gd`` (η = 1/σ_max² of J at x_0, by 20 power iterations, included in the time), ``adam``
(fixed learning rate per case, listed in the JSON), ``lbfgs`` (physgrad's), ``scipy-lbfgsb``
(:func:`scipy.optimize.minimize` with ``method="L-BFGS-B"``, ``ftol = gtol = 0``, memory 10,
float64, torch gradients; stopped by its callback at the target), ``torch-lbfgs``
(:class:`torch.optim.LBFGS`, strong-Wolfe line search, memory 10, driven by *one* ``.step()`` whose
closure stops the run as soon as a loss at or below the target is evaluated), ``ig`` (matrix-free
CGLS inverse gradient, never forms J; each inner solve stops at the outer target, with
Eisenstat–Walker forcing on the non-linear Burgers case, see :class:`physgrad.matfree.Forcing`),
``pg`` (the problem's inverse simulator) and ``hig`` (dense SVD; only where ``x.numel() <= 1024``).

Fairness and statistics:

* torch runs on ``--threads`` threads (default 1) and every BLAS/OpenMP pool that numpy/scipy
  loaded is limited to the same number with ``threadpoolctl`` (without it, the
  ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` variables are set and the
  command re-executes itself once, so that they apply before the libraries load).
* Every method is warmed up once per case (first calls of kernels and ``torch.func`` are slow),
  then ``--repeats`` rounds (default 5) run all methods of a case in a shuffled order, so a slow
  phase of the machine hits every method alike. A run that misses the target (a lower bound) or
  takes longer than ``LONG_RUN`` seconds is not repeated.
* The row of a method is its median run; a ``RATIO`` is ``t(peer)/t(method)`` per round and is
  printed as the median with ``[min–max]`` over the rounds.
* A run shorter than ``MIN_TIMED_S`` (20 ms) is timed as the mean of enough back-to-back calls to
  fill 20 ms (at most 200), as ``timeit`` does; the number is fixed per method and case by its first
  timed run and recorded as ``calls_per_timing``. Every method gets the same rule; in practice it
  applies to PG (and, on the small cases, to the peers that finish in under 20 ms).
* ``pg_step_vs_limit`` = (PG wall time per step inside :func:`physgrad.optimize`, read from the
  loop's own clock in a ``PG_STEPS``-step run with η = 1/2) / (one forward plus one inverse
  simulation, timed bare in the same round): 1 would be the physical limit. ``k`` PG steps cost
  ``k + 1`` forwards and ``k`` inverses.
* ``pg_call_vs_limit`` = (wall time of the whole benchmark PG run to ``1e-6``, per step, setup
  and result included) / (one forward plus one inverse). For the linear cases that run is one step,
  whose floor is two forwards and one inverse: ``(2F + I)/(F + I)``, printed beside it.
* ``hand_call_vs_limit``: the same for the PG loop a user would write by hand (:func:`~physgrad.bench.hand_pg_time`:
  the algorithm alone, with no checks, no record and no counting), timed the same way in the same
  round. It is the cost of the loss evaluations and of eager PyTorch's per-call work at this size;
  ``pg_call_vs_limit / hand_call_vs_limit`` is what physgrad's own safety and bookkeeping cost.
* The JSON records the CPU model, core count, load average, torch and BLAS threads, package
  versions, date and git commit.

Step cost: the mean wall time per iteration divided by the wall time of one forward simulation
(median of repeated calls of ``P(x_0)``) — a *measured* cost in forward-simulation units, which
includes every loss evaluation, line search and derivative of that method.

Sub-commands: ``python -m physgrad.bench scaling`` (wall time and iterations to 1e-6 over grid
sizes, see :func:`scaling`), ``nn-heat`` (chapter 8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time

import torch

__all__ = ["run", "main", "scaling", "hand_pg_time", "machine_info", "CASES", "METHODS"]

CASES = ["heat-1d", "heat-2d", "poisson-2d", "burgers-1d", "toy"]
METHODS = ["gd", "adam", "lbfgs", "scipy-lbfgsb", "torch-lbfgs", "ig", "pg", "hig"]
#: cases whose simulator is linear: IG's first inner solve then runs straight to the outer target
LINEAR_CASES = {"heat-1d", "heat-2d", "poisson-2d"}
TOL = 1e-6
#: matrix-free IG: CGLS, each solve stopped when the predicted residual ||J d - Δy|| reaches the
#: outer target sqrt(TOL)·||r_0|| (Eisenstat-Walker forcing on top for non-linear cases)
IG_SOLVER = "cg"
IG_FORCING_FIRST = 0.5
HIG_MAX_N = 1024
REPEATS = 5
#: runs longer than this (seconds) are not repeated
LONG_RUN = 20.0
#: a run shorter than this (seconds) is timed as the mean of enough back-to-back calls to fill it,
#: as ``timeit`` does (at most ``MAX_CALLS``): a sub-millisecond run timed once measures mostly
#: the cache misses left by the method before it
MIN_TIMED_S = 0.02
MAX_CALLS = 200
#: in-run PG step: this many steps with η = 1/2 (no early stop), timed inside optimize
PG_STEPS = 10
ADAM_LR = {"heat-1d": 0.05, "heat-2d": 0.05, "poisson-2d": 0.05, "burgers-1d": 0.01, "toy": 0.1}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


SIZES = {"heat-1d": 256, "heat-2d": 64, "poisson-2d": 64, "burgers-1d": 128}


def make_case(name: str, device=None, dtype=torch.float64, n=None):
    """The problem and start point of a benchmark case (``n`` overrides the grid size)."""
    n = SIZES.get(name) if n is None else int(n)
    from .problems import burgers, heat, poisson, toy

    if name == "heat-1d":
        p = heat.heat_1d(n=n, nu_T=8.0, dtype=dtype, device=device)
    elif name == "heat-2d":
        p = heat.heat_2d(n=n, nu_T=8.0, dtype=dtype, device=device)
    elif name == "poisson-2d":
        p = poisson.poisson_2d(n=n, bc="periodic", dtype=dtype, device=device)
    elif name == "burgers-1d":
        p = burgers.burgers_1d(n=n, dtype=dtype, device=device)
    elif name == "toy":
        p = toy.toy(dtype=dtype, device=device)
        p.x0 = toy.toy_x0(dtype=dtype, device=device)
    else:
        raise ValueError(f"unknown case {name!r}; choose from {CASES}")
    return p, p.x0


# ---------------------------------------------------------------------------- machine and threads
# (one probe for every benchmark and experiment: physgrad.machine)
from .machine import blas_pools as _blas_pools, machine_info, parse_choices, pinned_threads  # noqa: E402,F401


# ---------------------------------------------------------------------------- timing helpers
def _sync(x):
    if x.is_cuda:
        torch.cuda.synchronize()


def forward_time(prob, x0, reps: int = 30) -> float:
    """Median wall time of one forward simulation ``P(x0)`` (no autograd)."""
    ts = []
    with torch.no_grad():
        prob.forward(x0)
        for _ in range(reps):
            _sync(x0)
            t = time.perf_counter()
            prob.forward(x0)
            _sync(x0)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def limit_time(prob, x0, reps: int = 15) -> float:
    """Median wall time of one forward plus one inverse simulation, bare (no checks, no
    autograd): the physical limit of one PG step."""
    if prob.inverse is None:
        return float("nan")
    ts = []
    with torch.no_grad():
        for _ in range(reps + 1):
            _sync(x0)
            t = time.perf_counter()
            y = prob.forward(x0)
            prob.inverse(prob.target_like(y), x0)
            _sync(x0)
            ts.append(time.perf_counter() - t)
    return statistics.median(ts[1:])


def pg_step_time(prob, x0, steps: int = PG_STEPS, reps: int = 5) -> float:
    """Median wall time of one PG step *inside* :func:`physgrad.optimize`: a run of ``steps``
    steps with η = 1/2 and no stopping test, timed from the loop's own clock (``res.times``), so
    the setup of the call and the forward at ``x0`` are not in it. NaN where the run fails."""
    import physgrad

    if prob.inverse is None:
        return float("nan")
    ts = []
    for _ in range(reps):
        try:
            res = physgrad.optimize(prob, x0, "pg", steps=steps, step_size=0.5, keep_xs=False, progress=False)
        except physgrad.errors.PhysgradError:
            return float("nan")
        _sync(x0)
        if res.nit != steps:
            return float("nan")
        ts.append(float(res.times[-1]) / steps)
    return statistics.median(ts)


def _calls_per_timing(t1: float) -> int:
    """Back-to-back calls per timed measurement for a run that took ``t1`` seconds: enough to
    fill ``MIN_TIMED_S``, at most ``MAX_CALLS`` (``timeit`` style; 1 for a long run)."""
    return 1 if t1 >= MIN_TIMED_S else min(MAX_CALLS, math.ceil(MIN_TIMED_S / max(t1, 1e-6)))


def hand_pg_time(prob, x0, tol: float = TOL, max_steps: int = 10_000) -> float:
    """Wall time per step of the PG loop a user would write by hand: ``x <- P^{-1}(y*; x)``
    (η = 1), one forward and one loss per step, until ``L/L0 <= tol``, with nothing else (no
    checks of x0 or of the updates, no trajectory, no counting). Timed like the benchmark's PG
    call: the whole call divided by its steps, as the mean of back-to-back calls filling
    ``MIN_TIMED_S``. NaN without an inverse."""
    if prob.inverse is None:
        return float("nan")
    forward, inverse, target = prob.forward, prob.inverse, prob.target_like(prob.forward(x0))

    def loop():
        x = x0.clone()
        r = forward(x) - target
        L0 = L = 0.5 * float((r * r).sum())
        k = 0
        while k < max_steps and L > tol * L0:
            x = inverse(target, x)
            r = forward(x) - target
            L = 0.5 * float((r * r).sum())
            k += 1
        _sync(x0)
        return max(k, 1)

    with torch.no_grad():
        loop()  # warm-up
        t = time.perf_counter()
        k = loop()
        t1 = time.perf_counter() - t
        calls = _calls_per_timing(t1)
        if calls == 1:
            return t1 / k
        t = time.perf_counter()
        for _ in range(calls):
            k = loop()
        return (time.perf_counter() - t) / calls / k


def _sigma_max_sq(prob, x, iters: int = 20) -> float:
    """Largest eigenvalue of J^T J at x by power iteration (vjp/jvp products)."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
    _, pull = torch.func.vjp(prob.forward, x)  # J^T u, linearized once
    _, pull2 = torch.func.vjp(lambda u: pull(u)[0], torch.zeros_like(prob.target_like(x)))  # J v
    lam = 1.0
    for _ in range(iters):
        v = v / v.norm()
        w = pull(pull2(v)[0])[0]
        lam = float((w * v).sum())
        v = w
    return lam


# ---------------------------------------------------------------------------- drivers
def _run_physgrad(prob, x0, method, budget, max_steps, **opts):
    import physgrad

    t = time.perf_counter()
    step_size = opts.pop("step_size", None)
    if method == "gd":
        step_size = 1.0 / _sigma_max_sq(prob, x0)
    res = physgrad.optimize(prob, x0, method=method, steps=max_steps, step_size=step_size, tol=TOL,
                            time_budget=budget, keep_xs=False, on_nonfinite="stop", **opts)
    _sync(x0)
    wall = time.perf_counter() - t
    L0 = res.losses[0].item()
    rel = res.losses[-1].item() / L0 if L0 > 0 else 0.0
    return {"iterations": res.nit, "wall_s": wall, "final_rel_loss": rel, "reached": bool(rel <= TOL),
            "losses": (res.losses / L0).tolist(), "times": res.times.tolist(), "note": res.message,
            "step_size": step_size, "x": res.x}


def _run_scipy(prob, x0, budget, max_steps):
    import numpy as np
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    shape, dev, dt = x0.shape, x0.device, x0.dtype
    L0 = prob.loss(x0).item()
    rec = {"losses": [1.0], "times": [0.0]}

    def fg(z):
        x = torch.from_numpy(z).to(device=dev, dtype=dt).reshape(shape)
        L, g = prob.value_and_grad(x)
        return L.item(), g.reshape(-1).cpu().numpy().astype(np.float64)

    def cb(intermediate_result):
        rel = float(intermediate_result.fun) / L0
        rec["losses"].append(rel)
        rec["times"].append(time.perf_counter() - t0)
        if rel <= TOL or time.perf_counter() - t0 > budget:
            raise StopIteration

    res = minimize(fg, x0.reshape(-1).cpu().numpy().astype(np.float64), jac=True, method="L-BFGS-B",
                   callback=cb, options={"maxiter": max_steps, "maxfun": 100 * max_steps, "ftol": 0.0,
                                         "gtol": 0.0, "maxcor": 10})
    wall = time.perf_counter() - t0
    rel = min(rec["losses"][-1], float(res.fun) / L0)
    x_final = torch.from_numpy(res.x).to(device=dev, dtype=dt).reshape(shape)
    return {"x": x_final, "iterations": len(rec["losses"]) - 1, "wall_s": wall, "final_rel_loss": rel,
            "reached": bool(rel <= TOL), "losses": rec["losses"], "times": rec["times"],
            "note": str(res.message)}


class _Stop(Exception):
    pass


def _run_torch_lbfgs(prob, x0, budget, max_steps):
    """One ``LBFGS.step()`` with up to ``max_steps`` iterations; the closure stops the run at the
    first evaluated loss at or below the target (during a line search the parameters then sit at
    that trial point, since torch restores them only after the closure returns)."""
    t0 = time.perf_counter()
    p = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=1.0, max_iter=max_steps, max_eval=5 * max_steps + 10, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    L0 = prob.loss(x0).item()
    rec = {"losses": [1.0], "times": [0.0], "iters": [0], "note": f"step limit ({max_steps})", "best": 1.0}

    def closure():
        opt.zero_grad()
        L = prob.loss(p)
        L.backward()
        rel = L.item() / L0
        it = int(opt.state[p].get("n_iter", 0))
        if rel < rec["best"]:
            rec["best"] = rel
        if it > rec["iters"][-1]:  # first evaluation of a new iteration: the accepted point's loss
            rec["losses"].append(rec["best"])
            rec["times"].append(time.perf_counter() - t0)
            rec["iters"].append(it)
        if not math.isfinite(rel):
            rec["note"] = "diverged"
            raise _Stop
        if rel <= TOL:
            rec["note"] = "reached tol"
            raise _Stop
        if time.perf_counter() - t0 > budget:
            rec["note"] = "time budget"
            raise _Stop
        return L

    try:
        opt.step(closure)
    except _Stop:
        pass
    _sync(x0)
    wall = time.perf_counter() - t0
    rel = rec["best"]
    it = int(opt.state[p].get("n_iter", 0))
    if rec["iters"][-1] != it or rec["losses"][-1] != rel:
        rec["losses"].append(rel)
        rec["times"].append(wall)
        rec["iters"].append(it)
    return {"x": p.detach().clone(), "iterations": it, "wall_s": wall, "final_rel_loss": rel,
            "reached": bool(rel <= TOL), "losses": rec["losses"], "times": rec["times"], "note": rec["note"],
            "iters": rec["iters"]}


def run_one(case: str, method: str, prob, x0, budget: float, max_steps: int = 100_000):
    """Run one method on one case; returns the row dict (without the step cost)."""
    if method == "hig" and x0.numel() > HIG_MAX_N:
        return None
    if method == "scipy-lbfgsb":
        return _run_scipy(prob, x0, budget, max_steps)
    if method == "torch-lbfgs":
        return _run_torch_lbfgs(prob, x0, budget, max_steps)
    if method == "adam":
        r = _run_physgrad(prob, x0, "adam", budget, max_steps, step_size=ADAM_LR[case])
        r["step_size"] = ADAM_LR[case]
        return r
    if method == "ig":
        from .matfree import Forcing

        first = 0.0 if case.split("@")[0] in LINEAR_CASES else IG_FORCING_FIRST
        return _run_physgrad(prob, x0, "ig", budget, max_steps, solver=IG_SOLVER,
                             solver_tol=Forcing(math.sqrt(TOL), first=first))
    if method == "hig":
        return _run_physgrad(prob, x0, "hig", budget, min(max_steps, 2000))
    return _run_physgrad(prob, x0, method, budget, max_steps)


def _stats(v):
    v = [q for q in v if q is not None and math.isfinite(q)]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def run(cases=None, methods=None, budget: float = 30.0, device=None, progress=None, warmup: bool = True,
        sizes=None, repeats: int = REPEATS, dtype=torch.float64, seed: int = 0, long_run: float = LONG_RUN):
    """Run the benchmark; returns ``(rows, extra)``: one row dict per case × method (its median
    run, with ``wall_s_repeats``) and ``extra`` with, per case, the per-round ratios and the PG
    step / physical-limit ratio (see the module docstring). ``sizes`` maps a case to a grid size
    ``n`` other than the default (e.g. ``{"heat-2d": 512}``)."""
    sizes = dict(sizes or {})
    from tqdm.auto import tqdm

    cases = list(cases or CASES)
    methods = list(methods or METHODS)
    rng = random.Random(seed)
    rows, extra = [], {}
    disable = (not sys.stderr.isatty()) if progress is None else (not progress)
    bar = tqdm(total=len(cases) * (repeats + 1), desc="bench", disable=disable)
    for case in cases:
        label = case if case not in sizes else f"{case}@{sizes[case]}"
        prob, x0 = make_case(case, device=device, dtype=dtype, n=sizes.get(case))
        tf = forward_time(prob, x0)
        ms = [m for m in methods if not (m == "hig" and x0.numel() > HIG_MAX_N)]
        bar.set_postfix_str(f"{label} warm-up")
        if warmup:  # first calls of torch.func transforms and kernels are slow; not timed
            for m in ms:
                run_one(case, m, prob, x0, budget=0.0, max_steps=1)
            limit_time(prob, x0, reps=2)
        calls = {}  # back-to-back calls per timed measurement (timeit style), set by the first timed run
        bar.update(1)
        runs = {m: [None] * repeats for m in ms}
        limits, pg_steps, hands = [None] * repeats, [None] * repeats, [None] * repeats
        done = set()  # methods not repeated (missed the target, or long)
        for k in range(repeats):
            order = list(ms)
            rng.shuffle(order)
            bar.set_postfix_str(f"{label} round {k + 1}/{repeats}")
            for m in order:
                if m in done:
                    continue
                prob.counts.clear()
                r = run_one(case, m, prob, x0, budget)
                r["counts"] = dict(prob.counts)
                if m not in calls:
                    t1 = r["wall_s"]
                    calls[m] = _calls_per_timing(t1)
                if calls[m] > 1:
                    walls = [r["wall_s"]] + [run_one(case, m, prob, x0, budget)["wall_s"] for _ in range(calls[m] - 1)]
                    r["wall_s"] = sum(walls) / len(walls)
                r["calls_per_timing"] = calls[m]
                runs[m][k] = r
                if not r["reached"] or r["wall_s"] > long_run:
                    done.add(m)
            if "pg" in ms:
                limits[k] = limit_time(prob, x0)
                pg_steps[k] = pg_step_time(prob, x0)
                hands[k] = hand_pg_time(prob, x0)
            bar.update(1)
        for m in ms:
            reps = [r for r in runs[m] if r is not None]
            walls = [r["wall_s"] for r in reps]
            r = sorted(reps, key=lambda q: q["wall_s"])[(len(reps) - 1) // 2]
            it = max(r["iterations"], 1)
            r.update(case=label, method=m, step_cost_forwards=(r["wall_s"] / it) / tf, forward_s=tf,
                     budget_s=budget, wall_s_repeats=walls, wall_s_median=statistics.median(walls),
                     wall_s_min=min(walls), wall_s_max=max(walls), reached=all(q["reached"] for q in reps))
            rows.append(r)
        # per-round ratios t(peer)/t(method); a method run once is paired with every round of the other
        ex = {"forward_s": tf, "ratios": {}}
        for m, peer in _RATIO_PAIRS:
            if m in runs and peer in runs:
                a, b = runs[m], runs[peer]
                pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
                if len(pairs) < min(sum(x is not None for x in a), sum(y is not None for y in b)) or not pairs:
                    pairs = [(x, y) for x in a if x is not None for y in b if y is not None]
                vals = [y["wall_s"] / max(x["wall_s"], 1e-12) for x, y in pairs]
                ex["ratios"][f"{m}_vs_{peer.replace('-', '_')}"] = dict(_stats(vals), values=vals)
        if "pg" in ms and prob.inverse is not None:
            vals, cvals, steps, call_walls, lims, hvals, hand_walls = [], [], [], [], [], [], []
            for r, lim, st, hd in zip(runs["pg"], limits, pg_steps, hands):
                if lim is None or not (lim > 0):
                    continue
                lims.append(lim)
                if hd is not None and math.isfinite(hd):
                    hand_walls.append(hd)
                    hvals.append(hd / lim)
                if st is not None and math.isfinite(st):
                    steps.append(st)
                    vals.append(st / lim)
                if r is not None and r["iterations"] > 0:
                    call_walls.append(r["wall_s"] / r["iterations"])
                    cvals.append(call_walls[-1] / lim)
            if lims:
                ex["limit_s"] = statistics.median(lims)
                ex["forward_plus_limit_s"] = tf + ex["limit_s"]  # one-step run's floor: 2 forwards + 1 inverse
            if vals:
                ex["pg_step_vs_limit"] = dict(_stats(vals), values=vals)
                ex["pg_step_s"] = statistics.median(steps)
            if cvals:
                ex["pg_call_vs_limit"] = dict(_stats(cvals), values=cvals)
                ex["pg_call_s"] = statistics.median(call_walls)
            if hvals:
                ex["hand_call_vs_limit"] = dict(_stats(hvals), values=hvals)
                ex["hand_call_s"] = statistics.median(hand_walls)
        extra[label] = ex
    bar.close()
    return rows, extra


_RATIO_PAIRS = [("pg", "scipy-lbfgsb"), ("pg", "torch-lbfgs"), ("ig", "scipy-lbfgsb"), ("ig", "torch-lbfgs")]


def _fmt_wall(r):
    return ("" if r["reached"] else ">") + f"{r['wall_s']:.3g}"


_ABBR = [("forward", "F"), ("grad", "G"), ("jvp", "Jv"), ("vjp", "vJ"), ("jacobian", "J"), ("hessian", "H"),
         ("inverse", "inv")]


def calls_per_step(r) -> str:
    """Counted calls per iteration (F forward, G value+gradient, Jv/vJ products, J Jacobian,
    inv inverse simulator), e.g. ``F2 inv1`` for a PG step."""
    it = max(r["iterations"], 1)
    parts = []
    for k, a in _ABBR:
        c = r.get("counts", {}).get(k, 0)
        if c:
            parts.append(f"{a}{c / it:.3g}")
    return " ".join(parts) or "-"


def table(rows) -> str:
    """Markdown table of the rows (wall time: median [min–max] over the repeats)."""
    out = ["| case | method | iterations | wall [s] median [min–max] | final L/L0 | reached 1e-6 | "
           "step cost [forwards] | calls/step |",
           "|---|---|---:|---:|---:|:---:|---:|---|"]
    for r in rows:
        its = ("" if r["reached"] else ">") + str(r["iterations"])
        walls = r.get("wall_s_repeats") or [r["wall_s"]]
        rng = f" [{min(walls):.3g}–{max(walls):.3g}]" if len(walls) > 1 else ""
        out.append(f"| {r['case']} | {r['method']} | {its} | {_fmt_wall(r)}{rng} | {r['final_rel_loss']:.2e} | "
                   f"{'yes' if r['reached'] else 'no'} | {r['step_cost_forwards']:.3g} | {calls_per_step(r)} |")
    return "\n".join(out)


def ratio(rows, case, method, peer, extra=None) -> str:
    """``t(peer)/t(method)`` as ``median [min–max]`` over the rounds, with ``>`` when it is a lower
    bound (peer missed the target) and ``<`` when an upper bound (method missed it); ``n/a`` when
    neither reached it or a run is missing."""
    a = next((r for r in rows if r["case"] == case and r["method"] == method), None)
    b = next((r for r in rows if r["case"] == case and r["method"] == peer), None)
    if a is None or b is None or (not a["reached"] and not b["reached"]):
        return "n/a"
    prefix = "" if (a["reached"] and b["reached"]) else (">" if a["reached"] else "<")
    st = ((extra or {}).get(case, {}).get("ratios", {}).get(f"{method}_vs_{peer.replace('-', '_')}"))
    if st is None:
        return f"{prefix}{b['wall_s'] / max(a['wall_s'], 1e-12):.3g}"
    return f"{prefix}{st['median']:.3g} [{st['min']:.3g}–{st['max']:.3g}]"


def ratio_lines(rows, extra=None):
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        lines.append(f"RATIO {case} " + " ".join(
            f"{m}_vs_{p.replace('-', '_')}={ratio(rows, case, m, p, extra)}" for m, p in _RATIO_PAIRS))
    for case, ex in (extra or {}).items():
        st, ct = ex.get("pg_step_vs_limit"), ex.get("pg_call_vs_limit")
        if st or ct:
            parts = [f"LIMIT {case}"]
            if st:
                parts.append(f"pg_step_vs_limit={st['median']:.3g} [{st['min']:.3g}–{st['max']:.3g}]")
            if ct:
                parts.append(f"pg_call_vs_limit={ct['median']:.3g} [{ct['min']:.3g}–{ct['max']:.3g}]")
            hd = ex.get("hand_call_vs_limit")
            if hd:
                parts.append(f"hand_call_vs_limit={hd['median']:.3g} [{hd['min']:.3g}–{hd['max']:.3g}]")
            info = []
            if st:
                info.append(f"PG step {ex['pg_step_s'] * 1e3:.3g} ms in a {PG_STEPS}-step run")
            if ct:
                info.append(f"one-step call {ex['pg_call_s'] * 1e3:.3g} ms (floor: 2 forwards + 1 inverse = "
                            f"{ex['forward_plus_limit_s'] / ex['limit_s']:.2f} x limit)")
            if hd:
                info.append(f"hand-written loop {ex['hand_call_s'] * 1e3:.3g} ms per step")
            info.append(f"forward + inverse {ex['limit_s'] * 1e3:.3g} ms")
            lines.append(" ".join(parts) + " (" + "; ".join(info) + ")")
    return lines


NN_EXPERIMENTS = {"two-outputs": "two_outputs", "oscillators": "oscillators", "coupling": "coupling",
                  "heat": "heat"}


def _main_nn(name, argv):
    """``python -m physgrad.bench nn-<name> [--full] [--device cpu|cuda] [--seed N] [--json PATH]``:
    one of chapter 8's network experiments (``physgrad.experiments``); writes
    ``results/nn-<name>.json`` (machine info, config, result rows) and prints it."""
    import importlib

    from .machine import write_results

    ap = argparse.ArgumentParser(prog=f"python -m physgrad.bench nn-{name}", description=_main_nn.__doc__)
    ap.add_argument("--full", action="store_true", help="the published size (minutes); default: CI size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", default=None, metavar="PATH", help="default results/nn-<name>.json (--full) "
                    "or results/nn-<name>-quick.json")
    args = ap.parse_args(argv)
    mod = importlib.import_module(f"physgrad.experiments.{NN_EXPERIMENTS[name]}")
    threads0 = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        kw = {"device": args.device} if args.device != "cpu" else {}
        out = mod.bench(full=args.full, seed=args.seed, **kw)
    finally:
        torch.set_num_threads(threads0)
    out["wall_s"] = time.perf_counter() - t0
    out["command"] = f"python -m physgrad.bench nn-{name}" + (" --full" if args.full else "")
    path = args.json or f"results/nn-{name}{'' if args.full else '-quick'}.json"
    out = write_results(path, out, threads=args.threads)
    print(json.dumps(out, indent=1, default=str))
    print(f"wrote {path} ({out['wall_s']:.0f} s)")
    return out


def _pin_env_and_reexec(threads: int, argv):
    """Without threadpoolctl, BLAS thread counts can only be set before the libraries load: set
    the variables and re-execute ``python -m physgrad.bench`` once."""
    try:
        import threadpoolctl  # noqa: F401
        return
    except ImportError:
        pass
    want = str(threads)
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    if all(os.environ.get(k) == want for k in keys) or os.environ.get("PHYSGRAD_BENCH_REEXEC"):
        return
    env = dict(os.environ, PHYSGRAD_BENCH_REEXEC="1", **{k: want for k in keys})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", "physgrad.bench", *argv], env)


def _threads_arg(argv) -> int:
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return 1


def main(argv=None):
    from_cli = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if from_cli and __name__ == "__main__":
        _pin_env_and_reexec(_threads_arg(argv), argv)
    if argv[:1] == ["batch"]:  # batched vs looped optimize: physgrad/bench_batch.py
        from .bench_batch import main as _main_batch
        return _main_batch(argv[1:])
    if argv[:1] == ["scaling"]:
        return _main_scaling(argv[1:])
    if argv[:1] and argv[0].startswith("nn-") and argv[0][3:] in NN_EXPERIMENTS:
        return _main_nn(argv[0][3:], argv[1:])
    ap = argparse.ArgumentParser(prog="python -m physgrad.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short per-method budget (whole run <= ~2 min on 2 cores)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--json", default=None, metavar="PATH", help="write rows, ratios and machine info as JSON")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--budget", type=float, default=None, help="seconds per method run (default 3 quick, 30 full)")
    ap.add_argument("--repeats", type=int, default=REPEATS, help=f"interleaved rounds (default {REPEATS})")
    ap.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    ap.add_argument("--n", action="append", default=[], metavar="CASE=N",
                    help="grid size override, e.g. --n heat-2d=512 (repeatable); rows are labelled CASE@N")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads (default 1: the cases are small and threads mostly contend)")
    args = ap.parse_args(argv)
    with pinned_threads(args.threads):
        return _main(args, ap)


def _main(args, ap):
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")
    budget = args.budget if args.budget is not None else (3.0 if args.quick else 30.0)
    cases = parse_choices(ap, "case", args.cases, CASES)
    methods = parse_choices(ap, "method", args.methods, METHODS)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    sizes = {}
    for item in args.n:
        c, _, v = item.partition("=")
        if c not in SIZES or not v.isdigit():
            ap.error(f"--n expects CASE=N with CASE in {sorted(SIZES)}, got {item!r}")
        sizes[c] = int(v)
    info = machine_info(args.device)
    t0 = time.perf_counter()
    rows, extra = run(cases, methods, budget=budget, device=args.device, sizes=sizes, repeats=args.repeats,
                      dtype=DTYPES[args.dtype])
    total = time.perf_counter() - t0
    print(f"physgrad.bench: target L/L0 <= {TOL:g}; budget {budget:g} s per run; {args.repeats} interleaved "
          f"rounds; device {args.device}; dtype {args.dtype}; torch threads {torch.get_num_threads()}; "
          f"BLAS pools {[(p['api'], p['threads']) for p in (_blas_pools() or [])] or 'env only'}; "
          f"load {info['load_avg_1_5_15']}; {info['cpu']}")
    print("step cost = (wall per iteration) / (wall of one forward); wall = median [min–max] over rounds")
    print()
    print(table(rows))
    print()
    for line in ratio_lines(rows, extra):
        print(line)
    print(f"total bench time {total:.1f} s")
    if args.json:
        keys = ["case", "method", "iterations", "wall_s", "wall_s_median", "wall_s_min", "wall_s_max",
                "wall_s_repeats", "final_rel_loss", "reached", "step_cost_forwards", "forward_s", "budget_s",
                "note", "counts", "step_size", "losses", "times", "iters", "calls_per_timing"]
        info["load_avg_end"] = machine_info(args.device)["load_avg_1_5_15"]
        out = {"args": vars(args), "machine": info,
               "settings": {"tol": TOL, "budget_s": budget, "repeats": args.repeats, "dtype": args.dtype,
                            "threads": args.threads, "quick": args.quick, "ig_solver": IG_SOLVER,
                            "sizes": {c: sizes.get(c, SIZES.get(c)) for c in cases}, "total_s": total},
               "ratio_lines": ratio_lines(rows, extra), "cases": extra,
               "rows": [{k: r.get(k) for k in keys} for r in rows]}
        d = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return rows


# ---------------------------------------------------------------------------- scaling study
SCALING_SIZES = {"heat-2d": [64, 128, 256, 512], "poisson-2d": [64, 128, 256, 512],
                 "heat-1d": [256, 1024, 4096, 16384, 65536]}
SCALING_METHODS = ["pg", "ig", "scipy-lbfgsb", "torch-lbfgs"]


def scaling(cases=None, methods=None, max_n=None, max_n_1d=None, repeats: int = 3, budget: float = 120.0,
            progress=None, device=None, dtype=torch.float64):
    """Wall time and iterations to ``L/L0 <= 1e-6`` per method over grid sizes (issue: does PG's
    lead stay flat or grow?). Returns a list of rows: case, n, unknowns, method, iterations,
    wall median/min/max, reached, forward and forward+inverse times."""
    cases = list(cases or SCALING_SIZES)
    methods = list(methods or SCALING_METHODS)
    out = []
    for case in cases:
        for n in SCALING_SIZES[case]:
            cap = max_n_1d if case == "heat-1d" else max_n
            if cap is not None and n > cap:
                continue
            rows, extra = run([case], methods, budget=budget, device=device, progress=progress, sizes={case: n},
                              repeats=repeats, dtype=dtype, long_run=10.0)
            ex = extra[f"{case}@{n}"]
            for r in rows:
                out.append({"case": case, "n": n, "unknowns": n if case == "heat-1d" else n * n,
                            "method": r["method"], "iterations": r["iterations"], "reached": r["reached"],
                            "wall_s": r["wall_s_median"], "wall_s_min": r["wall_s_min"],
                            "wall_s_max": r["wall_s_max"], "wall_s_repeats": r["wall_s_repeats"],
                            "final_rel_loss": r["final_rel_loss"], "forward_s": ex["forward_s"],
                            "limit_s": ex.get("limit_s"), "pg_step_s": ex.get("pg_step_s"), "pg_call_s": ex.get("pg_call_s"),
                            "hand_call_s": ex.get("hand_call_s"),
                            "counts": r.get("counts")})
    return out


def _main_scaling(argv):
    """``python -m physgrad.bench scaling``: heat-2d and periodic Poisson (h = 1/n) at 64² → 512²
    and heat-1d at N = 256 → 65536; wall time to L/L0 <= 1e-6 and iterations for PG, IG, SciPy
    L-BFGS-B and torch LBFGS; writes JSON (default ``results/scaling.json``)."""
    ap = argparse.ArgumentParser(prog="python -m physgrad.bench scaling", description=_main_scaling.__doc__)
    ap.add_argument("--json", default="results/scaling.json", metavar="PATH")
    ap.add_argument("--cases", default=",".join(SCALING_SIZES))
    ap.add_argument("--methods", default=",".join(SCALING_METHODS))
    ap.add_argument("--max-n", type=int, default=None, help="largest 2-D grid side (default 512)")
    ap.add_argument("--max-n-1d", type=int, default=None, help="largest 1-D size (default 65536)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per size (runs > 10 s: once)")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per run before it counts as a lower bound")
    ap.add_argument("--quick", action="store_true", help="2-D up to 256², 1-D up to 16384, 2 rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float64", choices=sorted(DTYPES))
    args = ap.parse_args(argv)
    if args.quick:
        args.max_n = args.max_n or 256
        args.max_n_1d = args.max_n_1d or 16384
        args.repeats = min(args.repeats, 2)
    with pinned_threads(args.threads):
        info = machine_info("cpu")
        t0 = time.perf_counter()
        rows = scaling(args.cases.split(","), args.methods.split(","), args.max_n, args.max_n_1d,
                       repeats=args.repeats, budget=args.budget, dtype=DTYPES[args.dtype])
        total = time.perf_counter() - t0
    print("| case | n | method | iterations | wall [s] median [min–max] |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        mark = "" if r["reached"] else ">"
        print(f"| {r['case']} | {r['n']} | {r['method']} | {mark}{r['iterations']} | "
              f"{mark}{r['wall_s']:.3g} [{r['wall_s_min']:.3g}–{r['wall_s_max']:.3g}] |")
    print(f"total scaling time {total:.1f} s")
    info["load_avg_end"] = machine_info("cpu")["load_avg_1_5_15"]
    out = {"command": "python -m physgrad.bench scaling " + " ".join(argv), "machine": info,
           "settings": {"tol": TOL, "repeats": args.repeats, "budget_s": args.budget, "threads": args.threads,
                        "dtype": args.dtype, "max_n": args.max_n, "max_n_1d": args.max_n_1d, "total_s": total},
           "rows": rows}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
