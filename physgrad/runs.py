r"""Headless runs for the explorers: one run per slider setting, cached, cut and continued.

Both ways the book lets a reader move sliders read their numbers from here: the live
:class:`physgrad.widgets.Explorer` (matplotlib, a running kernel) and the kernel-free figures of
``physgrad.interactive`` (runs over a grid of slider values, drawn by the browser). Nothing in
this module draws, so both, and the tests, can use it without matplotlib or ipywidgets.

>>> run = run_method(toy(1.0), toy_x0(), "gd", 30, 0.05)
>>> run.nit, run.ok, is_stable(run, 30)
(30, True, True)
>>> cache = RunCache()
>>> cache.run(toy(1.0), toy_x0(), "gd", 10, 0.05, key=1.0).nit   # later: a prefix of this run
10

* :class:`Run` and :func:`run_method`: :func:`physgrad.optimize` with divergence and failures
  turned into a truncated run (what a slider setting shows);
* :class:`RunCache`: runs per ``(problem key, method, η, options)``; a shorter run is a prefix of
  a longer one, and a longer one continues a cached run for the methods without internal state;
* :func:`loss_grid` and :func:`y_path`: the loss over a window of x-space and the path in y-space;
* :func:`is_stable` and :func:`max_stable_step`: whether a run stayed finite and ended below its
  starting loss, and the largest such step size (bisection);
* :data:`METHOD_FACTS`: what the explorers need to know about each method.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .errors import PhysgradError
from .optimize import optimize
from .problem import Problem, squared_norm
from .updates import METHODS

__all__ = ["LOSS_FLOOR", "MethodFacts", "METHOD_FACTS", "learning_rate", "extendable", "family",
           "Run", "run_method", "RunCache", "is_stable", "max_stable_step", "loss_grid", "y_path"]

Tensor = torch.Tensor

#: floor of the relative loss drawn on a log axis (exact zeros cannot be drawn)
LOSS_FLOOR = 1e-16


class MethodFacts(NamedTuple):
    """What the explorers need to know about a method, read from its declaration in
    :data:`physgrad.updates.METHODS` (the one place that says what a method is).

    ``learning_rate``: its η is a learning rate, whose right value depends on the units (a wide,
    problem-dependent slider range), not a fraction of the way to the target. ``extendable``: a
    run with default options can be continued from its last iterate (no internal state).
    ``family``: ``"first-order"``, ``"newton"`` (Newton and quasi-Newton) or ``"inverse"``
    (inverted updates); the figures give each family its own dash pattern."""

    learning_rate: bool
    extendable: bool
    family: str


#: :data:`physgrad.updates.METHODS`, as the explorers read it.
METHOD_FACTS = {name: MethodFacts(m.learning_rate, m.extendable({}), m.family) for name, m in METHODS.items()}


def _facts(method: str) -> MethodFacts:
    try:
        return METHOD_FACTS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHOD_FACTS)}") from None


def learning_rate(method: str) -> bool:
    """Whether ``method``'s step size is a learning rate (see :class:`MethodFacts`)."""
    return _facts(method).learning_rate


def family(method: str) -> str:
    """``"first-order"``, ``"newton"`` or ``"inverse"`` (see :class:`MethodFacts`)."""
    return _facts(method).family


def extendable(method: str, options: Optional[dict] = None) -> bool:
    """Whether a run of ``method`` with ``options`` can be continued from its last iterate."""
    _facts(method)
    return METHODS[method].extendable(options or {})


class Run:
    """A possibly truncated run, as the explorers draw it: ``xs`` the iterates (x0 first),
    ``losses`` the loss at each, ``message`` why it ended, ``ok`` false when it diverged or
    failed, ``final`` true when it ended before its step limit (diverged, failed, converged),
    so that running it longer gives nothing new."""

    def __init__(self, xs: Tensor, losses: Tensor, message: str, ok: bool, final: bool = False):
        self.xs, self.losses, self.message, self.ok, self.final = xs, losses, message, ok, final

    @property
    def nit(self) -> int:
        return len(self.losses) - 1

    def relative_losses(self) -> Tensor:
        """``L_k / L_0`` in float64, at least :data:`LOSS_FLOOR` (all ones when ``L_0 = 0``)."""
        L = self.losses.detach().double()
        rel = L / L[0] if L[0].item() > 0 else torch.ones_like(L)
        return torch.clamp(rel, min=LOSS_FLOOR)

    def prefix(self, steps: int) -> "Run":
        """The first ``steps`` steps (the run itself when it is not longer)."""
        if steps >= self.nit:
            return self
        return Run(self.xs[: steps + 1], self.losses[: steps + 1],
                   _limit_message(steps, self.losses[: steps + 1]), True)

    def extend(self, more: "Run") -> "Run":
        """This run followed by ``more``, a run started at this run's last iterate."""
        msg = more.message
        m = re.match(r"step (\d+):(.*)", msg, re.S)
        if m:  # renumber the continuation's steps
            msg = f"step {int(m.group(1)) + self.nit}:{m.group(2)}"
        losses = torch.cat([self.losses, more.losses[1:]])
        if msg.startswith("reached the step limit"):
            msg = _limit_message(self.nit + more.nit, losses)
        return Run(torch.cat([self.xs, more.xs[1:]]), losses, msg, more.ok, more.final)


def _limit_message(steps: int, losses: Tensor) -> str:
    """The first sentence of :func:`physgrad.optimize`'s message for a run that reached its step
    limit (a prefix or an extension of a cached run gets the message a fresh run would get)."""
    L0, Lf = losses[0].item(), losses[-1].item()
    tail = f" before any stopping criterion was met, at L/L0 = {Lf / L0:.3g}" if L0 > 0 else ""
    return f"reached the step limit ({steps}){tail}"


def run_method(prob: Problem, x0: Tensor, method: str, steps: int, step_size: float,
               **options) -> Run:
    """:func:`physgrad.optimize` with divergence and failures turned into a truncated run.

    A non-finite update or loss ends the run (``on_nonfinite="stop"``); any other
    :class:`~physgrad.errors.PhysgradError` raised in step ``k`` (e.g. a local inverse asked for
    a ``y`` outside the range of ``P``, or a singular Hessian) keeps the iterates before it and
    reports the error as the run's message."""
    try:
        res = optimize(prob, x0, method, steps, step_size, on_nonfinite="stop", keep_xs=True,
                       **options)
    except PhysgradError as e:
        part = getattr(e, "result", None)  # optimize attaches the trajectory up to the failing step
        if part is None:  # raised before the first step (bad x0, shape mismatch): not a run at all
            raise
        msg = f"step {part.nit + 1}: {type(e).__name__}: {e}"
        return Run(part.xs, part.losses, msg, False, True)
    ok = "diverged" not in res.message
    return Run(res.xs, res.losses, res.message, ok, res.nit < steps)


def is_stable(run: Run, steps: int) -> bool:
    """The run took ``steps`` steps (or converged before), every loss is finite and the last one
    is below the first: the criterion of :func:`max_stable_step` and of the figures' marks."""
    L = run.losses
    if not bool(torch.isfinite(L).all()) or not run.ok:
        return False
    if run.nit < steps and not run.final:
        return False
    return L[-1].item() < L[0].item() or L[0].item() == 0.0


class RunCache:
    """Runs per ``(key, method, η, options)``, where ``key`` names the problem (e.g. its scale
    ``c``). A request for fewer steps than a cached run slices it (:meth:`Run.prefix`); a request
    for more continues it from its last iterate when the method has no internal state
    (:func:`extendable`), and recomputes it otherwise. At most ``maxsize`` runs are kept (least
    recently used dropped first)."""

    def __init__(self, maxsize: int = 256):
        self.maxsize = int(maxsize)
        self._runs: "OrderedDict[tuple, Run]" = OrderedDict()
        #: runs computed (from x0 or as a continuation) since the cache was made
        self.computed = 0

    def __len__(self) -> int:
        return len(self._runs)

    def run(self, prob: Problem, x0: Tensor, method: str, steps: int, step_size: float,
            key=None, **options) -> Run:
        """The run of ``method`` on ``prob`` from ``x0`` with ``steps`` steps of size
        ``step_size`` (``key`` identifies ``prob``; ``x0`` must be the same for one key)."""
        k = (key, method, float(step_size), tuple(sorted(options.items(), key=str)))
        run = self._runs.get(k)
        if run is not None and (run.nit >= steps or run.final):
            self._runs.move_to_end(k)
            return run.prefix(steps)
        if run is not None and extendable(method, options):
            more = run_method(prob, run.xs[-1], method, steps - run.nit, step_size, **options)
            run = run.extend(more)
        else:
            run = run_method(prob, x0, method, steps, step_size, **options)
        self.computed += 1
        self._runs[k] = run
        self._runs.move_to_end(k)
        if len(self._runs) > self.maxsize:
            self._runs.popitem(last=False)
        return run.prefix(steps)


def max_stable_step(make_problem: Callable[[float], Problem], c: float, x0: Tensor,
                    method: str = "gd", steps: int = 100, lo: float = 1e-12, hi: float = 1e4,
                    rtol: float = 0.02, **options) -> float:
    r"""The largest step size η (to a relative accuracy ``rtol``) for which ``steps`` steps of
    ``method`` on ``make_problem(c)`` from ``x0`` are stable (:func:`is_stable`: finite, and a
    lower loss at the end than at ``x0``). Found by bisection in ``log η`` between a stable ``lo``
    and an unstable ``hi`` (assumes one threshold in between, true for GD on the book's
    problems). For GD near a minimum it approaches ``2/λ_max`` of the loss Hessian (chapter 2),
    which scales as ``1/c^2``."""
    prob = make_problem(c)

    def stable(eta: float) -> bool:
        return is_stable(run_method(prob, x0, method, steps, eta, **options), steps)

    if not stable(lo):
        raise ValueError(f"{method} is not stable even at η={lo:g}")
    if stable(hi):
        return hi
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if stable(mid) else (lo, mid)
    return lo


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def loss_grid(prob: Problem, x0: Tensor, xlim: Sequence[float], ylim: Sequence[float] = (0, 1),
              points: int = 90):
    """The loss on a grid of x-space: ``(X1, X2, L, Y)`` as NumPy arrays. For two parameters a
    ``points × points`` grid over ``xlim × ylim`` (``X1``, ``X2``, ``L`` of shape
    ``(points, points)``, ``Y`` the outputs ``P(x)`` per grid point); for one parameter 400
    points over ``xlim`` and ``X2 = None``. ``x0`` gives the shape, dtype and device of ``x``."""
    n = x0.numel()
    dt = x0.dtype if x0.is_floating_point() else torch.float64
    x1 = torch.linspace(*xlim, points if n == 2 else 400, dtype=dt, device=x0.device)
    if n == 2:
        x2 = torch.linspace(*ylim, points, dtype=dt, device=x0.device)
        X1, X2 = torch.meshgrid(x1, x2, indexing="xy")
        pts = torch.stack([X1.reshape(-1), X2.reshape(-1)], dim=-1).reshape(-1, *x0.shape)
    else:
        X1, X2 = x1, None
        pts = x1.reshape(-1, *x0.shape)
    with torch.no_grad():
        Y = torch.func.vmap(prob.forward)(pts).reshape(pts.shape[0], -1)
        r = Y - prob.target.to(Y).reshape(1, -1)
        L = 0.5 * squared_norm(r, -1)
    return _np(X1), None if X2 is None else _np(X2), _np(L).reshape(X1.shape), _np(Y)


def y_path(prob: Problem, xs: Tensor) -> np.ndarray:
    """``P(x_k)`` for every iterate of a path ``xs`` (one row per iterate)."""
    with torch.no_grad():
        return _np(torch.func.vmap(prob.forward)(xs).reshape(xs.shape[0], -1))
