"""The benchmark runner: interleaved repeats, ratio statistics, fair drivers, JSON with machine info.

No timing is asserted; only structure, the stopping rules and the bookkeeping (which can fail)."""

import json
import re

import pytest
import torch

from physgrad import bench


def test_main_toy_writes_ratio_lines_and_machine_info(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    rows = bench.main(["--cases", "toy", "--methods", "ig,pg,scipy-lbfgsb,torch-lbfgs", "--budget", "5",
                       "--repeats", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| toy | pg |" in text
    num = r"[0-9.e+-]+"
    assert re.search(rf"RATIO toy pg_vs_scipy_lbfgsb={num} \[{num}–{num}\] pg_vs_torch_lbfgs={num} \[", text)
    assert re.search(rf"LIMIT toy pg_step_vs_limit={num} \[{num}–{num}\] pg_call_vs_limit={num} \[{num}–{num}\] "
                     rf"hand_call_vs_limit={num} \[{num}–{num}\] "
                     rf"\(PG step {num} ms in a {bench.PG_STEPS}-step run; one-step call {num} ms \(floor: 2 "
                     rf"forwards \+ 1 inverse = {num} x limit\); hand-written loop {num} ms per step; "
                     rf"forward \+ inverse {num} ms\)", text)
    data = json.loads(out.read_text())
    m = data["machine"]
    for key in ("cpu", "cores", "load_avg_1_5_15", "torch_threads", "versions", "date_utc", "blas_pools"):
        assert key in m
    assert m["torch_threads"] == 1 and m["versions"]["torch"] == torch.__version__
    assert {r["method"] for r in data["rows"]} == {"ig", "pg", "scipy-lbfgsb", "torch-lbfgs"}
    for r in data["rows"]:
        assert r["reached"], r  # every one of these reaches 1e-6 on the toy in a few steps
        assert len(r["wall_s_repeats"]) == 3
        assert r["wall_s_min"] <= r["wall_s_median"] <= r["wall_s_max"]
    st = data["cases"]["toy"]["ratios"]["pg_vs_scipy_lbfgsb"]
    assert st["n"] == 3 and st["min"] <= st["median"] <= st["max"]
    pg = next(r for r in rows if r["method"] == "pg")
    assert pg["iterations"] == 1 and pg["counts"]["inverse"] == 1
    # a sub-millisecond run is timed as the mean of back-to-back calls (timeit style); the counts
    # are those of one run
    assert 1 < pg["calls_per_timing"] <= bench.MAX_CALLS
    lim = data["cases"]["toy"]
    assert lim["pg_step_vs_limit"]["n"] == lim["pg_call_vs_limit"]["n"] == lim["hand_call_vs_limit"]["n"] == 3
    assert lim["forward_plus_limit_s"] > lim["limit_s"] > 0


def test_pg_step_time_is_per_step_and_nan_without_an_inverse():
    from physgrad.problems.heat import heat_1d

    p = heat_1d(n=64)
    assert bench.pg_step_time(p, p.x0, steps=4, reps=2) > 0
    q = heat_1d(n=64)
    q.inverse = None
    assert bench.pg_step_time(q, q.x0) != bench.pg_step_time(q, q.x0)  # NaN


def test_hand_pg_loop_takes_the_steps_of_physgrads_pg_and_is_nan_without_an_inverse(monkeypatch):
    import physgrad

    # a cubic with a linearized (one Newton step) local inverse: PG needs several steps
    p = physgrad.Problem(lambda x: x + x ** 3, torch.tensor([2.0, 10.0], dtype=torch.float64),
                         lambda y, x: x + (y - x - x ** 3) / (1 + 3 * x ** 2))
    x0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    res = physgrad.optimize(p, x0, "pg", steps=100, tol=bench.TOL)
    seen = []
    inverse = p.inverse
    p.inverse = lambda y, x: seen.append(1) or inverse(y, x)
    monkeypatch.setattr(bench, "MAX_CALLS", 1)
    monkeypatch.setattr(bench, "MIN_TIMED_S", 0.0)
    assert bench.hand_pg_time(p, x0) > 0
    assert res.nit > 1 and len(seen) == 2 * res.nit  # warm-up + one timed call, each res.nit steps
    p.inverse = None
    assert bench.hand_pg_time(p, x0) != bench.hand_pg_time(p, x0)  # NaN


def test_blas_pools_are_pinned_inside_the_bench():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with bench.pinned_threads(1):
        assert torch.get_num_threads() == 1
        assert all(d["num_threads"] == 1 for d in threadpoolctl.threadpool_info())


def test_torch_lbfgs_single_step_stops_at_the_first_loss_below_target():
    p, x0 = bench.make_case("heat-1d")
    r = bench._run_torch_lbfgs(p, x0, budget=60.0, max_steps=1000)
    assert r["reached"] and r["final_rel_loss"] <= bench.TOL
    assert r["losses"][-2] > bench.TOL  # the previous iteration was still above: no overshoot
    assert p.loss(r["x"]).item() / p.loss(x0).item() == pytest.approx(r["final_rel_loss"], rel=1e-9)
    assert r["iters"] == sorted(r["iters"]) and r["iters"][-1] == r["iterations"]


def test_ratio_marks_lower_and_upper_bounds():
    rows = [{"case": "c", "method": "pg", "reached": True, "wall_s": 1.0},
            {"case": "c", "method": "scipy-lbfgsb", "reached": False, "wall_s": 50.0},
            {"case": "c", "method": "torch-lbfgs", "reached": True, "wall_s": 20.0},
            {"case": "c", "method": "ig", "reached": False, "wall_s": 30.0}]
    assert bench.ratio(rows, "c", "pg", "scipy-lbfgsb") == ">50"
    assert bench.ratio(rows, "c", "pg", "torch-lbfgs") == "20"
    assert bench.ratio(rows, "c", "ig", "torch-lbfgs") == "<0.667"
    assert bench.ratio(rows, "c", "ig", "scipy-lbfgsb") == "n/a"
    extra = {"c": {"ratios": {"pg_vs_torch_lbfgs": {"median": 20.0, "min": 15.0, "max": 31.0}}}}
    assert bench.ratio(rows, "c", "pg", "torch-lbfgs", extra) == "20 [15–31]"


def test_float32_cases_reach_the_target():
    rows, extra = bench.run(["heat-1d"], ["pg", "ig"], budget=20.0, repeats=1, dtype=torch.float32,
                            progress=False)
    for r in rows:
        assert r["reached"], r
    assert extra["heat-1d"]["pg_step_vs_limit"]["median"] > 0


def test_scaling_rows(tmp_path):
    out = bench._main_scaling(["--cases", "heat-1d", "--methods", "pg,ig", "--max-n-1d", "1024",
                               "--repeats", "1", "--json", str(tmp_path / "s.json")])
    rows = out["rows"]
    assert sorted({r["n"] for r in rows}) == [256, 1024]
    for r in rows:
        assert r["reached"] and r["unknowns"] == r["n"]
        if r["method"] == "ig":
            assert r["iterations"] == 1  # linear case: one solve runs straight to the outer target
    assert json.loads((tmp_path / "s.json").read_text())["machine"]["cores"] >= 1
