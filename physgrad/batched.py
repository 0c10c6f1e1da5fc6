r"""Batches of independent problems: ``Problem(forward, target, batched=True)``.

A batched problem holds ``B`` independent inverse problems at once. ``x`` has shape
``(B, *x_shape)``, ``P(x)`` and the target ``y*`` have shape ``(B, *y_shape)``, and row ``b`` of
``P(x)`` depends on row ``b`` of ``x`` only (the simulator must not couple samples). The loss of
sample ``b`` is ``L_b(x_b) = ½||P(x)_b − y*_b||²``.

:func:`physgrad.optimize` recognises ``problem.batched`` and hands the run to :func:`optimize`
here. The steps are the very kernels of :mod:`physgrad.updates` that a single problem runs (a
single problem is the case ``B = 1``), seen through :class:`physgrad.views.BatchView`:
per-sample Jacobians ``(B, m, n)`` and Hessians ``(B, n, n)`` from ``torch.func``
(:func:`batch_jacobian`), block-diagonal solves with batched :mod:`torch.linalg`, per-sample step
lengths, Levenberg–Marquardt damping and quasi-Newton memories. What this module adds is only
what a batch needs:

* per-sample stopping: a sample that meets a stopping criterion (``tol``, ``atol``, ``gtol``,
  ``xtol``), stalls, or fails (non-finite update or loss, singular Hessian or Jacobian,
  non-finite inverse, parameters that run away) is frozen at its last finite iterate while the
  others go on. A failing sample never raises and never changes the other samples;
* :class:`BatchResult`, with one status code per sample from the same table as
  :class:`physgrad.Result` (:data:`physgrad.errors.STATUS`).

Each sample follows the trajectory that the single-problem :func:`physgrad.optimize` would give
it, up to round-off. The arguments are checked by the same code as for one problem, with the
same errors. Matrix-free ``ig`` (``solver="lsqr"``/``"cg"``) runs one Krylov iteration per
sample, with its own scalars and stopping test, in lockstep. One thing is shared by the samples,
by design: ``gd`` and ``adam`` without ``step_size`` take one learning rate for the batch, the
smallest of the samples' heuristic values (every sample stays stable); pass ``step_size`` for
per-sample paths that match single runs.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import errors as E
from . import updates as U
from .errors import PhysgradError
from .problem import _dense_bytes, check_memory, count_calls
from .views import BatchView, batch_jacobian  # noqa: F401 (batch_jacobian: public here)

__all__ = ["optimize", "BatchResult", "numerical_inverse", "batch_jacobian", "STATUS", "METHODS",
           "LEGACY_STATUS"]

Tensor = torch.Tensor

METHODS = tuple(m for m, spec in U.METHODS.items() if spec.batched)
STATUS = E.STATUS

#: the per-sample codes of physgrad <= 0.1 (0 step limit, 1 tol reached, 2 LM stalled, 3 non-finite,
#: 4 singular, 5 inverse failed) -> today's codes; kept for one release to port old code
LEGACY_STATUS = {0: E.STEP_LIMIT, 1: E.CONVERGED, 2: E.STALLED, 3: E.NONFINITE, 4: E.SINGULAR,
                 5: E.INVERSE_FAILED}


@dataclass
class BatchResult:
    """What :func:`physgrad.optimize` returns for a batched problem (``B`` samples).

    Attributes
    ----------
    x
        Final iterates, shaped like ``x0``.
    xs
        ``(k+1, *x0.shape)``: every iterate (``k = nit``); a frozen sample repeats its last one.
    losses
        ``(k+1, B)``: the per-sample losses.
    times
        ``(k+1,)``: wall-clock seconds since the start.
    nit
        Steps of the batch (the longest-running sample).
    nits
        ``(B,)``: steps each sample took before it was frozen.
    status
        ``(B,)`` int codes of :data:`physgrad.errors.STATUS`, the same as :attr:`physgrad.optimize.Result.status`:
        0 converged, 1 step limit, 2 callback, 3 time budget, -1 non-finite or ran away,
        -2 stalled, -3 ended above its starting loss, -5 singular, -6 inverse failed.
    success, converged
        ``(B,)`` bool: ``status == 0`` (a stopping criterion was met).
    fun
        ``(B,)``: the final per-sample losses.
    counts, message, method, step_size, options
        As in :class:`physgrad.Result` (``counts`` counts batched calls).
    """

    x: Tensor
    xs: Tensor
    losses: Tensor
    times: Tensor
    method: str
    step_size: float
    options: dict = field(default_factory=dict)
    nit: int = 0
    nits: Optional[Tensor] = None
    counts: dict = field(default_factory=dict)
    message: str = ""
    converged: Optional[Tensor] = None
    success: Optional[Tensor] = None
    status: Optional[Tensor] = None
    fun: Optional[Tensor] = None

    @property
    def rel_losses(self) -> Tensor:
        """``L_k / L_0`` per sample (1 where ``L_0 = 0``)."""
        L0 = self.losses[0]
        return torch.where(L0 > 0, self.losses / torch.where(L0 > 0, L0, torch.ones_like(L0)),
                           torch.ones_like(self.losses))

    def status_message(self, b: int) -> str:
        """Why sample ``b`` stopped, in words."""
        return STATUS[int(self.status[b])]

    def __repr__(self) -> str:
        return (f"BatchResult(method={self.method!r}, B={self.losses.shape[1]}, nit={self.nit}, "
                f"converged={int(self.converged.sum())}, failed={int((self.status < 0).sum())})")


def _progress_bar(progress, steps, method):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.std import tqdm  # plain text: no widget manager needed on the website

    return tqdm(total=steps, desc=f"{method} (batched)", leave=False)


def _norm(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t, dim=-1)


def optimize(problem, x0: Tensor, method: str = "gd", steps: int = 100, step_size: Optional[float] = None, *,
             tol: Optional[float] = None, atol: Optional[float] = None, gtol: Optional[float] = None,
             xtol: Optional[float] = None, callback: Optional[Callable] = None, progress: Optional[bool] = None,
             time_budget: Optional[float] = None, on_nonfinite: str = "raise", keep_xs: bool = True, state=None,
             check_derivatives: bool = False, **options) -> BatchResult:
    r"""Run ``method`` on every sample of a batched problem at once (see the module docstring).

    Same arguments and checks as :func:`physgrad.optimize`, with these per-sample meanings:
    ``tol``, ``atol``, ``gtol`` and ``xtol`` stop (freeze) each sample on its own;
    ``callback(k, x, losses)`` gets the whole batch and returning ``True`` stops all; the run
    ends when every sample is frozen or at ``steps``. A failing sample never raises: it is frozen
    at its last finite iterate and reported in ``status`` (``on_nonfinite`` is checked but has no
    effect). Errors that concern the whole batch (wrong shapes, an inverse that raises) raise as
    usual, with ``err.result``. ``state``: a state of an earlier batched run of the same shape.
    """
    spec, step_size, tols, kw, state_kw = U.check_run(
        method, steps, step_size, dict(tol=tol, atol=atol, gtol=gtol, xtol=xtol), time_budget, on_nonfinite,
        options, state)
    tol, atol, gtol, xtol = tols["tol"], tols["atol"], tols["gtol"], tols["xtol"]
    x = problem.check_x(x0, "x0").detach().clone()
    view = BatchView(problem, x)
    B = view.B
    if state is None:
        state = spec.make_state(kw, state_kw)
    elif isinstance(state, U.LMState):
        state.stalled = False
    guard = spec.growth_guard and state is None
    dev = x.device
    with count_calls() as counts:
        if x.numel():  # the entrance checks of a single run, on the batch as one function of x
            problem._entrance(x, method, options, check_derivatives)
        y = problem.simulate(x).reshape(B, -1)  # (the entrance's trial P(x0), if it made one)
        x = x.reshape(B, view.n)
        U.check_dtypes(spec, x, y)
        if spec.matrix and not (method == "ig" and kw.get("solver") in ("lsqr", "cg")):
            k = view.n if spec.matrix == "nn" else view.m
            check_memory(B * _dense_bytes(k, view.n, x.dtype), f"the {B} per-sample {k}x{view.n} matrices of "
                                                                f"batched {method!r}")
        L = view._half_sq(y - view.Y).detach()
        if not bool(torch.isfinite(L).all()):
            bad = torch.nonzero(~torch.isfinite(L)).flatten().tolist()
            raise E.nonfinite_start(float(L[bad[0]]), bad if B > 1 else None)
        if step_size is None:  # gd / adam: the heuristic at x0, the smallest over the samples
            step_size = U.default_learning_rate(method, view, x)
        L0, X0 = L.clone(), x.clone()
        status = torch.full((B,), E.STEP_LIMIT, dtype=torch.long, device=dev)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        if atol is not None:
            done |= L0 <= atol
        if tol is not None:
            done |= L0 <= tol * L0
        status[done] = E.CONVERGED
        active = ~done
        nits = torch.zeros(B, dtype=torch.long, device=dev)
        x_ref = _norm(x) if guard else None
        rec = dict(xs=[x.clone()], losses=[L.clone()], times=[0.0], method=method, step_size=step_size,
                   options=dict(kw, **state_kw), counts=counts, view=view, keep_xs=keep_xs)
        message = f"reached the step limit ({steps})"
        bar = _progress_bar(progress, steps, method)
        t_start, k, phase = time.perf_counter(), -1, "step"

        def freeze(mask, code):
            nonlocal status, active
            status = torch.where(mask, code, status)
            active = active & ~mask

        try:
            for k in range(steps):
                phase = "step"
                if not bool(active.any()):
                    message = f"every sample stopped after {k} steps"
                    break
                if y is not None:
                    view.remember(x, y)  # pg starts from P(x_k) of the last loss evaluation
                step = spec.kernel(view, x, step_size, active, state, **kw)
                fail = torch.where(active, step.fail if step.fail is not None else 0, 0)
                if step.dx is not None:
                    fail = torch.where(active & (fail == 0) & ~torch.isfinite(step.dx).all(-1), E.NONFINITE, fail)
                freeze(fail != 0, fail)
                x_step = step.x_next if step.x_next is not None else x + torch.where(
                    active[:, None], step.dx, torch.zeros_like(step.dx))
                x_new = torch.where(active[:, None], x_step, x)
                if gtol is None:
                    y_new = view.simulate(x_new)
                    L_new = view._half_sq(y_new - view.Y)
                else:
                    (L_new, g_new), y_new = view.value_and_grad(x_new), None
                bad = active & ~torch.isfinite(L_new)
                freeze(bad, E.NONFINITE)
                x_new, L_new = torch.where(bad[:, None], x, x_new), torch.where(bad, L, L_new)
                if y_new is not None:  # (a sample sent back to x_k keeps P(x_k))
                    y_new = torch.where(bad[:, None], y, y_new)
                nits = nits + active.long()
                x_prev, L_prev, x, L, y = x, L, x_new, L_new, y_new
                if keep_xs:
                    rec["xs"].append(x.clone())
                rec["losses"].append(L.clone())
                rec["times"].append(time.perf_counter() - t_start)
                if bar is not None:
                    bar.update(1)
                if guard and k == 0:  # the scale is max(||x0||, ||x1||), as in the single loop
                    x_ref = torch.maximum(x_ref, _norm(x))
                elif guard:
                    freeze(active & (_norm(x) > U.GROWTH_LIMIT * x_ref.clamp_min(torch.finfo(x.dtype).tiny)),
                           E.NONFINITE)
                conv = torch.zeros_like(active)
                if atol is not None:
                    conv |= L <= atol
                if tol is not None:
                    conv |= L <= tol * L0
                if gtol is not None:
                    conv |= _norm(g_new) <= gtol
                zero = active & (L == L_prev) & (L > 0) & ~(x != x_prev).any(-1)  # a stall, never a met xtol
                if xtol is not None:
                    conv |= ~zero & (_norm(x - x_prev) <= xtol * (xtol + _norm(x)))
                freeze(active & conv, E.CONVERGED)
                stalled = active & (zero | (step.stalled if torch.is_tensor(step.stalled) else False))
                if bool(stalled.any()):
                    freeze(stalled, torch.where(_at_precision(view, x, X0, L, L0), E.CONVERGED, E.STALLED))
                phase = "callback"
                if callback is not None and callback(k, x.reshape(view.x_shape).clone(), L.clone()):
                    message = f"stopped by callback after {k + 1} steps"
                    freeze(active, E.CALLBACK)
                    break
                if time_budget is not None and rec["times"][-1] > time_budget:
                    message = f"time budget of {time_budget:g} s used after {k + 1} steps"
                    freeze(active, E.TIME_BUDGET)
                    break
            else:
                if not bool(active.any()):
                    message = f"every sample stopped after {len(rec['losses']) - 1} steps"
        except (Exception, KeyboardInterrupt) as e:
            where = f"in the callback after step {k + 1}" if phase == "callback" else f"at step {k + 1}"
            if isinstance(e, PhysgradError) and phase == "step":
                e.args = (f"step {k + 1} of method {method!r} (batched): {e.args[0] if e.args else e}",) + e.args[1:]
            e.result = _result(rec, x, f"stopped {where}: {type(e).__name__}: {e}",
                               torch.where(active, E.EXCEPTION, status), nits, L0)
            if not isinstance(e, PhysgradError) and hasattr(e, "add_note"):
                e.add_note(f"physgrad: raised {where} of batched method {method!r}; the trajectory so far is in "
                           "err.result")
            raise
        finally:
            if bar is not None:
                bar.close()
    limited = status > 0
    status = torch.where(limited & (L == 0), E.CONVERGED, status)
    status = torch.where((status > 0) & (L > L0), E.UPHILL, status)
    return _result(rec, x, message, status, nits, L0)


def _at_precision(view, x, X0, L, L0) -> Tensor:
    """Per sample: L or the gradient fell to round-off relative to the start (a stall there is
    convergence to working precision, as for one problem)."""
    eps = torch.finfo(x.dtype).eps
    with count_calls(isolated=True):
        g, g0 = _norm(view.value_and_grad(x)[1]), _norm(view.value_and_grad(X0)[1])
    return (L <= eps * L0) | ((g0 > 0) & (g <= math.sqrt(eps) * g0))


def _result(rec, x, message, status, nits, L0) -> BatchResult:
    view, xs = rec["view"], list(rec["xs"])
    if not rec["keep_xs"] and len(rec["losses"]) > 1:
        xs.append(x.clone())
    Lk = rec["losses"][-1]
    nfail = int((status < 0).sum())
    if int((status == E.STEP_LIMIT).sum()):
        rel = torch.where(L0 > 0, Lk / torch.where(L0 > 0, L0, torch.ones_like(L0)), torch.zeros_like(L0))
        message += (f"; {int((status == E.STEP_LIMIT).sum())} of {view.B} samples met no stopping criterion "
                    f"(largest L/L0 = {float(rel[status == E.STEP_LIMIT].max()):.3g})")
    return BatchResult(
        x=x.reshape(view.x_shape), xs=torch.stack(xs).reshape(len(xs), *view.x_shape),
        losses=torch.stack(rec["losses"]), times=torch.tensor(rec["times"], dtype=torch.float64),
        method=rec["method"], step_size=rec["step_size"], options=rec["options"], nit=len(rec["losses"]) - 1,
        nits=nits, counts=dict(rec["counts"]),
        message=message + (f"; {nfail} of {view.B} samples failed (see status)" if nfail else ""),
        converged=status == E.CONVERGED, success=status == E.CONVERGED, status=status, fun=Lk,
    )


def numerical_inverse(forward: Callable[[Tensor], Tensor], iters: int = 20, damping: float = 1e-8,
                      tol: float = 1e-10, on_fail: str = "raise", jacobian_mode: str = "auto"):
    """The batched local inverse: :func:`physgrad.inverse.numerical_inverse` with ``batched=True``."""
    from .inverse import numerical_inverse as _inverse

    return _inverse(forward, iters=iters, damping=damping, tol=tol, on_fail=on_fail, batched=True,
                    jacobian_mode=jacobian_mode)
