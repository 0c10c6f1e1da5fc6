"""Chapter 8's measured-vs-published tables, read from the committed ``results/nn-*.json``.

Every ``nn-<name>.json`` holds ``rows`` of the form ``{experiment, setting, method, metric,
value, published, source, [settings_difference], [steps], [wall_s], ...}``. This module turns
whatever rows exist into two tables, and never fails on a missing file or a missing key:

* :func:`published_table`: one line per (experiment, setting, metric) that has a published
  number, with the measured and published value of every method, where the published number
  comes from (paper, figure, repository file) and how our settings differ;
* :func:`goal_table`: the four ratio goals of chapter 8 (:data:`GOALS`), each with the rows it
  compares, the measured ratio, the verdict (``met`` or ``**missed**``) and the reason.

The verdict is a rule in code, so that the chapter cannot claim more than the rows show.
"""

from __future__ import annotations

import json
import math
import os
import re

__all__ = ["load", "load_rows", "GOALS", "goals", "goal_table", "published_groups",
           "published_table", "runs_table", "markdown", "html", "fmt"]

NAMES = ("two-outputs", "oscillators", "heat", "coupling")
METHOD_NAMES = {"adam": "Adam", "sgd": "SGD", "gn": "GN", "hig": "HIG", "sip": "SIP", "lm": "LM",
                "supervised": "supervised"}
# metric names of older result files, read as the names the goals use
METRIC_ALIASES = {"train_loss": ("train_loss", "final_train_loss"),
                  "test_loss": ("test_loss", "final_test_loss"),
                  "x_l1": ("x_l1", "test_x_l1"),
                  "final_loss": ("final_loss",)}

# The goals of issue 21, each a ratio "numerator method / denominator method" on one metric.
# ``need``: substrings every candidate setting must contain; ``prefer``: substrings a setting
# should contain (a setting with all of them wins; without one, the goal is "not run").
GOALS = (
    dict(key="oscillators", experiment="oscillators", title="oscillators, published configuration",
         metric="train_loss", num=("adam",), den="hig", need=("published",), prefer=(),
         threshold=1000.0, quantity="training loss Adam / HIG, equal wall time"),
    dict(key="two-outputs", experiment="two-outputs", title="two outputs, λ = 0.01, published budgets",
         metric="final_loss", num=("adam", "gn"), den="hig-armijo", need=("lambda=0.01", "published"),
         prefer=(), threshold=30.0, quantity="final loss min(Adam, GN) / HIG (with the Armijo safeguard; "
         "the fixed-step HIG sweep is in notebooks/08b-scaling)"),
    dict(key="coupling", experiment="coupling", title="(ξ, φ) sweep, largest ξ",
         metric=None, num=("adam",), den="adam", need=(), prefer=(), threshold=10.0,
         quantity="Adam rotated (φ = π/4) / aligned (φ = 0)"),
    dict(key="heat", experiment="heat", title="heat, 64×64 boxes", metric="x_l1", num=("adam",),
         den="sip", need=(), prefer=(), threshold=2.0, threshold_gpu=2.5,
         quantity="test x-L1 Adam / SIP"),
)


def load(results_dir: str, name: str):
    """The JSON of ``nn-<name>`` (full run), or None when it has not been run."""
    path = os.path.join(results_dir, f"nn-{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_rows(results_dir: str = "results") -> list:
    """All rows of all ``nn-*.json`` files; each row gains ``file`` (the file it came from)."""
    rows = []
    for name in NAMES:
        d = load(results_dir, name)
        for r in (d or {}).get("rows", []) or []:
            if isinstance(r, dict):
                rows.append({**r, "file": f"results/nn-{name}.json"})
    return rows


def fmt(v) -> str:
    """A measured or published number with three significant digits ('–' for None)."""
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.3g}"
    return f"{v:.2e}".replace("e-0", "e-").replace("e+0", "e")


def ratio_text(r) -> str:
    """A ratio with one decimal at least ('1.4×', '20.9×', '2140×')."""
    if r is None:
        return "–"
    return f"{r:.1f}×" if r < 100 else f"{r:.0f}×"


def _name(method) -> str:
    return METHOD_NAMES.get(str(method), str(method))


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _metric_names(metric):
    return METRIC_ALIASES.get(metric, (metric,))


def _find(rows, experiment, setting, method, metric):
    for r in rows:
        if (r.get("experiment") == experiment and r.get("setting") == setting
                and r.get("method") == method and r.get("metric") in _metric_names(metric)):
            return r
    return None


def _settings(rows, experiment, need):
    seen = []
    for r in rows:
        s = str(r.get("setting", ""))
        if r.get("experiment") == experiment and all(t in s for t in need) and s not in seen:
            seen.append(s)
    return seen


def _phi_xi(r):
    def get(key):
        if _num(r.get(key)) is not None:
            return _num(r.get(key))
        m = re.search(key + r"\s*=\s*([0-9.eE+-]+)", str(r.get("setting", "")))
        return _num(m.group(1)) if m else None
    return get("xi"), get("phi")


def _reason(*rows):
    for key in ("reason", "settings_difference", "note"):
        for r in rows:
            if r and r.get(key):
                return str(r[key])
    return ""


def _sources(*rows):
    out = []
    for r in rows:
        s = (r or {}).get("source")
        if s and s not in out:
            out.append(str(s))
    return "; ".join(out)


def _verdict(ratio, threshold):
    if ratio is None:
        return "not run"
    return "met" if ratio >= threshold else "**missed**"


def _coupling_goal(rows, g):
    adam = [r for r in rows if r.get("experiment") == "coupling" and r.get("method") == "adam"
            and _num(r.get("value")) is not None]
    xis = [x for x, _ in map(_phi_xi, adam) if x is not None]
    if not xis:
        return None
    xi = max(xis)
    at = [r for r in adam if _phi_xi(r)[0] == xi]
    metrics = []
    for r in at:
        if r.get("metric") not in metrics:
            metrics.append(r.get("metric"))
    # the first metric with a non-zero aligned value; an exact zero cannot be divided by
    for metric in sorted(metrics, key=lambda m: m == "final_loss"):
        al = [r for r in at if r.get("metric") == metric and _phi_xi(r)[1] is not None
              and abs(_phi_xi(r)[1]) < 1e-3]
        ro = [r for r in at if r.get("metric") == metric and _phi_xi(r)[1] is not None
              and abs(_phi_xi(r)[1] - math.pi / 4) < 1e-3]
        if al and ro and _num(al[0]["value"]) not in (None, 0.0):
            return al[0], ro[0], metric, xi
    al = [r for r in at if _phi_xi(r)[1] is not None and abs(_phi_xi(r)[1]) < 1e-3]
    ro = [r for r in at if _phi_xi(r)[1] is not None and abs(_phi_xi(r)[1] - math.pi / 4) < 1e-3]
    if al and ro:
        return al[0], ro[0], al[0].get("metric"), xi
    return None


def goals(rows) -> list:
    """Evaluate :data:`GOALS` on ``rows``: one dict per goal and setting, with key, title,
    setting, quantity, measured (text), ratio (float or None), goal (text), verdict ('met',
    '**missed**' or 'not run'), reason and source."""
    out = []
    for g in GOALS:
        base = dict(key=g["key"], title=g["title"], quantity=g["quantity"], setting="",
                    measured="not measured yet: no result rows", ratio=None, verdict="not run", reason="", source="",
                    goal=f"≥ {g['threshold']:g}")
        if g["key"] == "coupling":
            found = _coupling_goal(rows, g)
            if found is None:
                out.append(base)
                continue
            al, ro, metric, xi = found
            a, b = _num(ro.get("value")), _num(al.get("value"))
            ratio = a / b if a is not None and b else None
            why = "" if ratio is not None else "the aligned run's value is exactly zero; no ratio"
            out.append({**base, "setting": f"ξ = {xi:g}, {metric}",
                        "measured": f"rotated {fmt(a)}, aligned {fmt(b)} → {ratio_text(ratio)}",
                        "ratio": ratio,
                        "verdict": _verdict(ratio, g["threshold"]) if ratio is not None else "**missed**",
                        "reason": why or _reason(ro, al), "source": _sources(ro, al),
                        "published": _num(ro.get("published"))})
            continue
        settings = _settings(rows, g["experiment"], g["need"])
        n_before = len(out)
        for s in settings:
            thr = g.get("threshold_gpu", g["threshold"]) if "gpu" in s.lower() else g["threshold"]
            den = _find(rows, g["experiment"], s, g["den"], g["metric"])
            nums = [r for r in (_find(rows, g["experiment"], s, m, g["metric"]) for m in g["num"]) if r]
            nums = [r for r in nums if _num(r.get("value")) is not None]
            if den is None or _num(den.get("value")) is None or not nums:
                continue
            best = min(nums, key=lambda r: _num(r["value"]))
            dv = _num(den["value"])
            ratio = _num(best["value"]) / dv if dv else None
            parts = ", ".join(f"{_name(r['method'])} {fmt(_num(r['value']))}" for r in nums)
            measured = f"{parts}, {_name(g['den'])} {fmt(dv)} → {ratio_text(ratio)}"
            pub = [_num(r.get("published")) for r in (best, den)]
            published = pub[0] / pub[1] if None not in pub and pub[1] else None
            out.append({**base, "setting": s, "goal": f"≥ {thr:g}", "measured": measured,
                        "ratio": ratio, "verdict": _verdict(ratio, thr),
                        "published": published,
                        "reason": _reason(best, den, *nums) if ratio is None or ratio < thr else "",
                        "source": _sources(best, den, *nums)})
        if len(out) == n_before:  # no setting with both sides of the ratio
            found = ", ".join(settings) if settings else "none"
            out.append({**base, "measured": f"not measured yet: no {g['metric']} rows of "
                        f"{'/'.join(map(_name, g['num']))} and {_name(g['den'])} in a setting with "
                        f"{' and '.join(repr(t) for t in g['need']) or 'any name'} "
                        f"(settings found: {found})"})
    return out


def goal_table(rows) -> list:
    """:func:`goals` as table lines: goal, setting, quantity, measured, published, goal,
    verdict, reason (the reason only where the goal is missed)."""
    out = []
    for g in goals(rows):
        reason = g["reason"] if g["verdict"] != "met" else ""
        if g["verdict"] == "not run" and not reason:
            reason = f"run `python -m physgrad.bench nn-{g['key']} --full` to fill this row"
        elif g["verdict"] != "met" and not reason:
            reason = f"no reason recorded in `results/nn-{g['key']}.json`; see the chapter text"
        pub = g.get("published")
        out.append({"experiment": g["title"], "setting": g["setting"] or "–",
                    "quantity": g["quantity"], "measured": g["measured"],
                    "published": ratio_text(pub) if pub else "–", "goal": g["goal"],
                    "verdict": g["verdict"], "reason": reason or "–"})
    return out


def published_groups(rows) -> list:
    """Rows grouped by (experiment, setting, metric), only groups with a published number."""
    groups = {}
    for r in rows:
        key = (r.get("experiment", "?"), str(r.get("setting", "")), r.get("metric", "?"))
        groups.setdefault(key, []).append(r)
    return [(k, v) for k, v in groups.items() if any(_num(r.get("published")) is not None for r in v)]


def published_table(rows) -> list:
    """One line per (experiment, setting, metric) with a published number: measured and
    published value per method, the source of the published number and the settings
    difference."""
    out = []
    for (exp, setting, metric), rs in published_groups(rows):
        meas = "; ".join(f"{_name(r.get('method'))} {fmt(_num(r.get('value')))}" for r in rs)
        pub = "; ".join(f"{_name(r.get('method'))} {fmt(_num(r.get('published')))}" for r in rs
                        if _num(r.get("published")) is not None)
        diffs = []
        for r in rs:
            d = r.get("settings_difference")
            if d and d not in diffs:
                diffs.append(str(d))
        out.append({"experiment": exp, "setting": setting or "–", "metric": metric,
                    "measured": meas, "published": pub,
                    "source": _sources(*rs) or "not recorded in the JSON",
                    "settings difference": "; ".join(diffs) or "–"})
    return out


def runs_table(results_dir: str = "results") -> list:
    """One line per result file: file, wall time, machine, date (robust to missing keys)."""
    out = []
    for name in NAMES:
        d = load(results_dir, name)
        if d is None:
            out.append({"file": f"nn-{name}", "wall time": "not run yet", "machine": "–", "date": "–"})
            continue
        m = d.get("machine", {}) or {}
        wall = _num(d.get("wall_s"))
        mach = ", ".join(x for x in (m.get("gpu"), m.get("cpu"),
                                     f"{m['cores']} cores" if "cores" in m else None,
                                     f"{m['torch_threads']} torch thread(s)" if "torch_threads" in m
                                     else None, f"torch {m['torch']}" if "torch" in m else None) if x)
        out.append({"file": f"`results/nn-{name}.json`",
                    "wall time": f"{wall / 60:.1f} min" if wall is not None else "–",
                    "machine": mach or "–", "date": str(m.get("date", "–"))[:10]})
    return out


def markdown(rows, columns=None) -> str:
    """Table lines (dicts) as a Markdown pipe table; ``columns`` defaults to the first row's keys."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    clean = lambda v: str(v).replace("|", "/").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(clean(r.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def html(markdown_table: str, css: str = "table") -> str:
    """A Markdown pipe table as an HTML table (for glue across pages, which renders HTML).
    Lines that do not start with ``|`` (a note under the table) become paragraphs after it;
    ``css`` is the table's class."""
    import html as _html

    lines = [ln.strip() for ln in markdown_table.strip().splitlines() if ln.strip()]
    rows = [ln for ln in lines if ln.startswith("|")]
    notes = [ln for ln in lines if not ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    head, body = cells[0], cells[2:]

    def fmt_cell(text):
        text = _html.escape(text)
        text = re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)

    out = [f'<table class="{css}">', "<thead><tr>" + "".join(f"<th>{fmt_cell(h)}</th>" for h in head)
           + "</tr></thead>", "<tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{fmt_cell(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    out += [f"<p>{fmt_cell(t)}</p>" for t in notes]
    return "\n".join(out)
