r"""Dense linear algebra behind the inverted updates.

One spectral step covers most of the book (chapter 4 and the HIG chapter): with the thin SVD
``J = U Σ V^T`` and a residual-like vector ``r``,

.. math:: \Delta x = V \, \Sigma^{-\kappa} \, U^T r ,

gives the Gauss–Newton / pseudo-inverse step for ``κ = 1`` (inverse gradients), the half-inverse
step for ``κ = 1/2`` and a gradient-like step ``J^T r`` for ``κ = -1``. Singular values below
``truncation · σ_max`` are **dropped** (their directions get no update), never clamped.

Least-squares problems are solved through the SVD (never the normal equations), so rank
deficiency is an ordinary, handled case. Damped solves use Marquardt's diagonal scaling
``λ · diag(J^T J)`` by default, which keeps the step invariant under a rescaling of P.
"""

from __future__ import annotations

from typing import Optional

import torch

from .errors import SingularMatrixError

__all__ = ["default_rcond", "spectral_solve", "pinv_solve", "damped_solve", "symmetric_solve"]

Tensor = torch.Tensor


def default_rcond(A: Tensor) -> float:
    """Relative cut-off for 'numerically zero' singular values: ``max(m, n) · eps(dtype)``."""
    return max(A.shape[-2:]) * torch.finfo(A.dtype).eps


def spectral_solve(J: Tensor, r: Tensor, kappa: float = 1.0, truncation: Optional[float] = None):
    r"""``V Σ^{-κ} U^T r`` from the thin SVD of ``J`` (shape ``(m, n)``), ``r`` of shape ``(m,)``.

    Singular values ``σ_i < truncation · σ_max`` are dropped (their terms are left out).
    ``truncation=None`` uses :func:`default_rcond`, i.e. only numerically-zero values go.

    Returns ``(dx, info)`` with ``dx`` of shape ``(n,)`` and ``info`` a dict holding the
    singular values, the number kept (``rank``) and the number dropped.

    Raises
    ------
    SingularMatrixError
        If ``J`` is numerically zero (every singular value dropped): no direction can be
        inverted, and returning ``dx = 0`` would stall silently.
    """
    if J.ndim != 2 or r.ndim != 1 or J.shape[0] != r.shape[0]:
        raise ValueError(f"spectral_solve expects J (m, n) and r (m,), got {tuple(J.shape)} and {tuple(r.shape)}")
    if J.shape[0] < J.shape[1]:  # wide J: LAPACK's SVD is faster on the tall transpose
        V, S, Uh = torch.linalg.svd(J.mT, full_matrices=False)
        U, Vh = Uh.mT, V.mT
    else:
        U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    tol = default_rcond(J) if truncation is None else float(truncation)
    smax = S[0] if S.numel() else torch.zeros((), dtype=S.dtype, device=S.device)
    keep = S > tol * smax
    rank = int(keep.sum())
    if rank == 0:
        raise SingularMatrixError(
            "the matrix to invert is numerically zero (largest singular value "
            f"{float(smax):.3g}); there is no direction to invert. The Jacobian vanishes at this x: "
            "start elsewhere, or use a first-order method (gd/adam) here."
        )
    coeff = (U[:, keep].mT @ r) * S[keep].pow(-kappa)
    dx = Vh[keep].mT @ coeff
    return dx, {"singular_values": S, "rank": rank, "dropped": int(S.numel() - rank)}


def pinv_solve(J: Tensor, r: Tensor, rcond: Optional[float] = None) -> Tensor:
    r"""Minimum-norm least-squares solution ``J^+ r`` (SVD pseudo-inverse, numerically-zero
    singular values dropped). Works for square, tall and wide ``J``."""
    return spectral_solve(J, r, kappa=1.0, truncation=rcond)[0]


def damped_solve(J: Tensor, r: Tensor, damping: float, scale: Optional[Tensor] = None) -> Tensor:
    r"""Solve ``min_dx ||J dx - r||^2 + λ ||D dx||^2`` (Levenberg–Marquardt / Tikhonov).

    ``D = diag(sqrt(scale))``; ``scale=None`` means the identity (plain Tikhonov ``λ I``).
    Pass ``scale = diag(J^T J)`` (or a running maximum of it, as Moré does) for Marquardt's
    scale-invariant damping. Solved as the stacked least-squares problem
    ``[J; sqrt(λ) D] dx = [r; 0]`` through the SVD, so no normal equations are formed.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    n = J.shape[1]
    if damping == 0:
        return pinv_solve(J, r)
    d = torch.ones(n, dtype=J.dtype, device=J.device) if scale is None else scale.to(J)
    A = torch.cat([J, torch.diag((damping * d).sqrt())], dim=0)
    b = torch.cat([r, torch.zeros(n, dtype=r.dtype, device=r.device)])
    return pinv_solve(A, b)


def symmetric_solve(H: Tensor, g: Tensor, rcond: Optional[float] = None, fallback: str = "raise") -> Tensor:
    r"""Solve ``H dx = g`` for a symmetric (Hessian) matrix through its eigen-decomposition.

    ``H`` counts as singular when ``min |λ_i| <= rcond · max |λ_i|`` (default rcond
    :func:`default_rcond`). Then ``fallback`` decides: ``"raise"`` (default) raises
    :class:`~physgrad.errors.SingularMatrixError`; ``"pinv"`` drops the near-zero eigenvalues
    (pseudo-inverse); ``"gd"`` returns ``g`` itself, i.e. the first-order step the book names as
    the fallback for non-invertible Hessians (chapter 3).
    """
    if fallback not in ("raise", "pinv", "gd"):
        raise ValueError(f"fallback must be 'raise', 'pinv' or 'gd', got {fallback!r}")
    Hs = 0.5 * (H + H.mT)
    lam, Q = torch.linalg.eigh(Hs)
    tol = default_rcond(H) if rcond is None else float(rcond)
    amax = lam.abs().max()
    keep = lam.abs() > tol * amax
    if bool(keep.all()) and float(amax) > 0:
        return Q @ ((Q.mT @ g) / lam)
    if fallback == "raise":
        raise SingularMatrixError(
            f"the Hessian is singular ({int((~keep).sum())} of {lam.numel()} eigenvalues are numerically "
            f"zero; |lambda|_max = {float(amax):.3g}). Newton's step is undefined here. Pass "
            "fallback='pinv' (drop those directions) or fallback='gd' (first-order step), or use an "
            "inverse-gradient method (method='ig' / 'hig')."
        )
    if fallback == "gd" or float(amax) == 0:
        return g.clone()
    return Q[:, keep] @ ((Q[:, keep].mT @ g) / lam[keep])
