r"""Dense linear algebra behind the inverted updates, over a leading batch axis.

One spectral step covers most of the book (chapter 4 and the HIG chapter): with the thin SVD
``J = U Σ V^T`` and a residual-like vector ``r``,

.. math:: \Delta x = V \, \Sigma^{-\kappa} \, U^T r ,

gives the Gauss–Newton / pseudo-inverse step for ``κ = 1`` (inverse gradients), the half-inverse
step for ``κ = 1/2`` and a gradient-like step ``J^T r`` for ``κ = -1``. Singular values below
``truncation · σ_max`` are **dropped** (their directions get no update), never clamped.

Least-squares problems are solved through the SVD, so rank deficiency is an ordinary, handled
case. The pseudo-inverse and damped solves have one fast path: a block that is safely far from
singular is solved by LU (a square, undamped system; pivots above ``eps^(1/3)`` of the largest)
or through the Cholesky factor of its (Jacobi-scaled, damped) normal equations (pivots above
``eps^(2/3)``, i.e. the same bar on ``cond(J)``) with one step of iterative refinement, which
costs a fraction of an SVD; every other block (rank deficient, badly conditioned) takes the SVD. The
same rule picks Newton's direction (:func:`descent_direction`). Damped solves use Marquardt's
diagonal scaling ``λ · diag(J^T J)`` by default, which keeps the step invariant under a
rescaling of P.

:func:`spectral`, :func:`damped`, :func:`symmetric` and :func:`descent_direction` take matrices
``(..., m, n)`` with any leading batch axes (one block per sample, as :mod:`torch.linalg` does)
and return ``(solution, flag)`` per block; they never raise for one bad block. The public
``*_solve`` functions are their one-matrix forms and raise
:class:`~physgrad.errors.SingularMatrixError` with a message that says what to do.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .errors import SingularMatrixError

__all__ = ["default_rcond", "spectral_solve", "pinv_solve", "damped_solve", "symmetric_solve",
           "spectral", "damped", "symmetric", "descent_direction", "sanitize"]

Tensor = torch.Tensor


def default_rcond(A: Tensor) -> float:
    """Relative cut-off for 'numerically zero' singular values: ``max(m, n) · eps(dtype)``."""
    return max(A.shape[-2:]) * torch.finfo(A.dtype).eps


def sanitize(M: Tensor, ok: Tensor) -> Tensor:
    """Zero the blocks of the samples that are not ``ok`` (frozen or non-finite), so that one bad
    block cannot make a batched LAPACK call fail for every sample."""
    if bool(ok.all()):
        return M
    return torch.where(ok.reshape(-1, *([1] * (M.ndim - 1))), M, torch.zeros((), dtype=M.dtype, device=M.device))


def _mv(A: Tensor, v: Tensor) -> Tensor:
    return (A @ v.unsqueeze(-1)).squeeze(-1)


def _mtv(A: Tensor, v: Tensor) -> Tensor:
    """``A^T v`` per block, as a product and a sum: many times faster than a batched matmul of
    small blocks on a CPU."""
    return (A * v.unsqueeze(-1)).sum(-2)


def _identity_where_not(L: Tensor, ok: Tensor) -> Tensor:
    """The factor ``L`` where ``ok``, the identity elsewhere (a safe triangular solve for every block)."""
    if bool(ok.all()):
        return L
    return sanitize(L, ok) + torch.diag_embed((~ok)[..., None].to(L.dtype).expand(L.shape[:-1]))


def thin_svd(J: Tensor):
    """``U, S, Vh`` of the thin SVD per block (a wide ``J`` goes through its tall transpose, which
    LAPACK factors faster)."""
    if J.shape[-2] < J.shape[-1]:
        V, S, Uh = torch.linalg.svd(J.mT, full_matrices=False)
        return Uh.mT, S, V.mT
    return torch.linalg.svd(J, full_matrices=False)


def kept(J: Tensor, S: Tensor, truncation: Optional[float] = None) -> Tensor:
    """The singular values ``S`` of ``J`` that count as nonzero: ``S > truncation · σ_max``
    (:func:`default_rcond` when ``truncation`` is ``None``)."""
    tol = default_rcond(J) if truncation is None else float(truncation)
    smax = S[..., :1] if S.shape[-1] else torch.zeros(S.shape[:-1] + (1,), dtype=S.dtype, device=S.device)
    return S > tol * smax


def _spectral(J: Tensor, r: Tensor, kappa: float, truncation: Optional[float]):
    U, S, Vh = thin_svd(J)
    keep = kept(J, S, truncation)
    coeff = torch.where(keep, _mv(U.mT, r) * torch.where(keep, S, torch.ones_like(S)).pow(-kappa),
                        torch.zeros_like(S))
    return _mv(Vh.mT, coeff), keep, S


def _pivot_floor(dtype) -> float:
    """Smallest accepted ratio ``min L_ii² / max L_ii²`` of a Cholesky factor on the fast paths:
    ``eps^(2/3)`` (about 4e-11 in float64, 2e-5 in float32). Above it the matrix is far from
    singular, so no eigen- or singular value would be dropped and the fast solve is accurate."""
    return torch.finfo(dtype).eps ** (2.0 / 3.0)


def _cholesky(A: Tensor):
    """``(L, ok)`` per symmetric block: ``ok`` where the Cholesky factor exists, is finite and its
    pivots stay above :func:`_pivot_floor` of the largest (a cheap guard, not a condition number)."""
    L, info = torch.linalg.cholesky_ex(A)
    piv = torch.diagonal(L, dim1=-2, dim2=-1)
    piv = piv * piv
    hi = piv.amax(-1) if piv.shape[-1] else torch.ones(piv.shape[:-1], dtype=piv.dtype, device=piv.device)
    ok = (info == 0) & torch.isfinite(piv).all(-1) & (hi > 0)
    lo = piv.amin(-1) if piv.shape[-1] else hi
    return L, ok & (lo > _pivot_floor(A.dtype) * hi)


def _cho_solve(L: Tensor, b: Tensor) -> Tensor:
    z = torch.linalg.solve_triangular(L, b.unsqueeze(-1), upper=False)
    return torch.linalg.solve_triangular(L.mT, z, upper=True).squeeze(-1)


def _col_scale(M: Tensor) -> Tensor:
    """Square roots of the diagonal of a Gram matrix, 1 where it is zero (Jacobi scaling)."""
    dg = torch.diagonal(M, dim1=-2, dim2=-1).abs()
    return torch.sqrt(torch.where(dg > torch.finfo(M.dtype).tiny, dg, torch.ones_like(dg)))


def _normal(J: Tensor, r: Tensor, lam=None, scale: Optional[Tensor] = None):
    r"""Fast least-squares solve ``min ||J dx − r||² + λ ||D dx||²`` through the Cholesky factor of
    the (Jacobi-scaled) normal equations ``(J^T J + λ D²) dx = J^T r``, with one step of iterative
    refinement on the residual (the corrected semi-normal equations). Without damping a wide ``J``
    uses ``J J^T`` (minimum-norm solution). Returns ``(dx, ok)``; blocks that are not ``ok`` (near
    singular, not finite) must be solved spectrally."""
    wide = lam is None and J.shape[-2] < J.shape[-1]
    A = J @ J.mT if wide else J.mT @ J
    if lam is not None:
        d = torch.ones_like(A[..., 0]) if scale is None else scale.to(A)
        A = A + torch.diag_embed(lam[..., None] * d)
    c = _col_scale(A)
    L, ok = _cholesky(A / (c[..., :, None] * c[..., None, :]))
    L = _identity_where_not(L, ok)

    def solve(res):  # the solution for a least-squares right-hand side
        if wide:
            return _mtv(J, _cho_solve(L, res / c) / c)
        return _cho_solve(L, _mtv(J, res) / c) / c

    dx = solve(r)
    res = r - _mv(J, dx)
    if lam is not None:  # the damped system's own residual: J^T res − λ D² dx, as a correction
        d = torch.ones_like(dx) if scale is None else scale.to(dx)
        dx = dx + _cho_solve(L, (_mtv(J, res) - lam[..., None] * d * dx) / c) / c
    else:
        dx = dx + solve(res)
    return dx, ok & torch.isfinite(dx).all(-1)


def _lu(J: Tensor, r: Tensor):
    """Fast solve of a square ``J dx = r`` by LU with partial pivoting (backward stable), where the
    pivots stay above ``eps^(1/3)`` of the largest (``cond(J)`` far below where the pseudo-inverse
    would drop anything, the same bar as :func:`_normal`'s). Returns ``(dx, ok)``."""
    LU, piv, info = torch.linalg.lu_factor_ex(J)
    dg = torch.diagonal(LU, dim1=-2, dim2=-1).abs()
    hi = dg.amax(-1)
    ok = (info == 0) & torch.isfinite(dg).all(-1) & (hi > 0) & (dg.amin(-1) > torch.finfo(J.dtype).eps ** (1 / 3) * hi)
    dx = torch.linalg.lu_solve(LU, piv, r.unsqueeze(-1)).squeeze(-1)
    return dx, ok & torch.isfinite(dx).all(-1)


def _fast_or_spectral(J: Tensor, r: Tensor, lam=None, scale: Optional[Tensor] = None):
    """:func:`_lu` (square, undamped) or :func:`_normal` where it is safe, the spectral solve for the
    remaining blocks only."""
    if J.ndim < 3 or J.shape[-1] == 0 or J.shape[-2] == 0:
        return None
    lead = J.shape[:-2]
    Jf, rf = J.reshape(-1, *J.shape[-2:]), r.reshape(-1, r.shape[-1])
    lf = None if lam is None else lam.reshape(-1)
    sf = None if scale is None else scale.reshape(-1, scale.shape[-1])
    if lf is None and Jf.shape[-1] == Jf.shape[-2]:
        dx, ok = _lu(Jf, rf)
    else:
        dx, ok = _normal(Jf, rf, lf, sf)
    singular = torch.zeros(ok.shape, dtype=torch.bool, device=ok.device)
    if not bool(ok.all()):
        bad = (~ok).nonzero().squeeze(-1)
        if lam is None:
            dxb, sb = spectral(Jf[bad], rf[bad], 1.0, None, fast=False)
        else:
            dxb, sb = damped(Jf[bad], rf[bad], lf[bad], None if sf is None else sf[bad], fast=False)
        dx = dx.index_copy(0, bad, dxb)
        singular = singular.index_copy(0, bad, sb)
    return dx.reshape(*lead, -1), singular.reshape(lead)


def spectral(J: Tensor, r: Tensor, kappa: float = 1.0, truncation: Optional[float] = None, fast: bool = True):
    r"""``V Σ^{-κ} U^T r`` per block: ``J`` ``(..., m, n)``, ``r`` ``(..., m)``. Returns
    ``(dx (..., n), singular (...))``; ``singular`` marks a numerically zero ``J`` (every
    singular value dropped, ``dx = 0``).

    For the pseudo-inverse (``κ = 1``, default truncation) of a batch (``J.ndim >= 3``) the
    blocks that are safely far from singular are solved by LU (square ``J``) or through the
    Cholesky factor of their normal equations (with one refinement step), which is many times
    cheaper than an SVD per block; the others take the SVD. ``fast=False`` always takes the SVD."""
    if fast and kappa == 1.0 and truncation is None:
        out = _fast_or_spectral(J, r)
        if out is not None:
            return out
    dx, keep, _ = _spectral(J, r, kappa, truncation)
    return dx, ~keep.any(-1)


def zero_matrix_error(smax: float) -> SingularMatrixError:
    """The error of a spectral solve whose matrix is numerically zero."""
    return SingularMatrixError(
        "the matrix to invert is numerically zero (largest singular value "
        f"{smax:.3g}); there is no direction to invert. The Jacobian vanishes at this x: "
        "start elsewhere, or use a first-order method (gd/adam) here.")


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
    dx, keep, S = _spectral(J, r, kappa, truncation)
    rank = int(keep.sum())
    if rank == 0:
        raise zero_matrix_error(float(S[0]) if S.numel() else 0.0)
    return dx, {"singular_values": S, "rank": rank, "dropped": int(S.numel() - rank)}


def pinv_solve(J: Tensor, r: Tensor, rcond: Optional[float] = None) -> Tensor:
    r"""Minimum-norm least-squares solution ``J^+ r`` (SVD pseudo-inverse, numerically-zero
    singular values dropped). Works for square, tall and wide ``J``."""
    return spectral_solve(J, r, kappa=1.0, truncation=rcond)[0]


def damped(J: Tensor, r: Tensor, lam, scale: Optional[Tensor] = None, fast: bool = True):
    r"""``argmin ||J dx − r||² + λ ||D dx||²`` per block, ``D² = diag(scale)`` (identity if
    ``None``), with ``λ`` a number or one value per block. Solved as the stacked least-squares
    problem ``[J; sqrt(λ) D] dx = [r; 0]`` through the SVD; ``λ = 0`` is the pseudo-inverse.
    Returns ``(dx, singular)`` as :func:`spectral`. In a batch, blocks whose damped normal
    equations are safely positive definite are solved through their Cholesky factor instead
    (see :func:`spectral`; ``fast=False`` always takes the SVD)."""
    if not torch.is_tensor(lam):
        if lam == 0:
            return spectral(J, r, fast=fast)
        lam = torch.full(J.shape[:-2], float(lam), dtype=J.dtype, device=J.device)
    lam = lam.to(J.dtype)
    if fast and bool((lam > 0).all()):
        out = _fast_or_spectral(J, r, lam, scale)
        if out is not None:
            return out
    n = J.shape[-1]
    d = torch.ones(J.shape[:-2] + (n,), dtype=J.dtype, device=J.device) if scale is None else scale.to(J)
    A = torch.cat([J, torch.diag_embed((lam[..., None] * d).sqrt())], dim=-2)
    b = torch.cat([r, torch.zeros(r.shape[:-1] + (n,), dtype=r.dtype, device=r.device)], dim=-1)
    dx, singular = spectral(A, b)
    zero = lam == 0
    if bool(zero.any()):
        dx0, sing0 = spectral(J, r)
        dx = torch.where(zero[..., None], dx0, dx)
        singular = torch.where(zero, sing0, singular)
    return dx, singular


def damped_solve(J: Tensor, r: Tensor, damping: float, scale: Optional[Tensor] = None) -> Tensor:
    r"""Solve ``min_dx ||J dx - r||^2 + λ ||D dx||^2`` (Levenberg–Marquardt / Tikhonov).

    ``D = diag(sqrt(scale))``; ``scale=None`` means the identity (plain Tikhonov ``λ I``).
    Pass ``scale = diag(J^T J)`` (or a running maximum of it, as Moré does) for Marquardt's
    scale-invariant damping. Solved as the stacked least-squares problem
    ``[J; sqrt(λ) D] dx = [r; 0]`` through the SVD, so no normal equations are formed.
    """
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    dx, singular = damped(J, r, float(damping), scale)
    if bool(singular):
        raise zero_matrix_error(float(torch.linalg.matrix_norm(J, 2)) if J.numel() else 0.0)
    return dx


def _eigh(H: Tensor, rcond: Optional[float]):
    lam, Q = torch.linalg.eigh(0.5 * (H + H.mT))
    tol = default_rcond(H) if rcond is None else float(rcond)
    amax = lam.abs().amax(-1, keepdim=True) if lam.shape[-1] else torch.zeros(lam.shape[:-1] + (1,), dtype=lam.dtype)
    return lam, Q, amax, tol


def symmetric(H: Tensor, g: Tensor, rcond: Optional[float] = None, fallback: str = "raise"):
    r"""``H^{-1} g`` per symmetric block through ``eigh``. A block is singular when
    ``min |λ_i| <= rcond · max |λ_i|``; then ``fallback`` decides: ``"raise"`` only flags it
    (``singular`` is true), ``"pinv"`` drops the near-zero eigenvalues, ``"gd"`` returns ``g``.
    Returns ``(dx, singular)``."""
    if fallback not in ("raise", "pinv", "gd"):
        raise ValueError(f"fallback must be 'raise', 'pinv' or 'gd', got {fallback!r}")
    lam, Q, amax, tol = _eigh(H, rcond)
    keep = lam.abs() > tol * amax
    regular = keep.all(-1) & (amax[..., 0] > 0)
    Qg = _mv(Q.mT, g)
    safe = torch.where(keep, lam, torch.ones_like(lam))
    full = _mv(Q, Qg / safe)
    if fallback == "raise":
        return full, ~regular
    if fallback == "pinv":
        part = _mv(Q, torch.where(keep, Qg / safe, torch.zeros_like(Qg)))
        part = torch.where((amax > 0), part, g)
    else:
        part = g
    return torch.where(regular[..., None], full, part), torch.zeros_like(regular)


def symmetric_solve(H: Tensor, g: Tensor, rcond: Optional[float] = None, fallback: str = "raise") -> Tensor:
    r"""Solve ``H dx = g`` for a symmetric (Hessian) matrix through its eigen-decomposition.

    ``H`` counts as singular when ``min |λ_i| <= rcond · max |λ_i|`` (default rcond
    :func:`default_rcond`). Then ``fallback`` decides: ``"raise"`` (default) raises
    :class:`~physgrad.errors.SingularMatrixError`; ``"pinv"`` drops the near-zero eigenvalues
    (pseudo-inverse); ``"gd"`` returns ``g`` itself, i.e. the first-order step the book names as
    the fallback for non-invertible Hessians (chapter 3).
    """
    dx, singular = symmetric(H, g, rcond, fallback)
    if bool(singular):
        raise singular_hessian_error(H, rcond)
    return dx


def singular_hessian_error(H: Tensor, rcond: Optional[float] = None) -> SingularMatrixError:
    """The error of a Newton step whose Hessian is singular (counts its zero eigenvalues)."""
    lam, _, amax, tol = _eigh(H, rcond)
    nzero = int((lam.abs() <= tol * amax).sum())
    return SingularMatrixError(
        f"the Hessian is singular ({nzero} of {lam.numel()} eigenvalues are numerically "
        f"zero; |lambda|_max = {float(amax.max()):.3g}). Newton's step is undefined here. Pass "
        "fallback='pinv' (drop those directions) or fallback='gd' (first-order step), or use an "
        "inverse-gradient method (method='ig' / 'hig').")


def descent_direction(H: Tensor, g: Tensor, rcond: Optional[float] = None):
    r"""Newton direction ``p = −H^{-1} g`` that is guaranteed to descend (``g·p < 0`` for g ≠ 0),
    per block. Where ``H`` is positive definite (every eigenvalue above ``rcond · max|λ|``) ``p``
    is the exact Newton direction. Otherwise the eigenvalues are modified (Nocedal & Wright
    §3.4): negative curvature flipped, near-zero curvature floored at ``√eps · max|λ|``; a zero
    Hessian gives ``p = −g``.

    The modification is made on the **Jacobi-scaled** Hessian ``D^{-1} H D^{-1}`` with
    ``D = diag(|H_ii|)^{1/2}``, so it does not depend on the units of x: rescaling
    ``x → S x`` by any positive diagonal ``S`` maps the direction to ``S p`` (floors relative to
    ``max|λ|`` of an unscaled Hessian would cripple the parameters with small curvature when the
    units differ by many orders). Blocks whose scaled Hessian has a Cholesky factor with pivots
    well above zero (default ``rcond`` only) skip the eigendecomposition. Returns
    ``(p, modified)``."""
    d = _col_scale(H)
    Hs = d[..., :, None] * d[..., None, :]
    # (into the scale's buffer, one (B, n, n) temporary less; out= is refused where autograd records)
    Hs, gs = H / Hs if Hs.requires_grad or H.requires_grad else torch.div(H, Hs, out=Hs), g / d
    p = torch.zeros_like(gs)
    pd = torch.zeros(gs.shape[:-1], dtype=torch.bool, device=gs.device)
    if rcond is None and H.ndim >= 3 and H.shape[-1]:
        L, pd = _cholesky(Hs)
        p = -_cho_solve(_identity_where_not(L, pd), gs)
        pd = pd & torch.isfinite(p).all(-1)
    rest = ~pd
    if bool(rest.any()):
        idx = rest.reshape(-1).nonzero().squeeze(-1)
        pe, ee = _modified_newton(Hs.reshape(-1, *Hs.shape[-2:])[idx], gs.reshape(-1, gs.shape[-1])[idx], rcond)
        p = p.reshape(-1, p.shape[-1]).index_copy(0, idx, pe).reshape(p.shape)
        pd = pd.reshape(-1).index_copy(0, idx, ~ee).reshape(pd.shape)
    p = p / d
    return torch.where(torch.isfinite(p).all(-1, keepdim=True), p, -g), ~pd


def _modified_newton(H: Tensor, g: Tensor, rcond: Optional[float]):
    lam, Q, amax, tol = _eigh(H, rcond)
    nonzero = amax[..., 0] > 0
    pd = (lam > tol * amax).all(-1) & nonzero
    floor = math.sqrt(torch.finfo(lam.dtype).eps) * amax
    denom = torch.where(pd[..., None], lam, torch.maximum(lam.abs(), floor))
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    p = -_mv(Q, _mv(Q.mT, g) / denom)
    return torch.where(nonzero[..., None], p, -g), ~pd
