r"""Interactive explorers: drag the scale ``c`` of a problem and the step size ``η`` of each method
and watch the runs change — the book's central claim, that gradient descent's update scales with
the problem while inverted updates do not, made tangible (chapter 5, notebook ``05-comparison``).

>>> ex = Explorer(lambda c: toy(c), {"gd": 0.01, "newton": 0.5, "ig": 0.5, "pg": 0.5},
...               x0=toy_x0(), steps=20)
>>> ex                    # in a notebook: the sliders and the figure (needs a running kernel)
>>> ex.animation()        # an HTML/JavaScript player over c (no kernel needed)

**How it is drawn.** The figure is a plain :class:`matplotlib.figure.Figure` rendered by Agg,
never a pyplot figure, so it works with any matplotlib backend (``inline`` included; ``ipympl``
is not needed). It is built once. A slider move re-runs only the methods whose inputs changed,
moves the existing ``Line2D`` objects with ``set_data``, redraws the static part (loss contours,
axes, ticks) only when ``c`` or the length of the iteration axis changed (cached, blitting),
renders the figure to PNG and swaps the bytes of one :class:`ipywidgets.Image`. The image is
replaced in place, so nothing flickers and no figure piles up below the cell; this works the same
in JupyterLab, Notebook 7, VS Code and on Binder, with nothing but ``ipywidgets`` and
``matplotlib``. Sliders recompute when released (``continuous_update=False``), so a slow remote
kernel never lags behind the mouse.

On the static website there is no kernel: the sliders saved with the page would be a frozen
snapshot that does nothing, so the book hides the Explorer's output there (cell tag
``remove-output``) and shows a kernel-free figure instead: ``physgrad.interactive`` computes
the runs over a grid of slider values with the same :func:`physgrad.runs.run_method` and the
same problem factory, and the browser draws them with vendored Vega-Lite. :meth:`Explorer.animation` (a
``to_jshtml`` player over one sweep) remains for notebooks outside the book.

The computing logic needs no browser: ``ex.set(c=10, eta={"gd": 1e-3})`` recomputes and
``ex.lines["gd"].get_xdata()`` returns what is drawn.
"""

from __future__ import annotations

import hashlib
import html as _html
import io
import math
import re
import time
from collections import OrderedDict
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullLocator

from .plotting import METHOD_LABELS, color
from .problem import Problem
from .runs import (LOSS_FLOOR, METHOD_FACTS, Run, RunCache, learning_rate, loss_grid,  # noqa: F401
                   max_stable_step, run_method, y_path)

# ``Run``, ``run_method``, ``max_stable_step`` and ``LOSS_FLOOR`` live in :mod:`physgrad.runs` and
# stay importable from here for older notebooks.
__all__ = ["Explorer", "AnimationHTML", "offline_jshtml"]

Tensor = torch.Tensor

#: default η slider ranges: a learning rate (its right value depends on the units), and a
#: fraction of the way to the target
LEARNING_RATE_RANGE = (1e-8, 1e2)
FRACTION_RANGE = (1e-2, 2.0)


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


class Explorer:
    r"""Sliders for the scale ``c`` of a problem and the step size ``η`` of each method.

    Parameters
    ----------
    make_problem:
        ``c -> Problem``; the problem at scale ``c`` (e.g. ``lambda c: toy(c)`` or
        ``base.scaled``). ``x`` must have one or two entries, and so must ``P(x)``.
    methods:
        ``{method: initial η}``, e.g. ``{"gd": 0.01, "newton": 0.5, "ig": 0.5, "pg": 0.5}``.
    x0:
        Start of every run.
    steps:
        Initial number of steps (the ``steps`` slider goes from 1 to ``max_steps``).
    c:
        Initial scale; ``c_range`` the range of its (logarithmic) slider.
    xlim, ylim:
        The window of the x-space panel (``ylim`` is ignored for one parameter).
    eta_range:
        ``{method: (lo, hi)}`` for the η sliders; defaults: 1e-8…1e2 for ``gd``/``adam``
        (a learning rate, whose right value depends on the units), 0.01…2 for the other methods
        (a fraction of the way to the target).
    options:
        ``{method: {option: value}}`` passed on to :func:`physgrad.optimize`.
    continuous_update:
        Recompute while a slider is dragged (``True``) or when it is released (default: a
        remote kernel, e.g. on Binder, then never falls behind the mouse).
    widgets:
        Build the ipywidgets controls (default). ``False`` gives the headless object only.

    Notes
    -----
    What a test or a notebook can read after :meth:`set` or a slider move: ``c``, ``eta`` (a
    dict), ``steps`` and ``active`` (the shown methods) are the current state; ``runs`` maps each
    shown method to its run (``xs`` the iterates, ``losses``, ``message``, ``ok``); ``lines``,
    ``y_lines`` and ``loss_lines`` map each method to its ``Line2D`` in the x-space, y-space and
    loss panels; ``fig`` and ``axes`` are the figure and its three axes; ``last_update_s`` is the
    wall time of the last :meth:`update` (recomputation and PNG rendering) in seconds.
    """

    def __init__(self, make_problem: Callable[[float], Problem],
                 methods: Optional[Mapping[str, float]] = None,
                 x0: Optional[Tensor] = None, steps: int = 20, c: float = 1.0,
                 c_range: Sequence[float] = (1e-3, 1e3), xlim: Sequence[float] = (-0.5, 3.5),
                 ylim: Sequence[float] = (-0.5, 3.5),
                 eta_range: Optional[Mapping[str, Sequence[float]]] = None,
                 options: Optional[Mapping[str, dict]] = None, max_steps: int = 100,
                 title: str = "", x_names: Sequence[str] = ("$x_1$", "$x_2$"),
                 y_names: Sequence[str] = ("$y_1$", "$y_2$"), figsize: Sequence[float] = (12.0, 3.7),
                 dpi: int = 80, grid: int = 90, continuous_update: bool = False, widgets: bool = True):
        methods = dict({"gd": 0.01, "newton": 0.5, "ig": 0.5, "pg": 0.5} if methods is None else methods)
        unknown = [m for m in methods if m not in METHOD_FACTS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHOD_FACTS)}")
        if x0 is None:
            raise ValueError("x0 (the start of every run) is required")
        if not (c_range[0] > 0 and c_range[1] > c_range[0]):
            raise ValueError(f"c_range must be (lo, hi) with 0 < lo < hi, got {tuple(c_range)}")
        self.make_problem = make_problem
        self.x0 = x0.detach()
        self.methods = tuple(methods)
        self.c_range = (float(c_range[0]), float(c_range[1]))
        self.xlim, self.ylim = tuple(map(float, xlim)), tuple(map(float, ylim))
        self.options = {m: dict((options or {}).get(m, {})) for m in self.methods}
        self.max_steps = int(max_steps)
        self.title = title
        self.x_names, self.y_names = tuple(x_names), tuple(y_names)
        self.dpi, self.grid = int(dpi), int(grid)
        self.eta_range = {m: tuple((eta_range or {}).get(
            m, LEARNING_RATE_RANGE if learning_rate(m) else FRACTION_RANGE)) for m in self.methods}

        # state
        self.c = float(c)
        self.eta = {m: float(v) for m, v in methods.items()}
        self.steps = int(steps)
        self.active = tuple(self.methods)
        self._check_state()

        prob = self.problem
        self.n = self.x0.numel()
        self.m = prob.target.numel()
        if self.n not in (1, 2) or self.m not in (1, 2):
            raise ValueError(f"the explorer draws problems with 1 or 2 parameters and 1 or 2 outputs; "
                             f"this one has {self.n} and {self.m}")

        self.runs: Dict[str, Run] = {}
        self._run_cache = RunCache(maxsize=256)
        self._grid_cache: "OrderedDict[float, tuple]" = OrderedDict()
        self._drawn_c: Optional[float] = None
        self._contours = None
        self.last_update_s = float("nan")
        self._build_figure(figsize)
        self._holding = False
        self.image = None
        self.box = None
        if widgets:
            self._build_widgets(continuous_update)
        self.update()

    # ------------------------------------------------------------------ state
    @property
    def problem(self) -> Problem:
        """The problem at the current ``c``."""
        return self.make_problem(self.c)

    def _check_state(self):
        if not (self.c > 0 and math.isfinite(self.c)):
            raise ValueError(f"c must be positive and finite, got {self.c}")
        for m, v in self.eta.items():
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"η for {m!r} must be positive and finite, got {v}")
        if not 1 <= self.steps <= self.max_steps:
            raise ValueError(f"steps must lie in 1..{self.max_steps}, got {self.steps}")
        bad = [m for m in self.active if m not in self.methods]
        if bad:
            raise ValueError(f"method(s) {bad} are not part of this explorer {self.methods}")

    def set(self, c: Optional[float] = None, eta: Optional[Mapping[str, float]] = None,
            steps: Optional[int] = None, methods: Optional[Iterable[str]] = None) -> "Explorer":
        """Change any of the state (as the sliders do), then redraw once. Returns ``self``."""
        old = (self.c, dict(self.eta), self.steps, self.active)
        if c is not None:
            self.c = float(c)
        if eta is not None:
            unknown = [m for m in eta if m not in self.methods]
            if unknown:
                raise ValueError(f"no η slider for {unknown}; methods are {self.methods}")
            self.eta.update({m: float(v) for m, v in eta.items()})
        if steps is not None:
            self.steps = int(steps)
        if methods is not None:
            self.active = tuple(m for m in self.methods if m in set(methods))
        try:
            self._check_state()
        except ValueError:
            self.c, self.eta, self.steps, self.active = old
            raise
        self._sync_widgets()
        return self.update()

    # ------------------------------------------------------------------ computing
    def _run(self, method: str) -> Run:
        """The run of ``method`` at the current state, from the run cache (a shorter run is a
        prefix of a longer one, so the steps slider slices a cached run and extends it without
        recomputing for the methods without internal state; see :class:`physgrad.runs.RunCache`)."""
        return self._run_cache.run(self.problem, self.x0, method, self.steps, self.eta[method],
                                   key=self.c, **self.options[method])

    def _grid(self):
        """Loss (and P) on a grid of the x-space window at the current c, cached per c."""
        g = self._grid_cache.get(self.c)
        if g is None:
            g = loss_grid(self.problem, self.x0, self.xlim, self.ylim, self.grid)
            self._grid_cache[self.c] = g
            if len(self._grid_cache) > 64:
                self._grid_cache.popitem(last=False)
        return g

    # ------------------------------------------------------------------ drawing
    def _build_figure(self, figsize):
        self.fig = Figure(figsize=tuple(figsize), dpi=self.dpi, layout="constrained")
        FigureCanvasAgg(self.fig)
        ax_x, ax_y, ax_l = self.fig.subplots(1, 3)
        self.axes = (ax_x, ax_y, ax_l)
        self.lines, self.y_lines, self.loss_lines = {}, {}, {}
        k = len(self.methods)
        for i, m in enumerate(self.methods):
            # later methods are drawn thinner on top of earlier ones: coinciding paths (Newton, IG
            # and PG on a linear problem) stay visible as nested lines
            lw, ms = 1.2 + 1.6 * (k - 1 - i) / max(k - 1, 1), 3 + 3 * (k - 1 - i) / max(k - 1, 1)
            kw = dict(color=color(m), lw=lw, marker="o", ms=ms, label=_label(m), animated=True)
            (self.lines[m],) = ax_x.plot([], [], **kw)
            (self.y_lines[m],) = ax_y.plot([], [], **kw)
            (self.loss_lines[m],) = ax_l.semilogy([], [], color=color(m), lw=lw + 0.4, label=_label(m),
                                                  animated=True)
        ax_x.set_title("x-space")
        ax_x.set_xlim(*self.xlim)
        ax_x.set_xlabel(self.x_names[0])
        if self.n == 2:
            ax_x.set_ylim(*self.ylim)
            ax_x.set_ylabel(self.x_names[1])
        else:
            ax_x.set_ylabel("loss $L$")
            ax_x.set_yscale("log")
            (self._loss_curve,) = ax_x.plot([], [], color="0.5", lw=1.2, zorder=0, label="$L(x)$")
        ax_y.set_title("y-space")
        if self.m == 2:
            ax_y.set_xlabel(self.y_names[0])
            ax_y.set_ylabel(self.y_names[1])
        else:
            ax_y.set_xlabel("iteration")
            ax_y.set_ylabel(self.y_names[0])
        (self._target_marker,) = ax_y.plot([], [], "k*" if self.m == 2 else "k:", ms=12,
                                           label="target $y^*$", zorder=5)
        ax_y.legend(handles=[self._target_marker], loc="upper left", fontsize="small")
        ax_l.set_title("loss per iteration")
        ax_l.set_xlabel("iteration")
        ax_l.set_ylabel("relative loss $L/L_0$")
        ax_l.set_ylim(LOSS_FLOOR * 10, 1e4)
        ax_l.yaxis.set_major_locator(LogLocator(base=10.0, numticks=6))
        ax_l.yaxis.set_minor_locator(NullLocator())
        ax_l.grid(True, which="major", alpha=0.3)
        for ax in (ax_y,) if self.m == 2 else ():
            ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        self._bg_cache: "OrderedDict[tuple, object]" = OrderedDict()
        self._layout_frozen = False
        self._static = False
        self._legends = []

    def _draw_background(self, prob: Problem):
        """Loss contours (2 parameters) or the loss curve (1 parameter), and the y-space window."""
        X1, X2, L, Y = self._grid()
        ax_x, ax_y, _ = self.axes
        if self.n == 2:
            if self._contours is not None:
                self._contours.remove()
            pos = L[L > 0]
            lo = max(pos.min() if pos.size else 1e-300, L.max() * 1e-8)
            levels = np.geomspace(lo, L.max(), 20)
            self._contours = ax_x.contourf(X1, X2, np.maximum(L, lo), levels=levels, cmap="Greys_r",
                                           norm=LogNorm(), alpha=0.55, zorder=0)
        else:
            Lp = np.maximum(L, L.max() * 1e-14)
            self._loss_curve.set_data(X1, Lp)
            ax_x.set_ylim(Lp.min() / 3, Lp.max() * 3)
        t = _np(prob.target.reshape(-1))
        if self.m == 2:
            self._target_marker.set_data([t[0]], [t[1]])
            (lo0, hi0), (lo1, hi1) = self._pad(Y[:, 0], t[0]), self._pad(Y[:, 1], t[1])
            ax_y.set_xlim(lo0, hi0)
            ax_y.set_ylim(lo1, hi1)
        else:
            ax_y.set_ylim(*self._pad(Y[:, 0], t[0]))
        self._drawn_c = self.c

    @staticmethod
    def _pad(v: np.ndarray, t: float):
        lo, hi = min(v.min(), t), max(v.max(), t)
        d = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        return lo - d, hi + d

    def update(self) -> "Explorer":
        """Recompute what changed and redraw in place; returns ``self``."""
        t0 = time.perf_counter()
        prob = self.problem
        if self._drawn_c != self.c:
            self._draw_background(prob)
        ax_x, ax_y, ax_l = self.axes
        status = []
        for m in self.methods:
            show = m in self.active
            for ln in (self.lines[m], self.y_lines[m], self.loss_lines[m]):
                ln.set_visible(show)
            if not show:
                self.runs.pop(m, None)
                continue
            run = self._run(m)
            self.runs[m] = run
            xs = _np(run.xs.reshape(run.xs.shape[0], -1))
            ys = y_path(prob, run.xs)
            L = _np(run.losses)
            rel = L / L[0] if L[0] > 0 else np.ones_like(L)
            rel = np.maximum(rel, LOSS_FLOOR)
            it = np.arange(len(L))
            if self.n == 2:
                self.lines[m].set_data(xs[:, 0], xs[:, 1])
            else:
                self.lines[m].set_data(xs[:, 0], np.maximum(L, 1e-300))
            if self.m == 2:
                self.y_lines[m].set_data(ys[:, 0], ys[:, 1])
            else:
                self.y_lines[m].set_data(it, ys[:, 0])
            self.loss_lines[m].set_data(it, rel)
            note = "" if run.nit == self.steps else (" diverged" if not run.ok or "diverged" in run.message
                                                      else f" stopped at {run.nit}")
            lab = f"{_label(m)} (η={self.eta[m]:.3g}){note}"
            for ln in (self.lines[m], self.y_lines[m], self.loss_lines[m]):
                ln.set_label(lab)
            status.append((m, run))
        if self.m == 1:
            self._target_marker.set_data([0, self.steps], [_np(prob.target.reshape(-1))[0]] * 2)
            ax_y.set_xlim(-0.5, self._steps_axis() + 0.5)
        ax_l.set_xlim(0, self._steps_axis())
        # one legend for the three panels (same colours), in the loss panel's lower left corner,
        # where curves rarely go (low loss in the first iterations); a fixed place is also much
        # cheaper than loc="best"
        for leg in self._legends:
            leg.remove()
        self._legends = []
        handles = [self.loss_lines[m] for m in self.active]
        if handles:
            leg = ax_l.legend(handles=handles, loc="lower left", fontsize="small")
            leg.set_animated(not self._static)
            self._legends.append(leg)
        head = f"{self.title} — " if self.title else ""
        self.fig.suptitle(f"{head}c = {self.c:.3g}", fontsize="medium")
        self._set_status(status)
        if self.image is not None:
            self.image.value = self.png()
        self.last_update_s = time.perf_counter() - t0
        return self

    def _steps_axis(self) -> int:
        """Length of the iteration axes: ``steps`` rounded up to a multiple of 5 (of 10 above 20),
        so that most moves of the steps slider reuse the cached background."""
        q = 5 if self.steps <= 20 else 10
        return int(math.ceil(self.steps / q) * q)

    def png(self) -> bytes:
        """The figure as PNG bytes, drawn with blitting: the static part (contours, axes, ticks,
        title) is drawn once per ``c`` and length of the iteration axis, and cached; each call
        restores it and draws only the trajectories and legends on top."""
        canvas = self.fig.canvas
        key = (self.c, self._steps_axis(), tuple(self.fig.get_size_inches()), self.fig.dpi)
        bg = self._bg_cache.get(key)
        if bg is None:
            canvas.draw()  # animated artists (trajectories, legends) are left out
            if self.fig.get_layout_engine() is not None and not self._layout_frozen:
                # lay out once, then keep the axes where they are: a constrained-layout pass on
                # every redraw costs more than the drawing itself
                self.fig.set_layout_engine("none")
                self._layout_frozen = True
            bg = canvas.copy_from_bbox(self.fig.bbox)
            self._bg_cache[key] = bg
            if len(self._bg_cache) > 16:
                self._bg_cache.popitem(last=False)
        else:
            canvas.restore_region(bg)
        for ax in self.axes:
            for ln in ax.get_lines():
                if ln.get_animated() and ln.get_visible():
                    ax.draw_artist(ln)
        for leg in self._legends:
            leg.axes.draw_artist(leg)
        buf = io.BytesIO()
        PILImage.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        return buf.getvalue()

    def _static_figure(self, flag: bool):
        """Make the trajectories ordinary artists (``flag=True``) so that ``savefig`` and
        animations include them, or blitted ones again (``False``)."""
        for a in [*self.lines.values(), *self.y_lines.values(), *self.loss_lines.values(), *self._legends]:
            a.set_animated(not flag)
        self._static = flag

    def savefig(self, *args, **kwargs):
        """``Figure.savefig`` of the current state (trajectories included)."""
        self._static_figure(True)
        try:
            return self.fig.savefig(*args, **kwargs)
        finally:
            self._static_figure(False)

    def summary(self) -> str:
        """One line per shown method: η, steps taken, final relative loss, why it stopped."""
        out = [f"c = {self.c:.3g}"]
        for m, run in self.runs.items():
            L = run.losses
            rel = (L[-1] / L[0]).item() if L[0].item() > 0 else 1.0
            out.append(f"{_label(m):>6}: η={self.eta[m]:.3g}, {run.nit} steps, L/L0 = {rel:.3g}"
                       + ("" if run.ok and run.nit == self.steps else f"  [{run.message}]"))
        return "\n".join(out)

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self, continuous_update: bool):
        import ipywidgets as W

        lay = W.Layout(width="420px")
        st = {"description_width": "70px"}
        lg = lambda v, lohi, desc: W.FloatLogSlider(  # noqa: E731
            value=v, base=10, min=math.log10(lohi[0]), max=math.log10(lohi[1]), step=0.05,
            description=desc, readout_format=".3g", continuous_update=continuous_update,
            layout=lay, style=st)
        self.c_slider = lg(self.c, self.c_range, "scale c")
        self.eta_sliders = {m: lg(self.eta[m], self.eta_range[m], f"η {_label(m)}") for m in self.methods}
        self.steps_slider = W.IntSlider(value=self.steps, min=1, max=self.max_steps, description="steps",
                                        continuous_update=continuous_update, layout=lay, style=st)
        self.method_select = W.SelectMultiple(options=[(_label(m), m) for m in self.methods],
                                              value=self.active, rows=len(self.methods),
                                              description="methods", style=st,
                                              layout=W.Layout(width="200px"))
        self.status = W.HTML(layout=W.Layout(width="100%"))
        width = f"{self.fig.get_figwidth() * self.dpi:.0f}px"
        self.image = W.Image(format="png", layout=W.Layout(width="100%", max_width=width))
        for w in (self.c_slider, self.steps_slider, self.method_select, *self.eta_sliders.values()):
            w.observe(self._on_widget, names="value")
        left = W.VBox([self.c_slider, self.steps_slider, *self.eta_sliders.values()])
        self.box = W.VBox([W.HBox([left, self.method_select]), self.image, self.status])

    def _sync_widgets(self):
        if self.box is None:
            return
        self._holding = True
        try:
            self.c_slider.value = self.c
            self.steps_slider.value = self.steps
            self.method_select.value = self.active
            for m, s in self.eta_sliders.items():
                s.value = self.eta[m]
        finally:
            self._holding = False

    def _on_widget(self, change):
        if self._holding:
            return
        self.c = float(self.c_slider.value)
        self.steps = int(self.steps_slider.value)
        self.active = tuple(m for m in self.methods if m in set(self.method_select.value))
        self.eta = {m: float(s.value) for m, s in self.eta_sliders.items()}
        try:
            self._check_state()
        except ValueError as e:  # never let a callback raise into the widget machinery
            self.status.value = f"<b>{_html.escape(str(e))}</b>"
            return
        self.update()

    def _set_status(self, status):
        if self.box is None:
            return
        bits = []
        for m, run in status:
            if run.ok and run.nit == self.steps:
                continue
            bits.append(f"<b>{_label(m)}</b>: {_html.escape(run.message)}")
        self.status.value = "<br>".join(bits)

    def _repr_mimebundle_(self, **kwargs):
        text = (f"Explorer({self.title or self.problem.name!s}: "
                f"{', '.join(_label(m) for m in self.methods)}; c={self.c:.3g}, steps={self.steps})")
        if self.box is None:
            return {"text/plain": text}
        bundle = self.box._repr_mimebundle_(**kwargs) or {}
        if isinstance(bundle, tuple):
            bundle = bundle[0]
        bundle = dict(bundle)
        # the default text/plain of a widget lists every child's state; keep it short and stable
        bundle["text/plain"] = text
        return bundle

    # ------------------------------------------------------------------ static fallback
    def animation(self, sweep: str = "c", values: Optional[Sequence[float]] = None, frames: int = 7,
                  dpi: int = 70, fps: float = 1.5,
                  figsize: Optional[Sequence[float]] = None) -> "AnimationHTML":
        """A kernel-free player for the static website: frames of a sweep over ``c``
        (``sweep="c"``) or over one method's step size (``sweep="eta:gd"``), with a JavaScript
        slider. The other settings stay as they are now. Frames are PNGs at ``dpi``; the HTML
        loads nothing from the network (see :func:`offline_jshtml`)."""
        from matplotlib.animation import FuncAnimation

        if sweep == "c":
            key = None
            lo, hi = self.c_range
        elif sweep.startswith("eta:") and sweep[4:] in self.methods:
            key = sweep[4:]
            lo, hi = self.eta_range[key]
        else:
            raise ValueError(f"sweep must be 'c' or 'eta:<method>' with a method of {self.methods}, "
                             f"got {sweep!r}")
        vals = [float(v) for v in (np.geomspace(lo, hi, frames) if values is None else values)]
        if not vals:
            raise ValueError("an animation needs at least one value")
        saved = (self.c, dict(self.eta), self.steps, self.active)
        image, self.image = self.image, None  # no PNG for the widget while rendering frames
        old_size, old_dpi = self.fig.get_size_inches().copy(), self.fig.dpi

        def frame(i):
            if key is None:
                self.c = vals[i]
            else:
                self.eta[key] = vals[i]
            self._check_state()
            self.update()
            return []

        try:
            if figsize is not None:
                self.fig.set_size_inches(*figsize)
            self.fig.set_dpi(dpi)
            self._static_figure(True)
            anim = FuncAnimation(self.fig, frame, frames=len(vals), interval=1000.0 / fps, repeat=False,
                                 blit=False, cache_frame_data=False)
            raw = anim.to_jshtml(fps=fps, default_mode="once")
            # the frames are saved; never start its timer on a later draw of the live figure
            for cid in (getattr(anim, "_first_draw_id", None), getattr(anim, "_close_id", None)):
                if cid is not None:
                    self.fig.canvas.mpl_disconnect(cid)
        finally:
            self._static_figure(False)
            self.fig.set_dpi(old_dpi)
            self.fig.set_size_inches(*old_size)
            self.c, self.eta, self.steps, self.active = saved
            self.image = image
            self.update()
        what = "c" if key is None else f"η of {_label(key)}"
        caption = f"Slider: {what} = " + ", ".join(f"{v:.3g}" for v in vals)
        return AnimationHTML(offline_jshtml(raw, caption=caption), len(vals), what, vals)


class AnimationHTML:
    """Self-contained HTML of an animation (displayed as HTML in a notebook or a built page)."""

    def __init__(self, html: str, frames: int, what: str, values: Sequence[float]):
        self.html, self.frames, self.what, self.values = html, frames, what, list(values)

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"AnimationHTML({self.frames} frames over {self.what}, {len(self.html) / 1e3:.0f} kB)"


_ICONS = {
    "fa fa-minus": "&minus;", "fa fa-fast-backward": "|&#9664;", "fa fa-step-backward": "&#9664;|",
    "fa fa-play fa-flip-horizontal": "&#9665;", "fa fa-pause": "&#10074;&#10074;", "fa fa-play": "&#9655;",
    "fa fa-step-forward": "|&#9654;", "fa fa-fast-forward": "&#9654;|", "fa fa-plus": "+",
}
_COUNTER = [0]


def offline_jshtml(raw: str, caption: str = "") -> str:
    """Make matplotlib's ``to_jshtml`` output self-contained and reproducible.

    * drops the Font Awesome stylesheet link (the only network resource) and replaces the
      button icons by plain Unicode symbols;
    * replaces the random ``uuid4`` element id by a hash of the frames (plus a counter, so two
      identical animations on one page still get distinct ids): executing a notebook twice
      gives the same HTML;
    * lets the frame image shrink to the page width.
    """
    out = re.sub(r"<link\b[^>]*href=\"https?://[^\"]*\"[^>]*>", "", raw)
    for cls, sym in _ICONS.items():
        out = out.replace(f'<i class="{cls}"></i>', f'<span aria-hidden="true">{sym}</span>')
    ids = set(re.findall(r"_anim_img([0-9a-f]{32})", out))
    for uid in ids:
        _COUNTER[0] += 1
        stable = hashlib.sha1(out.replace(uid, "").encode()).hexdigest()[:16] + f"{_COUNTER[0]:03d}"
        out = out.replace(uid, stable)
    out = out.replace('<img id="_anim_img', '<img style="max-width:100%;height:auto" alt="animation frame" '
                                            'id="_anim_img')
    if re.search(r"(src|href)=\"(https?:)?//", out) or "fa fa-" in out:
        raise RuntimeError("the animation HTML still refers to an external resource")
    if caption:
        out += f'\n<p class="anim-caption" style="font-size:small">{_html.escape(caption)}</p>'
    return out
