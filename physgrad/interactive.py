r"""Kernel-free interactive figures: sliders that work on the static website, offline.

The live :class:`physgrad.widgets.Explorer` needs a running kernel. The figures built here need
none: every run is computed by ``physgrad`` in the notebook, over a grid of slider values, and
stored in the page together with a declarative `Vega-Lite <https://vega.github.io/vega-lite/>`_
specification. Range sliders (Vega-Lite parameters) select one grid point, a filter keeps the
runs computed for it, and the browser redraws; no JavaScript is written per figure. The Vega and
Vega-Lite libraries are vendored in ``vendor/vega/`` and loaded from the book's ``_static/``
folder, so the pages work without a network.

The runs come from the same problem factories and the same function as the Explorer's
(:func:`physgrad.widgets.run_method`), so both show the same numbers.

>>> fig = gd_figure()                    # chapter 2: GD on the toy problem, c × η
>>> fig.rows("runs")[0]["x"][:2]         # the stored trajectory of the first grid point
>>> fig                                  # in a notebook: the HTML that draws it in the book

Each figure's data is a list of rows, one per run and series: the slider values ``a`` (and
``b``, ``e``), the series name ``s`` and arrays (``x``, ``y`` for the x-space path, ``L`` for the
relative loss), which the chart flattens after filtering, so a slider move only touches the
selected rows. Floats are stored with 12 significant digits.
"""

from __future__ import annotations

import html as _html
import json
import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from matplotlib.colors import to_hex

from . import updates
from .plotting import METHOD_LABELS, color
from .problem import Problem
from .problems.heat import heat_1d
from .problems.toy import toy, toy_x0
from .widgets import LOSS_FLOOR, run_method

__all__ = ["Figure", "grid", "gd_figure", "newton_bfgs_figure", "lm_figure", "comparison_figure",
           "slope_figure", "heat_figure", "kappa_figure", "two_output_problem", "FIGURES",
           "VEGA_VERSION", "VEGA_LITE_VERSION"]

VEGA_VERSION = "6.4.0"
VEGA_LITE_VERSION = "6.5.0"
#: significant digits of the stored floats (relative error below 1e-12)
DIGITS = 12
WIDTH, HEIGHT = 260, 220


def _num(v: float) -> float:
    v = float(v)
    return float(f"{v:.{DIGITS}g}") if math.isfinite(v) else None


def _arr(t) -> List[float]:
    a = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, float)
    return [_num(v) for v in a.ravel()]


def grid(lo: float, hi: float, step: float) -> List[float]:
    """Slider values ``lo, lo + step, …, hi`` rounded to 10 decimals (what a range input sends)."""
    n = int(round((hi - lo) / step))
    return [round(lo + i * step, 10) for i in range(n + 1)]


def _hex(method: str) -> str:
    return to_hex(color(method))


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _rel(losses: torch.Tensor) -> List[float]:
    L = losses.detach().double()
    return _arr(torch.clamp(L / L[0], min=LOSS_FLOOR))


def _match(*pairs) -> str:
    return " && ".join(f"abs(datum.{f} - {p}) < 1e-9" for f, p in pairs)


class Figure:
    """One kernel-free figure: its data, its sliders and its panels, rendered as HTML.

    ``sliders``: ``[{"name", "label", "min", "max", "step", "value"}]``; ``datasets``: name →
    rows; ``panels``: rows of panels (each a Vega-Lite layer spec); ``title``: a Vega expression
    that shows the current values. ``meta`` keeps what a test needs to recompute the runs.
    """

    def __init__(self, name: str, sliders: Sequence[dict], datasets: Dict[str, list],
                 panels: Sequence[Sequence[dict]], title: str, meta: Optional[dict] = None):
        self.name, self.sliders, self.datasets = name, list(sliders), dict(datasets)
        self.panels, self.title, self.meta = [list(r) for r in panels], title, dict(meta or {})

    def rows(self, dataset: str = "runs") -> list:
        return self.datasets[dataset]

    def spec(self) -> dict:
        params = [{"name": s["name"], "value": s["value"],
                   "bind": {"input": "range", "min": s["min"], "max": s["max"], "step": s["step"],
                            "name": s["label"] + " "}} for s in self.sliders]
        rows = [{"hconcat": r} if len(r) > 1 else r[0] for r in self.panels]
        body = {"vconcat": rows} if len(rows) > 1 else rows[0]
        spec = {"datasets": self.datasets, "params": params,
                "title": {"text": {"expr": self.title}, "anchor": "start", "fontSize": 13},
                "config": {"font": "sans-serif", "axis": {"labelFontSize": 11, "titleFontSize": 12},
                           "legend": {"labelFontSize": 11, "titleFontSize": 12, "orient": "bottom",
                                      "direction": "horizontal", "columns": 4},
                           "view": {"stroke": "#ccc"}},
                "resolve": {"scale": {"color": "independent", "strokeDash": "independent"},
                            "legend": {"color": "independent"}},
                "padding": 4}
        spec.update(body)
        return spec

    def to_json(self) -> str:
        return json.dumps(self.spec(), separators=(",", ":"), allow_nan=False)

    def data_bytes(self) -> int:
        return len(json.dumps(self.datasets, separators=(",", ":")).encode())

    def html(self) -> str:
        return _html_block(self.name, self.to_json())

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.datasets.values())
        return f"<interactive figure {self.name!r}: {len(self.sliders)} sliders, {n} rows>"


# --------------------------------------------------------------------------------- panels
def lines_panel(name: str, filt: str, fx: str, fy: str, series: Sequence[str],
                colors: Sequence[str], x: dict, y: dict, dashes: Optional[Sequence] = None,
                dataset: str = "runs", points: bool = True, legend: bool = True,
                width: int = WIDTH, height: int = HEIGHT, extra: Sequence[dict] = ()) -> dict:
    """Paths of the selected rows: ``fx``/``fy`` are array fields, flattened after ``filt``.

    ``x``, ``y``: ``{"title", "domain", "type"}`` (``type`` "linear" or "log")."""
    def axis(d, f):
        return {"field": f, "type": "quantitative", "title": d["title"],
                "scale": {"domain": d["domain"], "type": d.get("type", "linear"), "nice": False,
                          "zero": False},
                "axis": {"format": ".0e"} if d.get("type") == "log" else {}}
    enc = {"x": axis(x, fx), "y": axis(y, fy), "order": {"field": "k", "type": "quantitative"},
           "color": {"field": "s", "type": "nominal", "title": None,
                     "scale": {"domain": list(series), "range": list(colors)},
                     "legend": {"symbolType": "stroke"} if legend else None}}
    if dashes is not None:
        enc["strokeDash"] = {"field": "s", "type": "nominal", "legend": None,
                             "scale": {"domain": list(series), "range": [list(d) for d in dashes]}}
    fields = [fx, fy] if fx != fy else [fx]
    transform = [{"filter": filt}, {"flatten": fields},
                 {"window": [{"op": "row_number", "as": "k1"}], "groupby": ["s"]},
                 {"calculate": "datum.k1 - 1", "as": "k"}]
    mark = {"type": "line", "clip": True, "strokeWidth": 1.8}
    if points:
        mark["point"] = {"size": 14, "filled": True}
    layer = [{"name": name, "mark": mark, "encoding": enc}, *extra]
    return {"width": width, "height": height, "data": {"name": dataset},
            "transform": transform, "layer": layer}


def map_panel(name: str, a: dict, b: dict, pa: str, pb: str, v_title: str, v_domain,
              curve: Optional[str] = None, width: int = WIDTH, height: int = HEIGHT) -> dict:
    """A heat map of ``v`` over the slider grid (dataset ``map``: rows ``a``, ``b``, ``v``) with
    the current selection marked; ``curve`` names a dataset of ``(a, b)`` points drawn dashed."""
    da, db = a["step"], b["step"]
    rect = {"name": name, "data": {"name": "map"},
            "transform": [{"calculate": f"datum.a - {da / 2}", "as": "a0"},
                          {"calculate": f"datum.a + {da / 2}", "as": "a1"},
                          {"calculate": f"datum.b - {db / 2}", "as": "b0"},
                          {"calculate": f"datum.b + {db / 2}", "as": "b1"}],
            "mark": {"type": "rect"},
            "encoding": {
                "x": {"field": "a0", "type": "quantitative", "title": a["title"],
                      "scale": {"domain": [a["min"] - da / 2, a["max"] + da / 2], "nice": False,
                                "zero": False}},
                "x2": {"field": "a1"},
                "y": {"field": "b0", "type": "quantitative", "title": b["title"],
                      "scale": {"domain": [b["min"] - db / 2, b["max"] + db / 2], "nice": False,
                                "zero": False}},
                "y2": {"field": "b1"},
                "color": {"field": "v", "type": "quantitative", "title": v_title,
                          "scale": {"type": "log", "domain": list(v_domain), "clamp": True,
                                    "scheme": "viridis"},
                          "legend": {"orient": "right", "direction": "vertical",
                                     "gradientLength": height - 40}}}}
    layers = [rect]
    if curve:
        layers.append({"data": {"name": curve}, "mark": {"type": "line", "clip": True,
                                                          "color": "white", "strokeDash": [5, 3],
                                                          "strokeWidth": 2},
                       "encoding": {"x": {"field": "a", "type": "quantitative"},
                                    "y": {"field": "b", "type": "quantitative"},
                                    "order": {"field": "a", "type": "quantitative"}}})
    layers.append({"data": {"name": "map"}, "transform": [{"filter": _match(("a", pa), ("b", pb))}],
                   "mark": {"type": "square", "size": 140, "filled": False, "color": "#e41a1c",
                            "strokeWidth": 2.5},
                   "encoding": {"x": {"field": "a", "type": "quantitative"},
                                "y": {"field": "b", "type": "quantitative"}}})
    return {"width": width, "height": height, "layer": layers}


def _target_layer(x: float, y: float, dataset_name: str = "target") -> dict:
    return {"data": {"values": [{"x": x, "y": y}]},
            "mark": {"type": "point", "shape": "cross", "size": 90, "color": "black",
                     "filled": True},
            "encoding": {"x": {"field": "x", "type": "quantitative"},
                         "y": {"field": "y", "type": "quantitative"}}}


def _slider(name, label, values, value):
    return {"name": name, "label": label, "min": values[0], "max": values[-1],
            "step": round(values[1] - values[0], 10), "value": value}


def _run_row(run, s: str, **keys) -> dict:
    row = {k: v for k, v in keys.items()}
    row["s"] = s
    xs = run.xs.detach().double()
    row["x"], row["y"] = _arr(xs[:, 0]), _arr(xs[:, 1]) if xs.shape[1] > 1 else _arr(xs[:, 0] * 0)
    row["L"] = _rel(run.losses)
    return row


XSPACE = {"x": {"title": "x₁", "domain": [-0.5, 3.5]}, "y": {"title": "x₂", "domain": [-0.5, 3.5]}}
LOSS_X = {"title": "iteration k", "domain": [0, 30]}
LOSS_Y = {"title": "relative loss L/L₀", "domain": [1e-16, 1e4], "type": "log"}


# ------------------------------------------------------------------------- the figures
def gd_figure(steps: int = 30, lc=(-1.0, 1.0, 0.25), le=(-4.0, 0.0, 0.25)) -> Figure:
    """Chapter 2: GD on the toy problem ``P = c (x₁, x₂²)`` from ``(3, 3)``, sliders ``log₁₀ c``
    and ``log₁₀ η``; a map of GD's final ``L/L₀`` over the grid with the line ``η = 2/c²``."""
    cs, es = grid(*lc), grid(*le)
    runs, cells = [], []
    for a in cs:
        for b in es:
            run = run_method(toy(10 ** a), toy_x0(), "gd", steps, 10 ** b)
            runs.append(_run_row(run, "GD", a=a, b=b))
            cells.append({"a": a, "b": b, "v": _num(max(runs[-1]["L"][-1], LOSS_FLOOR))})
    curve = [{"a": a, "b": _num(math.log10(2) - 2 * a)} for a in grid(cs[0], cs[-1], 0.05)]
    filt = _match(("a", "lc"), ("b", "le"))
    x_panel = lines_panel("gd_x", filt, "x", "y", ["GD"], [_hex("gd")], **XSPACE,
                          extra=[_target_layer(0.0, 0.0)], legend=False)
    l_panel = lines_panel("gd_L", filt, "L", "L", ["GD"], [_hex("gd")],
                          x={**LOSS_X, "domain": [0, steps]}, y=LOSS_Y, legend=False)
    l_panel["transform"].append({"calculate": "datum.k", "as": "it"})
    l_panel["layer"][0]["encoding"]["x"]["field"] = "it"
    m_panel = map_panel("gd_map", {"title": "log₁₀ c", "min": cs[0], "max": cs[-1], "step": lc[2]},
                        {"title": "log₁₀ η", "min": es[0], "max": es[-1], "step": le[2]},
                        "lc", "le", f"L/L₀ after {steps} steps", (1e-4, 1e2), curve="curve")
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("le", "log₁₀ η", es, -2.0)]
    title = ("'GD, c = ' + format(pow(10, lc), '.3g') + ', η = ' + format(pow(10, le), '.3g')"
             " + (pow(10, le) * pow(10, 2 * lc) < 2 ? '  (η c² < 2)' : '  (η c² ≥ 2)')")
    return Figure("ch2-gd", sliders, {"runs": runs, "map": cells, "curve": curve},
                  [[x_panel, l_panel], [m_panel]], title,
                  meta={"problem": "toy", "x0": [3.0, 3.0], "steps": steps,
                        "series": {"GD": ("gd", {})}})


def _loss_panel(name, filt, series, colors, steps, dashes=None, legend=True):
    p = lines_panel(name, filt, "L", "L", series, colors, x={**LOSS_X, "domain": [0, steps]},
                    y=LOSS_Y, dashes=dashes, legend=legend)
    p["transform"].append({"calculate": "datum.k", "as": "it"})
    p["layer"][0]["encoding"]["x"]["field"] = "it"
    return p


def newton_bfgs_figure(steps: int = 20, lc=(-1.0, 1.0, 0.25), eta=(0.1, 1.0, 0.1)) -> Figure:
    """Chapter 3: pure Newton and pure BFGS (``line_search=None``, ``B₀ = I``) on the toy
    problem, sliders ``log₁₀ c`` and ``η``. Newton's path does not depend on c; BFGS's first
    step is a GD step and does."""
    cs, es = grid(*lc), grid(*eta)
    methods = {"newton": {"line_search": None}, "bfgs": {"line_search": None}}
    runs = []
    for a in cs:
        for b in es:
            for m, opt in methods.items():
                run = run_method(toy(10 ** a), toy_x0(), m, steps, b, **opt)
                runs.append(_run_row(run, _label(m), a=a, b=b))
    filt = _match(("a", "lc"), ("b", "eta"))
    series, colors = [_label(m) for m in methods], [_hex(m) for m in methods]
    x_panel = lines_panel("nb_x", filt, "x", "y", series, colors, **XSPACE,
                          extra=[_target_layer(0.0, 0.0)])
    l_panel = _loss_panel("nb_L", filt, series, colors, steps, legend=False)
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("eta", "η", es, 0.5)]
    title = "'Newton and BFGS (pure), c = ' + format(pow(10, lc), '.3g') + ', η = ' + format(eta, '.2g')"
    return Figure("ch3-newton-bfgs", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"problem": "toy", "x0": [3.0, 3.0], "steps": steps,
                        "series": {_label(m): (m, o) for m, o in methods.items()}})


def lm_figure(steps: int = 20, ll=(-4.0, 1.0, 0.5), ls=(-2.0, 0.0, 0.25), eta: float = 1.0) -> Figure:
    """Chapter 4: IG near the singular point ``x₂ = 0`` of the toy Jacobian, target
    ``y* = (0, 1)``, start ``(3, s)``; sliders ``log₁₀ λ`` (Levenberg–Marquardt damping with
    ``D = I``, i.e. ``λ‖Δx‖²``) and ``log₁₀ s``. The undamped IG path is drawn dashed."""
    lams, ss = grid(*ll), grid(*ls)
    runs = []
    for b in ss:
        x0 = torch.tensor([3.0, 10 ** b], dtype=torch.float64)
        prob = toy(1.0, target=[0.0, 1.0])
        run = run_method(prob, x0, "ig", steps, eta)
        runs.append(_run_row(run, "IG, λ = 0", a=None, b=b))
        for a in lams:
            run = run_method(prob, x0, "ig", steps, eta, damping=10 ** a, damping_scale="identity")
            runs.append(_run_row(run, "IG, damped", a=a, b=b))
    filt = f"abs(datum.b - ls) < 1e-9 && (datum.a === null || abs(datum.a - ll) < 1e-9)"
    series = ["IG, damped", "IG, λ = 0"]
    colors = [_hex("ig"), "#7f7f7f"]
    dashes = [[1, 0], [5, 3]]
    x_panel = lines_panel("lm_x", filt, "x", "y", series, colors,
                          x={"title": "x₁", "domain": [-0.5, 3.5]},
                          y={"title": "x₂", "domain": [-1.0, 6.0]}, dashes=dashes,
                          extra=[_target_layer(0.0, 1.0)])
    l_panel = _loss_panel("lm_L", filt, series, colors, steps, dashes=dashes, legend=False)
    sliders = [_slider("ll", "log₁₀ λ", lams, -2.0), _slider("ls", "log₁₀ x₂(0)", ss, -1.5)]
    title = ("'IG near x₂ = 0: λ = ' + format(pow(10, ll), '.2g') + ', start x₂ = '"
             " + format(pow(10, ls), '.3g') + ', η = 1'")
    return Figure("ch4-lm", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"problem": "toy target (0, 1)", "steps": steps, "eta": eta})


COMPARISON_METHODS = {"gd": {}, "adam": {}, "bfgs": {"line_search": "wolfe"},
                      "newton": {"line_search": None}, "ig": {}, "pg": {},
                      "hig": {"line_search": None}}
LEARNING_RATE = ("gd", "adam")


def comparison_figure(steps: int = 20, lc=(-1.0, 1.0, 0.25), le=(-4.0, 0.0, 0.5),
                      eta=(0.1, 1.0, 0.1), make_problem: Callable[[float], Problem] = toy,
                      x0: Optional[torch.Tensor] = None, methods: Optional[Sequence[str]] = None,
                      xlim=(-0.5, 3.5), ylim=(-0.5, 3.5), solution=(0.0, 0.0),
                      name: str = "ch5-comparison") -> Figure:
    """Chapter 5: all seven methods on the toy problem, sliders ``log₁₀ c``, ``log₁₀ η`` of the
    learning-rate methods (GD, Adam) and ``η`` of the others (BFGS with a strong-Wolfe line
    search starting at ``η``; pure Newton and HIG; IG; PG). ``make_problem``, ``x0``,
    ``methods`` (a subset), the window ``xlim``/``ylim`` and the marked ``solution`` make the same
    figure for another two-parameter problem."""
    x0 = toy_x0() if x0 is None else x0
    chosen = {m: o for m, o in COMPARISON_METHODS.items() if methods is None or m in methods}
    cs, les, es = grid(*lc), grid(*le), grid(*eta)
    runs = []
    for a in cs:
        prob = make_problem(10 ** a)
        for m, opt in chosen.items():
            for b in (les if m in LEARNING_RATE else es):
                step = 10 ** b if m in LEARNING_RATE else b
                runs.append(_run_row(run_method(prob, x0, m, steps, step, **opt), _label(m),
                                     a=a, b=b, lr=m in LEARNING_RATE))
    filt = "abs(datum.a - lc) < 1e-9 && abs(datum.b - (datum.lr ? le : eta)) < 1e-9"
    series = [_label(m) for m in chosen]
    colors = [_hex(m) for m in chosen]
    x_panel = lines_panel("cmp_x", filt, "x", "y", series, colors,
                          x={"title": "x₁", "domain": list(xlim)},
                          y={"title": "x₂", "domain": list(ylim)},
                          extra=[_target_layer(*solution)])
    l_panel = _loss_panel("cmp_L", filt, series, colors, steps, legend=False)
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("le", "log₁₀ η (GD, Adam)", les, -2.0),
               _slider("eta", "η (the others)", es, 0.5)]
    title = ("'c = ' + format(pow(10, lc), '.3g') + ',  η = ' + format(pow(10, le), '.2g')"
             " + ' (GD, Adam),  η = ' + format(eta, '.2g') + ' (others)'")
    return Figure(name, sliders, {"runs": runs}, [[x_panel], [l_panel]], title,
                  meta={"problem": "toy", "x0": x0.tolist(), "steps": steps,
                        "series": {_label(m): (m, o) for m, o in chosen.items()}})


def slope_figure(eta=(0.1, 0.9, 0.1), s=(1.0, 3.0, 0.25), points: int = 21) -> Figure:
    """Chapter 6: the local slope ``∂x₂/∂y₂ = 1/(2x₂)`` along PG's path from ``(3, s)`` on the
    toy problem (c = 1), IG's value at the start and PG's path average ``Δx₂/Δy₂``; sliders η
    and ``s``."""
    es, ss = grid(*eta), grid(*s)
    prob = toy(1.0)
    ts = torch.linspace(0.0, 1.0, points, dtype=torch.float64)
    runs = []
    for b in ss:
        x0 = torch.tensor([3.0, b], dtype=torch.float64)
        y0 = prob.simulate(x0)
        for a in es:
            dy = updates.y_step(prob, x0, a)
            slope = [1.0 / prob.jacobian(prob.apply_inverse(y0 + t * dy, x0))[1, 1].item()
                     for t in ts]
            dx_pg = updates.pg(prob, x0, a)
            dx_ig = updates.ig(prob, x0, a)
            pg_avg, ig_start = (dx_pg[1] / dy[1]).item(), (dx_ig[1] / dy[1]).item()
            common = {"a": a, "b": b, "x": _arr(ts)}
            runs.append({**common, "s": "local slope on the path", "y": _arr(slope)})
            runs.append({**common, "s": "IG: slope at the start", "y": [_num(ig_start)] * points})
            runs.append({**common, "s": "PG: path average", "y": [_num(pg_avg)] * points})
    filt = _match(("a", "eta"), ("b", "s0"))
    series = ["local slope on the path", "IG: slope at the start", "PG: path average"]
    colors = ["#000000", _hex("ig"), _hex("pg")]
    panel = lines_panel("slope", filt, "x", "y", series, colors,
                        x={"title": "position along the step, t = (y₂ − y₂⁰)/Δy₂", "domain": [0, 1]},
                        y={"title": "∂x₂/∂y₂ = 1/(2x₂)", "domain": [0, 1.0]},
                        dashes=[[1, 0], [6, 3], [2, 2]], points=False, width=420, height=240)
    sliders = [_slider("eta", "η", es, 0.5), _slider("s0", "start x₂", ss, 2.0)]
    title = "'One step from (3, ' + format(s0, '.3g') + ') with η = ' + format(eta, '.2g')"
    return Figure("ch6-slope", sliders, {"runs": runs}, [[panel]], title, meta={"points": points})


def heat_figure(n: int = 64, nu_T: float = 8.0, leps=(-8.0, 0.0, 0.5), lsig=(-6.0, -1.0, 0.5)
                ) -> Figure:
    """Chapter 7: one damped inverse of the 1-D heat equation, ``x = P⁻¹_ε(y* + noise)`` from
    ``x₀ = 0`` (:func:`physgrad.problems.heat.heat_1d`, ``n`` points); sliders ``log₁₀ ε`` and
    ``log₁₀ σ`` (noise); the map shows the relative error ``‖x − x_true‖/‖x_true‖``."""
    eps, sig = grid(*leps), grid(*lsig)
    runs, cells = [], []
    truth = None
    for b in sig:
        for a in eps:
            prob = heat_1d(n=n, nu_T=nu_T, inv_damping=10 ** a, noise=10 ** b)
            x = prob.apply_inverse(prob.target, prob.x0)
            err = ((x - prob.x_true).norm() / prob.x_true.norm()).item()
            runs.append({"a": a, "b": b, "s": "reconstruction", "y": _arr(x)})
            cells.append({"a": a, "b": b, "v": _num(err)})
            truth = prob.x_true
    runs.append({"a": None, "b": None, "s": "true initial state", "y": _arr(truth)})
    idx = list(range(n))
    for r in runs:
        r["x"] = idx
    filt = "datum.a === null || (" + _match(("a", "le"), ("b", "ls")) + ")"
    lo, hi = float(truth.min()), float(truth.max())
    pad = 0.5 * (hi - lo)
    panel = lines_panel("heat", filt, "x", "y", ["true initial state", "reconstruction"],
                        ["#555555", _hex("pg")],
                        x={"title": "grid point i", "domain": [0, n - 1]},
                        y={"title": "u(0, xᵢ)", "domain": [_num(lo - pad), _num(hi + pad)]},
                        dashes=[[5, 3], [1, 0]], points=False)
    m_panel = map_panel("heat_map", {"title": "log₁₀ ε (damping)", "min": eps[0], "max": eps[-1],
                                     "step": leps[2]},
                        {"title": "log₁₀ σ (noise)", "min": sig[0], "max": sig[-1], "step": lsig[2]},
                        "le", "ls", "relative error", (1e-3, 1e3))
    sliders = [_slider("le", "log₁₀ ε", eps, -4.0), _slider("ls", "log₁₀ σ", sig, -4.0)]
    title = "'Heat inverse, ε = ' + format(pow(10, le), '.2g') + ', noise σ = ' + format(pow(10, ls), '.2g')"
    return Figure("ch7-heat", sliders, {"runs": runs, "map": cells}, [[panel], [m_panel]], title,
                  meta={"n": n, "nu_T": nu_T})


def two_output_problem(lam: float) -> Problem:
    """The stand-in for chapter 8's two-output fit: a fixed linear model
    ``P(x) = (x₁ + x₂, λ (x₁ − x₂))`` with ``y* = (2, 0)`` (solution ``(1, 1)`` for every λ); its
    singular values are ``√2`` and ``λ√2``."""
    A = torch.tensor([[1.0, 1.0], [lam, -lam]], dtype=torch.float64)
    return Problem(lambda x: x @ A.T, torch.tensor([2.0, 0.0], dtype=torch.float64),
                   name=f"two outputs (λ={lam:g})")


def kappa_figure(steps: int = 30, kap=(-1.0, 1.0, 0.25), ll=(-2.0, 0.0, 0.25), eta: float = 0.5
                 ) -> Figure:
    """Chapter 8 (a stand-in, labelled as such): spectral steps ``Δx = η V Σ^(−κ) Uᵀ (y* − P)``
    (``hig`` with ``kappa``, ``line_search=None``) on :func:`two_output_problem`; κ = −1 is GD's
    direction, ½ HIG, 1 Gauss–Newton. Sliders κ and ``log₁₀ λ``; the loss panel shows each
    output's residual, relative to its start."""
    ks, lams = grid(*kap), grid(*ll)
    x0 = torch.tensor([0.0, -1.0], dtype=torch.float64)
    runs = []
    for b in lams:
        prob = two_output_problem(10 ** b)
        for a in ks:
            run = run_method(prob, x0, "hig", steps, eta, kappa=a, line_search=None)
            row = _run_row(run, "spectral step", a=a, b=b)
            r = (torch.stack([prob.simulate(x) for x in run.xs]) - prob.target).abs()
            del row["L"]
            runs.append(row)
            for i, s in enumerate(("output 1 (size 1)", "output 2 (size λ)")):
                runs.append({"a": a, "b": b, "s": s,
                             "L": _arr(torch.clamp(r[:, i] / r[0, i], min=LOSS_FLOOR))})
    filt = _match(("a", "kappa"), ("b", "ll"))
    x_panel = lines_panel("kappa_x", filt + " && datum.s === 'spectral step'", "x", "y",
                          ["spectral step"], [_hex("hig")],
                          x={"title": "x₁", "domain": [-0.5, 1.5]},
                          y={"title": "x₂", "domain": [-1.5, 1.5]},
                          extra=[_target_layer(1.0, 1.0)], legend=False)
    series = ["output 1 (size 1)", "output 2 (size λ)"]
    l_panel = _loss_panel("kappa_L", filt + " && datum.s !== 'spectral step'", series,
                          [_hex("hig"), "#7f7f7f"], steps, dashes=[[1, 0], [5, 3]])
    l_panel["layer"][0]["encoding"]["y"]["title"] = "|residual| / start"
    sliders = [_slider("kappa", "κ", ks, 0.5), _slider("ll", "log₁₀ λ", lams, -1.0)]
    title = ("'κ = ' + format(kappa, '.2g') + (kappa == -1 ? ' (GD)' : kappa == 0.5 ? ' (HIG)' :"
             " kappa == 1 ? ' (Gauss–Newton)' : '') + ', λ = ' + format(pow(10, ll), '.2g')"
             " + ', η = 0.5'")
    return Figure("ch8-kappa", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"x0": x0.tolist(), "steps": steps, "eta": eta})


#: the book's kernel-free figures: chapter → (glue key, builder)
FIGURES = {2: ("ix-gd", gd_figure), 3: ("ix-newton-bfgs", newton_bfgs_figure), 4: ("ix-lm", lm_figure),
           5: ("ix-comparison", comparison_figure), 6: ("ix-slope", slope_figure),
           7: ("ix-heat", heat_figure), 8: ("ix-kappa", kappa_figure)}


# --------------------------------------------------------------------------------- HTML
_STYLE = (".pgv{margin:.5em 0 1em 0;overflow-x:auto}"
          ".pgv>div{display:flex;flex-direction:column}.pgv .vega-bindings{order:-1}"
          ".pgv .vega-bindings{display:flex;flex-wrap:wrap;gap:.2em 1.5em;margin:.4em 0;"
          "font-size:.9em}.pgv .vega-bind-name{display:inline-block;min-width:6.5em}"
          ".pgv input[type=range]{width:11em;vertical-align:middle}"
          ".pgv-msg{font-size:.9em;color:#555;border:1px dashed #aaa;padding:.4em}")

# Loads the vendored Vega and Vega-Lite once per page, from `<content root>_static/vega/`
# (through RequireJS when a widget page has loaded it), then draws the spec into the div.
_LOADER = r"""(function(){
var id=%(id)s,el=document.getElementById(id),msg=el.querySelector('.pgv-msg');
var spec=JSON.parse(document.getElementById(id+'-spec').textContent);
function root(){var r=document.documentElement.getAttribute('data-content_root');
if(r!==null)return r;var s=document.querySelector('script[src*="_static/"]');
if(s){var u=s.getAttribute('src');return u.slice(0,u.indexOf('_static/'));}return '';}
function load(){if(window.__physgradVega)return window.__physgradVega;
var base=root()+'_static/vega/';
window.__physgradVega=new Promise(function(ok,fail){
if(window.vega&&window.vegaLite)return ok();
if(typeof window.requirejs==='function'&&window.define&&window.define.amd){
window.requirejs.config({paths:{'vega':base+'vega.min','vega-lite':base+'vega-lite.min'}});
window.requirejs(['vega','vega-lite'],function(v,vl){window.vega=v;window.vegaLite=vl;ok();},fail);
return;}
function add(src,next){var s=document.createElement('script');s.src=src;s.onload=next;
s.onerror=function(){fail(new Error('cannot load '+src));};document.head.appendChild(s);}
add(base+'vega.min.js',function(){add(base+'vega-lite.min.js',ok);});});
return window.__physgradVega;}
load().then(function(){var box=document.createElement('div');el.appendChild(box);
var view=new vega.View(vega.parse(vegaLite.compile(spec).spec),
{renderer:'canvas',container:box,hover:false});
(window.physgradViews=window.physgradViews||{})[id]=view;
return view.runAsync().then(function(){msg.style.display='none';el.setAttribute('data-ready','1');});
}).catch(function(e){msg.textContent='The sliders of this figure are drawn by the book\'s '+
'website (no kernel needed); here they could not load ('+e+'). With a kernel, use the live '+
'explorer of notebooks/05-comparison.';});
})();"""


def _html_block(name: str, spec_json: str) -> str:
    fid = "pgv-" + name
    safe = spec_json.replace("</", "<\\/")
    return (f'<style>{_STYLE}</style>\n'
            f'<div class="pgv" id="{fid}" data-figure="{_html.escape(name)}">'
            f'<p class="pgv-msg">Loading the interactive figure (Vega {VEGA_VERSION}, '
            f'Vega-Lite {VEGA_LITE_VERSION}) …</p></div>\n'
            f'<script type="application/json" id="{fid}-spec">{safe}</script>\n'
            f'<script>{_LOADER % {"id": json.dumps(fid)}}</script>')
