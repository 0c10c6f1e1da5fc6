r"""Benchmark: a batch of independent problems solved at once vs a Python loop of single runs.

Run ``python -m physgrad.bench batch --quick`` (at most about two minutes on two CPU cores);
``--json PATH`` chooses the output file (default ``results/bench-batch.json``).

For each case (``toy``: the book's ``P(x) = (x_1, x_2^2)`` with a different reachable target and
start per sample; ``heat-1d``: :func:`physgrad.problems.heat.heat_1d` on ``N`` points, each sample
with its own smooth random initial state, start 0), each batch size ``B`` and each method
(``pg`` with the problem's inverse, ``ig``, ``newton`` with Armijo backtracking and
``fallback="pinv"``), it times

* **batch**: one ``physgrad.optimize`` call on ``Problem(P, Y, inverse, batched=True)``,
* **loop**: a Python loop of single ``physgrad.optimize`` calls, one per sample. For large ``B``
  the loop runs on the first ``loop_max`` samples only, and its time per problem is
  extrapolated (the output says so: ``loop_samples`` < ``B``).

Both stop each sample at ``L/L0 <= 1e-10`` (or the step limit). The checked quantity is the
**time per problem** (wall time divided by the number of problems solved), reported as the
median and range of ``repeats`` interleaved repetitions, and the ratio
``batch_vs_loop = median loop time per problem / median batch time per problem``. The run also
checks that batch and loop end at the same ``x`` (``max_abs_diff``).

Threads are pinned (``torch.set_num_threads(1)`` and threadpoolctl when installed), so the ratio
measures vectorisation, not parallelism. At large ``B`` a step allocates tensors of megabytes,
which glibc returns to the operating system when they are freed; every step then faults its
memory in again, which can be half of a batched ``ig`` or ``newton`` step on a virtual machine.
``THP_MEM_ALLOC_ENABLE=1`` in the environment makes PyTorch put large CPU tensors on 2 MB pages;
the JSON records that variable, glibc's ``MALLOC_*`` variables and the kernel's huge-page mode.
``--device cuda`` runs on a GPU (default sizes then include ``B = 16384``); ``--dtype float32``
is supported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from .machine import machine_info, parse_choices

__all__ = ["main", "run"]

CASES = ["toy", "heat-1d"]
METHODS = ["pg", "ig", "newton"]
TOL = 1e-10
STEPS = 50
OPTIONS = {"pg": {}, "ig": {}, "newton": {"line_search": "armijo", "fallback": "pinv"}}


def make_batch(case: str, B: int, dtype=torch.float64, device=None, n: int = 32, seed: int = 0):
    """``(batched problem, X0 (B, n), single(b) -> Problem)`` for one case."""
    from .problem import Problem
    from .problems import heat, toy

    g = torch.Generator().manual_seed(seed)
    if case == "toy":
        p = toy.toy(dtype=dtype, device=device)
        Y = (torch.rand(B, 2, generator=g, dtype=torch.float64) * 2 + 0.1).to(dtype=dtype, device=device)
        X0 = (torch.rand(B, 2, generator=g, dtype=torch.float64) * 2 + 1).to(dtype=dtype, device=device)

        def single(b):
            return toy.toy(target=Y[b], dtype=dtype, device=device)
    elif case == "heat-1d":
        p = heat.heat_1d(n=n, nu_T=1.0, dtype=dtype, device=device)
        white = torch.randn(B, n, generator=g, dtype=torch.float64)
        k2 = (2 * torch.pi * torch.fft.rfftfreq(n, d=1.0, dtype=torch.float64)) ** 2
        Xt = torch.fft.irfft(torch.fft.rfft(white) * torch.exp(-0.5 * k2 * 16.0), n=n)  # smooth, corr 4 cells
        Xt = ((Xt - Xt.mean(-1, keepdim=True)) / Xt.std(-1, keepdim=True)).to(dtype=dtype, device=device)
        Y = p.forward(Xt)
        X0 = torch.zeros(B, n, dtype=dtype, device=device)

        def single(b):
            return Problem(p.forward, Y[b], p.inverse, name="heat-1d")
    else:
        raise ValueError(f"unknown case {case!r}; choose from {CASES}")
    return Problem(p.forward, Y, p.inverse, name=f"{case} batch", batched=True), X0, single


def _sync(device):
    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _time_batch(bp, X0, method, device):
    from .optimize import optimize

    _sync(device)
    t = time.perf_counter()
    res = optimize(bp, X0, method, steps=STEPS, tol=TOL, progress=False, **OPTIONS[method])
    _sync(device)
    return time.perf_counter() - t, res


def _time_loop(single, X0, method, count, device):
    from .optimize import optimize

    _sync(device)
    t = time.perf_counter()
    xs = [optimize(single(b), X0[b], method, steps=STEPS, tol=TOL, progress=False, **OPTIONS[method]).x
          for b in range(count)]
    _sync(device)
    return time.perf_counter() - t, torch.stack(xs)


def run(cases, methods, sizes, repeats=3, loop_max=32, device=None, dtype=torch.float64, n=32, log=print):
    """Time every (case, B, method) ``repeats`` times, interleaved; returns the rows."""
    rows = {}
    data = {}
    for case in cases:
        for B in sizes:
            data[(case, B)] = make_batch(case, B, dtype=dtype, device=device, n=n)
    # warm-up: first calls pay for lazy imports and kernel selection
    for case in cases:
        bp, X0, single = make_batch(case, 2, dtype=dtype, device=device, n=n)
        for m in methods:
            _time_batch(bp, X0, m, device)
            _time_loop(single, X0, m, 1, device)
    for rep in range(repeats):
        for case in cases:
            for B in sizes:
                bp, X0, single = data[(case, B)]
                count = min(B, loop_max)
                for m in methods:
                    tb, res = _time_batch(bp, X0, m, device)
                    tl, xl = _time_loop(single, X0, m, count, device)
                    row = rows.setdefault((case, B, m), {
                        "case": case, "B": B, "method": m, "n": int(X0[0].numel()), "loop_samples": count,
                        "batch_s": [], "loop_s": [], "batch_per_problem_s": [], "loop_per_problem_s": []})
                    row["batch_s"].append(tb)
                    row["loop_s"].append(tl)
                    row["batch_per_problem_s"].append(tb / B)
                    row["loop_per_problem_s"].append(tl / count)
                    row["max_abs_diff"] = max(row.get("max_abs_diff", 0.0),
                                              float((res.x[:count] - xl).abs().max()))
                    row["batch_nit"] = res.nit
                    row["converged"] = int(res.converged.sum())
                    row["failed"] = int((res.status < 0).sum())  # diverged, stalled, singular, ... (not the step limit)
        log(f"  repeat {rep + 1}/{repeats} done")
    out = []
    for row in rows.values():
        for key in ("batch_per_problem_s", "loop_per_problem_s"):
            v = row[key]
            row[key.replace("_s", "_median_s")] = statistics.median(v)
            row[key.replace("_s", "_min_s")] = min(v)
            row[key.replace("_s", "_max_s")] = max(v)
        row["batch_vs_loop"] = row["loop_per_problem_median_s"] / row["batch_per_problem_median_s"]
        out.append(row)
    return out


def _fmt(s):
    return f"{s * 1e3:.3g} ms" if s >= 1e-3 else f"{s * 1e6:.3g} µs"


def table(rows) -> str:
    head = ("| case | B | method | batch / problem, median [min–max] | loop / problem, median [min–max] "
            "| loop samples | batch vs loop | converged | max abs diff |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['B']} | {r['method']} | {_fmt(r['batch_per_problem_median_s'])} "
            f"[{_fmt(r['batch_per_problem_min_s'])}–{_fmt(r['batch_per_problem_max_s'])}] | "
            f"{_fmt(r['loop_per_problem_median_s'])} [{_fmt(r['loop_per_problem_min_s'])}–"
            f"{_fmt(r['loop_per_problem_max_s'])}] | {r['loop_samples']}"
            f"{' (extrapolated)' if r['loop_samples'] < r['B'] else ''} | {r['batch_vs_loop']:.1f}× | "
            f"{r['converged']}/{r['B']} | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m physgrad.bench batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats, loop on at most 32 samples (<= ~2 min)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--sizes", default=None, help="comma-separated batch sizes (default 1,64,1024; on cuda also 16384)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3 quick, 5 full)")
    ap.add_argument("--loop-max", type=int, default=None, help="samples timed in the loop (default 32 quick, 128)")
    ap.add_argument("--n", type=int, default=32, help="heat-1d grid size (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", default="results/bench-batch.json", metavar="PATH")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but torch.cuda.is_available() is False")

    cases = parse_choices(ap, "case", args.cases, CASES)
    methods = parse_choices(ap, "method", args.methods, METHODS)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [1, 64, 1024] + ([16384] if args.device.startswith("cuda") else [])
    repeats = args.repeats or (3 if args.quick else 5)
    if repeats < 3:
        ap.error("--repeats must be >= 3")
    loop_max = args.loop_max or (32 if args.quick else 128)
    dtype = getattr(torch, args.dtype)
    threads0 = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads)
    except ImportError:
        limiter = None
    t0 = time.perf_counter()
    try:
        rows = run(cases, methods, sizes, repeats=repeats, loop_max=loop_max, device=args.device, dtype=dtype,
                   n=args.n, log=lambda s: print(s, file=sys.stderr))
        machine = machine_info("cpu" if args.device is None else args.device)
    finally:
        torch.set_num_threads(threads0)
        if limiter is not None:
            limiter.unregister()
    print(f"physgrad.bench batch: B independent problems, batched optimize vs a Python loop of single runs; "
          f"each sample stops at L/L0 <= {TOL:g} (at most {STEPS} steps); device {args.device}, {args.dtype}, "
          f"torch threads {machine['torch_threads']}; {repeats} interleaved repeats; heat-1d N = {args.n}, "
          f"nu*T = 1. Loop times for B > {loop_max} are measured on {loop_max} samples and extrapolated "
          "per problem.")
    print()
    print(table(rows))
    print()
    for r in rows:
        print(f"RATIO batch {r['case']} B={r['B']} {r['method']} batch_vs_loop={r['batch_vs_loop']:.1f}")
    total = time.perf_counter() - t0
    print(f"total bench time {total:.1f} s")
    if args.json:
        out = {"machine": machine,
               "settings": {"tol": TOL, "steps": STEPS, "options": OPTIONS, "device": args.device,
                            "dtype": args.dtype, "repeats": repeats, "loop_max": loop_max, "heat_n": args.n,
                            "heat_nu_T": 1.0, "sizes": sizes, "quick": args.quick, "total_s": total,
                            "command": "python -m physgrad.bench batch " + " ".join(argv or sys.argv[2:])},
               "rows": rows}
        d = os.path.dirname(args.json)
        if d:
            os.makedirs(d, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
