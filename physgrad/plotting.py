r"""Figures of the book: loss contours with trajectories, y-space paths, loss curves.

Every function draws into a given matplotlib ``Axes`` (or makes one) and returns what it drew,
so notebooks and :mod:`physgrad.widgets` can compose and update them. Colours are fixed per
method so a method looks the same in every chapter.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .optimize import Result
from .problem import Problem

__all__ = ["METHOD_COLORS", "METHOD_LABELS", "color", "label", "loss_grid", "plot_contours",
           "plot_trajectories", "plot_y_trajectories", "plot_losses", "compare"]

METHOD_COLORS = {
    "gd": "#1f77b4", "adam": "#17becf", "newton": "#2ca02c", "bfgs": "#bcbd22", "lbfgs": "#8c564b",
    "ig": "#ff7f0e", "pg": "#d62728", "hig": "#9467bd",
}
METHOD_LABELS = {
    "gd": "GD", "adam": "Adam", "newton": "Newton", "bfgs": "BFGS", "lbfgs": "L-BFGS",
    "ig": "IG", "pg": "PG", "hig": "HIG",
}


def color(method: str) -> str:
    """The book's colour for a method (grey for unknown names)."""
    return METHOD_COLORS.get(method, "0.4")


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
                         norm=__import__("matplotlib.colors").colors.LogNorm(), alpha=0.55)
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
    for r in results:
        xs = _np(r.xs.reshape(r.xs.shape[0], -1))
        (ln,) = ax.plot(xs[:, 0], xs[:, 1], marker=marker, ms=3, lw=1.5, color=color(r.method), label=label(r))
        lines.append(ln)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if legend and results:
        ax.legend(loc="best", fontsize="small")
    return lines


def plot_y_trajectories(ax, results: Iterable[Result], prob: Problem, target: bool = True,
                        marker: str = "o", legend: bool = True):
    """The same runs seen in y-space: ``y_k = P(x_k)`` for 2-output problems, with the target."""
    results = list(results)
    lines = []
    for r in results:
        ys = _np(torch.func.vmap(prob.forward)(r.xs).reshape(r.xs.shape[0], -1))
        (ln,) = ax.plot(ys[:, 0], ys[:, 1], marker=marker, ms=3, lw=1.5, color=color(r.method), label=label(r))
        lines.append(ln)
    if target:
        t = _np(prob.target.reshape(-1))
        ax.plot([t[0]], [t[1]], "k*", ms=12, label="target $y^*$")
    ax.set_xlabel("$y_1$")
    ax.set_ylabel("$y_2$")
    if legend:
        ax.legend(loc="best", fontsize="small")
    return lines


def plot_losses(ax, results: Iterable[Result], x: str = "iteration", relative: bool = False,
                legend: bool = True):
    """Loss per iteration (or per second of wall time, ``x="time"``) on a log scale."""
    if x not in ("iteration", "time"):
        raise ValueError("x must be 'iteration' or 'time'")
    lines = []
    for r in results:
        L = _np(r.rel_losses if relative else r.losses)
        t = np.arange(len(L)) if x == "iteration" else _np(r.times)
        L = np.maximum(L, np.finfo(float).tiny)  # exact zeros cannot be drawn on a log axis
        (ln,) = ax.semilogy(t, L, lw=1.8, color=color(r.method), label=label(r))
        lines.append(ln)
    ax.set_xlabel("iteration" if x == "iteration" else "wall-clock time [s]")
    ax.set_ylabel("relative loss $L/L_0$" if relative else "loss $L$")
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize="small")
    return lines


def compare(prob: Problem, results: Sequence[Result], xlim=(-0.5, 3.5), ylim=(-0.5, 3.5),
            y_space: bool = True, figsize=(13, 4)):
    """The book's standard comparison figure for a 2-parameter problem: x-space trajectories over
    loss contours, the y-space paths (optional), and the loss per iteration (log scale)."""
    ncols = 3 if y_space else 2
    fig, axes = plt.subplots(1, ncols, figsize=figsize, constrained_layout=True)
    plot_trajectories(axes[0], results, prob, xlim, ylim)
    axes[0].set_title("x-space")
    if y_space:
        plot_y_trajectories(axes[1], results, prob)
        axes[1].set_title("y-space")
    plot_losses(axes[-1], results)
    axes[-1].set_title("loss per iteration")
    return fig, axes
