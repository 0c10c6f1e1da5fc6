r"""``optimize``: one entry point that runs any update of the book and records the run.

>>> res = physgrad.optimize(prob, x0, method="ig", steps=50, step_size=0.5)
>>> res.x, res.xs, res.losses, res.times

The loop is ``x_{k+1} = x_k + Δx_k`` with ``Δx_k`` from :mod:`physgrad.updates`; it checks
every input and every iterate, so a run whose loss or update becomes NaN/Inf ends with a clear
error (or, with ``on_nonfinite="stop"``, a truncated result that says why) instead of a NaN
trajectory. Every exception raised during the steps (divergence, a singular Hessian, a failing
inverse simulator, an exception from the user's forward or callback) carries the trajectory up
to that point as ``err.result``; physgrad's own errors also name the step in their message.

Outcome: :attr:`Result.status` (integer codes in :data:`STATUS`, shared with batched runs),
:attr:`Result.success`, :attr:`Result.converged` and :attr:`Result.message`. As in scipy,
``success`` means that a stopping criterion was met (``tol``, ``atol``, ``gtol``, ``xtol``, or
L = 0); a run that ends at the step limit, the time budget or a callback stop, above its starting
loss, stalls (a zero update ends the run at once; Levenberg–Marquardt or the line search find no
decrease) or diverges says so in ``message`` and has ``success=False``.

The step itself is the method's kernel from :data:`physgrad.updates.METHODS`, applied to the
problem as a batch of one (:class:`physgrad.views.SingleView`); the loop knows no method by name.
"""

from __future__ import annotations

import array
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import errors as E
from . import updates as U
from .errors import NonFiniteError, PhysgradError
from .problem import INVERSE_NONFINITE, Problem, count_calls
from .views import SingleView

__all__ = ["optimize", "Result", "METHODS", "STATUS"]

Tensor = torch.Tensor

#: the methods (one declaration each, :class:`physgrad.updates.Method`)
METHODS = U.METHODS

#: :attr:`Result.status` codes, shared with :class:`physgrad.BatchResult` (scipy-like: 0 is a met
#: stopping criterion, positive is a limit, negative a failure)
STATUS = E.STATUS


@dataclass
class Result:
    """What :func:`optimize` returns.

    Attributes
    ----------
    x
        Final iterate (detached from any autograd graph of ``x0``; ``x0`` itself is untouched).
    xs
        ``(k+1, *x.shape)``: x0 and every iterate (``k = nit``), detached.
    losses
        ``(k+1,)``: the loss at each of them.
    times
        ``(k+1,)``: wall-clock seconds since the start, ``times[0] = 0``.
    nit
        Steps taken.
    counts
        Calls of the simulator and its derivatives during this run only (correct also when a
        Problem is shared between threads). The work inside an inverse simulator is counted as
        ``inverse_forward``, ``inverse_jacobian``, ...; ``hessian_modified`` counts the Newton
        steps whose Hessian had to be modified to descend.
    message
        Why the run ended, in words.
    status
        An integer code, see :data:`STATUS`: ``0`` converged, ``1`` step limit, ``2`` callback,
        ``3`` time budget, ``-1`` diverged (or the parameters ran away), ``-2`` stalled, ``-3``
        ended above the starting loss, ``-4`` an exception (only on ``err.result``).
    success
        ``status == 0``: a stopping criterion was met, as in scipy. A run that ended at the step
        limit, the time budget or a callback stop is not a success, however low its loss; its
        ``message`` says how far it got (``L/L0``).
    converged
        The same as ``success`` (kept for older code).
    fun
        The final loss ``L(x)`` as a float. (``grad_norm``, a property below, is ``||∇L(x)||``
        at the final iterate.)
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
    status: int = 1
    success: bool = False
    fun: float = float("nan")
    _problem: Optional[Problem] = field(default=None, repr=False, compare=False)
    _grad_norm: Optional[float] = field(default=None, repr=False, compare=False)

    @property
    def grad_norm(self) -> float:
        """``||∇L(x)||_2`` at the final iterate (one forward and one backward, on first access)."""
        if self._grad_norm is None and self._problem is not None:
            with count_calls(isolated=True):  # a diagnostic: never part of any run's counts
                _, g = self._problem.value_and_grad(self.x)
            self._grad_norm = float(torch.linalg.vector_norm(g))
        return float("nan") if self._grad_norm is None else self._grad_norm

    def __getstate__(self):
        # picklable even when the Problem is not (a lambda forward): keep the gradient norm, drop
        # the Problem
        d = dict(self.__dict__)
        if d.get("_grad_norm") is None and d.get("_problem") is not None:
            try:
                d["_grad_norm"] = self.grad_norm
            except Exception:  # noqa: BLE001 - a diagnostic must not make pickling fail
                pass
        d["_problem"] = None
        return d

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
    from tqdm.std import tqdm  # plain text: no widget manager needed on the website

    return tqdm(total=steps, desc=method, leave=False)


def optimize(problem: Problem, x0: Tensor, method: str = "gd", steps: int = 100,
             step_size: Optional[float] = None, *, tol: Optional[float] = None,
             atol: Optional[float] = None, gtol: Optional[float] = None, xtol: Optional[float] = None,
             callback: Optional[Callable] = None, progress: Optional[bool] = None,
             time_budget: Optional[float] = None, on_nonfinite: str = "raise",
             keep_xs: bool = True, state=None, bounds=None, x_scale=None, check_derivatives: bool = False,
             **options) -> Result:
    r"""Minimize ``L(x) = ½||P(x) − y*||²`` with one of the book's updates.

    Parameters
    ----------
    problem
        The :class:`~physgrad.problem.Problem`.
    x0
        Starting point; its dtype and device set those of the whole run (see the dtype policy
        in the :mod:`physgrad` module docstring). It is copied and detached; the caller's tensor
        is never modified.
    method
        ``"gd" "adam" "newton" "bfgs" "lbfgs" "ig" "pg" "hig"`` (see :mod:`physgrad.updates`).
    steps
        Maximum number of updates.
    step_size
        η. For ``gd``/``adam`` it is the learning rate; its right value depends on the units and
        scale of the problem (chapter 2), so pass it when you know it. Without it a heuristic
        picks one at x0 (:func:`physgrad.updates.default_learning_rate`: ``1/λ_max(J^T J)`` for
        gd, the largest entry of that gradient step for adam); ``result.step_size`` reports the
        value used. For the inverted methods it is
        the fraction of the way to the target (``Δy = η (y* − P(x))``); default 1. With a line
        search (the default of newton, hig, bfgs, lbfgs) it is the first trial step length.
    tol
        Relative loss: stop once ``L/L_0 <= tol``.
    atol
        Absolute loss floor: stop once ``L <= atol``. With noisy data ``y* = P(x_true) + noise``
        of known level σ per entry, ``atol = ½ m σ²`` (m entries of y) is Morozov's discrepancy
        principle: fitting below the noise only fits the noise.
    gtol
        Stop once ``||∇L|| <= gtol`` (costs one backward pass per step).
    xtol
        Stop once ``||Δx|| <= xtol (xtol + ||x||)``.
    callback
        ``callback(k, x, loss)`` after each step; returning ``True`` stops the run.
    progress
        ``True`` always shows a tqdm bar, ``False`` never, ``None`` when stderr is a terminal.
    time_budget
        Stop after this many seconds of wall-clock time (``None`` or ``float("inf")``: no budget).
    on_nonfinite
        ``"raise"`` (default) raises :class:`~physgrad.errors.NonFiniteError` (with
        ``err.result``) when the loss or an update becomes NaN/Inf; ``"stop"`` ends the run there
        and returns the finite part of the trajectory with ``status=-1`` and a ``message`` saying
        what happened (used to show divergence).
    keep_xs
        Keep every iterate (default); ``False`` keeps only x0 and the last one.
    state
        A state object to start from (warm start, e.g. the ``LMState`` or ``BFGSState`` of an
        earlier run or call): ``AdamState`` (adam), ``BFGSState`` (bfgs), ``LBFGSState``
        (lbfgs), ``LMState`` (ig with ``damping="auto"``). It is used and updated in place; a
        state of the wrong kind, or for a method without state, raises ``TypeError``.
    **options
        Options of the update function of ``method`` (see :mod:`physgrad.updates`): e.g.
        ``damping``/``solver``/``rcond`` for ``ig``, ``kappa``/``truncation`` for ``hig``,
        ``fallback`` for ``newton``, ``line_search`` for ``newton``/``hig``/``bfgs``/``lbfgs``.
        State options go to a fresh state: ``init_scale`` (bfgs), ``history`` (lbfgs),
        ``betas``/``eps`` (adam). An option the method does not know raises ``TypeError``
        before the first step.

    Notes
    -----
    Safe defaults, pure on request: ``newton`` and ``hig`` backtrack (Armijo) from η and
    ``newton`` modifies an indefinite Hessian so it always descends; ``bfgs`` and ``lbfgs``
    search a strong-Wolfe step. ``line_search=None`` gives the pure fixed-step textbook forms of
    the book. ``gd``, ``adam``, ``ig`` and ``pg`` take the step η as it is.

    Noisy data (regularization): ``ig`` regularizes through ``rcond`` (drop singular values below
    ``rcond·σ_max``) or ``damping`` (Levenberg–Marquardt / Tikhonov; ``"auto"`` adapts it inside
    a trust region, as MINPACK does); ``hig`` through ``truncation``; ``newton`` through ``rcond``
    with ``fallback="pinv"``. Every method can stop early at the noise level with ``atol``
    (discrepancy principle).

    Entrance (``bounds``, ``x_scale``, ``check_derivatives``): ``bounds=(lo, hi)`` and
    ``x_scale`` (an array or ``"jac"``) run the method on a reparametrized problem and map the
    result back (:mod:`physgrad.bounds`). Before step 1 a cheap check rejects a forward that
    cuts x out of the autograd graph or writes into its argument, and user-supplied derivatives
    that do not cover the method; ``check_derivatives=True`` also compares a random ``J v``
    with a finite difference (:meth:`physgrad.problem.Problem.check_entrance`). The callback
    receives a copy of x.
    """
    if bounds is not None or x_scale is not None:  # physgrad.bounds: solve in z with x = T(z), map back
        args = dict(locals())
        args.update(args.pop("options"))
        from .bounds import optimize_transformed
        return optimize_transformed(optimize, **args)
    if getattr(problem, "batched", False):  # B independent samples: physgrad.batched
        from . import batched
        return batched.optimize(problem, x0, method, steps, step_size, tol=tol, atol=atol, gtol=gtol, xtol=xtol,
                                callback=callback, progress=progress, time_budget=time_budget,
                                on_nonfinite=on_nonfinite, keep_xs=keep_xs, state=state,
                                check_derivatives=check_derivatives, **options)
    spec, step_size, tols, kw, state_kw = U.check_run(
        method, steps, step_size, dict(tol=tol, atol=atol, gtol=gtol, xtol=xtol), time_budget, on_nonfinite,
        options, state)
    tol, atol, gtol, xtol = tols["tol"], tols["atol"], tols["gtol"], tols["xtol"]
    x = problem.check_x(x0, "x0")
    x = (x.detach() if x.requires_grad else x).clone()
    if callback is not None:  # a copy: the callback must not be able to change the iterate
        callback = functools.partial(_call_with_copy, callback)
    if state is None:
        state = spec.make_state(kw, state_kw)
    elif isinstance(state, U.LMState):
        state.stalled = False  # a stall of an earlier run must not end this one at once
    kernel, view = spec.kernel, SingleView(problem, x.shape, check_inverse=False)
    guard = spec.growth_guard and state is None

    with count_calls() as counts:
        if x.numel():  # a broken forward, before step 1 (x is already checked: finite, floating point)
            problem._entrance(x, method, options, check_derivatives)
        y = problem.simulate(x)  # also checks the shape of P(x) against y*
        U.check_dtypes(spec, x, y)
        S = problem._squared_residual(y)  # L = S / 2, halved on the host (exact)
        if S.requires_grad:  # (a forward with trainable parameters of its own)
            S = S.detach()
        L0 = 0.5 * float(S)
        if not math.isfinite(L0):
            raise E.nonfinite_start(L0)
        if step_size is None:  # gd / adam without a step size: the documented heuristic at x0
            step_size = U.default_learning_rate(method, view, x.reshape(1, -1))
        run = _Run(x, L0, S.dtype, method, step_size, kw, state_kw, counts, keep_xs, problem)
        xs, losses, times = run.xs, run.losses, run.times
        status, message = E.STEP_LIMIT, None
        if atol is not None and L0 <= atol:
            status, message, steps = E.CONVERGED, f"x0 already satisfies L <= atol = {atol:g}", 0
        elif tol is not None and L0 <= tol * L0:
            status, message, steps = E.CONVERGED, "x0 already satisfies tol", 0
        bar = _progress_bar(progress, steps, method)
        t_start = time.perf_counter()
        Lf, k, phase, x_ref = L0, -1, "step", float(torch.linalg.vector_norm(x)) if guard else 0.0
        xb = x.reshape(1, -1)  # the iterate as the kernels see it, (1, n)
        try:
            for k in range(steps):
                phase = "step"
                if y is not None:
                    view.remember(xb, y, x)  # pg starts from P(x_k) of the last loss evaluation
                try:
                    step = kernel(view, xb, step_size, None, state, **kw)
                except PhysgradError as e:
                    # say where it happened, and keep the trajectory so far (e.result) for inspection
                    e.args = (f"step {k + 1} of method {method!r}: {e.args[0] if e.args else e}",) + e.args[1:]
                    raise
                if step.x_next is not None:  # x_{k+1} straight from the inverse: Δx only when needed
                    xb_new, dx = step.x_next, None
                    x_new = view.natural(xb_new)
                else:  # (Δx stays (1, n): the checks below do not need the problem's shape)
                    dx = step.dx
                    xb_new = xb + dx
                    x_new = xb_new.reshape(x.shape)
                if gtol is None:  # L = half * S (the loss is halved on the host, as a float)
                    y_new = problem.simulate(x_new)
                    S, half = problem._squared_residual(y_new), 0.5
                    if S.requires_grad:
                        S = S.detach()
                else:
                    S, g_new = problem.value_and_grad(x_new)
                    y_new, half = None, 1.0
                # the one host sync of a step: the loss, with a cheap finiteness probe of the update
                # (S + 0 * sum(v), one fused add, is S unless v holds a NaN/Inf, which makes it NaN)
                probe = (x_new if dx is None else dx).sum()
                if probe.is_complex():
                    probe = probe.real + probe.imag
                L_prev, Lf = Lf, half * float(S.add(probe, alpha=0))
                if not math.isfinite(Lf) and _finite_after_all(S, x_new):
                    Lf = half * float(S)  # the probe's sum overflowed on large but finite values
                if not math.isfinite(Lf):
                    msg = _nonfinite_message(k, spec, step_size, x_new - x if dx is None else dx, half * float(S),
                                             dx is None)
                    if on_nonfinite == "raise":
                        raise NonFiniteError(msg)
                    status, message, Lf = E.NONFINITE, msg, L_prev
                    break
                x_prev, x, xb, y = x, x_new, xb_new, y_new
                if xs is not None:
                    xs.append(x.clone())
                losses.append(Lf)
                times.append(time.perf_counter() - t_start)
                if bar is not None:
                    bar.update(1)
                if guard:  # pure ig: parameters that run off by orders of magnitude end the run
                    xn = float(torch.linalg.vector_norm(x))
                    if k == 0:  # the scale is max(||x0||, ||x1||): a start at (almost) zero is no scale
                        x_ref = max(x_ref, xn)
                    elif xn > U.GROWTH_LIMIT * max(x_ref, torch.finfo(torch.float64).tiny):
                        status, message = E.NONFINITE, (
                            f"the parameters ran away after {k + 1} steps (||x|| = {xn:.3g}, {xn / x_ref:.3g} "
                            f"times max(||x0||, ||x1||)). {spec.hint}")
                        break
                if atol is not None and Lf <= atol:
                    status, message = E.CONVERGED, f"reached L <= atol = {atol:g} after {k + 1} steps"
                    break
                if tol is not None and Lf <= tol * L0:
                    status, message = E.CONVERGED, f"reached L/L0 <= {tol:g} after {k + 1} steps"
                    break
                if gtol is not None and float(torch.linalg.vector_norm(g_new)) <= gtol:
                    status, message = E.CONVERGED, f"reached ||grad L|| <= gtol = {gtol:g} after {k + 1} steps"
                    break
                if step.stalled:
                    status, message = run.stall(k, x, Lf, L0, "Levenberg-Marquardt stalled (no step inside "
                                                "the trust region lowers L)")
                    break
                # a zero update above L = 0 is a stall, never a met xtol: it ends the run at once (at L = 0
                # the run goes on, so that a trajectory that hits the solution exactly keeps its length,
                # unless xtol is given: then the zero update there meets it)
                if Lf == L_prev and Lf > 0 and torch.equal(x, x_prev):
                    status, message = run.stall(k, x, Lf, L0, "the last update was zero (no step length along "
                                                "the direction lowers L, or the inverse returned x itself)")
                    break
                if xtol is not None:
                    dx = x - x_prev if dx is None else dx
                    if float(torch.linalg.vector_norm(dx)) <= xtol * (xtol + float(torch.linalg.vector_norm(x))):
                        status, message = E.CONVERGED, (f"reached ||dx|| <= xtol (xtol + ||x||), xtol = {xtol:g}, "
                                                        f"after {k + 1} steps")
                        break
                phase = "callback"
                if callback is not None and callback(k, x, run.loss_tensor(Lf, x)):
                    status, message = E.CALLBACK, f"stopped by callback after {k + 1} steps"
                    break
                if time_budget is not None and times[-1] > time_budget:
                    status, message = E.TIME_BUDGET, f"time budget of {time_budget:g} s used after {k + 1} steps"
                    break
        except (Exception, KeyboardInterrupt) as e:  # Ctrl-C in a notebook keeps the trajectory too
            where = f"in the callback after step {k + 1}" if phase == "callback" else f"at step {k + 1}"
            code = E.NONFINITE if isinstance(e, NonFiniteError) else E.EXCEPTION
            e.result = run.result(x, f"stopped {where}: {type(e).__name__}: {e}", code)
            if not isinstance(e, PhysgradError) and hasattr(e, "add_note"):
                e.add_note(f"physgrad: raised {where} of method {method!r}; the trajectory so far is in "
                           "err.result")
            raise
        finally:
            if bar is not None:
                bar.close()
    if status == E.STEP_LIMIT:
        message = f"reached the step limit ({steps})"
    if status > 0 and Lf == 0:
        status, message = E.CONVERGED, (f"reached L = 0; the run went on to the step limit ({steps})"
                                        if status == E.STEP_LIMIT else f"reached L = 0; {message}")
    elif status > 0:
        message += f" before any stopping criterion was met, at L/L0 = {Lf / L0:.3g}" if L0 > 0 else ""
        if status == E.STEP_LIMIT and guard:
            message += f". {spec.hint}"
    if status > 0 and Lf > L0:
        status = E.UPHILL
        message += (f"; but the final loss {Lf:.4g} is above the starting loss {L0:.4g} (the run went "
                    "uphill: use a smaller step_size, or the default line search)")
    nmod = counts.get("hessian_modified", 0)
    if nmod:
        message += (f"; the Hessian was not positive definite at {nmod} step(s) and was modified to give a "
                    "descent direction")
    return run.result(x, message, status, Lf)


def _call_with_copy(callback, k, x, L):
    return callback(k, x.clone(), L)


def _finite_after_all(S, x_new) -> bool:
    """The exact check behind a non-finite probe (rare path): is everything finite after all?"""
    return math.isfinite(float(S)) and bool(torch.isfinite(x_new).all())


def _nonfinite_message(k, spec, step_size, dx, L_new: float, from_inverse):
    if from_inverse and not bool(torch.isfinite(dx).all()):
        return f"step {k + 1}: {INVERSE_NONFINITE}"
    if not bool(torch.isfinite(dx).all()):
        return f"step {k + 1}: the {spec.name} update became non-finite (NaN/Inf); the run diverged. {spec.hint}"
    return (f"step {k + 1}: the loss became {L_new} with method {spec.name!r} and "
            f"step_size={step_size:g}; the run diverged. {spec.hint}")


class _Run:
    """The record of one run, from which the (partial) Result is built. It keeps its own copy of
    x0 (an inverse that writes into the iterate it is given cannot change the record);
    ``keep_xs=False`` keeps only that copy and stacks it with the last iterate at the end."""

    def __init__(self, x0, L0: float, loss_dtype, method, step_size, options, state_kw, counts, keep_xs, problem):
        self.x0 = x0.clone()
        self.xs = [self.x0] if keep_xs else None
        self.losses, self.times, self.loss_dtype = [L0], [0.0], loss_dtype  # (losses: floats)
        self.method, self.step_size, self.options, self.state_kw = method, step_size, options, state_kw
        self.counts, self.problem = counts, problem

    def loss_tensor(self, L: float, x) -> Tensor:
        """The loss as a 0-dim tensor of the run's loss dtype (what a callback receives)."""
        return torch.tensor(L, dtype=self.loss_dtype, device=x.device)

    def stall(self, k, x, Lf, L0, why):
        """Status and message of a run that cannot decrease L further: converged to working
        precision when L or the gradient fell to round-off relative to the start."""
        eps = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).eps
        with count_calls(isolated=True):
            g = float(torch.linalg.vector_norm(self.problem.value_and_grad(x)[1]))
            g0 = float(torch.linalg.vector_norm(self.problem.value_and_grad(self.x0)[1]))
        if Lf == 0:
            return E.CONVERGED, f"reached L = 0 after {k + 1} steps"
        if Lf <= eps * L0 or (g0 > 0 and g <= math.sqrt(eps) * g0):
            return E.CONVERGED, (f"converged to working precision after {k + 1} steps: {why} "
                                 f"(L = {Lf:.3g}, ||grad L|| = {g:.3g})")
        return E.STALLED, (f"stalled after {k + 1} steps: {why}; L = {Lf:.4g}, ||grad L|| = {g:.3g} (a saddle, a "
                           "maximum, a rank-deficient direction, or an inverse that returns x unchanged)")

    def result(self, x, message, status, fun: Optional[float] = None) -> Result:
        """``fun``: the final loss as a float when the caller has it (it is ``float(losses[-1])``)."""
        if self.xs is not None:
            xs = torch.stack(self.xs)
        else:
            xs = torch.stack((self.x0, x)) if len(self.losses) > 1 else self.x0.unsqueeze(0)
        # (losses and times: a copy into an array of doubles, three times cheaper than torch.tensor
        # of a list; the losses are exact in float64 and go back to the loss's dtype and device)
        losses = torch.frombuffer(array.array("d", self.losses), dtype=torch.float64).to(
            dtype=self.loss_dtype, device=self.x0.device)
        times = torch.frombuffer(array.array("d", self.times), dtype=torch.float64)
        return Result(
            x=x, xs=xs, losses=losses, times=times, method=self.method,
            step_size=self.step_size, options=dict(self.options, **self.state_kw), nit=len(self.losses) - 1,
            counts=dict(self.counts), message=message, converged=status == E.CONVERGED, status=status,
            success=status == E.CONVERGED, fun=float(self.losses[-1]) if fun is None else fun, _problem=self.problem,
        )
