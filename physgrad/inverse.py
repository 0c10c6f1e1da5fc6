r"""A numerical local inverse for any differentiable simulator (chapter 7, eq. ``num-inverse``).

The physical-gradient update (chapter 5, eq. ``pg-update``) needs ``P^{-1}(y; x_0)``: the ``x``
near ``x_0`` with ``P(x) = y``. Without a hand-written inverse simulator it can be computed
numerically by solving ``P(x) = y`` locally with damped Gauss–Newton
(Levenberg–Marquardt) iterations started at ``x_0``:

.. math:: x_{j+1} = x_j + d_j,\qquad
          d_j = \arg\min_d \lVert J_j d - (y - P(x_j)) \rVert^2 + \lambda_j \lVert D_j d \rVert^2 ,

with Marquardt's ``D_j^2 = diag(J_j^T J_j)`` for the dense solver (``D = I`` for the matrix-free
one). A trial step is accepted only if it lowers ``||P(x) − y||``; otherwise ``λ`` grows by 10
and the step is retried. After an accepted step ``λ`` shrinks by 3 (never below ``damping``),
so near the solution the iteration is Newton's method and converges quadratically.

Because the iteration starts at ``x_0`` and takes small (damped) steps, it picks the
pre-image on ``x_0``'s side, which is what "local inverse" means.

Failure policy: if ``||P(x) − y||`` does not drop below ``tol · max(||y||, ||P(x_0) − y||)``
within ``iters`` iterations, the inverse raises
:class:`~physgrad.errors.InverseSimulatorError` (``on_fail="raise"``, default), or returns the
best iterate found (``on_fail="best"``); either way ``inverse.last_info`` holds
``{"converged", "iterations", "residual_norm", "rel_residual", "lam"}`` of the last call.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import InverseSimulatorError
from .problem import Problem

__all__ = ["numerical_inverse"]

Tensor = torch.Tensor


def numerical_inverse(forward: Callable[[Tensor], Tensor], iters: int = 20, damping: float = 1e-8,
                      tol: float = 1e-10, solver: str = "dense", on_fail: str = "raise",
                      solver_options=None, batched: bool = False) -> Callable[[Tensor, Tensor], Tensor]:
    """Build ``inverse(y, x0) -> x`` solving ``forward(x) = y`` near ``x0`` (see module docstring).

    Cost per iteration: one forward call plus either one dense Jacobian or one Krylov solve.

    Parameters
    ----------
    forward
        The differentiable simulator ``P``.
    iters
        Maximum number of accepted-or-rejected Gauss–Newton iterations.
    damping
        The smallest Levenberg–Marquardt ``λ`` (and its starting value).
    tol
        Relative residual at which the solve counts as converged.
    solver
        ``"dense"`` (forms ``J``; small problems) or ``"lsqr"``/``"cg"`` (matrix-free,
        :func:`physgrad.matfree.solve_ls`).
    on_fail
        ``"raise"`` or ``"best"`` (return the best iterate; check ``inverse.last_info``).
    solver_options
        Extra keyword arguments for :func:`physgrad.matfree.solve_ls`.
    batched
        ``True``: ``forward`` maps ``(B, n) -> (B, m)`` with independent samples, and the inverse
        runs the same iteration per sample, all samples at once
        (:func:`physgrad.batched.numerical_inverse`; dense solver only; ``on_fail`` may also be
        ``"nan"``). Use it for ``pg`` on a batched :class:`~physgrad.problem.Problem`.
    """
    if batched:
        from . import batched as _b

        if solver != "dense" or solver_options:
            raise ValueError("numerical_inverse(batched=True) supports solver='dense' only")
        return _b.numerical_inverse(forward, iters=iters, damping=damping, tol=tol, on_fail=on_fail)
    if solver not in ("dense", "lsqr", "cg"):
        raise ValueError(f"solver must be 'dense', 'lsqr' or 'cg', got {solver!r}")
    if on_fail not in ("raise", "best"):
        raise ValueError(f"on_fail must be 'raise' or 'best', got {on_fail!r}")
    if iters < 1 or damping < 0:
        raise ValueError("iters must be >= 1 and damping >= 0")
    solver_options = dict(solver_options or {})

    def inverse(y: Tensor, x0: Tensor) -> Tensor:
        from .linalg import damped_solve

        y = y.detach()
        prob = Problem(forward, y, name="numerical inverse")
        x = x0.detach().clone()
        r = prob.simulate(x) - y  # counted: optimize reports it as inverse_forward
        rn = float(torch.linalg.vector_norm(r))
        target = tol * max(float(torch.linalg.vector_norm(y)), rn)
        lam = float(damping)
        it = 0
        info = inverse.last_info = {"converged": rn <= target, "iterations": 0, "residual_norm": rn,
                                    "rel_residual": rn / max(target / tol, 1e-300), "lam": lam}
        while rn > target and it < iters:
            it += 1
            if solver == "dense":
                J = prob.jacobian(x)
                # Marquardt-scaled damping; damped_solve falls back to the pseudo-inverse at lam = 0
                d = damped_solve(J, -r.reshape(-1), lam, (J * J).sum(0)).reshape(x.shape)
            else:
                from . import matfree

                opts = {"tol": 1e-12, **solver_options}
                d, _ = matfree.solve_ls(prob, x, -r, damping=lam, method=solver, **opts)
            xt = x + d
            rt = prob.simulate(xt) - y
            rtn = float(torch.linalg.vector_norm(rt))
            if math.isfinite(rtn) and rtn < rn:
                x, r, rn = xt, rt, rtn
                lam = max(lam / 3.0, float(damping))
            else:
                lam = max(lam, 1e-12) * 10.0
                if lam > 1e30:
                    break
        info.update(converged=rn <= target, iterations=it, residual_norm=rn,
                    rel_residual=rn / max(target / tol, 1e-300), lam=lam)
        if not info["converged"] and on_fail == "raise":
            raise InverseSimulatorError(
                f"numerical_inverse did not converge: ||P(x) - y|| = {rn:.3g} after {it} iterations "
                f"(needed <= {target:.3g}). The requested y may be out of P's range near x0; take a "
                "smaller step_size, raise iters, or pass on_fail='best'.")
        return x

    inverse.last_info = {}
    return inverse
