r"""Batches of independent problems: ``Problem(forward, target, batched=True)``.

A batched problem holds ``B`` independent inverse problems at once. ``x`` has shape
``(B, *x_shape)``, ``P(x)`` and the target ``y*`` have shape ``(B, *y_shape)``, and row ``b`` of
``P(x)`` depends on row ``b`` of ``x`` only (the simulator must not couple samples). The loss of
sample ``b`` is ``L_b(x_b) = ½||P(x)_b − y*_b||²``.

:func:`physgrad.optimize` recognises ``problem.batched`` and hands the run to :func:`optimize`
here, which applies every update of :mod:`physgrad.updates` to all samples at once:

* per-sample Jacobians ``(B, m, n)`` and Hessians ``(B, n, n)`` from ``torch.func`` (see
  :func:`batch_jacobian`): forward mode pushes one tangent per parameter through the whole batch,
  reverse mode pulls one cotangent per output; because the samples are independent this yields
  every sample's own Jacobian at the cost of ``n`` (or ``m``) batched passes, exactly what
  ``vmap(jacfwd(P_b))`` over the samples computes, but with ``forward`` always called on the full
  batch (so a simulator may hold per-sample data such as initial states);
* block-diagonal solves with batched :mod:`torch.linalg` (``eigh``, ``svd``), one block per
  sample; memory and time are linear in ``B`` (nothing of size ``(B·n)²`` is formed);
* per-sample step lengths (Armijo backtracking and strong-Wolfe searches), per-sample
  Levenberg–Marquardt damping (``ig`` with ``damping="auto"``), per-sample BFGS matrices;
* per-sample stopping: a sample that reaches ``tol``, stalls, or fails (non-finite update or
  loss, singular Hessian or Jacobian, non-finite inverse) is frozen at its last finite iterate
  while the others go on. A failing sample never raises and never changes the other samples.

Each sample follows the trajectory that the single-problem :func:`physgrad.optimize` would give it,
up to round-off (the tests check 1e-12 in float64). The defaults are the library's safe ones:
``newton`` and ``hig`` search the step with Armijo backtracking, ``bfgs`` with strong Wolfe;
``line_search=None`` gives the pure fixed step.

:func:`numerical_inverse` is the batched local inverse (per-sample Levenberg–Marquardt) for
``method="pg"``; it is also reachable as ``physgrad.inverse.numerical_inverse(P, batched=True)``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.func import jacfwd, jacrev

from .errors import InverseSimulatorError, NonFiniteError, PhysgradError, ShapeError
from .linalg import default_rcond
from .updates import wolfe_search

__all__ = ["optimize", "BatchResult", "numerical_inverse", "batch_jacobian", "STATUS", "METHODS"]

Tensor = torch.Tensor

METHODS = ("gd", "adam", "newton", "bfgs", "ig", "pg", "hig")

#: per-sample status codes of :class:`BatchResult`
STATUS = {
    0: "running until the step limit",
    1: "reached L/L0 <= tol",
    2: "no further decrease possible (Levenberg-Marquardt stalled)",
    3: "the update or the loss became non-finite (NaN/Inf)",
    4: "singular Hessian or numerically zero Jacobian",
    5: "the inverse simulator returned non-finite values",
}
_RUNNING, _CONVERGED, _STALLED, _NONFINITE, _SINGULAR, _INVERSE = range(6)
_FAILURES = (_NONFINITE, _SINGULAR, _INVERSE)


# ============================================================================ derivatives
def batch_jacobian(forward: Callable[[Tensor], Tensor], x: Tensor, mode: str = "auto") -> Tensor:
    r"""Per-sample Jacobians ``J_b = ∂P(x)_b / ∂x_b`` of a batched simulator, shape ``(B, m, n)``.

    ``forward`` maps ``(B, n) -> (B, m)`` with independent rows. ``mode="fwd"`` differentiates
    ``z ↦ P(x + z)`` for one shared ``z`` of shape ``(n,)`` (``n`` batched JVPs); ``"rev"``
    differentiates ``x ↦ Σ_b P(x)_b`` (``m`` batched VJPs). ``"auto"`` picks forward mode when
    ``n <= m``. Both are exact for independent samples and cost ``O(B)`` memory."""
    B, n = x.shape
    x = x.detach()
    if mode == "auto":
        m = forward(x).shape[-1]
        mode = "fwd" if n <= m else "rev"
    if mode == "fwd":
        z0 = torch.zeros(n, dtype=x.dtype, device=x.device)
        J = jacfwd(lambda z: forward(x + z))(z0)
    elif mode == "rev":
        J = jacrev(lambda xx: forward(xx).sum(0))(x).permute(1, 0, 2)
    else:
        raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")
    return J.to(x.dtype)


class _Batch:
    """The batched problem seen as flat ``(B, n) -> (B, m)`` with per-sample losses."""

    def __init__(self, problem, x0: Tensor):
        self.problem = problem
        if x0.ndim < 2:
            raise ShapeError(f"a batched problem needs x0 of shape (B, n) (or (B, ...)); got {tuple(x0.shape)}")
        tgt = problem.target
        if tgt.ndim < 2 or tgt.shape[0] != x0.shape[0]:
            raise ShapeError(f"a batched problem needs a target of shape (B, m) with B = x0.shape[0] = "
                             f"{x0.shape[0]}; got {tuple(tgt.shape)}")
        self.B = x0.shape[0]
        self.x_shape = tuple(x0.shape)
        self.Y = problem.target_like(x0).reshape(self.B, -1)
        self.m = self.Y.shape[1]
        self.n = x0[0].numel()

    def count(self, key):
        self.problem._count(key)

    def P(self, xf: Tensor) -> Tensor:
        """Flat batched forward ``(B, n) -> (B, m)`` (no counting, usable inside transforms)."""
        y = self.problem.forward(xf.reshape(self.x_shape))
        if not torch.is_tensor(y):
            raise TypeError(f"P(x) must return a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape) != tuple(self.problem.target.shape):
            raise ShapeError(f"P(x) has shape {tuple(y.shape)} but the target y* has shape "
                             f"{tuple(self.problem.target.shape)}")
        return y.reshape(self.B, -1)

    def residual(self, xf: Tensor) -> Tensor:
        self.count("forward")
        return self.P(xf) - self.Y

    @staticmethod
    def _half_sq(r: Tensor) -> Tensor:
        return 0.5 * (r * r).sum(-1)

    def losses(self, xf: Tensor) -> Tensor:
        return self._half_sq(self.residual(xf.detach()))

    def value_and_grad(self, xf: Tensor):
        self.count("grad")
        xr = xf.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self._half_sq(self.P(xr) - self.Y)
            (g,) = torch.autograd.grad(L.sum(), xr)
        return L.detach(), g

    def jacobian(self, xf: Tensor) -> Tensor:
        self.count("jacobian")
        mode = self.problem.jacobian_mode
        if mode == "auto":
            mode = "fwd" if self.n <= self.m else "rev"
        return batch_jacobian(self.P, xf, mode)

    def grad_and_hessian(self, xf: Tensor):
        """Per-sample gradients ``(B, n)`` and Hessians ``(B, n, n)`` (forward over reverse)."""
        self.count("grad")
        self.count("hessian")
        xf = xf.detach()

        def total_grad(z):
            def total(xx):
                return self._half_sq(self.P(xx) - self.Y).sum()

            g = torch.func.grad(total)(xf + z)
            return g, g

        z0 = torch.zeros(self.n, dtype=xf.dtype, device=xf.device)
        H, g = jacfwd(total_grad, has_aux=True)(z0)
        return g.to(xf.dtype), H.to(xf.dtype)


# ============================================================================ batched linear algebra
def _sanitize(M: Tensor, ok: Tensor) -> Tensor:
    """Replace the blocks of samples that are not ``ok`` (frozen, or non-finite) by zeros, so that
    one bad block cannot make a batched LAPACK call fail for everyone."""
    return torch.where(ok.reshape(-1, *([1] * (M.ndim - 1))), M, torch.zeros((), dtype=M.dtype, device=M.device))


def _spectral(J: Tensor, r: Tensor, kappa: float, truncation: Optional[float]):
    """Batched :func:`physgrad.linalg.spectral_solve`: ``V Σ^{-κ} U^T r`` per sample.
    Returns ``(dx (B, n), singular (B,))`` where ``singular`` marks a numerically zero ``J_b``."""
    if J.shape[-2] < J.shape[-1]:
        V, S, Uh = torch.linalg.svd(J.mT, full_matrices=False)
        U, Vh = Uh.mT, V.mT
    else:
        U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    tol = default_rcond(J) if truncation is None else float(truncation)
    smax = S[:, :1] if S.shape[-1] else torch.zeros(S.shape[0], 1, dtype=S.dtype, device=S.device)
    keep = S > tol * smax
    Ur = (U.mT @ r.unsqueeze(-1)).squeeze(-1)
    coeff = torch.where(keep, Ur * torch.where(keep, S, torch.ones_like(S)).pow(-kappa), torch.zeros_like(S))
    dx = (Vh.mT @ coeff.unsqueeze(-1)).squeeze(-1)
    return dx, keep.sum(-1) == 0


def _damped(J: Tensor, r: Tensor, lam: Tensor, scale: Optional[Tensor]):
    """Batched :func:`physgrad.linalg.damped_solve` with a per-sample ``λ`` (``(B,)``):
    ``min ||J dx − r||² + λ ||D dx||²`` through the SVD of ``[J; sqrt(λ) D]``; ``λ = 0`` gives
    the pseudo-inverse, as in the single version."""
    B, m, n = J.shape
    lam = lam.to(J.dtype)
    d = torch.ones(B, n, dtype=J.dtype, device=J.device) if scale is None else scale.to(J)
    A = torch.cat([J, torch.diag_embed((lam[:, None] * d).sqrt())], dim=-2)
    b = torch.cat([r, torch.zeros(B, n, dtype=r.dtype, device=r.device)], dim=-1)
    dx, singular = _spectral(A, b, 1.0, None)
    zero = lam == 0
    if bool(zero.any()):
        dx0, sing0 = _spectral(J, r, 1.0, None)
        dx = torch.where(zero[:, None], dx0, dx)
        singular = torch.where(zero, sing0, singular)
    return dx, singular


def _symmetric(H: Tensor, g: Tensor, rcond: Optional[float], fallback: str):
    """Batched :func:`physgrad.linalg.symmetric_solve`: ``H_b^{-1} g_b`` through ``eigh``.
    Returns ``(dx, singular)``; with ``fallback="raise"`` a singular sample is only flagged."""
    if fallback not in ("raise", "pinv", "gd"):
        raise ValueError(f"fallback must be 'raise', 'pinv' or 'gd', got {fallback!r}")
    lam, Q = torch.linalg.eigh(0.5 * (H + H.mT))
    tol = default_rcond(H) if rcond is None else float(rcond)
    amax = lam.abs().max(-1, keepdim=True).values
    keep = lam.abs() > tol * amax
    regular = keep.all(-1) & (amax[:, 0] > 0)
    Qg = (Q.mT @ g.unsqueeze(-1)).squeeze(-1)
    safe = torch.where(keep, lam, torch.ones_like(lam))
    full = (Q @ (Qg / safe).unsqueeze(-1)).squeeze(-1)
    if fallback == "raise":
        return full, ~regular
    if fallback == "pinv":
        part = (Q @ torch.where(keep, Qg / safe, torch.zeros_like(Qg)).unsqueeze(-1)).squeeze(-1)
        part = torch.where((amax[:, 0] > 0)[:, None], part, g)
    else:
        part = g
    return torch.where(regular[:, None], full, part), torch.zeros_like(regular)


# ============================================================================ line searches
def _armijo(ops: _Batch, x, L0, g, p, t0: float, active, c1=1e-4, shrink=0.5, max_tries=40) -> Tensor:
    """Masked, vectorized ``physgrad.updates._armijo``: per sample the largest
    ``t = t0 · shrink^k`` with ``L(x + t p) <= L(x) + c1 t g·p`` (tests in float64, like the
    single version's Python floats)."""
    slope = (g * p).sum(-1).double()
    L0 = L0.double()
    t = torch.full((ops.B,), float(t0), dtype=torch.float64, device=x.device)
    descent = slope < 0
    t = torch.where(descent, t, torch.zeros_like(t))  # not a descent direction: no step
    searching = active & descent
    for _ in range(max_tries):
        if not bool(searching.any()):
            break
        tt = torch.where(searching, t, torch.zeros_like(t)).to(x.dtype)
        Lt = ops.losses(x + tt[:, None] * p).double()
        ok = torch.isfinite(Lt) & (Lt <= L0 + c1 * t * slope)
        searching = searching & ~ok
        t = torch.where(searching, t * shrink, t)
    t = torch.where(searching, torch.zeros_like(t), t)  # no tried length decreased L: no step
    return t.to(x.dtype)


def _wolfe(ops: _Batch, x, L0, g, p, t0: float, active) -> Tensor:
    """Per-sample strong-Wolfe line search; every round evaluates all pending trials at once."""
    phi0 = L0.tolist()
    dphi0 = (g * p).sum(-1).tolist()
    t_out = [0.0] * ops.B
    gens, req = {}, {}
    for b in torch.nonzero(active).flatten().tolist():
        gen = wolfe_search(phi0[b], dphi0[b], t0)
        try:
            req[b] = gen.send(None)
            gens[b] = gen
        except StopIteration as stop:
            t_out[b] = stop.value
    while gens:
        tt = [0.0] * ops.B
        for b, t in req.items():
            tt[b] = t
        tt = torch.tensor(tt, dtype=x.dtype, device=x.device)
        Lt, gt = ops.value_and_grad(x + tt[:, None] * p)
        f, d = Lt.tolist(), (gt * p).sum(-1).tolist()
        for b in list(gens):
            try:
                req[b] = gens[b].send((f[b], d[b]))
            except StopIteration as stop:
                t_out[b] = stop.value
                del gens[b], req[b]
    return torch.tensor(t_out, dtype=x.dtype, device=x.device)


def _line_search(kind, ops, x, L, g, p, t0, active) -> Tensor:
    if kind is None:
        return torch.full((ops.B,), float(t0), dtype=x.dtype, device=x.device)
    if kind == "armijo":
        return _armijo(ops, x, L, g, p, t0, active)
    if kind == "wolfe":
        return _wolfe(ops, x, L, g, p, t0, active)
    raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {kind!r}")


def _check_ls(kind):
    if kind not in (None, "armijo", "wolfe"):
        raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {kind!r}")


# ============================================================================ per-sample updates
# Each step function returns (dx (B, n), failure code per sample (B,) int, 0 = none).
def _no_fail(ops, x):
    return torch.zeros(ops.B, dtype=torch.long, device=x.device)


def _gd(ops, x, eta, active, st):
    _, g = ops.value_and_grad(x)
    return -eta * g, _no_fail(ops, x)


@dataclass
class _AdamState:
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    param: Optional[Tensor] = None
    opt: Optional[torch.optim.Optimizer] = None


def _adam(ops, x, eta, active, st):
    if st.param is None:
        st.param = x.detach().clone().requires_grad_(True)
        st.opt = torch.optim.Adam([st.param], lr=eta, betas=st.betas, eps=st.eps)
    with torch.no_grad():
        st.param.copy_(x)
    _, g = ops.value_and_grad(x)
    st.param.grad = g.detach().clone()
    st.opt.step()
    return (st.param.detach() - x).clone(), _no_fail(ops, x)


def _descent_direction(H: Tensor, g: Tensor, rcond: Optional[float]) -> Tensor:
    """Batched :func:`physgrad.updates.descent_newton_direction`: the exact Newton direction
    where ``H_b`` is positive definite, else eigenvalues ``max(|λ|, √eps·max|λ|)``; ``−g`` for
    a zero Hessian."""
    lam, Q = torch.linalg.eigh(0.5 * (H + H.mT))
    tol = default_rcond(H) if rcond is None else float(rcond)
    amax = lam.abs().max(-1, keepdim=True).values
    pd = (lam > tol * amax).all(-1) & (amax[:, 0] > 0)
    floor = math.sqrt(torch.finfo(lam.dtype).eps) * amax
    denom = torch.where(pd[:, None], lam, torch.maximum(lam.abs(), floor))
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    Qg = (Q.mT @ g.unsqueeze(-1)).squeeze(-1)
    p = -(Q @ (Qg / denom).unsqueeze(-1)).squeeze(-1)
    return torch.where((amax[:, 0] > 0)[:, None], p, -g)


def _newton(ops, x, eta, active, st, fallback="raise", rcond=None, line_search="armijo"):
    g, H = ops.grad_and_hessian(x)
    ok = active & torch.isfinite(H).flatten(1).all(-1) & torch.isfinite(g).all(-1)
    if line_search is not None and line_search not in ("armijo", "wolfe"):
        raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {line_search!r}")
    if line_search is not None:  # the safe form: always a descent direction, as updates.newton
        p = _descent_direction(_sanitize(H, ok), _sanitize(g, ok), rcond)
        fail = torch.where(active & ~ok, _NONFINITE, 0)
        run = active & (fail == 0)
        t = _line_search(line_search, ops, x, ops.losses(x), g, p, eta, run)
        return t[:, None] * p, fail
    sol, singular = _symmetric(_sanitize(H, ok), _sanitize(g, ok), rcond, fallback)
    p = -sol
    fail = torch.where(active & ~ok, _NONFINITE, torch.where(singular & ok, _SINGULAR, 0))
    if line_search is None:
        return eta * p, fail
    run = active & (fail == 0)
    t = _line_search(line_search, ops, x, ops.losses(x), g, p, eta, run)
    return t[:, None] * p, fail


@dataclass
class _BFGSState:
    init_scale: bool = False
    H: Optional[Tensor] = None          # (B, n, n) inverse-Hessian approximations
    fresh: Optional[Tensor] = None      # (B,) still the identity
    skipped: Optional[Tensor] = None    # (B,) skipped updates
    x_prev: Optional[Tensor] = None
    g_prev: Optional[Tensor] = None


def _bfgs(ops, x, eta, active, st, line_search="wolfe"):
    L, g = ops.value_and_grad(x)
    B, n = x.shape
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    if st.H is None:
        st.H = eye.expand(B, n, n).clone()
        st.fresh = torch.ones(B, dtype=torch.bool, device=x.device)
        st.skipped = torch.zeros(B, dtype=torch.long, device=x.device)
    elif st.x_prev is not None:
        s, yv = x - st.x_prev, g - st.g_prev
        sy = (s * yv).sum(-1)
        ok = (sy > 1e-12 * (s.norm(dim=-1) * yv.norm(dim=-1))) & (sy > 0) & active
        if st.init_scale:
            sc = ok & st.fresh & (st.skipped == 0)
            gamma = sy / torch.where(sc, (yv * yv).sum(-1), torch.ones_like(sy))
            st.H = torch.where(sc[:, None, None], gamma[:, None, None] * st.H, st.H)
        rho = 1.0 / torch.where(ok, sy, torch.ones_like(sy))
        V = eye - rho[:, None, None] * (yv[:, :, None] * s[:, None, :])
        Hn = V.mT @ st.H @ V + rho[:, None, None] * (s[:, :, None] * s[:, None, :])
        st.H = torch.where(ok[:, None, None], Hn, st.H)
        st.fresh = st.fresh & ~ok
        st.skipped = st.skipped + (active & ~ok).long()
    p = -(st.H @ g.unsqueeze(-1)).squeeze(-1)
    t = _line_search(line_search, ops, x, L, g, p, eta, active)
    st.x_prev, st.g_prev = x.clone(), g.clone()
    return t[:, None] * p, _no_fail(ops, x)


@dataclass
class _LMState:
    lam: Optional[Tensor] = None     # (B,) float64
    nu: Optional[Tensor] = None
    scale: Optional[Tensor] = None   # (B, n) running max of diag(J^T J)
    stalled: Optional[Tensor] = None
    rejected: Optional[Tensor] = None
    max_tries: int = 60


def _lm(ops, x, eta, active, st: _LMState):
    """Masked ``physgrad.updates._lm_step``: per-sample λ, ν, scale and acceptance."""
    B = ops.B
    dev = x.device
    if st.lam is None:
        st.lam = torch.full((B,), 1e-3, dtype=torch.float64, device=dev)
        st.nu = torch.full((B,), 2.0, dtype=torch.float64, device=dev)
        st.stalled = torch.zeros(B, dtype=torch.bool, device=dev)
        st.rejected = torch.zeros(B, dtype=torch.long, device=dev)
    r = ops.residual(x)
    L = 0.5 * (r * r).sum(-1).double()
    J = ops.jacobian(x)
    ok = active & torch.isfinite(J).flatten(1).all(-1)
    J = _sanitize(J, ok)
    d = (J * J).sum(-2)
    st.scale = d if st.scale is None else torch.maximum(st.scale, d)
    scale = torch.where(st.scale > 0, st.scale, torch.ones_like(st.scale))
    rhs = -eta * r
    fi = torch.finfo(x.dtype)
    lam_max, lam_min = fi.max ** 0.5 * 1e-2, fi.tiny ** 0.5
    out = torch.zeros_like(x)
    trying = ok.clone()
    for _ in range(st.max_tries):
        if not bool(trying.any()):
            break
        dx, _ = _damped(J, rhs, st.lam, scale)
        res = r + (J @ dx.unsqueeze(-1)).squeeze(-1)
        pred = L - 0.5 * (res * res).sum(-1).double()
        Lt = ops.losses(x + torch.where(trying[:, None], dx, torch.zeros_like(dx))).double()
        actual = L - Lt
        acc = trying & (pred > 0) & torch.isfinite(Lt) & (actual > 0)
        rho = actual / torch.where(acc, pred, torch.ones_like(pred))
        factor = torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0)
        st.lam = torch.where(acc, torch.clamp(st.lam * factor, min=lam_min), st.lam)
        st.nu = torch.where(acc, torch.full_like(st.nu, 2.0), st.nu)
        out = torch.where(acc[:, None], dx, out)
        trying = trying & ~acc
        st.rejected = st.rejected + trying.long()
        st.lam = torch.where(trying, st.lam * st.nu, st.lam)
        st.nu = torch.where(trying, st.nu * 2.0, st.nu)
        over = trying & (st.lam > lam_max)
        st.stalled = st.stalled | over
        trying = trying & ~over
    st.stalled = st.stalled | trying
    fail = torch.where(active & ~ok, _NONFINITE, 0)
    return out, fail


def _ig(ops, x, eta, active, st, damping=0.0, solver="dense", rcond=None, damping_scale="marquardt"):
    if solver == "auto":
        solver = "dense"
    if solver != "dense":
        raise ValueError(f"batched problems support ig with solver='dense' only, got {solver!r}")
    if damping == "auto":
        return _lm(ops, x, eta, active, st)
    r = ops.residual(x)
    J = ops.jacobian(x)
    ok = active & torch.isfinite(J).flatten(1).all(-1)
    J = _sanitize(J, ok)
    dy = -eta * r
    if float(damping) == 0.0:
        dx, singular = _spectral(J, dy, 1.0, rcond)
    else:
        scale = (J * J).sum(-2) if damping_scale == "marquardt" else None
        lam = torch.full((ops.B,), float(damping), dtype=torch.float64, device=x.device)
        dx, singular = _damped(J, dy, lam, scale)
    fail = torch.where(active & ~ok, _NONFINITE, torch.where(singular & ok, _SINGULAR, 0))
    return dx, fail


def _pg(ops, x, eta, active, st):
    prob = ops.problem
    if prob.inverse is None:
        from .errors import MissingInverseError

        raise MissingInverseError(
            "method 'pg' needs a local inverse simulator; for a batched problem pass one that maps "
            "(B, m) targets and (B, n) starts to (B, n), e.g. physgrad.inverse.numerical_inverse(P, batched=True)")
    y0 = ops.P(x)
    ops.count("forward")
    # the same fused intermediate target as the single-problem pg_point (y* itself at η = 1)
    y = torch.lerp(y0, ops.Y.to(y0), eta.to(y0) if torch.is_tensor(eta) else eta)
    prob._count("inverse")
    try:
        xi = prob.inverse(y.reshape(prob.target.shape), x.reshape(ops.x_shape))
    except PhysgradError:
        raise
    except Exception as e:
        raise InverseSimulatorError(f"the inverse simulator raised {type(e).__name__}: {e}") from e
    if not torch.is_tensor(xi) or tuple(xi.shape) != ops.x_shape:
        raise ShapeError(f"the batched inverse simulator must return a tensor of shape {ops.x_shape}, got "
                         f"{tuple(xi.shape) if torch.is_tensor(xi) else type(xi).__name__}")
    xi = xi.reshape(ops.B, -1).to(x.dtype)
    good = torch.isfinite(xi).all(-1)
    x_next = torch.where(good[:, None], xi, x)
    # the new point itself goes back too, so the loop takes it as it is (as the single optimize
    # does), not as x + (xi - x), which differs by round-off
    return x_next - x, torch.where(active & ~good, _INVERSE, 0), x_next


def _hig(ops, x, eta, active, st, kappa=0.5, truncation=1e-6, line_search="armijo"):
    J = ops.jacobian(x)
    r = ops.residual(x)
    ok = active & torch.isfinite(J).flatten(1).all(-1)
    J = _sanitize(J, ok)
    dx, singular = _spectral(J, -r, kappa, truncation)
    fail = torch.where(active & ~ok, _NONFINITE, torch.where(singular & ok, _SINGULAR, 0))
    if line_search is None:
        return eta * dx, fail
    L = 0.5 * (r * r).sum(-1)
    g = (J.mT @ r.unsqueeze(-1)).squeeze(-1)
    t = _line_search(line_search, ops, x, L, g, dx, eta, active & (fail == 0))
    return t[:, None] * dx, fail


_STEPS = {"gd": _gd, "adam": _adam, "newton": _newton, "bfgs": _bfgs, "ig": _ig, "pg": _pg, "hig": _hig}
_OPTIONS = {
    "gd": set(), "adam": {"betas", "eps"}, "newton": {"fallback", "rcond", "line_search"},
    "bfgs": {"line_search", "init_scale"}, "ig": {"damping", "solver", "rcond", "damping_scale"},
    "pg": set(), "hig": {"kappa", "truncation", "line_search"},
}


# ============================================================================ the run
@dataclass
class BatchResult:
    """What :func:`physgrad.optimize` returns for a batched problem (``B`` samples).

    Attributes
    ----------
    x
        Final iterates, shaped like ``x0`` (``(B, n)``).
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
    converged
        ``(B,)`` bool: the sample reached ``L/L0 <= tol``.
    success
        ``(B,)`` bool: the sample did not fail (see ``status``) and ended with ``L <= L0``.
    status
        ``(B,)`` int codes, explained by :data:`STATUS` (0 step limit, 1 tol reached,
        2 LM stalled, 3 non-finite, 4 singular, 5 inverse failed).
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
                f"converged={int(self.converged.sum())}, failed={int((~self.success).sum())})")


def _progress_bar(progress, steps, method):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc=f"{method} (batched)", leave=False)


def optimize(problem, x0: Tensor, method: str = "gd", steps: int = 100, step_size: Optional[float] = None, *,
             tol: Optional[float] = None, callback: Optional[Callable] = None, progress: Optional[bool] = None,
             time_budget: Optional[float] = None, on_nonfinite: str = "raise", keep_xs: bool = True,
             **options) -> BatchResult:
    r"""Run ``method`` on every sample of a batched problem at once (see the module docstring).

    Same arguments as :func:`physgrad.optimize`, with these per-sample meanings: ``tol`` stops
    (freezes) each sample once its own ``L_b / L_{0,b} <= tol``; ``callback(k, x, losses)``
    gets the whole batch and returning ``True`` stops all; the run ends when every sample is
    frozen or at ``steps``. A failing sample (non-finite update or loss, singular matrix, inverse
    returning NaN) never raises: it is frozen at its last finite iterate and reported in
    ``status`` (``on_nonfinite`` is accepted for compatibility and has no effect). Errors that
    concern the whole batch (wrong shapes, an inverse that raises) raise as usual.

    Methods: ``gd adam newton bfgs ig pg hig`` (not ``lbfgs``). Defaults: ``newton`` and ``hig``
    ``line_search="armijo"``, ``bfgs`` ``line_search="wolfe"`` (``None`` = the fixed step);
    ``ig`` supports the dense solver, with ``damping`` a float or ``"auto"``.
    """
    if method not in _STEPS:
        raise ValueError(f"unknown method {method!r} for a batched problem; choose one of {sorted(_STEPS)}")
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError("on_nonfinite must be 'raise' or 'stop'")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    unknown = set(options) - _OPTIONS[method]
    if unknown:
        raise TypeError(f"{method} got unexpected option(s) {sorted(unknown)} for a batched problem; "
                        f"known: {sorted(_OPTIONS[method])}")
    if step_size is None:
        if method in ("gd", "adam"):
            raise ValueError(f"method {method!r} needs an explicit step_size (learning rate)")
        step_size = 1.0
    step_size = float(step_size)
    if not (0 < step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}")
    if tol is not None and not (tol >= 0):
        raise ValueError(f"tol must be >= 0, got {tol}")
    _check_ls(options.get("line_search"))
    damping = options.get("damping", 0.0)
    if damping != "auto" and (isinstance(damping, str) or not math.isfinite(float(damping)) or float(damping) < 0):
        raise ValueError(f"damping must be a float >= 0 or 'auto', got {damping!r}")

    x = problem.check_x(x0, "x0").detach().clone()
    ops = _Batch(problem, x)
    x = x.reshape(ops.B, ops.n)
    L = ops.losses(x)
    if not bool(torch.isfinite(L).all()):
        bad = torch.nonzero(~torch.isfinite(L)).flatten().tolist()
        raise NonFiniteError(f"the loss at x0 is not finite for sample(s) {bad[:10]}: P(x0) is not finite there")

    kw = dict(options)
    if method == "adam":
        st = _AdamState(**{k: kw.pop(k) for k in ("betas", "eps") if k in kw})
    elif method == "bfgs":
        st = _BFGSState(init_scale=kw.pop("init_scale", False))
    elif method == "ig" and kw.get("damping") == "auto":
        st = _LMState()
    else:
        st = None
    fn = _STEPS[method]

    dev = x.device
    status = torch.zeros(ops.B, dtype=torch.long, device=dev)
    active = torch.ones(ops.B, dtype=torch.bool, device=dev)
    nits = torch.zeros(ops.B, dtype=torch.long, device=dev)
    L0 = L.clone()
    if tol is not None:
        done = L0 <= tol * L0
        status[done] = _CONVERGED
        active &= ~done
    counts0 = dict(problem.counts)
    xs, losses, times = [x.clone()], [L.clone()], [0.0]
    message = f"reached the step limit ({steps})"
    bar = _progress_bar(progress, steps, method)
    t_start = time.perf_counter()
    try:
        for k in range(steps):
            if not bool(active.any()):
                message = f"every sample stopped after {k} steps"
                break
            try:
                dx, fail, *point = fn(ops, x, step_size, active, st, **kw)
            except PhysgradError as e:
                e.args = (f"step {k + 1} of method {method!r} (batched): {e.args[0] if e.args else e}",) + e.args[1:]
                e.result = _result(xs, losses, times, x, ops, method, step_size, options, problem, counts0,
                                   f"stopped at step {k + 1}: {type(e).__name__}", status, nits, L0, keep_xs)
                raise
            fail = torch.where(active & (fail == 0) & ~torch.isfinite(dx).all(-1), _NONFINITE, fail)
            fail = torch.where(active, fail, 0)
            status = torch.where(fail > 0, fail, status)
            active = active & (fail == 0)
            x_step = point[0] if point else x + torch.where(active[:, None], dx, torch.zeros_like(dx))
            x_new = torch.where(active[:, None], x_step, x)
            L_new = ops.losses(x_new)
            bad = active & ~torch.isfinite(L_new)
            status = torch.where(bad, _NONFINITE, status)
            active = active & ~bad
            x_new = torch.where(bad[:, None], x, x_new)
            L_new = torch.where(bad, L, L_new)
            nits = nits + active.long()
            x, L = x_new, L_new
            if keep_xs:
                xs.append(x.clone())
            losses.append(L.clone())
            times.append(time.perf_counter() - t_start)
            if bar is not None:
                bar.update(1)
            if tol is not None:
                conv = active & (L <= tol * L0)
                status = torch.where(conv, _CONVERGED, status)
                active = active & ~conv
            if isinstance(st, _LMState):
                stl = active & st.stalled
                status = torch.where(stl, _STALLED, status)
                active = active & ~stl
            if callback is not None and callback(k, x.reshape(ops.x_shape), L):
                message = f"stopped by callback after {k + 1} steps"
                break
            if time_budget is not None and times[-1] > time_budget:
                message = f"time budget of {time_budget:g} s used after {k + 1} steps"
                break
        else:
            if steps and not bool(active.any()):
                message = f"every sample stopped after {len(losses) - 1} steps"
    finally:
        if bar is not None:
            bar.close()
    return _result(xs, losses, times, x, ops, method, step_size, options, problem, counts0, message,
                   status, nits, L0, keep_xs)


def _result(xs, losses, times, x, ops, method, step_size, options, problem, counts0, message, status, nits,
            L0, keep_xs) -> BatchResult:
    xs = list(xs)
    if not keep_xs and len(losses) > 1:
        xs.append(x.clone())
    fails = torch.zeros_like(status, dtype=torch.bool)
    for c in _FAILURES:
        fails |= status == c
    Lk = losses[-1]
    counts = {k: problem.counts.get(k, 0) - counts0.get(k, 0) for k in problem.counts}
    nfail = int(fails.sum())
    return BatchResult(
        x=x.reshape(ops.x_shape), xs=torch.stack(xs).reshape(len(xs), *ops.x_shape), losses=torch.stack(losses),
        times=torch.tensor(times, dtype=torch.float64), method=method, step_size=step_size,
        options=dict(options), nit=len(losses) - 1, nits=nits, counts=counts,
        message=message + (f"; {nfail} of {ops.B} samples failed (see status)" if nfail else ""),
        converged=status == _CONVERGED, success=~fails & (Lk <= L0), status=status, fun=Lk,
    )


# ============================================================================ batched local inverse
def numerical_inverse(forward: Callable[[Tensor], Tensor], iters: int = 20, damping: float = 1e-8,
                      tol: float = 1e-10, on_fail: str = "raise", jacobian_mode: str = "auto"):
    r"""Batched :func:`physgrad.inverse.numerical_inverse`: ``inverse(y, x0) -> x`` solving
    ``forward(x)_b = y_b`` near ``x0_b`` for every sample ``b`` by per-sample
    Levenberg–Marquardt iterations (same rules as the single version: a trial is accepted when
    it lowers ``||P(x)_b − y_b||``, then ``λ_b`` shrinks by 3, never below ``damping``; otherwise
    ``λ_b`` grows by 10; sample ``b`` stops once its residual is below
    ``tol · max(||y_b||, ||P(x0)_b − y_b||)``).

    ``forward`` maps ``(B, *x_shape) -> (B, *y_shape)`` with independent samples; it is always
    called on the full batch. Jacobians come from :func:`batch_jacobian` (``(B, m, n)``).

    ``on_fail``: ``"raise"`` (default) raises :class:`~physgrad.errors.InverseSimulatorError`
    if any sample did not converge; ``"best"`` returns every sample's best iterate; ``"nan"``
    returns NaN rows for the samples that did not converge, which a batched ``pg`` run reports
    as failed (status 5) while the other samples go on. ``inverse.last_info`` holds per-sample
    tensors ``converged``, ``iterations``, ``residual_norm`` of the last call."""
    if on_fail not in ("raise", "best", "nan"):
        raise ValueError(f"on_fail must be 'raise', 'best' or 'nan', got {on_fail!r}")
    if iters < 1 or damping < 0:
        raise ValueError("iters must be >= 1 and damping >= 0")

    def inverse(y: Tensor, x0: Tensor) -> Tensor:
        shape = x0.shape
        B = shape[0]
        y = y.detach()
        yf = y.reshape(B, -1)

        def P(xf):
            return forward(xf.reshape(shape)).reshape(B, -1)

        x = x0.detach().reshape(B, -1).clone()
        r = P(x) - yf
        rn = torch.linalg.vector_norm(r, dim=-1).double()
        target = tol * torch.maximum(torch.linalg.vector_norm(yf, dim=-1).double(), rn)
        lam = torch.full((B,), float(damping), dtype=torch.float64, device=x.device)
        it = torch.zeros(B, dtype=torch.long, device=x.device)
        broken = torch.zeros(B, dtype=torch.bool, device=x.device)
        while True:
            act = (rn > target) & (it < iters) & ~broken
            if not bool(act.any()):
                break
            it = it + act.long()
            J = batch_jacobian(P, x, jacobian_mode)
            ok = torch.isfinite(J).flatten(1).all(-1)
            J = _sanitize(J, ok)
            d, _ = _damped(J, -r, lam, (J * J).sum(-2))
            d = torch.where(act[:, None], d, torch.zeros_like(d))
            xt = x + d
            rt = P(xt) - yf
            rtn = torch.linalg.vector_norm(rt, dim=-1).double()
            acc = act & torch.isfinite(rtn) & (rtn < rn)
            x = torch.where(acc[:, None], xt, x)
            r = torch.where(acc[:, None], rt, r)
            rn = torch.where(acc, rtn, rn)
            lam = torch.where(acc, torch.clamp(lam / 3.0, min=float(damping)), lam)
            rej = act & ~acc
            lam = torch.where(rej, torch.clamp(lam, min=1e-12) * 10.0, lam)
            broken = broken | (rej & (lam > 1e30)) | (act & ~ok)
        conv = rn <= target
        inverse.last_info = {"converged": conv, "iterations": it, "residual_norm": rn, "lam": lam}
        if not bool(conv.all()):
            bad = torch.nonzero(~conv).flatten().tolist()
            if on_fail == "raise":
                raise InverseSimulatorError(
                    f"numerical_inverse (batched) did not converge for {len(bad)} of {B} samples "
                    f"(first: {bad[:10]}); take a smaller step_size, raise iters, or pass on_fail='best' "
                    "or on_fail='nan' (per-sample failure in a batched pg run).")
            if on_fail == "nan":
                x = torch.where(conv[:, None], x, torch.full_like(x, float("nan")))
        return x.reshape(shape)

    inverse.last_info = {}
    return inverse
