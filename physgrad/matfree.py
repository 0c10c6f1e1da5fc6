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

Stopping. In an IG step the right-hand side is the wanted output change ``Δy`` and
``‖J d − Δy‖`` is the residual the outer loop will see next, to first order (exactly, for a linear
``P`` and ``η = 1``). Both solvers therefore stop when that *predicted outer residual* reaches
``tol·‖Δy‖`` (or when the normal-equation residual ``‖Jᵀr‖`` is small relative to ``‖J‖·‖r‖``, for
inconsistent systems, with ``min(tol, 1e-10)``). There is no looser ``‖J‖·‖d‖`` term as in scipy's LSQR test. Pass a
:class:`Forcing` object as the tolerance to choose it per outer step: it stops each solve at the
outer target and, for a non-linear ``P``, solves loosely while far from the solution
(Eisenstat–Walker forcing).

Cost. Each iteration makes one product with ``J`` and one with ``Jᵀ``, updates its vectors in
place and makes one host synchronization (all scalars of an iteration come from one stacked
reduction). The residual norm reported at the end is the solver's own estimate: no extra product.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .problem import Problem

__all__ = ["solve_ls", "Forcing"]

Tensor = torch.Tensor


class Forcing:
    r"""Per-solve tolerances for the inner least-squares solves of an IG run.

    One object serves one outer run (it remembers the previous residual): pass it as
    ``solver_tol`` to :func:`solve_ls`, e.g.
    ``physgrad.optimize(prob, x0, "ig", solver="cg", solver_tol=Forcing(1e-3), tol=1e-6)``.

    For outer step ``k`` with right-hand side ``Δy_k`` (``‖Δy_k‖ = b_k``) the solve stops when the
    predicted residual ``‖J d − Δy_k‖`` is at most ``max(η_k·b_k, θ·target·b_0)``:

    * ``target·b_0`` is the outer goal: ``target = sqrt(L_goal/L_0)`` (``1e-3`` for the book's
      ``L/L_0 <= 1e-6``), with the safety factor ``θ = safety``. Solving further is wasted work.
    * ``η_k`` is the Eisenstat–Walker forcing term, choice 2 of Eisenstat & Walker (1996):
      ``η_0 = first``, ``η_k = γ (b_k/b_{k−1})^α`` (``γ = 0.9``, ``α = 2``), safeguarded by
      ``η_k >= γ η_{k−1}^α`` when that is above 0.1, and capped at ``eta_max``. It keeps early solves
      loose while the linearization is still poor.

    For a linear ``P`` pass ``first=0``: the first solve then runs straight to the outer target,
    and one IG step finishes the run.
    """

    def __init__(self, target: float, first: float = 0.5, gamma: float = 0.9, alpha: float = 2.0,
                 eta_max: float = 0.9, safety: float = 0.9):
        if not (target > 0 and math.isfinite(target)):
            raise ValueError(f"target must be a positive float, got {target}")
        self.target, self.first, self.gamma, self.alpha = float(target), float(first), float(gamma), float(alpha)
        self.eta_max, self.safety = float(eta_max), float(safety)
        self.b0 = self.b_prev = self.eta_prev = None
        self.history = []  # (b_k, eta_k, threshold_k) per solve

    def thresholds(self, bnorms: list) -> list:
        """:meth:`threshold` for each sample of a batch (one forcing sequence per sample)."""
        if getattr(self, "_rows", None) is None or len(self._rows) != len(bnorms):
            self._rows = [Forcing(self.target, self.first, self.gamma, self.alpha, self.eta_max, self.safety)
                          for _ in bnorms]
        return [f.threshold(b) for f, b in zip(self._rows, bnorms)]

    def threshold(self, bnorm: float) -> float:
        """Absolute stopping threshold on ``‖J d − rhs‖`` for a solve with ``‖rhs‖ = bnorm``."""
        if self.b0 is None:
            self.b0 = bnorm
            eta = self.first
        else:
            eta = self.gamma * (bnorm / self.b_prev) ** self.alpha if self.b_prev > 0 else 0.0
            floor = self.gamma * self.eta_prev ** self.alpha
            if floor > 0.1:
                eta = max(eta, floor)
        eta = min(eta, self.eta_max)
        self.b_prev, self.eta_prev = bnorm, eta
        thr = max(eta * bnorm, self.safety * self.target * self.b0)
        self.history.append((bnorm, eta, thr))
        return thr


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.vdot(a.reshape(-1), b.reshape(-1))


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(a)


class _Rows:
    """What the Krylov loops reduce and scale by: everything at once for one problem (0-dim
    tensors, Python floats on the host), or each sample of a batched problem on its own (one
    entry per leading row), so that every sample runs the Krylov iteration of its single solve."""

    def __init__(self, batched: bool, B: int):
        self.batched, self.n = batched, B if batched else 1

    def norm(self, a: Tensor) -> Tensor:
        return torch.linalg.vector_norm(a.reshape(self.n, -1), dim=-1) if self.batched else _norm(a)

    def dot(self, a: Tensor, b: Tensor) -> Tensor:  # the real part of <a, b>
        if not self.batched:
            return _dot(a, b).real
        ab = a.conj() * b if a.is_complex() else a * b
        return ab.real.reshape(self.n, -1).sum(-1) if ab.is_complex() else ab.reshape(self.n, -1).sum(-1)

    def rows(self, vals) -> list:
        """A host list with one float per sample."""
        return vals if isinstance(vals, list) else [vals]

    def col(self, c, like: Tensor):
        """A coefficient per sample, shaped to scale ``like`` row by row (a list: on the device)."""
        if not self.batched:
            return c[0] if isinstance(c, list) else c
        if isinstance(c, list):
            c = torch.tensor(c, dtype=torch.float64, device=like.device).to(like.real.dtype)
        return c.reshape((-1,) + (1,) * (like.ndim - 1))


def solve_ls(prob: Problem, x: Tensor, rhs: Tensor, damping: float = 0.0, method: str = "lsqr",
             maxiter: Optional[int] = None, tol=1e-10, scale: Optional[Tensor] = None,
             solver_tol=None, jvp_mode: str = "rev"):
    r"""Solve ``min_d ||J d − rhs||² + damping·||D d||²`` with ``J = ∂P/∂x`` at ``x``, matrix-free.

    The result is the pair ``(d, info)``: ``d`` shaped like ``x``; ``info`` a dict with ``iterations``,
    ``residual_norm`` (the solver's estimate of ``||J d − rhs||``, the undamped part),
    ``converged`` (bool), ``jvp`` and ``vjp`` (products used), ``method``, ``stop`` (why it ended)
    and ``threshold`` (the absolute residual it aimed for). For a batched problem every sample
    runs its own iteration (its own scalars, threshold and stop, in lockstep), and those entries
    are lists with one value per sample.

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
        A float: stop when ``||J d − rhs|| <= tol·||rhs||`` (the predicted outer residual, relative)
        or when ``||Jᵀ r − λ D² d||`` is below ``ntol`` times its scale (LSQR: ``ntol·‖J‖·‖r‖``;
        CGLS: ``ntol·||Jᵀ rhs||``), whichever comes first, with ``ntol = min(tol, 1e-10)``
        (float32: ``1e-5``); the second test ends solves whose residual cannot reach the first. A
        :class:`Forcing` object: its threshold for this solve replaces ``tol·||rhs||``.
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
        tol = solver_tol
    forcing = tol if isinstance(tol, Forcing) else None
    if forcing is None:
        tol = float(tol)
        if not (tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a finite float >= 0 or a Forcing, got {tol}")
    damping = float(damping)
    if not (damping >= 0 and math.isfinite(damping)):
        raise ValueError(f"damping must be a finite float >= 0, got {damping}")
    if jvp_mode not in ("rev", "fwd"):
        raise ValueError(f"jvp_mode must be 'rev' or 'fwd', got {jvp_mode!r}")
    x = x.detach()
    rhs = rhs.detach().to(dtype=x.dtype, device=x.device)
    # a batched problem: every sample (leading row) runs its own iteration, with its own scalars
    R = _Rows(bool(getattr(prob, "batched", False)), x.shape[0] if x.ndim else 1)
    m, n = rhs.numel() // R.n, x.numel() // R.n
    if maxiter is None:
        maxiter = 2 * min(m, n) + 10
    bnorms = R.rows(R.norm(rhs).tolist())
    ntol = 1e-10 if x.dtype == torch.float64 else 1e-5  # normal-equation test: inconsistent systems
    if forcing is not None:
        thr = forcing.thresholds(bnorms) if R.batched else [forcing.threshold(bnorms[0])]
    else:
        thr, ntol = [tol * b for b in bnorms], min(tol, ntol)
    bnorm = bnorms[0] if not R.batched else max(bnorms)
    if scale is None:
        dinv = None
    else:
        s = scale.detach().to(dtype=x.dtype, device=x.device).reshape(x.shape)
        s = torch.where(s > 0, s, torch.ones_like(s))
        dinv = s.rsqrt()
    counts = {"jvp": 0, "vjp": 0}
    one = (lambda v: v) if R.batched else (lambda v: v[0])  # per-sample lists for a batch
    info = {"iterations": one([0] * R.n), "residual_norm": one(bnorms), "converged": one([True] * R.n), "jvp": 0,
            "vjp": 0, "method": method, "stop": one(["rhs is zero"] * R.n), "threshold": one(thr)}
    if bnorm == 0:
        return torch.zeros_like(x), info
    if jvp_mode == "rev" and getattr(prob, "simulator", None) is None:
        jv, vj = _linearized_products(prob, x, rhs)
    else:  # forward mode, or user-supplied jvp/vjp (physgrad.external): Problem.jvp / Problem.vjp
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
        z, its, conv, stop, rnorm = _lsqr(A, At, rhs, x, math.sqrt(damping), maxiter, thr, ntol, bnorms, R)
    else:
        z, its, conv, stop, rnorm = _cgls(A, At, rhs, x, damping, maxiter, thr, ntol, R)
    d = z if dinv is None else z.mul_(dinv)
    info.update(iterations=one(its), residual_norm=one(rnorm), converged=one(conv), jvp=counts["jvp"],
                vjp=counts["vjp"], stop=one(stop))
    return d, info


def _linearized_products(prob: Problem, x: Tensor, rhs: Tensor):
    """``v ↦ J v`` and ``u ↦ Jᵀ u`` at ``x`` from one recorded forward (plain autograd, whose
    engine costs less per call than a :func:`torch.func.vjp` pullback): ``Jᵀ u`` is a backward
    through the recorded graph, ``J v`` the backward of the linear map ``u ↦ Jᵀ u`` (double-vjp),
    recorded once with ``create_graph``. Where ``P`` does not depend on ``x`` (or on a part of it)
    the products are zeros, as with :mod:`torch.func`."""
    prob._count("forward")
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        y = prob.forward(xr)
        if not y.requires_grad:  # P(x) does not depend on x at all: J = 0
            zx, zy = torch.zeros_like(x), torch.zeros_like(rhs)

            def jv0(v):
                prob._count("jvp")
                return zy

            def vj0(u):
                prob._count("vjp")
                return zx
            return jv0, vj0
        u0 = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, xr, u0, create_graph=True, allow_unused=True)
    if g is None:
        g = torch.zeros_like(x)
    linear_g = g.requires_grad  # False: J^T u does not depend on u, i.e. J = 0 on the used part

    def jv(v):
        prob._count("jvp")
        if not linear_g:
            return torch.zeros_like(rhs)
        (w,) = torch.autograd.grad(g, u0, v.reshape(g.shape), retain_graph=True, allow_unused=True)
        return torch.zeros_like(rhs) if w is None else w.reshape(rhs.shape)

    def vj(u):
        prob._count("vjp")
        (w,) = torch.autograd.grad(y, xr, u.reshape(y.shape), retain_graph=True, allow_unused=True)
        return torch.zeros_like(x) if w is None else w

    return jv, vj


def _stop(i, why, run, conv, stop, its, it):
    run[i], conv[i], stop[i], its[i] = False, True, why, it


def _lsqr(A, At, b, x, damp, maxiter, thr, ntol, bnorm, R):
    """LSQR of Paige & Saunders (1982), after scipy.sparse.linalg.lsqr, with in-place vector
    updates and one host sync per iteration; stops (each sample of a batch on its own) when the
    (undamped) residual estimate is ``<= thr`` or the normal-equation test
    ``||A^T r|| <= ntol ||A|| ||r||`` holds. Returns per-row lists (iterations, converged, why, residual)."""
    z = torch.zeros_like(x)
    ctol = 1e-14 if x.dtype == torch.float64 else 1e-6
    eps = torch.finfo(x.dtype).eps
    tiny = torch.finfo(x.dtype).tiny
    k = R.n
    beta = list(bnorm)
    run, conv, stop, its, r1norm = [True] * k, [False] * k, ["iteration limit"] * k, [0] * k, list(bnorm)
    u = b / R.col([bb if bb > 0 else 1.0 for bb in beta], b)
    v = At(u)
    alfa = R.rows(R.norm(v).tolist())
    for i in range(k):
        if beta[i] == 0:
            _stop(i, "rhs is zero", run, conv, stop, its, 0)
        elif alfa[i] == 0:
            _stop(i, "J^T rhs is zero: rhs is orthogonal to the range of J", run, conv, stop, its, 0)
    if not any(run):
        return z, its, conv, stop, r1norm
    v.div_(R.col([a if a > 0 else 1.0 for a in alfa], v))
    w = v.clone()
    sc = [dict(rhobar=alfa[i], phibar=beta[i], anorm=0.0, ddnorm=0.0, res2=0.0, xxnorm=0.0, zz=0.0, cs2=-1.0,
               sn2=0.0) for i in range(k)]
    dampsq = damp * damp
    it = 0
    while it < maxiter:
        it += 1
        # Golub-Kahan step with the scalars kept on the device until the one sync below
        u.mul_(R.col([-a for a in alfa], u)).add_(A(v))
        beta_t = R.norm(u)
        u.div_(R.col(beta_t.clamp_min(tiny), u))
        v.mul_(R.col(-beta_t, v)).add_(At(u))
        alfa_t = R.norm(v)
        beta, alfa, wn = (R.rows(q) for q in torch.stack([beta_t, alfa_t, R.norm(w)]).tolist())  # the one host sync
        for i in range(k):
            if beta[i] == 0:
                alfa[i] = 0.0
        if any(a > 0 for a in alfa):
            v.div_(R.col([a if a > 0 else 1.0 for a in alfa], v))
        t1s, t2s = [0.0] * k, [0.0] * k
        for i in range(k):
            if run[i]:
                t1s[i], t2s[i], r1norm[i] = _lsqr_scalars(sc[i], alfa[i], beta[i], wn[i], damp, dampsq)
                c = sc[i]
                if r1norm[i] <= thr[i]:
                    _stop(i, "predicted residual ||J d - rhs|| reached its target", run, conv, stop, its, it)
                elif c["arnorm"] <= ntol * (c["anorm"] * c["rnorm"] + eps):
                    _stop(i, "least-squares solution found (||A^T r|| small)", run, conv, stop, its, it)
                elif 1.0 / (c["acond"] + eps) <= ctol:
                    _stop(i, "condition-number limit reached", run, conv, stop, its, it)
                elif alfa[i] == 0 or beta[i] == 0 and damp == 0:
                    _stop(i, "Krylov space exhausted", run, conv, stop, its, it)
        if R.batched:
            z.addcmul_(w, R.col(t1s, z))
        else:
            z.add_(w, alpha=t1s[0])
        w.mul_(R.col(t2s, w)).add_(v)
        if not any(run):
            break
    for i in range(k):
        if run[i]:
            its[i] = it
    return z, its, conv, stop, r1norm


def _lsqr_scalars(c: dict, alfa: float, beta: float, wn: float, damp: float, dampsq: float):
    """One step of LSQR's scalar recurrences for one sample (the plane rotations and the norm
    estimates); updates ``c`` and returns ``(t1, t2, ||b - A z||)``."""
    c["anorm"] = math.sqrt(c["anorm"] ** 2 + alfa ** 2 + beta ** 2 + dampsq)
    if damp > 0:
        rhobar1 = math.hypot(c["rhobar"], damp)
        cs1, sn1 = c["rhobar"] / rhobar1, damp / rhobar1
        psi = sn1 * c["phibar"]
        c["phibar"] = cs1 * c["phibar"]
    else:
        rhobar1, psi = c["rhobar"], 0.0
    rho = math.hypot(rhobar1, beta)
    cs, sn = rhobar1 / rho, beta / rho
    theta = sn * alfa
    c["rhobar"] = -cs * alfa
    phi = cs * c["phibar"]
    c["phibar"] = sn * c["phibar"]
    tau = sn * phi
    t1, t2 = phi / rho, -theta / rho
    c["ddnorm"] += wn ** 2 / rho ** 2
    gambar = -c["cs2"] * rho
    rhs_ = phi - c["sn2"] * rho * c["zz"]
    gamma = math.hypot(gambar, theta)
    c["cs2"], c["sn2"] = gambar / gamma, theta / gamma
    c["zz"] = rhs_ / gamma
    c["xxnorm"] += c["zz"] ** 2
    c["acond"] = c["anorm"] * math.sqrt(c["ddnorm"])
    res1 = c["phibar"] ** 2
    c["res2"] += psi ** 2
    c["rnorm"] = math.sqrt(res1 + c["res2"])
    r1sq = c["rnorm"] ** 2 - dampsq * c["xxnorm"]  # the undamped part ||b - A z||^2
    c["arnorm"] = alfa * abs(tau)
    return t1, t2, math.sqrt(abs(r1sq))


def _cgls(A, At, b, x, lam, maxiter, thr, ntol, R):
    """CGLS (CG on the damped normal equations, never forming them), in place, with the step
    lengths kept on the device and one host sync per iteration (``||s||²`` and ``||r||²``
    together); stops (each sample of a batch on its own) when ``||b − A z|| <= thr`` or
    ``||s|| <= ntol·||s_0||``. Returns per-row lists as :func:`_lsqr`."""
    z = torch.zeros_like(x)
    r = b.clone()
    s = At(r)
    p = s.clone()
    gamma_t = R.dot(s, s)
    gamma = R.rows(gamma_t.tolist())
    snorm0 = [math.sqrt(g) for g in gamma]
    rnorm = R.rows(R.norm(b).tolist())
    k = R.n
    run, conv, stop, its = [True] * k, [False] * k, ["iteration limit"] * k, [0] * k
    for i in range(k):
        if snorm0[i] == 0:
            _stop(i, "J^T rhs is zero", run, conv, stop, its, 0)
    it = 0
    while it < maxiter and any(run):
        it += 1
        q = A(p)
        delta_t = R.dot(q, q)
        if lam:
            delta_t = delta_t + lam * R.dot(p, p)
        alpha_t = torch.where(delta_t > 0, gamma_t / delta_t, torch.zeros_like(delta_t))
        z.addcmul_(p, R.col(alpha_t, z))
        r.addcmul_(q, R.col(alpha_t, r), value=-1.0)
        s = At(r)
        if lam:
            s.add_(z, alpha=-lam)
        gamma_new_t = R.dot(s, s)
        gamma_new, rsq, delta = (R.rows(q_) for q_ in
                                 torch.stack([gamma_new_t, R.dot(r, r), delta_t]).tolist())  # one sync
        for i in range(k):
            if not run[i]:
                continue
            rnorm[i] = math.sqrt(rsq[i])
            if not delta[i] > 0:
                _stop(i, "Krylov space exhausted", run, conv, stop, its, it)
            elif rnorm[i] <= thr[i]:
                _stop(i, "predicted residual ||J d - rhs|| reached its target", run, conv, stop, its, it)
            elif math.sqrt(gamma_new[i]) <= ntol * snorm0[i]:
                _stop(i, "normal-equation residual below tol", run, conv, stop, its, it)
        if not any(run):
            break
        # the next direction; a sample that has stopped gets p = 0, so it takes no more steps
        p.mul_(R.col([gamma_new[i] / gamma[i] if run[i] else 0.0 for i in range(k)], p)).add_(s)
        if not all(run):
            p.mul_(R.col([1.0 if q_ else 0.0 for q_ in run], p))
        gamma, gamma_t = gamma_new, gamma_new_t
    for i in range(k):
        if run[i]:
            its[i] = it
    return z, its, conv, stop, rnorm
