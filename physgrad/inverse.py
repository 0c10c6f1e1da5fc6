r"""A numerical local inverse for any differentiable simulator (chapter 7, eq. ``num-inverse``).

The physical-gradient update (chapter 5, eq. ``pg-update``) needs ``P^{-1}(y; x_0)``: the ``x``
near ``x_0`` with ``P(x) = y``. Without a hand-written inverse simulator it can be computed
numerically by solving ``P(x) = y`` locally with damped Gauss–Newton
(Levenberg–Marquardt) iterations started at ``x_0``:

.. math:: x_{j+1} = x_j + d_j,\qquad
          d_j = \arg\min_d \lVert J_j d - (y - P(x_j)) \rVert^2 + \lambda_j \lVert D_j d \rVert^2 .

Here ``D_j = I``: of all pre-images the iteration moves toward the one closest to ``x_0`` in
the Euclidean norm (with ``λ = 0`` the step is ``J^+ (y − P(x_j))``, the minimum-norm one). The
dense solver is the library's one Levenberg–Marquardt, :func:`physgrad.lm.lm_step` (the same as
``ig`` with ``damping="auto"``, there with Moré's scaling): ``λ_j`` is placed by a trust region
as in MINPACK (but the first trial is the full Gauss–Newton step), never below ``damping``, and
only steps that lower ``||P(x) − y||`` are taken.
Near the solution ``λ_j`` goes to ``damping``, so the iteration is Newton's method and converges
quadratically. The matrix-free solvers (``lsqr``/``cg``, no SVD to place ``λ`` on a radius)
adapt ``λ`` directly: a trial step that does not lower the residual multiplies it by 10 and is
retried, an accepted one divides it by 3 (never below ``damping``).

Because the iteration starts at ``x_0`` and takes small (damped) steps, it picks the
pre-image on ``x_0``'s side, which is what "local inverse" means.

Failure policy: if ``||P(x) − y||`` does not drop below ``tol · max(||y||, ||P(x_0) − y||)``
within ``iters`` iterations, the inverse raises
:class:`~physgrad.errors.InverseSimulatorError` (``on_fail="raise"``, default), or returns the
best iterate found (``on_fail="best"``); either way ``inverse.last_info`` holds
``{"converged", "iterations", "residual_norm", "rel_residual", "lam"}`` of the last call.

The same iteration runs on a batch of independent samples (``batched=True``): every sample has
its own ``λ``, its own acceptance and its own stopping test; a single problem is the case of one
sample.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import InverseSimulatorError
from .lm import LMState, lm_step
from .problem import Problem
from .views import BatchView, SingleView

__all__ = ["numerical_inverse"]

Tensor = torch.Tensor


def numerical_inverse(forward: Callable[[Tensor], Tensor], iters: int = 20, damping: float = 1e-8,
                      tol: float = 1e-10, solver: str = "dense", on_fail: str = "raise",
                      solver_options=None, batched: bool = False,
                      jacobian_mode: str = "auto") -> Callable[[Tensor, Tensor], Tensor]:
    """Build ``inverse(y, x0) -> x`` solving ``forward(x) = y`` near ``x0`` (see module docstring).

    Cost per iteration: one dense Jacobian and its SVD plus one forward call per trial step, or
    one Krylov solve and one forward call.

    Parameters
    ----------
    forward
        The differentiable simulator ``P``.
    iters
        Maximum number of iterations. Dense: Levenberg–Marquardt steps, each one accepted step
        after the trials its trust region rejects (or a stall, which ends the solve); matrix-free:
        trial steps, accepted or rejected.
    damping
        The smallest Levenberg–Marquardt ``λ`` (and its starting value).
    tol
        Relative residual at which the solve counts as converged.
    solver
        ``"dense"`` (forms ``J``; small problems) or ``"lsqr"``/``"cg"`` (matrix-free,
        :func:`physgrad.matfree.solve_ls`; one problem only).
    on_fail
        ``"raise"`` or ``"best"`` (return the best iterate; check ``inverse.last_info``); for a
        batch also ``"nan"``: NaN rows for the samples that did not converge, which a batched
        ``pg`` run reports as failed (status -6) while the other samples go on.
    solver_options
        Extra keyword arguments for :func:`physgrad.matfree.solve_ls`.
    batched
        ``True``: ``forward`` maps ``(B, *x_shape) -> (B, *y_shape)`` with independent samples
        (always called on the full batch; per-sample Jacobians from
        :func:`physgrad.views.batch_jacobian`), and every sample runs its own iteration, all at
        once. Use it for ``pg`` on a batched :class:`~physgrad.problem.Problem`.
        ``inverse.last_info`` then holds per-sample tensors.
    jacobian_mode
        The :class:`~physgrad.problem.Problem` Jacobian mode of the inner problem.
    """
    if solver not in ("dense", "lsqr", "cg"):
        raise ValueError(f"solver must be 'dense', 'lsqr' or 'cg', got {solver!r}")
    if batched and (solver != "dense" or solver_options):
        raise ValueError("numerical_inverse(batched=True) supports solver='dense' only")
    if on_fail not in (("raise", "best", "nan") if batched else ("raise", "best")):
        raise ValueError(f"on_fail must be 'raise' or 'best'{', or nan' if batched else ''}, got {on_fail!r}")
    if iters < 1 or damping < 0:
        raise ValueError("iters must be >= 1 and damping >= 0")
    solver_options = dict(solver_options or {})

    def inverse(y: Tensor, x0: Tensor) -> Tensor:
        y = y.detach()
        prob = Problem(forward, y, name="numerical inverse", jacobian_mode=jacobian_mode, batched=batched)
        view = BatchView(prob, x0) if batched else SingleView(prob, x0.shape)
        B, f64 = view.B, torch.float64
        x = x0.detach().reshape(B, -1).clone()
        r = view.residual(x)  # counted: optimize reports it as inverse_forward
        rn = torch.linalg.vector_norm(r, dim=-1).to(f64)
        ynorm = torch.linalg.vector_norm(y.reshape(B, -1), dim=-1).to(f64)
        target = tol * torch.maximum(ynorm, rn)
        lam = torch.full((B,), float(damping), dtype=f64, device=x.device)
        it = torch.zeros(B, dtype=torch.long, device=x.device)
        broken = torch.zeros(B, dtype=torch.bool, device=x.device)
        # no radius yet: the first trial is the Gauss-Newton step (MINPACK's factor * ||x0|| would make
        # it tiny for a start near 0), and the trust region takes over from the first step's length
        state = LMState(lam=float(damping), lam_min=float(damping), scaling="identity", radius=math.inf)
        while True:
            act = (rn > target) & (it < iters) & ~broken
            if not bool(act.any()):
                break
            it = it + act.long()
            if solver == "dense":  # the one LM of physgrad: one accepted step per sample, or a stall
                step = lm_step(view, x, 1.0, act if batched else None, state, r)
                x, r = x + step.dx, step.r
                rn = torch.linalg.vector_norm(r, dim=-1).to(f64)
                ok = torch.ones_like(act) if step.ok is None else step.ok | ~act
                broken = broken | (act & (torch.as_tensor(step.stalled, device=x.device) | ~ok))
                lam = torch.as_tensor(state.lam, dtype=f64, device=x.device).expand(B)
                continue
            from . import matfree

            opts = {"tol": 1e-12, **solver_options}
            d, _ = matfree.solve_ls(prob, x.reshape(x0.shape), -r.reshape(y.shape), damping=float(lam),
                                    method=solver, **opts)
            d = torch.where(act[:, None], d.reshape(B, -1), torch.zeros_like(x))
            rt = view.residual(x + d)
            rtn = torch.linalg.vector_norm(rt, dim=-1).to(f64)
            acc = act & torch.isfinite(rtn) & (rtn < rn)
            x, r = torch.where(acc[:, None], x + d, x), torch.where(acc[:, None], rt, r)
            rn = torch.where(acc, rtn, rn)
            lam = torch.where(acc, torch.clamp(lam / 3.0, min=float(damping)), lam)
            rej = act & ~acc
            lam = torch.where(rej, torch.clamp(lam, min=1e-12) * 10.0, lam)
            broken = broken | (rej & (lam > 1e30))
        conv = rn <= target
        rel = rn / torch.clamp(target / tol, min=1e-300)
        if batched:
            inverse.last_info = {"converged": conv, "iterations": it, "residual_norm": rn, "rel_residual": rel,
                                 "lam": lam}
        else:
            inverse.last_info = {"converged": bool(conv), "iterations": int(it), "residual_norm": float(rn),
                                 "rel_residual": float(rel), "lam": float(lam)}
        if not bool(conv.all()):
            bad = torch.nonzero(~conv).flatten().tolist()
            if on_fail == "raise" and batched:
                raise InverseSimulatorError(
                    f"numerical_inverse (batched) did not converge for {len(bad)} of {B} samples "
                    f"(first: {bad[:10]}); take a smaller step_size, raise iters, or pass on_fail='best' "
                    "or on_fail='nan' (per-sample failure in a batched pg run).")
            if on_fail == "raise":
                raise InverseSimulatorError(
                    f"numerical_inverse did not converge: ||P(x) - y|| = {float(rn):.3g} after {int(it)} iterations "
                    f"(needed <= {float(target):.3g}). The requested y may be out of P's range near x0; take a "
                    "smaller step_size, raise iters, or pass on_fail='best'.")
            if on_fail == "nan":
                x = torch.where(conv[:, None], x, torch.full_like(x, float("nan")))
        return x.reshape(x0.shape)

    inverse.last_info = {}
    return inverse
