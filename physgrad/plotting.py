r"""Figures of the book: one style, a fixed colour per method, and the standard figures.

Importing this module applies the book's figure style (:func:`use_style`): figures sized for the
~700 px text column, drawn as 2× PNG (sharp on HiDPI screens, shown at their 1× size), with text
of at least 11 px on a desktop screen. Every method has one colour (:data:`METHOD_COLORS`) in
every chapter; repeated runs of one method get shades and line styles (:func:`styles`).
Multi-panel figures use :func:`panels` (at most two panels per row) and :func:`shared_legend`;
:func:`one_column` makes a copy with the panels stacked, which the website shows on narrow
screens instead of the side-by-side figure.

Every drawing function draws into a given matplotlib ``Axes`` (or makes one) and returns what it
drew, so notebooks and :mod:`physgrad.widgets` can compose and update them.
"""

from __future__ import annotations

import colorsys
from typing import Iterable, Optional, Sequence

import matplotlib as mpl
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import torch

from .optimize import Result
from .problem import Problem

__all__ = ["METHOD_COLORS", "METHOD_LABELS", "ALIASES", "STYLE", "COLUMN_WIDTH", "use_style",
           "color", "styles", "label", "panels", "shared_legend", "one_column", "PHONE_WIDTH",
           "glue_figure",
           "loss_grid", "plot_contours",
           "plot_trajectories", "plot_y_trajectories", "plot_losses", "compare"]

#: One colour per method, the same in every chapter. Families share a region of hue
#: (first-order optimizers blue/cyan, Newton and quasi-Newton green/brown, inverse updates
#: orange/red/purple), and pairs that appear together (IG and PG; GN, HIG and SIP) differ in
#: lightness as well as hue, so they stay apart for colour-blind readers and in greyscale.
#: Unknown names are drawn grey.
METHOD_COLORS = {
    # first-order optimizers
    "gd": "#1f63b4",
    "sgd": "#5aa9e6",
    "adam": "#12a4b8",
    "adagrad": "#2a2a8c",
    "rmsprop": "#8e9be0",
    "adadelta": "#0b6e6e",
    # Newton and quasi-Newton
    "newton": "#2ca02c",
    "bfgs": "#8a6d00",
    "lbfgs": "#8c564b",
    "scipy-lbfgsb": "#c98d6b",
    "torch-lbfgs": "#4d2d1f",
    # inverse updates
    "ig": "#f28e1c",
    "ig-auto": "#f2c14e",
    "gn": "#9c5b00",
    "pg": "#c8102e",
    "hig": "#7b3fa0",
    "sip": "#d45fa6",
    # learning from data
    "supervised": "#5f5f5f",
}
#: Other spellings of a method; ``lm`` is the damped (Levenberg–Marquardt) IG step ``ig-auto``.
ALIASES = {"lm": "ig-auto", "l-bfgs": "lbfgs", "l-bfgs-b": "scipy-lbfgsb"}
METHOD_LABELS = {
    "gd": "GD", "sgd": "SGD", "adam": "Adam", "adagrad": "AdaGrad", "rmsprop": "RMSprop",
    "adadelta": "AdaDelta", "newton": "Newton", "bfgs": "BFGS", "lbfgs": "L-BFGS",
    "scipy-lbfgsb": "L-BFGS-B (scipy)", "torch-lbfgs": "L-BFGS (torch)", "ig": "IG",
    "ig-auto": "IG (LM-damped)", "gn": "GN", "pg": "PG", "hig": "HIG", "sip": "SIP",
    "supervised": "supervised",
}

#: Width of a full-column figure in inches. Figures are shown at 100 px per inch, and the text
#: column of the book is about 770 px wide, so a 7-inch figure is shown at its natural size.
COLUMN_WIDTH = 7.0

#: The book's matplotlib settings (applied by :func:`use_style`). With ``figure.dpi`` 100 and 2×
#: PNG output a figure is displayed at 100 px per inch: 9.5 pt labels are 13 px, the smallest
#: text (8.5 pt ticks and legends) is 12 px on a desktop column.
STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "font.size": 9.5,
    "axes.titlesize": 10,
    "axes.labelsize": 9.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8.5,
    "legend.title_fontsize": 8.5,
    "legend.framealpha": 0.85,
    "figure.titlesize": 10.5,
    "lines.linewidth": 1.7,
    "lines.markersize": 4,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    # lines drawn without an explicit colour: the Okabe–Ito palette (colour-blind safe)
    "axes.prop_cycle": mpl.cycler(color=["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7",
                                         "#56B4E9", "#F0E442", "#000000"]),
}

#: Inline figure format in a Jupyter kernel: PNG at twice the pixel density, displayed at 1×
#: (the image carries its 1× width and height, which the book's HTML uses).
INLINE_FORMAT = "retina"


def use_style(inline_format: Optional[str] = INLINE_FORMAT) -> None:
    """Apply the book's figure style (:data:`STYLE`) and, inside a Jupyter kernel, the 2× PNG
    inline format. Runs when :mod:`physgrad.plotting` is imported; call it again after
    ``plt.style.use`` or ``plt.rcdefaults`` reset the settings."""
    mpl.rcParams.update(STYLE)
    if inline_format is None:
        return
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with every Jupyter kernel
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        return  # a plain Python process or terminal IPython: no inline figures
    from matplotlib_inline.backend_inline import set_matplotlib_formats

    set_matplotlib_formats(inline_format)


def _canonical(method: str) -> str:
    return ALIASES.get(method, method)


def color(method: str) -> str:
    """The book's colour for a method (grey for unknown names)."""
    return METHOD_COLORS.get(_canonical(method), "0.45")


_LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
#: lightness change of repeated runs: 0 keeps the method's colour, < 0 darkens, > 0 lightens
_SHADES = [0.0, -0.4, 0.4, -0.65, 0.6]


def _shade(col: str, amount: float) -> str:
    r, g, b = mcolors.to_rgb(col)
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    light = light * (1 + amount) if amount < 0 else light + (1 - light) * amount
    return mcolors.to_hex(colorsys.hls_to_rgb(h, min(max(light, 0.0), 1.0), s))


def styles(method: str, k: int = 0) -> dict:
    """Line properties of the ``k``-th run of ``method`` in one figure, for ``ax.plot(...,
    **styles(method, k))``. Run 0 is the method's colour with a solid line; later runs get a
    darker or lighter shade of that colour and another line style, so that two runs of one
    method never look alike (five distinct looks, then ``k`` wraps around)."""
    k = int(k) % len(_LINESTYLES)
    return {"color": _shade(color(method), _SHADES[k]), "linestyle": _LINESTYLES[k]}


def panels(n: int, height: float = 2.8, ncols: Optional[int] = None, width: float = COLUMN_WIDTH,
           **kwargs):
    """A figure of ``n`` panels that stays legible on a phone: at most two panels per row
    (unless ``ncols`` says otherwise), the full column width, ``height`` inches per row and a
    constrained layout. With an odd ``n`` the last panel spans the bottom row. Returns
    ``(fig, axes)``, ``axes`` a list of ``n`` Axes; other keyword arguments go to
    ``plt.figure``."""
    if n < 1:
        raise ValueError("n must be at least 1")
    ncols = ncols or min(n, 2)
    nrows = -(-n // ncols)
    fig = plt.figure(figsize=(width, height * nrows), layout="constrained", **kwargs)
    grid = fig.add_gridspec(nrows, ncols)
    axes = []
    for i in range(n):
        r, c = divmod(i, ncols)
        alone = i == n - 1 and n % ncols != 0
        axes.append(fig.add_subplot(grid[r, c:] if alone else grid[r, c]))
    return fig, axes


#: Width in inches of a figure for a phone's text column (about 360 CSS px at 1×).
PHONE_WIDTH = 3.6


def _panel_axes(fig) -> list:
    """The figure's panels (Axes placed by a grid, not colour bars or insets), in reading
    order: by grid row, then column."""
    axes = [ax for ax in fig.axes if ax.get_subplotspec() is not None]
    return sorted(axes, key=lambda ax: (ax.get_subplotspec().rowspan.start,
                                        ax.get_subplotspec().colspan.start))


def one_column(fig, width: float = PHONE_WIDTH, min_height: float = 1.9):
    """A copy of ``fig`` with its panels stacked in one column of ``width`` inches, for narrow
    screens; ``None`` if ``fig`` has no two panels side by side (nothing to stack).

    Each panel keeps its aspect ratio (but is at least ``min_height`` inches tall), its content,
    labels and legend; colour bars follow their panel, and a legend of the whole figure is
    rearranged into at most two columns. The copy is made by pickling, so ``fig``
    itself is not changed. The figure needs a constrained layout (as from :func:`panels`)."""
    specs = [ax.get_subplotspec() for ax in _panel_axes(fig)]
    if not any(s.colspan.start > 0 for s in specs):
        return None
    import pickle  # noqa: PLC0415 (only needed here)

    new = pickle.loads(pickle.dumps(fig))
    axes = _panel_axes(new)
    fig.canvas.draw()  # positions after the original layout
    heights = []
    for ax in _panel_axes(fig):
        box = ax.get_position()
        aspect = (box.height * fig.get_figheight()) / (box.width * fig.get_figwidth())
        heights.append(max(min_height, width * aspect))
    grid = new.add_gridspec(len(axes), 1, height_ratios=heights)
    for i, ax in enumerate(axes):
        ax.set_subplotspec(grid[i, 0])
    for legend in new.legends:  # a figure-wide legend in one row would set the width
        legend.set_ncols(min(2, len(legend.get_texts())))
    new.set_size_inches(width, sum(heights) + 0.25 * len(axes), forward=False)
    return new


def glue_figure(key: str, fig, display: bool = False) -> Optional[str]:
    """Store ``fig`` under ``key`` for a chapter page (myst-nb ``glue``) and close it. A figure
    with panels side by side also stores its :func:`one_column` copy under ``key + "-narrow"``
    (the chapter's ``{glued-figure}`` shows it on phones via ``:narrow:``); returns that key, or
    ``None``. Needs ``myst_nb`` (the book's toolchain), imported only here."""
    from myst_nb import glue  # noqa: PLC0415 (a book dependency, not a library one)

    glue(key, fig, display=display)
    narrow = one_column(fig)
    narrow_key = None
    if narrow is not None:
        narrow_key = key + "-narrow"
        glue(narrow_key, narrow, display=False)
        plt.close(narrow)
    plt.close(fig)
    return narrow_key


def shared_legend(fig, axes, loc: str = "outside lower center", ncol: Optional[int] = None,
                  **kwargs):
    """One legend for several panels, outside all axes so that it covers no data: the distinct
    labels of ``axes`` in drawing order (the panels' own legends are removed). Meant for a
    figure with a constrained layout, e.g. from :func:`panels`."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    ncol = ncol or max(1, min(len(labels), 4))
    return fig.legend(handles, labels, loc=loc, ncol=ncol, **kwargs)


def _run_styles(results: Sequence[Result]) -> list:
    """Per run, ``styles(method, k)`` with ``k`` the number of earlier runs of that method."""
    seen: dict = {}
    out = []
    for r in results:
        k = seen.get(r.method, 0)
        seen[r.method] = k + 1
        out.append(styles(r.method, k))
    return out


def label(res: Result) -> str:
    """Legend text, e.g. ``"IG (η=0.5)"``."""
    return f"{METHOD_LABELS.get(res.method, res.method)} (η={res.step_size:g})"


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if torch.is_tensor(t) else np.asarray(t, dtype=float)


def loss_grid(prob: Problem, xlim: Sequence[float], ylim: Sequence[float], n: int = 120,
              dtype=torch.float64):
    r"""Evaluate ``L`` on an ``n × n`` grid of a 2-parameter problem (vectorized with vmap).
    Returns ``(X1, X2, L)`` as numpy arrays."""
    x1 = torch.linspace(xlim[0], xlim[1], n, dtype=dtype)
    x2 = torch.linspace(ylim[0], ylim[1], n, dtype=dtype)
    X1, X2 = torch.meshgrid(x1, x2, indexing="xy")
    pts = torch.stack([X1.reshape(-1), X2.reshape(-1)], dim=-1)
    L = torch.func.vmap(prob.loss)(pts).reshape(n, n)
    return _np(X1), _np(X2), _np(L)


def plot_contours(ax, prob: Problem, xlim, ylim, n: int = 120, levels: int = 25, log: bool = True):
    """Filled contours of the loss (log-spaced levels by default) with axis labels ``x_1, x_2``."""
    X1, X2, L = loss_grid(prob, xlim, ylim, n)
    if log:
        lo = max(L[L > 0].min() if (L > 0).any() else 1e-12, L.max() * 1e-8)
        lv = np.geomspace(lo, L.max(), levels)
        cs = ax.contourf(X1, X2, np.maximum(L, lo), levels=lv, cmap="Greys_r",
                         norm=mcolors.LogNorm(), alpha=0.55)
    else:
        cs = ax.contourf(X1, X2, L, levels=levels, cmap="Greys_r", alpha=0.55)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return cs


def plot_trajectories(ax, results: Iterable[Result], prob: Optional[Problem] = None, xlim=None, ylim=None,
                      marker: str = "o", legend: bool = True):
    """Trajectories of 2-parameter runs in x-space, over the loss contours when ``prob`` is given."""
    results = list(results)
    if prob is not None and xlim is not None and ylim is not None:
        plot_contours(ax, prob, xlim, ylim)
    lines = []
    for r, st in zip(results, _run_styles(results)):
        xs = _np(r.xs.reshape(r.xs.shape[0], -1))
        (ln,) = ax.plot(xs[:, 0], xs[:, 1], marker=marker, ms=3, lw=1.5, label=label(r), **st)
        lines.append(ln)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if legend and results:
        ax.legend(loc="best")
    return lines


def plot_y_trajectories(ax, results: Iterable[Result], prob: Problem, target: bool = True,
                        marker: str = "o", legend: bool = True):
    """The same runs seen in y-space: ``y_k = P(x_k)`` for 2-output problems, with the target."""
    results = list(results)
    lines = []
    for r, st in zip(results, _run_styles(results)):
        ys = _np(torch.func.vmap(prob.forward)(r.xs).reshape(r.xs.shape[0], -1))
        (ln,) = ax.plot(ys[:, 0], ys[:, 1], marker=marker, ms=3, lw=1.5, label=label(r), **st)
        lines.append(ln)
    if target:
        t = _np(prob.target.reshape(-1))
        ax.plot([t[0]], [t[1]], "k*", ms=12, label="target $y^*$")
    ax.set_xlabel("$y_1$")
    ax.set_ylabel("$y_2$")
    if legend:
        ax.legend(loc="best")
    return lines


def plot_losses(ax, results: Iterable[Result], x: str = "iteration", relative: bool = False,
                legend: bool = True):
    """Loss per iteration (or per second of wall time, ``x="time"``) on a log scale."""
    if x not in ("iteration", "time"):
        raise ValueError("x must be 'iteration' or 'time'")
    results = list(results)
    lines = []
    for r, st in zip(results, _run_styles(results)):
        L = _np(r.rel_losses if relative else r.losses)
        t = np.arange(len(L)) if x == "iteration" else _np(r.times)
        L = np.maximum(L, np.finfo(float).tiny)  # exact zeros cannot be drawn on a log axis
        (ln,) = ax.semilogy(t, L, lw=1.8, label=label(r), **st)
        lines.append(ln)
    ax.set_xlabel("iteration" if x == "iteration" else "wall-clock time [s]")
    ax.set_ylabel("relative loss $L/L_0$" if relative else "loss $L$")
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(loc="best")
    return lines


def compare(prob: Problem, results: Sequence[Result], xlim=(-0.5, 3.5), ylim=(-0.5, 3.5),
            y_space: bool = True, figsize=None):
    """The book's standard comparison figure for a 2-parameter problem: x-space trajectories over
    loss contours and the y-space paths (optional) side by side, the loss per iteration (log
    scale) below them across the column, and one legend for all panels under the figure. Two
    rows keep the text legible on a phone. Returns ``(fig, axes)``: x-space, [y-space,] loss."""
    n = 3 if y_space else 2
    width = COLUMN_WIDTH if figsize is None else figsize[0]
    height = (6.2 if y_space else 3.2) if figsize is None else figsize[1]
    fig, axes = panels(n, height=height / (2 if y_space else 1), width=width)
    plot_trajectories(axes[0], results, prob, xlim, ylim, legend=False)
    axes[0].set_title("x-space")
    if y_space:
        plot_y_trajectories(axes[1], results, prob, legend=False)
        axes[1].set_title("y-space")
    plot_losses(axes[-1], results, legend=False)
    axes[-1].set_title("loss per iteration")
    shared_legend(fig, axes)
    return fig, axes

use_style()
