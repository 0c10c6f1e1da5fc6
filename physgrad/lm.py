r"""One Levenberg–Marquardt, over a leading batch axis: Moré's trust-region form, as in MINPACK.

Two parts of physgrad solve nonlinear least squares with damped Gauss–Newton steps, and both
call :func:`lm_step` here:

* :func:`physgrad.updates.ig` with ``damping="auto"`` (one step of the optimizer per call), and
* :func:`physgrad.inverse.numerical_inverse` (the dense solver): a local inverse simulator that
  iterates :func:`lm_step` until ``P(x) = y`` to a tolerance.

``lm_step(view, x, η, active, state)`` takes ``x`` of shape ``(B, n)`` and a view (a
:mod:`physgrad.views` object) with ``residual``, ``jacobian`` and ``count``; ``active`` is a
``(B,)`` mask of the samples to step, or ``None`` for one problem (then the state holds plain
numbers). It returns one accepted step per sample, or a zero step and ``stalled`` where no trial
step inside the trust region lowered the loss. See :class:`LMState` for the algorithm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

import torch

from .linalg import kept, sanitize, thin_svd
from .problem import squared_norm

__all__ = ["LMState", "LMStep", "lm_step"]

Tensor = torch.Tensor


@dataclass
class LMState:
    r"""State of :func:`~physgrad.lm.lm_step`, the Levenberg–Marquardt of :func:`~physgrad.updates.ig` with
    ``damping="auto"`` and of the numerical inverse: Moré's trust-region form, as in MINPACK's
    ``lmder``/``lmpar`` (Moré 1978).

    ``scale`` is ``D²``, the running maximum over the steps of ``diag(J^T J)`` (zeros read as 1).
    ``radius`` is the trust radius ``Δ`` in the scaled norm ``||D Δx||``; ``None`` starts it at
    ``factor · ||D x_0||`` (``factor`` itself when that is 0), as MINPACK does. Each trial step
    solves ``min ||J Δx + η r||² + λ ||D Δx||²`` with ``λ = 0`` (the Gauss–Newton step) when
    that step fits in ``1.1 Δ``, and otherwise the ``λ > 0`` for which ``||D Δx||`` is within
    10 % of ``Δ``. With the gain ratio ρ = actual / predicted decrease, ρ <= 0.25 shrinks ``Δ``
    (by a factor in [0.1, 0.5]) and ρ >= 0.75, or ``λ = 0``, sets ``Δ = 2 ||D Δx||``; a step is
    accepted when ρ >= 10⁻⁴. ``lam`` is the current λ (relative to the scale) after that
    update, the start of the next search.

    ``scaling="identity"`` uses ``D = I`` instead (Euclidean trust region and damping; the
    Gauss–Newton step is then the minimum-norm one, which a local inverse needs on an
    underdetermined problem). ``lam_min`` is a floor for λ (0, as MINPACK;
    :func:`~physgrad.inverse.numerical_inverse` passes its ``damping``). ``max_tries`` bounds the
    trial steps per call; ``rejected`` counts the rejected ones, and ``stalled`` is set when no
    trial step lowers the loss before ``Δ`` falls to round-off (``Δ <= eps · ||D x||``) or the
    tries run out. For one problem ``lam``, ``radius``, ``stalled`` and ``rejected`` are
    numbers; in a batch, ``(B,)`` tensors."""

    lam: Union[float, Tensor] = 0.0
    radius: Union[None, float, Tensor] = None
    factor: float = 100.0
    lam_min: float = 0.0
    scaling: str = "more"
    scale: Optional[Tensor] = None
    max_tries: int = 60
    stalled: Union[bool, Tensor] = False
    rejected: Union[int, Tensor] = 0


def _rows(v, B, dtype, device):
    if torch.is_tensor(v):
        return v.to(device=device, dtype=dtype).expand(B).clone()
    return torch.full((B,), v, dtype=dtype, device=device)


def _lm_par(s, c, keep, full_rank, delta, par, iters=10):
    r"""MINPACK's ``lmpar`` on the SVD of the scaled Jacobian ``A = J D^{-1} = U diag(s) V^T``,
    per row (all ``float64``; ``c = U^T (−η r)``).

    The scaled step is ``z(p) = V t(p)`` with ``t_i = s_i c_i / (s_i² + p)``, so that
    ``φ(p) = ||z(p)|| − Δ`` and its derivative are closed forms. ``p = 0`` (Gauss–Newton, over the
    kept singular values) when ``φ(0) <= 0.1 Δ``; otherwise Moré's safeguarded Newton iteration
    for ``φ(p) = 0`` from the previous ``p``, kept inside the bounds ``[l, u]`` (``l`` from the
    Newton step at 0 for a full-rank ``A``, else 0; ``u = ||A^T c|| / Δ``), stopping when
    ``|φ| <= 0.1 Δ`` (or after ``iters``). Returns ``(p, t)``."""
    dwarf = torch.finfo(torch.float64).tiny
    safe_s = torch.where(keep, s, torch.ones_like(s))
    t0 = torch.where(keep, c / safe_s, torch.zeros_like(c))
    z0 = t0.norm(dim=-1)
    fp = z0 - delta
    gauss_newton = fp <= 0.1 * delta
    # lower bound: the Newton step for φ at 0 (φ is convex and decreasing for a full-rank A)
    q = (torch.where(keep, t0 / safe_s, torch.zeros_like(t0)) ** 2).sum(-1)  # z0^T (A^T A)^{-1} z0
    parl = torch.where(full_rank & (q > 0), fp * z0 * z0 / (delta * torch.where(q > 0, q, 1.0)), 0.0)
    parl = torch.clamp(parl, min=0.0)
    gnorm = (s * c).norm(dim=-1)
    paru = gnorm / delta
    paru = torch.where(paru == 0, dwarf / torch.clamp(delta, max=0.1), paru)
    par = torch.minimum(torch.maximum(par, parl), paru)
    par = torch.where(par == 0, gnorm / torch.where(z0 > 0, z0, 1.0), par)
    done = gauss_newton.clone()
    for it in range(iters):
        if bool(done.all()):
            break
        par = torch.where(par == 0, torch.clamp(1e-3 * paru, min=dwarf), par)
        den = s * s + par[:, None]
        t = s * c / den
        zn = t.norm(dim=-1)
        fp_prev, fp = fp, zn - delta
        stop = (fp.abs() <= 0.1 * delta) | ((parl == 0) & (fp <= fp_prev) & (fp_prev < 0)) | (it == iters - 1)
        done = done | stop
        # Moré's Newton correction for φ(p) = 0, safeguarded by the bounds
        dphi = (t * t / den).sum(-1)  # z^T (A^T A + p)^{-1} z = −||z|| φ'(p)
        parc = fp * zn * zn / (delta * torch.where(dphi > 0, dphi, 1.0))
        parl = torch.where(~done & (fp > 0), torch.maximum(parl, par), parl)
        paru = torch.where(~done & (fp < 0), torch.minimum(paru, par), paru)
        par = torch.where(done, par, torch.maximum(parl, par + parc))
    par = torch.where(gauss_newton, torch.zeros_like(par), par)
    t = torch.where(gauss_newton[:, None], t0, s * c / (s * s + par[:, None]))
    return par, t


class LMStep(NamedTuple):
    """What :func:`lm_step` returns: ``dx`` ``(B, n)`` (zero where no step was accepted), ``ok``
    (``(B,)``: the samples whose Jacobian was finite; ``None`` for one problem), ``stalled`` (a
    number for one problem, else ``(B,)``) and ``r``, the residual at ``x + dx``."""

    dx: Tensor
    ok: Optional[Tensor]
    stalled: Union[bool, Tensor]
    r: Tensor


def lm_step(view, x: Tensor, eta: float, active: Optional[Tensor], st: LMState,
            r: Optional[Tensor] = None) -> LMStep:
    """One accepted Levenberg–Marquardt step per sample: Moré's trust region (MINPACK's lmder),
    every trial step from one SVD of the scaled Jacobian. ``r``: the residual at ``x`` when the
    caller has it (saves one forward simulation)."""
    factor = st.factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (0 < factor < math.inf):
        raise ValueError(f"LMState.factor must be a finite number > 0, got {factor!r}")
    if isinstance(st.lam_min, bool) or not isinstance(st.lam_min, (int, float)) or not (0 <= st.lam_min < math.inf):
        raise ValueError(f"LMState.lam_min must be a finite number >= 0, got {st.lam_min!r}")
    if st.scaling not in ("more", "identity"):
        raise ValueError(f"LMState.scaling must be 'more' or 'identity', got {st.scaling!r}")
    B, dev = x.shape[0], x.device
    f64 = torch.float64
    par = _rows(st.lam, B, f64, dev)
    stalled, rejected = _rows(st.stalled, B, torch.bool, dev), _rows(st.rejected, B, torch.long, dev)
    if r is None:
        r = view.residual(x)
    L = 0.5 * squared_norm(r, -1).double()
    J = view.jacobian(x)
    ok = None if active is None else active & torch.isfinite(J).flatten(1).all(-1)
    J = J if ok is None else sanitize(J, ok)
    d = (J * J).sum(-2)
    if st.scale is not None and st.scale.shape != d.shape:
        st.scale = st.scale.reshape(d.shape)
    st.scale = d if st.scale is None else torch.maximum(st.scale, d)
    D = torch.where(st.scale > 0, st.scale, torch.ones_like(st.scale)).sqrt()
    if st.scaling == "identity":  # Euclidean steps: the Gauss-Newton step is the minimum-norm one
        D = torch.ones_like(D)
    xnorm = (D * x).norm(dim=-1).double()
    first = st.radius is None
    if first:
        delta = factor * xnorm
        delta = torch.where(delta > 0, delta, torch.full_like(delta, float(factor)))
    else:
        delta = _rows(st.radius, B, f64, dev)
    A = J / D[:, None, :]
    U, S, Vh = thin_svd(A)
    keep = kept(A, S)
    full_rank = keep.all(-1) & torch.tensor(S.shape[-1] == x.shape[-1], device=dev)
    s = S.double()
    c = (U.mT @ (-eta * r).unsqueeze(-1)).squeeze(-1).double()
    gnorm = (s * c).norm(dim=-1)  # ||D^{-1} J^T (η r)||: zero at a stationary point, where no step helps
    start = torch.ones(B, dtype=torch.bool, device=dev) if ok is None else ok.clone()
    trying = start & (gnorm > 0)
    stalled = stalled | (start & ~trying)
    small = torch.finfo(x.dtype).eps * xnorm  # a radius this small moves x by round-off only
    out, r_out = torch.zeros_like(x), r
    lam_min = float(st.lam_min)
    for _ in range(st.max_tries):
        if not bool(trying.any()):
            break
        p, t = _lm_par(s, c, keep, full_rank, delta, par)
        if lam_min > 0:  # a floor for λ (numerical_inverse's damping)
            p = torch.clamp(p, min=lam_min)
            t = s * c / (s * s + p[:, None])
        par = torch.where(trying, p, par)
        dx = (Vh.mT @ t.to(x.dtype).unsqueeze(-1)).squeeze(-1) / D
        pnorm = t.norm(dim=-1)  # ||D dx||
        if first:  # MINPACK: the first step also bounds the initial radius
            delta = torch.where(trying, torch.minimum(delta, pnorm), delta)
            first = False
        Az2, pz2 = ((s * t) ** 2).sum(-1), par * (t * t).sum(-1)
        pred = 0.5 * ((2.0 / eta - 1.0) * Az2 + (2.0 / eta) * pz2)  # L − ½||r + J dx||², in closed form
        slope = -(Az2 + pz2) / eta  # ∇L · dx
        rt = view.residual(x + (dx if active is None else torch.where(trying[:, None], dx, torch.zeros_like(dx))))
        Lt = 0.5 * (rt * rt).sum(-1)
        actual = L - Lt.double()
        actual = torch.where(torch.isfinite(actual), actual, torch.full_like(actual, -math.inf))
        rho = torch.where(pred > 0, actual / torch.where(pred > 0, pred, 1.0), torch.zeros_like(pred))
        # MINPACK's radius update: shrink by the minimizer of the quadratic through L, slope and L(x+dx),
        # clamped to [0.1, 0.5]; grow to 2||D dx|| on a good step (or a Gauss-Newton step)
        temp = torch.where(actual >= 0, torch.full_like(actual, 0.5),
                           0.5 * slope / torch.where(slope + actual < 0, slope + actual, -1.0))
        temp = torch.where((Lt.double() >= 100 * L) | ~torch.isfinite(temp) | (temp < 0.1), 0.1, temp)
        temp = torch.clamp(temp, max=0.5)
        shrink = trying & (rho <= 0.25)
        grow = trying & ~shrink & ((par == 0) | (rho >= 0.75))
        delta = torch.where(shrink, temp * torch.minimum(delta, 10.0 * pnorm), delta)
        par = torch.where(shrink, par / temp, par)
        delta = torch.where(grow, 2.0 * pnorm, delta)
        par = torch.where(grow, 0.5 * par, par)
        acc = trying & (rho >= 1e-4)
        out, r_out = torch.where(acc[:, None], dx, out), torch.where(acc[:, None], rt, r_out)
        trying = trying & ~acc
        rejected = rejected + trying.long()
        tiny = trying & ((delta <= small) | (delta < torch.finfo(f64).tiny))
        stalled = stalled | tiny
        trying = trying & ~tiny
    stalled = stalled | trying
    if active is None:  # one problem: numbers, as a user reads them
        st.lam, st.radius, st.stalled, st.rejected = float(par), float(delta), bool(stalled), int(rejected)
        return LMStep(out, None, st.stalled, r_out)
    st.lam, st.radius, st.stalled, st.rejected = par, delta, stalled, rejected
    return LMStep(out, ok, stalled, r_out)


