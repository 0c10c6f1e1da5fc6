r"""Kernel-free interactive figures: sliders that work on the static website, offline.

The live :class:`physgrad.widgets.Explorer` needs a running kernel. The figures built here need
none: every run is computed by ``physgrad`` in the notebook, over a grid of slider values, and
stored in the page together with declarative `Vega-Lite <https://vega.github.io/vega-lite/>`_
specifications. Range sliders (Vega-Lite parameters) select one grid point, a filter keeps the
runs computed for it, and the browser redraws; no JavaScript is written per figure. The Vega and
Vega-Lite libraries are vendored in ``vendor/vega/`` and the small loader ``assets/sliders.js``
(with ``assets/sliders.css``) draws every figure of a page from the book's ``_static/`` folder,
so the pages work without a network.

The runs come from :mod:`physgrad.runs`, the same headless module the live Explorer uses, so both
show the same numbers.

>>> fig = gd_figure()                    # chapter 2: GD on the toy problem, c × η
>>> fig.rows("runs")[0]["x"][:2]         # the stored trajectory of the first grid point
>>> fig.spec("narrow", "dark")           # one of the four Vega-Lite specs the page chooses from
>>> fig                                  # in a notebook: the HTML that draws it in the book

**Layouts.** Each figure carries a ``wide`` layout (its rows of panels side by side) and a
``narrow`` one (every panel in its own row, colour legends below the plot), each in a light and
a dark colour theme. The loader picks the layout by the width of the figure's box (narrow below
:data:`NARROW_BELOW` CSS pixels), sizes the panels to fill the box, and picks again when the box
is resized or the page switches between light and dark mode (pydata-sphinx-theme's
``data-theme`` on ``<html>``).

**Colours.** Every method keeps its colour from :mod:`physgrad.plotting`, adjusted in lightness
until it reaches a contrast of :data:`MIN_CONTRAST` against the page background of the theme, and
every method family (:func:`physgrad.runs.family`) has its own dash pattern, and each method in
a family its own point shape, so the lines stay apart without colour vision.

Each figure's data is a list of rows, one per run and series: the slider values ``a`` (and
``b``), the series name ``s`` and arrays (``x``, ``y`` for the x-space path, ``L`` for the
relative loss), which the chart flattens after filtering, so a slider move only touches the
selected rows. Floats are stored with 12 significant digits.
"""

from __future__ import annotations

import colorsys
import copy
import html as _html
import json
import math
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib.colors import to_hex, to_rgb

from . import updates
from .plotting import METHOD_LABELS, color
from .problem import Problem
from .problems.heat import heat_1d
from .problems.toy import toy, toy_x0
from .runs import LOSS_FLOOR, METHOD_FACTS, family, is_stable, learning_rate, run_method

__all__ = ["Figure", "grid", "gd_figure", "newton_bfgs_figure", "lm_figure", "comparison_figure",
           "slope_figure", "heat_figure", "kappa_figure", "two_output_problem", "FIGURES",
           "VEGA_VERSION", "VEGA_LITE_VERSION", "NARROW_BELOW", "contrast", "legible"]

VEGA_VERSION = "6.4.0"
VEGA_LITE_VERSION = "6.5.0"
#: significant digits of the stored floats (relative error below 1e-12)
DIGITS = 12
#: default panel size in CSS pixels (the loader rescales panels to the figure's box, keeping
#: the ratio of height to width)
WIDTH, HEIGHT = 260, 220
#: width of the figure's box (CSS pixels) below which the panels are stacked
NARROW_BELOW = 600
#: page backgrounds and text colour of the two themes (pydata-sphinx-theme's light and dark
#: ``--pst-color-background`` and dark ``--pst-color-text-base``)
BACKGROUND = {"light": "#ffffff", "dark": "#14181e"}
DARK_TEXT, DARK_GRID = "#ced6dd", "#48566b"
#: the least contrast of a drawn line against the page background (WCAG 1.4.11, graphics)
MIN_CONTRAST = 3.0
#: dash pattern of each method family (:func:`physgrad.runs.family`)
FAMILY_DASH = {"first-order": [1, 0], "newton": [7, 3], "inverse": [3, 2]}
#: every panel keeps its own colour, dash and shape scales and legends (a legend for several
#: channels of one field is merged only when all of them are independent at every level)
_IND = {"color": "independent", "strokeDash": "independent", "shape": "independent"}
RESOLVE = {"scale": dict(_IND), "legend": dict(_IND)}
#: point shape of the first, second, third … method of a family
SHAPES = ["circle", "square", "triangle-up", "diamond"]


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


# ------------------------------------------------------------------------------ colours
def _luminance(c: str) -> float:
    def lin(u):
        return u / 12.92 if u <= 0.04045 else ((u + 0.055) / 1.055) ** 2.4
    r, g, b = (lin(u) for u in to_rgb(c))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """The WCAG contrast ratio of two colours (1 to 21)."""
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def legible(c: str, background: str, ratio: float = MIN_CONTRAST) -> str:
    """``c`` (any matplotlib colour) as ``#rrggbb``, darkened against a light background or
    lightened against a dark one (hue and saturation kept) until its contrast with
    ``background`` is at least ``ratio``; unchanged when it already is."""
    out = to_hex(c)
    if contrast(out, background) >= ratio:
        return out
    h, l, s = colorsys.rgb_to_hls(*to_rgb(out))
    darker = _luminance(background) > 0.18
    for k in range(1, 101):
        ll = l * (1 - k / 100) if darker else l + (1 - l) * k / 100
        out = to_hex(colorsys.hls_to_rgb(h, ll, s))
        if contrast(out, background) >= ratio:
            return out
    return out


def _hex(method: str) -> str:
    return to_hex(color(method))


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _dash(method: str) -> List[float]:
    return list(FAMILY_DASH[family(method)])


def _shape(method: str) -> str:
    same = [m for m in METHOD_FACTS if family(m) == family(method)]
    return SHAPES[same.index(method) % len(SHAPES)]


def _match(*pairs) -> str:
    return " && ".join(f"abs(datum.{f} - {p}) < 1e-9" for f, p in pairs)


def _recolor(node, background: str):
    """A copy of a spec part with every ``#rrggbb`` string made :func:`legible` against
    ``background`` (named colours such as ``"white"`` or ``"black"`` are kept: they are drawn on
    the figure's own colours, e.g. a heat map)."""
    if isinstance(node, dict):
        return {k: _recolor(v, background) for k, v in node.items()}
    if isinstance(node, list):
        return [_recolor(v, background) for v in node]
    if isinstance(node, str) and len(node) == 7 and node[0] == "#":
        return legible(node, background)
    return node


def _config(theme: str) -> dict:
    legend = {"labelFontSize": 11, "titleFontSize": 12, "orient": "bottom",
              "direction": "horizontal", "columns": 4, "symbolStrokeWidth": 2, "symbolSize": 120}
    cfg = {"font": "sans-serif", "axis": {"labelFontSize": 11, "titleFontSize": 12},
           "legend": legend, "view": {"stroke": "#cccccc"}, "title": {},
           "background": BACKGROUND[theme]}
    if theme == "dark":
        text = {"labelColor": DARK_TEXT, "titleColor": DARK_TEXT}
        cfg["axis"].update(text, domainColor=DARK_TEXT, tickColor=DARK_TEXT, gridColor=DARK_GRID)
        cfg["legend"].update(text)
        cfg["title"]["color"] = DARK_TEXT
        cfg["view"]["stroke"] = DARK_GRID
        cfg["text"] = {"color": DARK_TEXT}
    return cfg


class Figure:
    """One kernel-free figure: its data, its sliders and its panels, rendered as HTML.

    ``sliders``: ``[{"name", "label", "min", "max", "step", "value"}]``; ``datasets``: name →
    rows; ``panels``: rows of panels as the wide layout shows them (each panel a Vega-Lite layer
    spec); ``title``: a Vega expression that shows the current values, or a list of them (one
    line each in the narrow layout, joined by commas in the wide one); ``description``: what
    the figure shows, for screen readers. ``meta`` keeps what a test needs to recompute the
    runs."""

    def __init__(self, name: str, sliders: Sequence[dict], datasets: Dict[str, list],
                 panels: Sequence[Sequence[dict]], title: Union[str, Sequence[str]],
                 meta: Optional[dict] = None, description: str = ""):
        self.name, self.sliders, self.datasets = name, list(sliders), dict(datasets)
        self.panels = [list(r) for r in panels]
        self.title = [title] if isinstance(title, str) else list(title)
        self.meta, self.description = dict(meta or {}), description

    def rows(self, dataset: str = "runs") -> list:
        return self.datasets[dataset]

    def layout(self, layout: str = "wide", theme: str = "light") -> dict:
        """The spec of one layout and theme without its data (``datasets``)."""
        if layout not in ("wide", "narrow") or theme not in BACKGROUND:
            raise ValueError(f"layout is 'wide' or 'narrow' and theme 'light' or 'dark', got "
                             f"{layout!r}, {theme!r}")
        params = [{"name": s["name"], "value": s["value"],
                   "bind": {"input": "range", "min": s["min"], "max": s["max"], "step": s["step"],
                            "name": s["label"] + " "}} for s in self.sliders]
        rows = self.panels if layout == "wide" else [[p] for r in self.panels for p in r]
        rows = copy.deepcopy(rows)
        if layout == "narrow":  # colour legends of heat maps go below the map
            for r in rows:
                for layer in r[0].get("layer", []):
                    leg = layer.get("encoding", {}).get("color", {}).get("legend")
                    if leg and leg.get("orient") == "right":
                        leg.update(orient="bottom", direction="horizontal")
        body = [{"hconcat": r, "resolve": RESOLVE} if len(r) > 1 else r[0] for r in rows]
        parts = self.title
        text = (f"join([{', '.join(parts)}], ', ')" if layout == "wide" else f"[{', '.join(parts)}]")
        spec = {"description": self.description or self.name, "params": params,
                "title": {"text": {"expr": text}, "anchor": "start", "fontSize": 13},
                "config": _config(theme),
                "resolve": RESOLVE,
                "padding": 4, "vconcat": _recolor(body, BACKGROUND[theme])}
        return spec

    def spec(self, layout: str = "wide", theme: str = "light") -> dict:
        """The full Vega-Lite spec (data included) of one layout and theme."""
        return {"datasets": self.datasets, **self.layout(layout, theme)}

    def to_json(self) -> str:
        """What the page stores: the data once and the four layouts (wide/narrow × light/dark)."""
        doc = {"narrowBelow": NARROW_BELOW, "datasets": self.datasets,
               "layouts": {f"{lay}-{th}": self.layout(lay, th)
                           for lay in ("wide", "narrow") for th in ("light", "dark")}}
        return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)

    def data_bytes(self) -> int:
        return len(json.dumps(self.datasets, separators=(",", ":")).encode())

    def html(self) -> str:
        return _html_block(self.name, self.to_json(), self.description)

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.datasets.values())
        return f"<interactive figure {self.name!r}: {len(self.sliders)} sliders, {n} rows>"


# --------------------------------------------------------------------------------- panels
def lines_panel(name: str, filt: str, fx: str, fy: str, series: Sequence[str],
                colors: Sequence[str], x: dict, y: dict, dashes: Optional[Sequence] = None,
                dataset: str = "runs", points: bool = True, legend: bool = True,
                width: int = WIDTH, height: int = HEIGHT, extra: Sequence[dict] = (),
                shapes: Optional[Sequence[str]] = None) -> dict:
    """Paths of the selected rows: ``fx``/``fy`` are array fields, flattened after ``filt``.

    ``x``, ``y``: ``{"title", "domain", "type"}`` (``type`` "linear" or "log"); ``dashes`` and
    ``shapes``: a dash pattern and a point shape per series (shown in the same legend as the
    colours)."""
    def axis(d, f):
        log = d.get("type") == "log"
        scale = {"domain": d["domain"], "type": d.get("type", "linear"), "nice": False}
        if not log:
            scale["zero"] = False
        return {"field": f, "type": "quantitative", "title": d["title"], "scale": scale,
                "axis": {"format": ".0e"} if log else {}}
    leg = {"symbolType": "stroke"} if legend else None
    enc = {"x": axis(x, fx), "y": axis(y, fy), "order": {"field": "k", "type": "quantitative"},
           "color": {"field": "s", "type": "nominal", "title": None,
                     "scale": {"domain": list(series), "range": list(colors)}, "legend": leg}}
    if dashes is not None:
        enc["strokeDash"] = {"field": "s", "type": "nominal", "title": None, "legend": leg,
                             "scale": {"domain": list(series), "range": [list(d) for d in dashes]}}
    mark = {"type": "line", "clip": True, "strokeWidth": 2}
    layer = [{"name": name, "mark": mark, "encoding": enc}]
    if points:  # the points in a layer of their own: the legend then shows the dash patterns
        penc = {k: enc[k] for k in ("x", "y")}
        penc["color"] = enc["color"]  # the same legend (one merged legend, no conflict)
        pts = {"name": name + "_pts", "mark": {"type": "point", "clip": True, "size": 24,
                                               "filled": True, "opacity": 1}, "encoding": penc}
        if shapes is not None:  # a field of its own, so that the legend keeps line symbols
            pick = " : ".join(f"datum.s === {json.dumps(s_)} ? '{sh}'"
                              for s_, sh in zip(series, shapes)) + " : 'circle'"
            pts["transform"] = [{"calculate": pick, "as": "shape"}]
            penc["shape"] = {"field": "shape", "type": "nominal", "scale": None, "legend": None}
        layer.append(pts)
    fields = [fx, fy] if fx != fy else [fx]
    transform = [{"filter": filt}, {"flatten": fields},
                 {"window": [{"op": "row_number", "as": "k1"}], "groupby": ["s"]},
                 {"calculate": "datum.k1 - 1", "as": "k"}]
    layer += list(extra)
    return {"width": width, "height": height, "data": {"name": dataset},
            "transform": transform, "layer": layer}


def _method_panel(name, filt, fx, fy, methods, **kw) -> dict:
    """:func:`lines_panel` for series that are methods: the book's colour, the family's dash
    pattern and a point shape per method."""
    return lines_panel(name, filt, fx, fy, [_label(m) for m in methods],
                       [_hex(m) for m in methods], dashes=[_dash(m) for m in methods],
                       shapes=[_shape(m) for m in methods], **kw)


def map_panel(name: str, a: dict, b: dict, pa: str, pb: str, v_title: str, v_domain,
              extra: Sequence[dict] = (), width: int = WIDTH, height: int = HEIGHT) -> dict:
    """A heat map of ``v`` over the slider grid (dataset ``map``: rows ``a``, ``b``, ``v``) with
    the current selection marked; ``extra`` layers are drawn between the map and the mark."""
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
                                "zero": False}, "axis": {"tickMinStep": 2 * da}},
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
    mark = {"data": {"name": "map"}, "transform": [{"filter": _match(("a", pa), ("b", pb))}],
            "mark": {"type": "square", "size": 140, "filled": False, "color": "#e41a1c",
                     "strokeWidth": 2.5},
            "encoding": {"x": {"field": "a", "type": "quantitative"},
                         "y": {"field": "b", "type": "quantitative"}}}
    return {"width": width, "height": height, "layer": [rect, *extra, mark]}


def _target_layer(x: float, y: float) -> dict:
    return {"data": {"values": [{"x": x, "y": y}]},
            "mark": {"type": "point", "shape": "cross", "size": 90, "color": "#000000",
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
    row["L"] = _arr(run.relative_losses())
    return row


def _loss_panel(name, filt, series, colors, steps, dashes=None, legend=True, shapes=None):
    p = lines_panel(name, filt, "L", "L", series, colors, x={**LOSS_X, "domain": [0, steps]},
                    y=LOSS_Y, dashes=dashes, legend=legend, shapes=shapes)
    p["transform"].append({"calculate": "datum.k", "as": "it"})
    p["layer"][0]["encoding"]["x"]["field"] = "it"
    return p


def _method_loss_panel(name, filt, methods, steps, legend=False):
    return _loss_panel(name, filt, [_label(m) for m in methods], [_hex(m) for m in methods],
                       steps, dashes=[_dash(m) for m in methods],
                       shapes=[_shape(m) for m in methods], legend=legend)


XSPACE = {"x": {"title": "x₁", "domain": [-0.5, 3.5]}, "y": {"title": "x₂", "domain": [-0.5, 3.5]}}
LOSS_X = {"title": "iteration k", "domain": [0, 30]}
LOSS_Y = {"title": "relative loss L/L₀", "domain": [1e-16, 1e4], "type": "log"}


# ------------------------------------------------------------------------- the figures
def _outcome(run, steps: int) -> str:
    """What the stored run did, in words: stable (finite, ending below its start) or not."""
    rel = run.relative_losses()
    if is_stable(run, steps):
        return f"stable: L/L₀ = {rel[-1].item():.2g} after {run.nit} steps"
    if not run.ok:
        return f"diverges: the loss is no longer finite at step {run.nit + 1}"
    return f"diverges: L/L₀ = {rel[-1].item():.2g} after {run.nit} steps"


BOUND_LEGEND = {"orient": "top", "direction": "vertical", "columns": 1,
                "symbolStrokeColor": "#444444", "symbolStrokeWidth": 2, "labelLimit": 400}


def gd_figure(steps: int = 30, lc=(-1.0, 1.0, 0.25), le=(-4.0, 0.0, 0.25)) -> Figure:
    """Chapter 2: GD on the toy problem ``P = c (x₁, x₂²)`` from ``(3, 3)``, sliders ``log₁₀ c``
    and ``log₁₀ η``; a map of GD's final ``L/L₀`` over the grid. Each run is marked stable or
    diverging from its stored losses (:func:`physgrad.runs.is_stable`); the map crosses out the
    diverging runs and draws the bound from ``(3, 3)``, ``η = 1/(9c²)`` (the first step's ``x₂``
    factor is ``1 − 18ηc²``), and the bound of the ``x₁`` part alone, ``η = 2/c²``."""
    cs, es = grid(*lc), grid(*le)
    runs, cells = [], []
    for a in cs:
        for b in es:
            run = run_method(toy(10 ** a), toy_x0(), "gd", steps, 10 ** b)
            row = _run_row(run, "GD", a=a, b=b)
            row["st"] = _outcome(run, steps)
            runs.append(row)
            cells.append({"a": a, "b": b, "v": _num(max(row["L"][-1], LOSS_FLOOR)),
                          "d": not is_stable(run, steps)})
    fine = grid(cs[0], cs[-1], 0.05)
    b_start, b_x1 = "η = 1/(9c²): bound from (3, 3)", "η = 2/c²: bound of x₁ alone"
    bounds = ([{"a": a, "b": _num(-math.log10(9) - 2 * a), "s": b_start} for a in fine]
              + [{"a": a, "b": _num(math.log10(2) - 2 * a), "s": b_x1} for a in fine])
    filt = _match(("a", "lc"), ("b", "le"))
    x_panel = _method_panel("gd_x", filt, "x", "y", ["gd"], **XSPACE,
                            extra=[_target_layer(0.0, 0.0)], legend=False)
    l_panel = _method_loss_panel("gd_L", filt, ["gd"], steps)
    l_panel["layer"].append({"data": {"name": "runs"}, "transform": [{"filter": filt}],
                             "mark": {"type": "text", "align": "left", "baseline": "top",
                                      "fontSize": 12},
                             "encoding": {"x": {"value": 6}, "y": {"value": 6},
                                          "text": {"field": "st"}}})
    line = {"x": {"field": "a", "type": "quantitative"}, "y": {"field": "b", "type": "quantitative"},
            "order": {"field": "a", "type": "quantitative"}}
    dash = {"field": "s", "type": "nominal", "title": None,
            "scale": {"domain": [b_start, b_x1], "range": [[1, 0], [5, 3]]}}
    halo = {"data": {"name": "bounds"}, "mark": {"type": "line", "clip": True, "color": "black",
                                                 "strokeWidth": 4.5},
            "encoding": {**line, "strokeDash": {**dash, "legend": BOUND_LEGEND}}}
    bound = {"data": {"name": "bounds"}, "mark": {"type": "line", "clip": True, "color": "white",
                                                  "strokeWidth": 2},
             "encoding": {**line, "strokeDash": {**dash, "legend": BOUND_LEGEND}}}
    crosses = {"data": {"name": "map"}, "transform": [{"filter": "datum.d"}],
               "mark": {"type": "point", "shape": "cross", "angle": 45, "size": 36,
                        "filled": True, "color": "black", "opacity": 0.8},
               "encoding": {"x": {"field": "a", "type": "quantitative"},
                            "y": {"field": "b", "type": "quantitative"}}}
    m_panel = map_panel("gd_map", {"title": "log₁₀ c", "min": cs[0], "max": cs[-1], "step": lc[2]},
                        {"title": "log₁₀ η", "min": es[0], "max": es[-1], "step": le[2]},
                        "lc", "le", f"L/L₀ after {steps} steps (× diverges)", (1e-4, 1e2),
                        extra=[crosses, halo, bound])
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("le", "log₁₀ η", es, -2.0)]
    title = ["'GD, c = ' + format(pow(10, lc), '.3g')", "'η = ' + format(pow(10, le), '.3g')"]
    return Figure("ch2-gd", sliders, {"runs": runs, "map": cells, "bounds": bounds},
                  [[x_panel, l_panel], [m_panel]], title,
                  meta={"problem": "toy", "x0": [3.0, 3.0], "steps": steps,
                        "series": {"GD": ("gd", {})}},
                  description="Gradient descent on the toy problem for the chosen scale c and "
                              "step size η: its path in x-space, its loss per iteration, and a map "
                              "of the final loss over all c and η with the stability bounds.")


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
    x_panel = _method_panel("nb_x", filt, "x", "y", list(methods), **XSPACE,
                            extra=[_target_layer(0.0, 0.0)])
    l_panel = _method_loss_panel("nb_L", filt, list(methods), steps)
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("eta", "η", es, 0.5)]
    title = ["'Newton and BFGS (pure), c = ' + format(pow(10, lc), '.3g')",
             "'η = ' + format(eta, '.2g')"]
    return Figure("ch3-newton-bfgs", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"problem": "toy", "x0": [3.0, 3.0], "steps": steps,
                        "series": {_label(m): (m, o) for m, o in methods.items()}},
                  description="Pure Newton and pure BFGS on the toy problem for the chosen scale c "
                              "and step size η: paths in x-space and loss per iteration.")


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
    filt = "abs(datum.b - ls) < 1e-9 && (datum.a === null || abs(datum.a - ll) < 1e-9)"
    series = ["IG, damped", "IG, λ = 0"]
    colors = [_hex("ig"), "#7f7f7f"]
    dashes = [[1, 0], [5, 3]]
    x_panel = lines_panel("lm_x", filt, "x", "y", series, colors,
                          x={"title": "x₁", "domain": [-0.5, 3.5]},
                          y={"title": "x₂", "domain": [-1.0, 6.0]}, dashes=dashes,
                          extra=[_target_layer(0.0, 1.0)])
    l_panel = _loss_panel("lm_L", filt, series, colors, steps, dashes=dashes, legend=False)
    sliders = [_slider("ll", "log₁₀ λ", lams, -2.0), _slider("ls", "log₁₀ x₂(0)", ss, -1.5)]
    title = ["'IG near x₂ = 0: λ = ' + format(pow(10, ll), '.2g')",
             "'start x₂ = ' + format(pow(10, ls), '.3g') + ', η = 1'"]
    return Figure("ch4-lm", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"problem": "toy target (0, 1)", "steps": steps, "eta": eta},
                  description="Inverse-gradient steps near the singular point x₂ = 0, damped "
                              "with the chosen λ and undamped (dashed): paths and loss per "
                              "iteration.")


COMPARISON_METHODS = {"gd": {}, "adam": {}, "bfgs": {"line_search": "wolfe"},
                      "newton": {"line_search": None}, "ig": {}, "pg": {},
                      "hig": {"line_search": None}}


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
            lr = learning_rate(m)
            for b in (les if lr else es):
                step = 10 ** b if lr else b
                runs.append(_run_row(run_method(prob, x0, m, steps, step, **opt), _label(m),
                                     a=a, b=b, lr=lr))
    filt = "abs(datum.a - lc) < 1e-9 && abs(datum.b - (datum.lr ? le : eta)) < 1e-9"
    x_panel = _method_panel("cmp_x", filt, "x", "y", list(chosen),
                            x={"title": "x₁", "domain": list(xlim)},
                            y={"title": "x₂", "domain": list(ylim)},
                            extra=[_target_layer(*solution)])
    l_panel = _method_loss_panel("cmp_L", filt, list(chosen), steps)
    sliders = [_slider("lc", "log₁₀ c", cs, 0.0), _slider("le", "log₁₀ η (GD, Adam)", les, -2.0),
               _slider("eta", "η (the others)", es, 0.5)]
    title = ["'c = ' + format(pow(10, lc), '.3g')",
             "'η = ' + format(pow(10, le), '.2g') + ' (GD, Adam)'",
             "'η = ' + format(eta, '.2g') + ' (others)'"]
    return Figure(name, sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"problem": "toy", "x0": x0.tolist(), "steps": steps,
                        "series": {_label(m): (m, o) for m, o in chosen.items()}},
                  description="Every method on one problem for the chosen scale c and step sizes "
                              "η: paths in x-space and loss per iteration.")


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
    title = ["'One step from (3, ' + format(s0, '.3g') + ')'", "'η = ' + format(eta, '.2g')"]
    return Figure("ch6-slope", sliders, {"runs": runs}, [[panel]], title, meta={"points": points},
                  description="The local slope along one physical-gradient step, with the slope "
                              "inverse gradients use and the path average physical gradients "
                              "use, for the chosen η and start.")


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
    title = ["'Heat inverse, ε = ' + format(pow(10, le), '.2g')",
             "'noise σ = ' + format(pow(10, ls), '.2g')"]
    return Figure("ch7-heat", sliders, {"runs": runs, "map": cells}, [[panel, m_panel]], title,
                  meta={"n": n, "nu_T": nu_T},
                  description="The initial state of the heat equation reconstructed with the "
                              "chosen damping ε from data with noise σ, against the truth, and a "
                              "map of the relative error over all ε and σ.")


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
    title = ["'κ = ' + format(kappa, '.2g') + (kappa == -1 ? ' (GD)' : kappa == 0.5 ? ' (HIG)' :"
             " kappa == 1 ? ' (Gauss–Newton)' : '')",
             "'λ = ' + format(pow(10, ll), '.2g') + ', η = 0.5'"]
    return Figure("ch8-kappa", sliders, {"runs": runs}, [[x_panel, l_panel]], title,
                  meta={"x0": x0.tolist(), "steps": steps, "eta": eta},
                  description="Spectral steps with exponent κ on a two-output linear model whose "
                              "second output is scaled by λ: the path and each output's residual "
                              "per iteration.")


#: the book's kernel-free figures: chapter → (glue key, builder)
FIGURES = {2: ("ix-gd", gd_figure), 3: ("ix-newton-bfgs", newton_bfgs_figure), 4: ("ix-lm", lm_figure),
           5: ("ix-comparison", comparison_figure), 6: ("ix-slope", slope_figure),
           7: ("ix-heat", heat_figure), 8: ("ix-kappa", kappa_figure)}


# --------------------------------------------------------------------------------- HTML
# The page keeps the data and the layouts in a JSON block; a few lines load the book's
# `_static/sliders.js` once per page (from the content root Sphinx writes into <html>), which
# loads the vendored Vega and draws every figure of the page. Outside the book (a notebook
# without the website's `_static/`) the message stays and says where the figure works.
_BOOT = r"""(function(){var id=%(id)s,q=window.__pgvQueue=window.__pgvQueue||[];
if(window.physgradSliders){window.physgradSliders.draw(id);return;}q.push(id);
if(window.__pgvBoot)return;window.__pgvBoot=1;
var r=document.documentElement.getAttribute('data-content_root');if(r===null){
var t=document.querySelector('script[src*="_static/"]');r=t?t.getAttribute('src').split('_static/')[0]:'';}
var s=document.createElement('script');s.src=r+'_static/sliders.js';s.onerror=function(){
q.forEach(function(i){var m=document.querySelector('#'+i+' .pgv-msg');if(m)m.textContent=
'The sliders of this figure are drawn by the book\'s website (no kernel needed); here they '+
'could not load. With a kernel, use the live explorer of notebooks/05-comparison.';});};
document.head.appendChild(s);})();"""


def _html_block(name: str, spec_json: str, description: str = "") -> str:
    fid = "pgv-" + name
    safe = spec_json.replace("</", "<\\/")
    label = _html.escape(description or name)
    return (f'<div class="pgv" id="{fid}" data-figure="{_html.escape(name)}" role="group" '
            f'aria-label="{label}"><p class="pgv-msg">Loading the interactive figure '
            f'(Vega {VEGA_VERSION}, Vega-Lite {VEGA_LITE_VERSION}) …</p></div>\n'
            f'<script type="application/json" id="{fid}-spec">{safe}</script>\n'
            f'<script>{_BOOT % {"id": json.dumps(fid)}}</script>')
