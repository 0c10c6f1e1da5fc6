r"""``optimize``: one entry point that runs any update of the book and records the run.

>>> res = physgrad.optimize(prob, x0, method="ig", steps=50, step_size=0.5)
>>> res.x, res.xs, res.losses, res.times

The loop is ``x_{k+1} = x_k + Δx_k`` with ``Δx_k`` from :mod:`physgrad.updates`; it checks
every input and every iterate, so a run whose loss or update becomes NaN/Inf ends with a clear
error (or, with ``on_nonfinite="stop"``, a truncated result that says why) instead of a NaN
trajectory. Any other :class:`~physgrad.errors.PhysgradError` raised by an update (a singular
Hessian, a failing inverse simulator, ...) names the step, and carries the trajectory up to that
step as ``err.result``. A run that grows without becoming non-finite is not an error: compare
``res.losses[-1]`` with ``res.losses[0]``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import updates as U
from .errors import NonFiniteError, PhysgradError
from .problem import Problem, check_finite

__all__ = ["optimize", "Result", "METHODS"]

Tensor = torch.Tensor

#: method name -> (update function, state factory or None, needs an explicit step size)
METHODS = {
    "gd": (U.gd, None, True),
    "adam": (U.adam, U.AdamState, True),
    "newton": (U.newton, None, False),
    "bfgs": (U.bfgs, U.BFGSState, False),
    "lbfgs": (U.lbfgs, U.LBFGSState, False),
    "ig": (U.ig, None, False),
    "pg": (U.pg, None, False),
    "hig": (U.hig, None, False),
}

_STATE_OPTIONS = {"init_scale": "bfgs", "history": "lbfgs", "betas": "adam", "eps": "adam"}


@dataclass
class Result:
    """What :func:`optimize` returns.

    Attributes
    ----------
    x
        Final iterate.
    xs
        ``(k+1, *x.shape)``: x0 and every iterate (``k = nit``).
    losses
        ``(k+1,)``: the loss at each of them.
    times
        ``(k+1,)``: wall-clock seconds since the start, ``times[0] = 0``.
    nit
        Steps taken.
    counts
        Calls of the simulator and its derivatives during the run.
    message
        Why the run ended.
    converged
        ``tol`` was reached.
    method, step_size
        The method name and η of the run.
    options
        The options passed to the update (and to its state, e.g. ``init_scale``).
    """

    x: Tensor
    xs: Tensor
    losses: Tensor
    times: Tensor
    method: str
    step_size: float
    options: dict = field(default_factory=dict)
    nit: int = 0
    counts: dict = field(default_factory=dict)
    message: str = ""
    converged: bool = False

    @property
    def rel_losses(self) -> Tensor:
        """``L_k / L_0`` (all ones if ``L_0 = 0``)."""
        L0 = self.losses[0]
        return self.losses / L0 if float(L0) > 0 else torch.ones_like(self.losses)

    def __repr__(self) -> str:
        return (f"Result(method={self.method!r}, step_size={self.step_size:g}, nit={self.nit}, "
                f"loss {self.losses[0].item():.4g} -> {self.losses[-1].item():.4g}, message={self.message!r})")


def _progress_bar(progress, steps: int, method: str):
    """A tqdm bar. ``progress=None`` shows it only when stderr is a terminal (scripts, the
    benchmark): a notebook run then prints nothing volatile, so nbval can compare its output.
    Pass ``progress=True`` in a notebook for long runs."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=method, leave=False)


def optimize(problem: Problem, x0: Tensor, method: str = "gd", steps: int = 100,
             step_size: Optional[float] = None, *, tol: Optional[float] = None,
             callback: Optional[Callable] = None, progress: Optional[bool] = None,
             time_budget: Optional[float] = None, on_nonfinite: str = "raise",
             keep_xs: bool = True, **options) -> Result:
    r"""Minimize ``L(x) = ½||P(x) − y*||²`` with one of the book's updates.

    Parameters
    ----------
    problem
        The :class:`~physgrad.problem.Problem`.
    x0
        Starting point; its dtype and device set those of the whole run.
    method
        ``"gd" "adam" "newton" "bfgs" "lbfgs" "ig" "pg" "hig"`` (see :mod:`physgrad.updates`).
    steps
        Maximum number of updates.
    step_size
        η. For ``gd``/``adam`` it is the learning rate and must be given (its right value
        depends on the units and scale of the problem, chapter 2). For the inverted methods it is
        the fraction of the way to the target (``Δy = η (y* − P(x))``); default 1.
    tol
        Stop once ``L/L_0 <= tol``.
    callback
        ``callback(k, x, loss)`` after each step; returning ``True`` stops the run.
    progress
        ``True`` always shows a tqdm bar, ``False`` never, ``None`` when stderr is a terminal.
    time_budget
        Stop after this many seconds of wall-clock time.
    on_nonfinite
        ``"raise"`` (default) raises :class:`~physgrad.errors.NonFiniteError` when the
        loss or an update becomes NaN/Inf; ``"stop"`` ends the run there and returns the finite
        part of the trajectory, with ``message`` saying what happened (used to show divergence).
    keep_xs
        Keep every iterate (default); ``False`` keeps only x0 and the last one.
    **options
        Passed to the update function of ``method`` (see :mod:`physgrad.updates`): e.g.
        ``damping``/``solver`` for ``ig``, ``kappa``/``truncation`` for ``hig``, ``fallback`` for
        ``newton``, ``line_search`` for ``bfgs``/``lbfgs``. State options go to the method's state:
        ``init_scale`` (bfgs), ``history`` (lbfgs), ``betas``/``eps`` (adam). An option the method
        does not know raises ``TypeError``. Note the defaults: ``bfgs`` uses ``η`` as it is
        (``line_search=None``, the book's fixed-step form), ``lbfgs`` searches a strong-Wolfe step;
        for robust BFGS pass ``line_search="wolfe"``.
    """
    if getattr(problem, "batched", False):  # B independent samples: physgrad.batched
        from . import batched
        return batched.optimize(problem, x0, method, steps, step_size, tol=tol, callback=callback, progress=progress,
                                time_budget=time_budget, on_nonfinite=on_nonfinite, keep_xs=keep_xs, **options)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError("on_nonfinite must be 'raise' or 'stop'")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    fn, state_factory, needs_eta = METHODS[method]
    if step_size is None:
        if needs_eta:
            raise ValueError(
                f"method {method!r} needs an explicit step_size (learning rate): its right value depends "
                "on the units and the scale of the problem, so there is no safe default."
            )
        step_size = 1.0
    step_size = float(step_size)
    if not (step_size > 0 and step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}")

    x = problem.check_x(x0, "x0").detach().clone()
    L = problem.loss(x)  # also checks the shape of P(x) against y*
    if not bool(torch.isfinite(L)):
        raise NonFiniteError(f"the loss at x0 is {L.item()}: the simulator output P(x0) is not finite")

    state_kw = {k: options.pop(k) for k in list(options) if _STATE_OPTIONS.get(k) == method}
    if method == "ig" and options.get("damping") == "auto":
        state = U.LMState()
    elif state_factory is not None:
        state = state_factory(**state_kw)
    else:
        state = None
    kw = dict(options)
    if state is not None:
        kw["state"] = state

    counts0 = dict(problem.counts)
    xs, losses, times = [x.clone()], [L.detach()], [0.0]
    message, converged = f"reached the step limit ({steps})", False
    L0 = float(L)
    if tol is not None and L0 <= tol * L0:
        message, converged = "x0 already satisfies tol", True
        steps = 0
    bar = _progress_bar(progress, steps, method)
    t_start = time.perf_counter()
    try:
        for k in range(steps):
            try:
                dx = fn(problem, x, step_size, **kw)
            except PhysgradError as e:
                # say where it happened, and keep the trajectory so far (e.result) for inspection
                e.args = (f"step {k + 1} of method {method!r}: {e.args[0] if e.args else e}",) + e.args[1:]
                e.result = _result(xs, losses, times, x, method, step_size, options, state_kw, problem,
                                   counts0, f"stopped at step {k + 1}: {type(e).__name__}", False, keep_xs)
                raise
            if not bool(torch.isfinite(dx).all()):
                msg = (f"step {k + 1}: the {method} update became non-finite (NaN/Inf); the run diverged. "
                       "Try a smaller step_size.")
                if on_nonfinite == "raise":
                    raise NonFiniteError(msg)
                message = msg
                break
            x_new = x + dx
            L_new = problem.loss(x_new).detach()
            if not bool(torch.isfinite(L_new)):
                msg = (f"step {k + 1}: the loss became {L_new.item()} with method {method!r} and "
                       f"step_size={step_size:g}; the run diverged. Try a smaller step_size.")
                if on_nonfinite == "raise":
                    raise NonFiniteError(msg)
                message = msg
                break
            x, L = x_new, L_new
            if keep_xs:
                xs.append(x.clone())
            losses.append(L)
            times.append(time.perf_counter() - t_start)
            if bar is not None:
                bar.update(1)
            if tol is not None and float(L) <= tol * L0:
                message, converged = f"reached L/L0 <= {tol:g} after {k + 1} steps", True
                break
            if isinstance(state, U.LMState) and state.stalled:
                message = f"step {k + 1}: no further decrease possible (Levenberg-Marquardt stalled)"
                break
            if callback is not None and callback(k, x, L):
                message = f"stopped by callback after {k + 1} steps"
                break
            if time_budget is not None and times[-1] > time_budget:
                message = f"time budget of {time_budget:g} s used after {k + 1} steps"
                break
    finally:
        if bar is not None:
            bar.close()
    return _result(xs, losses, times, x, method, step_size, options, state_kw, problem, counts0,
                   message, converged, keep_xs)


def _result(xs, losses, times, x, method, step_size, options, state_kw, problem, counts0, message,
            converged, keep_xs) -> Result:
    xs = list(xs)
    if not keep_xs and len(losses) > 1:
        xs.append(x.clone())
    counts = {k: problem.counts.get(k, 0) - counts0.get(k, 0) for k in problem.counts}
    return Result(
        x=x, xs=torch.stack(xs), losses=torch.stack(losses),
        times=torch.tensor(times, dtype=torch.float64), method=method, step_size=step_size,
        options=dict(options, **state_kw), nit=len(losses) - 1, counts=counts,
        message=message, converged=converged,
    )
