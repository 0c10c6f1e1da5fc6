r"""Matrix-free least squares over Jacobian-vector products (chapter 7, eq. ``ig-matfree``).

For PDE-sized problems the Jacobian ``J = ∂P/∂x`` has ``y.numel() · x.numel()`` entries and is
never formed. The inverse-gradient step (chapter 4, eq. ``ig-update``) and its damped variant

.. math:: \Delta x = \arg\min_{d}\ \lVert J d - r \rVert_2^2 + \lambda \lVert D d \rVert_2^2

are solved by Krylov iterations that only need the two products ``J v`` (forward mode,
:func:`torch.func.jvp`, via :meth:`physgrad.problem.Problem.jvp`) and ``J^T u`` (reverse mode,
:func:`torch.func.vjp`, via :meth:`physgrad.problem.Problem.vjp`). Each iteration costs one of each.

* ``method="lsqr"`` — LSQR (Paige & Saunders 1982), mathematically equivalent to CG on the
  normal equations but numerically better behaved on ill-conditioned ``J``.
* ``method="cg"`` — CGLS: conjugate gradients on ``(J^T J + λ D^2) d = J^T r`` without ever
  forming ``J^T J``.

``D = diag(sqrt(scale))``: ``scale=None`` is the identity (Tikhonov); pass a positive vector shaped
like ``x`` (e.g. an estimate of ``diag(J^T J)``) for Marquardt-style scaling. The damped problem
is reduced to an undamped-scaling one by the substitution ``z = D d``.

Started from ``d = 0``, both methods converge (in exact arithmetic) to the *minimum-norm*
least-squares solution when ``λ = 0``, i.e. to ``J^+ r``, so a rank-deficient ``J`` is fine.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .problem import Problem

__all__ = ["solve_ls"]

Tensor = torch.Tensor


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a.reshape(-1) * b.reshape(-1)).sum())


def _norm(a: Tensor) -> float:
    return float(torch.linalg.vector_norm(a))


def solve_ls(prob: Problem, x: Tensor, rhs: Tensor, damping: float = 0.0, method: str = "lsqr",
             maxiter: Optional[int] = None, tol: float = 1e-10, scale: Optional[Tensor] = None,
             solver_tol: Optional[float] = None, jvp_mode: str = "rev"):
    r"""Solve ``min_d ||J d − rhs||² + damping·||D d||²`` with ``J = ∂P/∂x`` at ``x``, matrix-free.

    The result is the pair ``(d, info)``: ``d`` shaped like ``x``; ``info`` a dict with ``iterations``,
    ``residual_norm`` (``||J d − rhs||``, the undamped part), ``converged`` (bool),
    ``jvp`` and ``vjp`` (products used), ``method`` and ``stop`` (why it ended).

    Parameters
    ----------
    prob
        The :class:`~physgrad.problem.Problem` whose ``jvp``/``vjp`` define ``J``.
    x
        The point where ``J`` is evaluated; ``d`` has its shape, dtype and device.
    rhs
        Right-hand side, shaped like the target ``y*`` (e.g. ``Δy = η (y* − P(x))``).
    damping
        ``λ >= 0``.
    method
        ``"lsqr"`` (default) or ``"cg"`` (CGLS).
    maxiter
        Iteration limit; default ``2·min(m, n) + 10`` (Krylov methods finish in at most
        ``min(m, n)`` steps in exact arithmetic).
    tol
        Relative tolerance. LSQR stops with scipy's tests (``atol = btol = tol``); CGLS stops
        when ``||J^T(rhs − J d) − λ D^2 d|| <= tol · ||J^T rhs||``.
    scale
        ``D²`` as a positive tensor shaped like ``x``; ``None`` means ``D = I``.
    solver_tol
        Alias of ``tol`` that wins over it; use it through
        ``physgrad.optimize(..., method="ig", solver="lsqr", solver_tol=1e-8)``, where ``tol``
        already means the loss at which the run stops.
    jvp_mode
        How ``J v`` is computed. ``"rev"`` (default): linearize once per solve,
        ``J^T u = pull(u)`` from one cached :func:`torch.func.vjp`, and ``J v`` as the vjp of the
        (linear) map ``u ↦ J^T u`` (the "double-vjp" trick), also cached; needs only reverse-mode
        rules and was 2–10× cheaper than forward mode on the chapter-7 simulators (Burgers: forward
        mode through 40 FFT steps costs ~40 forward simulations per product, this ~4).
        ``"fwd"``: :meth:`physgrad.problem.Problem.jvp` / :meth:`~physgrad.problem.Problem.vjp` per product
        (forward-mode :func:`torch.func.jvp`; no setup, but re-runs the simulator each time).

    """
    if method not in ("lsqr", "cg"):
        raise ValueError(f"method must be 'lsqr' or 'cg', got {method!r}")
    if solver_tol is not None:
        tol = float(solver_tol)
    damping = float(damping)
    if not (damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite float >= 0, got {damping}")
    x = x.detach()
    rhs = rhs.detach().to(dtype=x.dtype, device=x.device)
    m, n = rhs.numel(), x.numel()
    if maxiter is None:
        maxiter = 2 * min(m, n) + 10
    if scale is None:
        dinv = None
    else:
        s = scale.detach().to(dtype=x.dtype, device=x.device).reshape(x.shape)
        s = torch.where(s > 0, s, torch.ones_like(s))
        dinv = s.rsqrt()
    counts = {"jvp": 0, "vjp": 0}
    if jvp_mode not in ("rev", "fwd"):
        raise ValueError(f"jvp_mode must be 'rev' or 'fwd', got {jvp_mode!r}")
    if jvp_mode == "rev":
        prob._count("forward")
        _, pull = torch.func.vjp(prob.forward, x)
        _, pull2 = torch.func.vjp(lambda u: pull(u)[0], torch.zeros_like(rhs))

        def jv(v):
            prob._count("jvp")
            return pull2(v)[0]

        def vj(u):
            prob._count("vjp")
            return pull(u)[0]
    else:
        def jv(v):
            return prob.jvp(x, v)

        def vj(u):
            return prob.vjp(x, u)

    def A(z):  # J D^{-1} z
        counts["jvp"] += 1
        return jv(z if dinv is None else dinv * z)

    def At(u):  # D^{-1} J^T u
        counts["vjp"] += 1
        g = vj(u)
        return g if dinv is None else dinv * g

    if method == "lsqr":
        z, it, conv, stop = _lsqr(A, At, rhs, x, math.sqrt(damping), maxiter, tol)
    else:
        z, it, conv, stop = _cgls(A, At, rhs, x, damping, maxiter, tol)
    d = z if dinv is None else dinv * z
    res = _norm(jv(d) - rhs) if it > 0 else _norm(rhs)
    info = {"iterations": it, "residual_norm": res, "converged": conv, "jvp": counts["jvp"] + (it > 0),
            "vjp": counts["vjp"], "method": method, "stop": stop}
    return d, info


def _lsqr(A, At, b, x, damp, maxiter, tol):
    """LSQR of Paige & Saunders (1982), following scipy.sparse.linalg.lsqr; returns z."""
    z = torch.zeros_like(x)
    atol = btol = tol
    ctol = 1e-14 if x.dtype == torch.float64 else 1e-6
    eps = torch.finfo(x.dtype).eps
    bnorm = beta = _norm(b)
    if beta == 0:
        return z, 0, True, "rhs is zero"
    u = b / beta
    v = At(u)
    alfa = _norm(v)
    if alfa == 0:
        return z, 0, True, "J^T rhs is zero: rhs is orthogonal to the range of J"
    v = v / alfa
    w = v.clone()
    rhobar, phibar = alfa, beta
    anorm = ddnorm = res2 = xxnorm = zz = 0.0
    cs2, sn2 = -1.0, 0.0
    dampsq = damp * damp
    stop = "iteration limit"
    conv = False
    it = 0
    while it < maxiter:
        it += 1
        u = A(v) - alfa * u
        beta = _norm(u)
        if beta > 0:
            u = u / beta
            anorm = math.sqrt(anorm ** 2 + alfa ** 2 + beta ** 2 + dampsq)
            v = At(u) - beta * v
            alfa = _norm(v)
            if alfa > 0:
                v = v / alfa
        if damp > 0:
            rhobar1 = math.hypot(rhobar, damp)
            cs1, sn1 = rhobar / rhobar1, damp / rhobar1
            psi = sn1 * phibar
            phibar = cs1 * phibar
        else:
            rhobar1, psi = rhobar, 0.0
        rho = math.hypot(rhobar1, beta)
        cs, sn = rhobar1 / rho, beta / rho
        theta = sn * alfa
        rhobar = -cs * alfa
        phi = cs * phibar
        phibar = sn * phibar
        tau = sn * phi
        t1, t2 = phi / rho, -theta / rho
        ddnorm += _norm(w) ** 2 / rho ** 2
        z = z + t1 * w
        w = v + t2 * w
        delta = sn2 * rho
        gambar = -cs2 * rho
        rhs_ = phi - delta * zz
        zbar = rhs_ / gambar
        xnorm = math.sqrt(xxnorm + zbar ** 2)
        gamma = math.hypot(gambar, theta)
        cs2, sn2 = gambar / gamma, theta / gamma
        zz = rhs_ / gamma
        xxnorm += zz ** 2
        acond = anorm * math.sqrt(ddnorm)
        rnorm = math.sqrt(phibar ** 2 + res2 + psi ** 2)
        res2 += psi ** 2
        arnorm = alfa * abs(tau)
        test1 = rnorm / bnorm
        test2 = arnorm / (anorm * rnorm + eps)
        test3 = 1.0 / (acond + eps)
        rtol = btol + atol * anorm * xnorm / bnorm
        if test3 <= ctol:
            stop = "condition-number limit reached"
            conv = True
            break
        if test2 <= atol:
            stop = "least-squares solution found (||A^T r|| small)"
            conv = True
            break
        if test1 <= rtol:
            stop = "J d = rhs solved to tolerance"
            conv = True
            break
        if alfa == 0 or beta == 0 and damp == 0:
            stop = "Krylov space exhausted"
            conv = True
            break
    return z, it, conv, stop


def _cgls(A, At, b, x, lam, maxiter, tol):
    """CGLS (CG on the damped normal equations, never forming them); returns z."""
    z = torch.zeros_like(x)
    r = b.clone()
    s = At(r)
    p = s.clone()
    gamma = _dot(s, s)
    snorm0 = math.sqrt(gamma)
    if snorm0 == 0:
        return z, 0, True, "J^T rhs is zero"
    it, conv, stop = 0, False, "iteration limit"
    while it < maxiter:
        it += 1
        q = A(p)
        delta = _dot(q, q) + lam * _dot(p, p)
        if delta <= 0:
            stop, conv = "Krylov space exhausted", True
            break
        alpha = gamma / delta
        z = z + alpha * p
        r = r - alpha * q
        s = At(r) - lam * z
        gamma_new = _dot(s, s)
        if math.sqrt(gamma_new) <= tol * snorm0:
            stop, conv = "normal-equation residual below tol", True
            break
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return z, it, conv, stop
