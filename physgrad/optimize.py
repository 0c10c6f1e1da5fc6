r"""``optimize``: one entry point that runs any update of the book and records the run.

>>> res = physgrad.optimize(prob, x0, method="ig", steps=50, step_size=0.5)
>>> res.x, res.xs, res.losses, res.times

The loop is ``x_{k+1} = x_k + Δx_k`` with ``Δx_k`` from :mod:`physgrad.updates`; it checks
every input and every iterate, so a run whose loss or update becomes NaN/Inf ends with a clear
error (or, with ``on_nonfinite="stop"``, a truncated result that says why) instead of a NaN
trajectory. Every exception raised during the steps (divergence, a singular Hessian, a failing
inverse simulator, an exception from the user's forward or callback) carries the trajectory up
to that point as ``err.result``; physgrad's own errors also name the step in their message.

Outcome: :attr:`Result.status` (integer codes in :data:`STATUS`), :attr:`Result.success`,
:attr:`Result.converged` and :attr:`Result.message`. A run that ends above its starting loss,
stalls (zero update, Levenberg–Marquardt or line search find no decrease) or diverges says so
in ``message`` and has ``success=False``.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import updates as U
from .errors import NonFiniteError, PhysgradError
from .problem import INVERSE_NONFINITE, Problem, count_calls

__all__ = ["optimize", "Result", "METHODS", "STATUS"]

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

#: :attr:`Result.status` codes (scipy-like: 0 is a met stopping criterion, negative is a failure)
STATUS = {
    0: "converged: a stopping criterion was met (tol, atol, gtol, xtol), or L = 0 at the end",
    1: "reached the step limit",
    2: "stopped by the callback",
    3: "the time budget was used",
    -1: "diverged: the loss or the update became non-finite",
    -2: "stalled: no further decrease (zero update, LM or line search found no decrease)",
    -3: "ended above the starting loss",
    -4: "an exception was raised during the run (see err.result)",
}

#: methods whose linear algebra (eigh, SVD, solves, dense BFGS matrix) has no float16/bfloat16
#: kernels and which assume a real x
_LINALG_METHODS = {"newton", "bfgs", "ig", "hig"}
_REAL_ONLY_METHODS = {"newton", "bfgs", "lbfgs", "ig", "hig"}
_HALF = (torch.float16, torch.bfloat16)


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
        ``3`` time budget, ``-1`` diverged, ``-2`` stalled, ``-3`` ended above the starting
        loss, ``-4`` an exception (only on ``err.result``).
    success
        ``status >= 0``: the run ended without diverging, stalling or going uphill overall. A
        step-limited run that lowered the loss is a success that has not ``converged``.
    converged
        A stopping criterion (``tol``, ``atol``, ``gtol``, ``xtol``) was met, or ``L = 0``.
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
    success: bool = True
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
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=method, leave=False)


def _check_tolerance(name, v):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < math.inf):
        raise ValueError(f"{name} must be None or a finite number >= 0, got {v!r}")
    return float(v)


def _real_dtype(dt):
    return dt.to_real() if dt.is_complex else dt


def _check_dtypes(problem: Problem, method: str, x: Tensor, y: Tensor) -> None:
    """The dtype policy at the entrance (see the :mod:`physgrad` module docstring)."""
    if x.dtype in _HALF and method in _LINALG_METHODS:
        raise TypeError(
            f"method {method!r} needs dense linear algebra (eigh/SVD/solves), which torch does not provide "
            f"for {x.dtype}. Run it in float32: optimize(prob, x0.float(), ...), and cast the result back "
            "if needed; gd, adam, lbfgs and pg accept half precision.")
    if x.is_complex() and method in _REAL_ONLY_METHODS:
        raise TypeError(
            f"method {method!r} does not support complex x (its Jacobian/Hessian algebra assumes real "
            "numbers). Optimize the real and imaginary parts as a real tensor instead: pass "
            "torch.view_as_real(x0) and rebuild z = torch.view_as_complex(x) inside the forward; gd, adam "
            "and pg accept complex x.")
    if _real_dtype(y.dtype) != _real_dtype(x.dtype):
        raise TypeError(
            f"the simulator returned dtype {y.dtype} for x of dtype {x.dtype}; P(x) must follow x's "
            "precision (build constants with dtype=x.dtype, avoid .float()/.double() inside P), or pass x0 "
            f"as {_real_dtype(y.dtype)}.")
    if y.is_complex() and not x.is_complex() and method in ("ig", "hig"):
        raise TypeError(f"method {method!r} needs a real Jacobian, but P(x) is complex for a real x; "
                        "return torch.view_as_real(P(x)) from the forward (and the target likewise).")


def _make_state(method, options, state_kw, state):
    """The method's state: the user's ``state=`` (warm start; checked), or a fresh one."""
    fn, state_factory, _ = METHODS[method]
    lm = method == "ig" and options.get("damping") == "auto"
    expected = U.LMState if lm else state_factory
    if state is not None:
        if expected is None:
            raise TypeError(f"method {method!r} has no state; state= applies to adam (AdamState), bfgs "
                            "(BFGSState), lbfgs (LBFGSState) and ig with damping='auto' (LMState)")
        if not isinstance(state, expected):
            raise TypeError(f"state= for method {method!r} must be a {expected.__name__}, got "
                            f"{type(state).__name__}")
        if state_kw:
            raise TypeError(f"pass either state= or the state option(s) {sorted(state_kw)}, not both")
        if lm:
            state.stalled = False  # a stall of an earlier run must not end this one at once
        return state
    if expected is None:
        return None
    return expected() if lm else expected(**state_kw)


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
        η. For ``gd``/``adam`` it is the learning rate and must be given (its right value
        depends on the units and scale of the problem, chapter 2). For the inverted methods it is
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
    ``rcond·σ_max``) or ``damping`` (Levenberg–Marquardt / Tikhonov, ``"auto"`` adapts it);
    ``hig`` through ``truncation``; ``newton`` through ``rcond`` with ``fallback="pinv"``. Every
    method can stop early at the noise level with ``atol`` (discrepancy principle).

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
        unsupported = [k for k, v in (("atol", atol), ("gtol", gtol), ("xtol", xtol), ("state", state))
                       if v is not None]
        if unsupported:
            raise TypeError(f"{', '.join(unsupported)} not supported for batched problems yet: "
                            "use tol (per sample), or a loop over single problems")
        if torch.is_tensor(x0) and x0.ndim >= 2 and x0.shape[0] > 0:
            # the same dtype policy as for one problem, checked on the first sample's output
            _check_dtypes(problem, method, x0, problem.forward(x0[:1]))
            if method in _LINALG_METHODS:  # per-sample (B, n, n) / (B, m, n) matrices
                from .problem import _dense_bytes, check_memory
                n = x0[0].numel()
                m = problem.target[0].numel() if problem.target.ndim >= 2 else n
                k = n if method in ("newton", "bfgs") else m
                check_memory(x0.shape[0] * _dense_bytes(k, n, x0.dtype),
                             f"the {x0.shape[0]} per-sample {k}x{n} matrices of batched {method!r}")
        return batched.optimize(problem, x0, method, steps, step_size, tol=tol, callback=callback, progress=progress,
                                time_budget=time_budget, on_nonfinite=on_nonfinite, keep_xs=keep_xs, **options)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError("on_nonfinite must be 'raise' or 'stop'")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    tol, atol, gtol, xtol = (_check_tolerance(n, v) for n, v in
                             (("tol", tol), ("atol", atol), ("gtol", gtol), ("xtol", xtol)))
    if time_budget is not None and not (isinstance(time_budget, numbers.Real) and time_budget == math.inf):
        _check_tolerance("time_budget", time_budget)  # (an infinite budget means none)
    fn, state_factory, needs_eta = METHODS[method]
    if step_size is None:
        if needs_eta:
            raise ValueError(
                f"method {method!r} needs an explicit step_size (learning rate): its right value depends "
                "on the units and the scale of the problem, so there is no safe default."
            )
        step_size = 1.0
    if isinstance(step_size, (str, bytes, bool)) or not (
            isinstance(step_size, numbers.Real) or (torch.is_tensor(step_size) and step_size.numel() == 1)):
        raise TypeError(f"step_size must be a number, got {type(step_size).__name__} {step_size!r}")
    step_size = float(step_size)
    if not (step_size > 0 and step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}")
    _check_options(fn, method, options)

    if torch.is_tensor(x0) and x0.device.type == "meta":
        raise TypeError("x0 is on the 'meta' device, which holds no data: optimization needs real values. "
                        "Create x0 on 'cpu' or 'cuda'.")
    x = problem.check_x(x0, "x0").detach().clone()
    if callback is not None:  # a copy: the callback must not be able to change the iterate
        callback = functools.partial(_call_with_copy, callback)
    state_kw = {k: options.pop(k) for k in list(options) if _STATE_OPTIONS.get(k) == method}
    state = _make_state(method, options, state_kw, state)
    kw = dict(options)
    if state is not None:
        kw["state"] = state
    reuse_y = method == "pg"  # pg takes P(x_k) from the loss evaluation of the previous step

    with count_calls() as counts:
        problem.check_entrance(x, method, options, check_derivatives)  # a broken forward, before step 1
        y = problem.simulate(x)  # also checks the shape of P(x) against y*
        _check_dtypes(problem, method, x, y)
        L = problem.loss_of_output(y).detach()
        L0 = float(L)
        if not math.isfinite(L0):
            raise NonFiniteError(f"the loss at x0 is {L0}: the simulator output P(x0) is not finite")
        xs, losses, times = [x.clone()], [L], [0.0]
        run = _Run(xs, losses, times, method, step_size, options, state_kw, counts, keep_xs, problem)
        status, message = 1, f"reached the step limit ({steps})"
        if atol is not None and L0 <= atol:
            status, message, steps = 0, f"x0 already satisfies L <= atol = {atol:g}", 0
        elif tol is not None and L0 <= tol * L0:
            status, message, steps = 0, "x0 already satisfies tol", 0
        bar = _progress_bar(progress, steps, method)
        t_start = time.perf_counter()
        Lf, k, phase, zero_step = L0, -1, "step", False
        try:
            for k in range(steps):
                phase = "step"
                try:
                    if reuse_y:  # x_{k+1} straight from the inverse: Δx is formed only when needed
                        x_new, dx = U.pg_point(problem, x, step_size, y0=y, check=False), None
                    else:
                        dx = fn(problem, x, step_size, **kw)
                        x_new = x + dx
                except PhysgradError as e:
                    # say where it happened, and keep the trajectory so far (e.result) for inspection
                    e.args = (f"step {k + 1} of method {method!r}: {e.args[0] if e.args else e}",) + e.args[1:]
                    raise
                if gtol is None:
                    y_new = problem.simulate(x_new)
                    L_new = problem.loss_of_output(y_new).detach()
                else:
                    L_new, g_new = problem.value_and_grad(x_new)
                    y_new = None
                # the one host sync of a step: the loss, with a cheap finiteness probe of the update
                # (0 * sum(v) is 0 unless v holds a NaN/Inf, which makes it NaN)
                probe = (x_new if dx is None else dx).sum()
                if probe.is_complex():
                    probe = probe.real + probe.imag
                L_prev, Lf = Lf, float(L_new + 0 * probe.to(L_new.dtype))
                if not math.isfinite(Lf) and _finite_after_all(L_new, x_new):
                    Lf = float(L_new)  # the probe's sum overflowed on large but finite values
                if not math.isfinite(Lf):
                    dx = x_new - x if dx is None else dx
                    msg = _nonfinite_message(k, method, step_size, dx, L_new)
                    if on_nonfinite == "raise":
                        raise NonFiniteError(msg)
                    status, message, Lf = -1, msg, L_prev
                    break
                x_prev, x, L, y = x, x_new, L_new, y_new
                if keep_xs:
                    xs.append(x.clone())
                losses.append(L)
                times.append(time.perf_counter() - t_start)
                if bar is not None:
                    bar.update(1)
                if atol is not None and Lf <= atol:
                    status, message = 0, f"reached L <= atol = {atol:g} after {k + 1} steps"
                    break
                if tol is not None and Lf <= tol * L0:
                    status, message = 0, f"reached L/L0 <= {tol:g} after {k + 1} steps"
                    break
                if gtol is not None and float(torch.linalg.vector_norm(g_new)) <= gtol:
                    status, message = 0, f"reached ||grad L|| <= gtol = {gtol:g} after {k + 1} steps"
                    break
                if dx is None and (xtol is not None or Lf == L_prev):
                    dx = x - x_prev
                if xtol is not None and float(torch.linalg.vector_norm(dx)) <= xtol * (
                        xtol + float(torch.linalg.vector_norm(x))):
                    status, message = 0, f"reached ||dx|| <= xtol (xtol + ||x||), xtol = {xtol:g}, after {k + 1} steps"
                    break
                if isinstance(state, U.LMState) and state.stalled:
                    status, message = run.stall(k, x, Lf, L0, "Levenberg-Marquardt stalled (no damping gives a decrease)")
                    break
                # a zero update (checked only when the loss did not change): reported at the end; the
                # run goes on so that trajectories keep their length
                zero_step = Lf == L_prev and not bool(dx.any())
                phase = "callback"
                if callback is not None and callback(k, x, L):
                    status, message = 2, f"stopped by callback after {k + 1} steps"
                    break
                if time_budget is not None and times[-1] > time_budget:
                    status, message = 3, f"time budget of {time_budget:g} s used after {k + 1} steps"
                    break
        except (Exception, KeyboardInterrupt) as e:  # Ctrl-C in a notebook keeps the trajectory too
            where = f"in the callback after step {k + 1}" if phase == "callback" else f"at step {k + 1}"
            code = -1 if isinstance(e, NonFiniteError) else -4
            e.result = run.result(x, f"stopped {where}: {type(e).__name__}: {e}", code)
            if not isinstance(e, PhysgradError) and hasattr(e, "add_note"):
                e.add_note(f"physgrad: raised {where} of method {method!r}; the trajectory so far is in "
                           "err.result")
            raise
        finally:
            if bar is not None:
                bar.close()
    if status > 0 and Lf == 0:
        status, message = 0, ("reached L = 0; the run went on to the step limit ({})".format(steps) if status == 1
                              else f"reached L = 0; {message}")
    elif status > 0 and zero_step:
        status, message = run.stall(k, x, Lf, L0, "the last update was zero (no step length along the direction "
                                    "lowers L, or the inverse returned x itself)")
    if status > 0 and Lf > L0:
        status = -3
        message += (f"; but the final loss {Lf:.4g} is above the starting loss {L0:.4g} (the run went "
                    "uphill: use a smaller step_size, or the default line search)")
    nmod = counts.get("hessian_modified", 0)
    if nmod:
        message += (f"; the Hessian was not positive definite at {nmod} step(s) and was modified to give a "
                    "descent direction")
    return run.result(x, message, status)


def _call_with_copy(callback, k, x, L):
    return callback(k, x.clone(), L)


def _check_options(fn, method, options):
    """Reject unknown options before any work (the update would only fail at step 1)."""
    known = _known_options(fn, method)
    if known is None:
        return  # ig checks its solver options itself, before the first step's work
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{method}() got unexpected option(s) {unknown}; known: {sorted(known) or 'none'}")


@functools.lru_cache(maxsize=None)
def _known_options(fn, method):
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    known = set(list(params)[3:]) | {k for k, m in _STATE_OPTIONS.items() if m == method}
    return frozenset(known - {"state", "y0", "check"})


def _finite_after_all(L_new, x_new) -> bool:
    """The exact check behind a non-finite probe (rare path): is everything finite after all?"""
    return math.isfinite(float(L_new)) and bool(torch.isfinite(x_new).all())


def _nonfinite_message(k, method, step_size, dx, L_new):
    if method == "pg" and not bool(torch.isfinite(dx).all()):
        return f"step {k + 1}: {INVERSE_NONFINITE}"
    if not bool(torch.isfinite(dx).all()):
        return (f"step {k + 1}: the {method} update became non-finite (NaN/Inf); the run diverged. "
                "Try a smaller step_size.")
    return (f"step {k + 1}: the loss became {L_new.item()} with method {method!r} and "
            f"step_size={step_size:g}; the run diverged. Try a smaller step_size.")


class _Run:
    """The record of one run, from which the (partial) Result is built."""

    def __init__(self, xs, losses, times, method, step_size, options, state_kw, counts, keep_xs, problem):
        self.xs, self.losses, self.times = xs, losses, times
        self.method, self.step_size, self.options, self.state_kw = method, step_size, options, state_kw
        self.counts, self.keep_xs, self.problem = counts, keep_xs, problem

    def stall(self, k, x, Lf, L0, why):
        """Status and message of a run that cannot decrease L further: converged to working
        precision when L or the gradient fell to round-off relative to the start."""
        eps = torch.finfo(x.real.dtype if x.is_complex() else x.dtype).eps
        with count_calls(isolated=True):
            g = float(torch.linalg.vector_norm(self.problem.value_and_grad(x)[1]))
            g0 = float(torch.linalg.vector_norm(self.problem.value_and_grad(self.xs[0])[1]))
        if Lf <= eps * L0 or (g0 > 0 and g <= math.sqrt(eps) * g0):
            return 0, (f"converged to working precision after {k + 1} steps: {why} "
                       f"(L = {Lf:.3g}, ||grad L|| = {g:.3g})")
        return -2, (f"stalled after {k + 1} steps: {why}; L = {Lf:.4g}, ||grad L|| = {g:.3g} (a saddle, a maximum, "
                    "a rank-deficient direction, or an inverse that returns x unchanged)")

    def result(self, x, message, status) -> Result:
        xs = list(self.xs)
        if not self.keep_xs and len(self.losses) > 1:
            xs.append(x)  # (torch.stack below copies)
        losses = torch.stack(self.losses)
        return Result(
            x=x, xs=torch.stack(xs), losses=losses,
            times=torch.tensor(self.times, dtype=torch.float64), method=self.method,
            step_size=self.step_size, options=dict(self.options, **self.state_kw), nit=len(self.losses) - 1,
            counts=dict(self.counts), message=message, converged=status == 0, status=status,
            success=status >= 0, fun=float(losses[-1]), _problem=self.problem,
        )
