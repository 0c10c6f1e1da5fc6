"""physgrad.experiments.summary: chapter 8's goal and measured-vs-published tables are built
from whatever result rows exist, with the verdict computed from the rows."""

import json
import math
import os

from physgrad.experiments import row, summary

ROOT = os.path.join(os.path.dirname(__file__), "..", "results")


def _write(tmp_path, name, rows, **extra):
    d = {"machine": {"cpu": "test cpu"}, "config": {}, "rows": rows, **extra}
    (tmp_path / f"nn-{name}.json").write_text(json.dumps(d))


def _by_key(rows):
    return {g["key"]: g for g in summary.goals(rows)}


def test_no_files_every_goal_not_run(tmp_path):
    assert summary.load_rows(str(tmp_path)) == []
    table = summary.goal_table([])
    assert len(table) == 4 and all(t["verdict"] == "not run" for t in table)
    assert "nn-heat --full" in table[3]["reason"]
    assert summary.published_table([]) == [] and summary.markdown([]) == ""
    runs = summary.runs_table(str(tmp_path))
    assert [r["wall time"] for r in runs] == ["not run yet"] * 4


def test_synthetic_rows_met_and_missed(tmp_path):
    src = "HIG paper, Fig. 5"
    _write(tmp_path, "oscillators", [
        row("oscillators", "published", "adam", "train_loss", 2e-3, 2.4e-3, source=src),
        row("oscillators", "published", "hig", "train_loss", 1e-6, 1e-6, source=src,
            settings_difference="initial states from [0, 1)^4 as in the notebook"),
        row("oscillators", "published", "gn", "train_loss", 5e-7)])
    _write(tmp_path, "two-outputs", [
        row("two-outputs", "lambda=0.01, published budget", "adam", "final_loss", 0.24, 0.24),
        row("two-outputs", "lambda=0.01, published budget", "gn", "final_loss", 0.05, 0.40),
        row("two-outputs", "lambda=0.01, published budget", "hig-armijo", "final_loss", 2.9e-3, 2.9e-3,
            reason="GN converged further than in the paper"),
        row("two-outputs", "lambda=0.01, 60 s", "adam", "final_loss", 5e-4)])
    _write(tmp_path, "heat", [
        row("heat", "gpu, U-Net", "adam", "x_l1", 125.0, 125.0),
        row("heat", "gpu, U-Net", "sip", "x_l1", 50.0, 50.4),
        row("heat", "cpu, small", "adam", "x_l1", 300.0),
        {"experiment": "heat", "setting": "cpu, small", "method": "sip", "metric": "x_l1",
         "value": 200.0}])  # no 'published' key at all
    _write(tmp_path, "coupling", [
        row("coupling", "xi=32, phi=0.0000", "adam", "final_loss", 0.0, xi=32.0, phi=0.0),
        row("coupling", "xi=32, phi=0.7854", "adam", "final_loss", 1e-5, xi=32.0, phi=math.pi / 4),
        row("coupling", "xi=32, phi=0.0000", "adam", "loss_at_200", 1e-4, xi=32.0, phi=0.0),
        row("coupling", "xi=32, phi=0.7854", "adam", "loss_at_200", 3e-3, xi=32.0, phi=math.pi / 4),
        row("coupling", "xi=1, phi=0.0000", "adam", "loss_at_200", 1e-9, xi=1.0, phi=0.0)])
    rows = summary.load_rows(str(tmp_path))
    assert {r["file"] for r in rows} == {f"results/nn-{n}.json" for n in summary.NAMES}
    g = _by_key(rows)
    # oscillators: Adam / HIG = 2000 >= 1000
    assert math.isclose(g["oscillators"]["ratio"], 2000.0) and g["oscillators"]["verdict"] == "met"
    # two outputs: min(Adam, GN) / HIG = 0.05 / 2.9e-3 = 17 < 30, reason from the row
    assert math.isclose(g["two-outputs"]["ratio"], 0.05 / 2.9e-3)
    assert g["two-outputs"]["verdict"] == "**missed**"
    assert g["two-outputs"]["reason"] == "GN converged further than in the paper"
    # coupling: the zero final_loss is skipped for the metric with a non-zero aligned value
    assert math.isclose(g["coupling"]["ratio"], 30.0) and "loss_at_200" in g["coupling"]["setting"]
    # heat: one goal row per setting, 2.5 on the GPU recipe and 2.0 on the CPU one
    heat = [x for x in summary.goals(rows) if x["key"] == "heat"]
    assert [(x["setting"], x["goal"], x["verdict"]) for x in heat] == [
        ("gpu, U-Net", "≥ 2.5", "met"), ("cpu, small", "≥ 2", "**missed**")]
    table = summary.goal_table(rows)
    md = summary.markdown(table)
    assert md.count("**missed**") == 2 and "| met |" in md
    # the published table: only groups with a published number, with source and difference
    pub = summary.published_table(rows)
    assert {(p["experiment"], p["setting"]) for p in pub} == {
        ("oscillators", "published"), ("two-outputs", "lambda=0.01, published budget"),
        ("heat", "gpu, U-Net")}
    osc = next(p for p in pub if p["experiment"] == "oscillators")
    assert osc["source"] == src and osc["settings difference"].startswith("initial states")
    assert "GN 5.00e-7" in osc["measured"] and "GN" not in osc["published"]
    h = summary.html(summary.markdown(pub))
    assert h.count("<tr>") == 1 + len(pub)


def test_coupling_with_only_a_zero_denominator_is_missed(tmp_path):
    rows = [row("coupling", "xi=32, phi=0.0000", "adam", "final_loss", 0.0),
            row("coupling", "xi=32, phi=0.7854", "adam", "final_loss", 9e-6)]
    g = _by_key(rows)["coupling"]  # xi and phi read from the setting string
    assert g["ratio"] is None and g["verdict"] == "**missed**" and "zero" in g["reason"]


def test_committed_results_render():
    rows = summary.load_rows(ROOT)
    table = summary.goal_table(rows)
    assert [t["experiment"] for t in table][:2] == [
        "oscillators, published configuration", "two outputs, λ = 0.01, published budgets"]
    for t in table:
        assert t["verdict"] in ("met", "**missed**", "not run")
        assert t["verdict"] == "met" or t["reason"] != "–"
    assert summary.markdown(summary.published_table(rows)).count("\n") >= 1 or not rows
    assert len(summary.runs_table(ROOT)) == 4


def test_format_helpers():
    assert summary.fmt(None) == "–" and summary.fmt(0.0) == "0"
    assert summary.fmt(0.2381) == "0.238" and summary.fmt(1.45e-7) == "1.45e-7"
    assert summary.ratio_text(1.4) == "1.4×" and summary.ratio_text(2140.2) == "2140×"


def test_summary_html_table():
    h = summary.html("| a | b |\n|---|---|\n| `x<1` | **missed** |")
    assert "<th>a</th><th>b</th>" in h
    assert "<td><code>x&lt;1</code></td><td><strong>missed</strong></td>" in h


def test_summary_html_note_and_class():
    h = summary.html("| a |\n|---|\n| 1 ms |\n\nAMD EPYC, 2 cores.", css="numbers")
    assert h.startswith('<table class="numbers">') and h.endswith("<p>AMD EPYC, 2 cores.</p>")
    assert "<td>1 ms</td>" in h
