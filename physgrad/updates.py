r"""One function per update of the book. Each returns the step ``Δx`` (shaped like ``x``).

Notation (chapters 2–5): ``L(x) = ½||P(x) − y*||²``, ``g = ∇L``, ``J = ∂P/∂x``,
``H = ∂²L/∂x²``, ``η`` = ``step_size``, and for the inverted methods
``Δy = η (y* − P(x))``, the fraction ``η`` of the way to the target in y-space.

==========  =====================================================  ======================
function    update                                                 book equation
==========  =====================================================  ======================
``gd``      ``Δx = −η g``                                          ``gd-update`` (ch. 2)
``adam``    Adam (Kingma & Ba) with learning rate ``η``            (ch. 2)
``newton``  ``Δx = −η H^{-1} g``                                   ``newton-update`` (ch. 3)
``bfgs``    ``Δx = −η B_k g``, ``B_k ≈ H^{-1}`` by BFGS updates    ``bfgs-update`` (ch. 3)
``lbfgs``   limited-memory BFGS (two-loop recursion)                (ch. 3, ch. 7)
``ig``      ``Δx = J^+ Δy`` (optionally damped / adaptive LM)       ``ig-update`` (ch. 4)
``pg``      ``Δx = P^{-1}(P(x) + Δy; x) − x``                      ``pg-update`` (ch. 5)
``hig``     ``Δx = η V Σ^{-κ} U^T (y* − P(x))``                    ``hig-update`` (ch. 8)   
==========  =====================================================  ======================

Stateful methods (``adam``, ``bfgs``, ``lbfgs``, ``ig`` with ``damping="auto"``) take a
``state`` object that the caller creates once (``state = BFGSState()``) and passes to every
call; the function updates it in place. :func:`physgrad.optimize` does this for you.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from .errors import NonFiniteError
from .linalg import damped_solve, spectral_solve, symmetric_solve
from .problem import Problem

__all__ = [
    "gd", "adam", "newton", "bfgs", "lbfgs", "ig", "pg", "pg_point", "hig",
    "AdamState", "BFGSState", "LBFGSState", "LMState", "y_step", "descent_newton_direction",
]

Tensor = torch.Tensor


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1)


def y_step(prob: Problem, x: Tensor, step_size: float) -> Tensor:
    r"""The requested change in y-space, ``Δy = η (y* − P(x))`` (chapter 4, eq. ``ig-update``)."""
    return -step_size * prob.residual(x)


# ----------------------------------------------------------------------------- first order
def gd(prob: Problem, x: Tensor, step_size: float) -> Tensor:
    r"""Gradient descent, ``Δx = −η ∂L/∂x`` (chapter 2, eq. ``gd-update``)."""
    return -step_size * prob.grad(x)


@dataclass
class AdamState:
    """State of :func:`adam`: wraps :class:`torch.optim.Adam` on one parameter tensor."""

    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    _param: Optional[Tensor] = None
    _opt: Optional[torch.optim.Optimizer] = None


def adam(prob: Problem, x: Tensor, step_size: float, state: Optional[AdamState] = None) -> Tensor:
    r"""One step of Adam (torch's implementation; betas and eps from ``state``, torch's defaults
    unless set) with learning rate ``η``.

    Adam divides each gradient component by a running RMS of its history, which removes the
    ``c``-scaling of the step *per component* but still moves by about ``η`` per step in x
    (chapter 2)."""
    state = AdamState() if state is None else state
    if state._param is None or state._param.shape != x.shape or state._param.dtype != x.dtype \
            or state._param.device != x.device:
        state._param = x.detach().clone().requires_grad_(True)
        state._opt = torch.optim.Adam([state._param], lr=step_size, betas=state.betas, eps=state.eps)
    for group in state._opt.param_groups:
        group["lr"] = step_size
    with torch.no_grad():
        state._param.copy_(x)
    state._param.grad = prob.grad(x).detach().clone()
    state._opt.step()
    return (state._param.detach() - x).clone()


# ----------------------------------------------------------------------------- second order
def newton(prob: Problem, x: Tensor, step_size: float, fallback: str = "raise",
           rcond: Optional[float] = None, line_search: Optional[str] = "armijo") -> Tensor:
    r"""Newton's method with the exact Hessian, ``Δx = −η (∂²L/∂x²)^{-1} ∂L/∂x``
    (chapter 3, eq. ``newton-update``).

    ``line_search="armijo"`` (default, the safe form): the step length is backtracked from
    ``η`` until the Armijo condition ``L(x + t p) <= L(x) + 10⁻⁴ t g·p`` holds, and the
    direction is always a descent direction: where the Hessian is indefinite or singular its
    eigenvalues are replaced by ``max(|λ_i|, √eps · max|λ|)`` (Nocedal & Wright §3.4), and a
    zero Hessian gives the gradient direction. Each such step is counted as
    ``counts["hessian_modified"]`` and reported in :attr:`~physgrad.optimize.Result.message`.
    ``"wolfe"`` searches a strong-Wolfe step instead.

    ``line_search=None``: the pure textbook step ``η`` with the unmodified Hessian. A singular
    Hessian then raises :class:`~physgrad.errors.SingularMatrixError` unless ``fallback`` is
    ``"pinv"`` or ``"gd"`` (see :func:`physgrad.linalg.symmetric_solve`); an indefinite one
    gives a step that may go uphill."""
    g, H = prob.grad_and_hessian(x)
    g = _flat(g)
    if line_search is None:
        p = -symmetric_solve(H, g, rcond=rcond, fallback=fallback)
        return (step_size * p).reshape(x.shape)
    if line_search not in ("armijo", "wolfe"):
        raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {line_search!r}")
    p, modified = descent_newton_direction(H, g, rcond=rcond)
    if modified:
        prob._count("hessian_modified")
    L = prob.loss(x)
    t = _line_search(line_search, prob, x, L, g.reshape(x.shape), p.reshape(x.shape), step_size)
    return (t * p).reshape(x.shape)


def descent_newton_direction(H: Tensor, g: Tensor, rcond: Optional[float] = None):
    r"""Newton direction ``p = −H^{-1} g`` that is guaranteed to descend (``g·p < 0`` for g ≠ 0).

    If the symmetric part of ``H`` is positive definite (every eigenvalue above
    ``rcond · max|λ|``, default :func:`physgrad.linalg.default_rcond`), ``p`` is the exact
    Newton direction. Otherwise the eigenvalues are modified to ``max(|λ_i|, √eps · max|λ|)``
    (an indefinite Hessian's negative curvature is flipped, near-zero curvature is floored),
    and a zero Hessian gives ``p = −g``. Returns ``(p, modified)``."""
    from .linalg import default_rcond

    Hs = 0.5 * (H + H.mT)
    lam, Q = torch.linalg.eigh(Hs)
    amax = lam.abs().max() if lam.numel() else torch.zeros((), dtype=lam.dtype)
    tol = default_rcond(H) if rcond is None else float(rcond)
    if float(amax) > 0 and bool((lam > tol * amax).all()):
        return -(Q @ ((Q.mT @ g) / lam)), False
    if float(amax) == 0:
        return -g.clone(), True
    floor = math.sqrt(torch.finfo(lam.dtype).eps) * amax
    return -(Q @ ((Q.mT @ g) / torch.maximum(lam.abs(), floor))), True


def _armijo(prob: Problem, x: Tensor, L0: Tensor, g: Tensor, p: Tensor, t0: float,
            c1: float = 1e-4, shrink: float = 0.5, max_tries: int = 40) -> float:
    """Backtracking line search: largest ``t = t0 · shrink^k`` with
    ``L(x + t p) <= L(x) + c1 t g·p`` (Nocedal & Wright, Alg. 3.1). Returns ``0.0`` (no step)
    when ``p`` is not a descent direction or no tried length decreases the loss."""
    slope = float((g * p).sum())
    if not slope < 0:
        return 0.0
    t = t0
    for _ in range(max_tries):
        Lt = prob.loss(x + t * p)
        if bool(torch.isfinite(Lt)) and float(Lt) <= float(L0) + c1 * t * slope:
            return t
        t *= shrink
    return 0.0  # no decrease along p at any tried length: take no step (the caller sees a stall)


def wolfe_search(phi0: float, dphi0: float, t0: float, c1: float = 1e-4, c2: float = 0.9,
                 max_iter: int = 30):
    """The strong-Wolfe line search (Nocedal & Wright, Alg. 3.5 with the bisection-safeguarded
    ``zoom`` of Alg. 3.6) as a generator: it yields a trial step ``t`` and receives
    ``(L(x + t p), ∇L(x + t p)·p)``; its return value is the accepted ``t`` (0 when ``p`` does not
    descend). :func:`_wolfe` drives it with one problem; :mod:`physgrad.batched` drives one per
    sample and evaluates all pending trials in one batched call."""
    if dphi0 >= 0:  # not a descent direction (e.g. already at a stationary point): no step
        return 0.0

    def zoom(lo, hi, f_lo, d_lo, f_hi):
        for _ in range(max_iter):
            t = 0.5 * (lo + hi)
            f, d = yield t
            if not (f == f) or f > phi0 + c1 * t * dphi0 or f >= f_lo:
                hi, f_hi = t, f
            else:
                if abs(d) <= -c2 * dphi0:
                    return t
                if d * (hi - lo) >= 0:
                    hi, f_hi = lo, f_lo
                lo, f_lo, d_lo = t, f, d
        return lo

    t_prev, f_prev, d_prev, t = 0.0, phi0, dphi0, t0
    for i in range(max_iter):
        f, d = yield t
        if not (f == f and abs(f) != float("inf")) or f > phi0 + c1 * t * dphi0 or (i > 0 and f >= f_prev):
            return (yield from zoom(t_prev, t, f_prev, d_prev, f))
        if abs(d) <= -c2 * dphi0:
            return t
        if d >= 0:
            return (yield from zoom(t, t_prev, f, d, f_prev))
        t_prev, f_prev, d_prev, t = t, f, d, 2.0 * t
    return t_prev


def _wolfe(prob: Problem, x: Tensor, L0: Tensor, g: Tensor, p: Tensor, t0: float,
           c1: float = 1e-4, c2: float = 0.9, max_iter: int = 30) -> float:
    """Line search for the strong Wolfe conditions (:func:`wolfe_search` on one problem).
    Guarantees ``s^T y > 0`` for the BFGS pair, which Armijo backtracking alone does not."""
    search = wolfe_search(float(L0), float((g * p).sum()), t0, c1, c2, max_iter)
    try:
        t = search.send(None)
        while True:
            Lt, gt = prob.value_and_grad(x + t * p)
            t = search.send((float(Lt), float((gt * p).sum())))
    except StopIteration as stop:
        return stop.value


def _line_search(kind, prob, x, L, g, p, t0):
    if kind is None:
        return t0
    if kind == "armijo":
        return _armijo(prob, x, L, g, p, t0)
    if kind == "wolfe":
        return _wolfe(prob, x, L, g, p, t0)
    raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {kind!r}")


@dataclass
class BFGSState:
    r"""State of :func:`bfgs`: the inverse-Hessian approximation ``B`` and the last (x, g).

    ``init_scale=False`` (default) starts from ``B_0 = I``, so the first step is a GD step of
    size η; ``True`` applies the standard scaling ``B_0 = (s^T y / y^T y) I`` right before the
    first update (Nocedal & Wright, eq. 6.20)."""

    init_scale: bool = False
    B: Optional[Tensor] = None
    x_prev: Optional[Tensor] = None
    g_prev: Optional[Tensor] = None
    skipped: int = 0


def bfgs(prob: Problem, x: Tensor, step_size: float, state: Optional[BFGSState] = None,
         line_search: Optional[str] = "wolfe") -> Tensor:
    r"""Quasi-Newton step with the BFGS inverse-Hessian update (chapter 3, eq. ``bfgs-update``):

    .. math:: B_{k+1} = (I - ρ s y^T) B_k (I - ρ y s^T) + ρ s s^T,\quad
              ρ = 1/(y^T s),\ s = x_{k+1}-x_k,\ y = g_{k+1}-g_k,

    and ``Δx = −η B_k g_k``. The update is skipped when ``y^T s <= 0`` (curvature condition
    violated), which keeps ``B`` positive definite. The default ``line_search="wolfe"`` (strong
    Wolfe, the textbook choice that guarantees ``y^T s > 0``) or ``"armijo"`` (backtracking)
    search the step length from ``η``; ``None`` uses ``η`` as it is (the book's fixed-step
    form, which can diverge on a non-linear problem).
    """
    state = BFGSState() if state is None else state
    xf = _flat(x)
    L, g = prob.value_and_grad(x)
    g = _flat(g)
    n = xf.numel()
    if state.B is None:
        from .problem import _dense_bytes, check_memory

        check_memory(_dense_bytes(n, n, x.dtype), f"the dense {n}x{n} BFGS matrix")
        state.B = torch.eye(n, dtype=x.dtype, device=x.device)
    elif state.x_prev is not None:
        s = xf - state.x_prev
        yv = g - state.g_prev
        sy = float(s @ yv)
        if sy > 1e-12 * float(s.norm() * yv.norm()) and sy > 0:
            if state.init_scale and state.skipped == 0 and torch.equal(state.B, torch.eye(n, dtype=x.dtype, device=x.device)):
                state.B = (sy / float(yv @ yv)) * state.B
            rho = 1.0 / sy
            I = torch.eye(n, dtype=x.dtype, device=x.device)
            V = I - rho * torch.outer(yv, s)
            state.B = V.mT @ state.B @ V + rho * torch.outer(s, s)
        else:
            state.skipped += 1
    p = -(state.B @ g)
    t = _line_search(line_search, prob, x, L, g.reshape(x.shape), p.reshape(x.shape), step_size)
    state.x_prev, state.g_prev = xf.clone(), g.clone()
    return (t * p).reshape(x.shape)


@dataclass
class LBFGSState:
    """State of :func:`lbfgs`: the last ``history`` pairs (s, y)."""

    history: int = 10
    s: list = field(default_factory=list)
    y: list = field(default_factory=list)
    x_prev: Optional[Tensor] = None
    g_prev: Optional[Tensor] = None


def lbfgs(prob: Problem, x: Tensor, step_size: float = 1.0, state: Optional[LBFGSState] = None,
          line_search: Optional[str] = "wolfe") -> Tensor:
    r"""Limited-memory BFGS (Liu & Nocedal): ``Δx = −t B_k g`` with ``B_k g`` from the
    two-loop recursion over the last ``state.history`` pairs and the standard initial scaling
    ``γ_k = s^T y / y^T y`` (Nocedal & Wright, Alg. 7.4). Memory ``O(history · n)`` instead of
    BFGS's ``O(n^2)``. With the default ``line_search="wolfe"``, ``t`` starts at ``η`` and satisfies
    the strong Wolfe conditions; ``"armijo"`` backtracks; ``None`` uses ``η`` as it is."""
    state = LBFGSState() if state is None else state
    L, g = prob.value_and_grad(x)
    xf, gf = _flat(x), _flat(g)
    if state.x_prev is not None:
        s, yv = xf - state.x_prev, gf - state.g_prev
        if float(s @ yv) > 1e-12 * float(s.norm() * yv.norm()) and float(s @ yv) > 0:
            state.s.append(s)
            state.y.append(yv)
            if len(state.s) > state.history:
                state.s.pop(0)
                state.y.pop(0)
    q = gf.clone()
    alphas = []
    for s, yv in zip(reversed(state.s), reversed(state.y)):
        a = (s @ q) / (yv @ s)
        alphas.append(a)
        q = q - a * yv
    if state.s:
        q = q * ((state.s[-1] @ state.y[-1]) / (state.y[-1] @ state.y[-1]))
    for (s, yv), a in zip(zip(state.s, state.y), reversed(alphas)):
        b = (yv @ q) / (yv @ s)
        q = q + (a - b) * s
    p = -q
    t = _line_search(line_search, prob, x, L, g, p.reshape(x.shape), step_size)
    state.x_prev, state.g_prev = xf.clone(), gf.clone()
    return (t * p).reshape(x.shape)


# ----------------------------------------------------------------------------- inverted updates
@dataclass
class LMState:
    r"""State of the adaptive Levenberg–Marquardt mode of :func:`ig` (``damping="auto"``).

    ``lam`` is the damping λ relative to Moré's scaling ``D = diag(max_k diag(J_k^T J_k))``;
    it adapts with Nielsen's rule from the gain ratio ρ = actual / predicted reduction."""

    lam: float = 1e-3
    nu: float = 2.0
    scale: Optional[Tensor] = None
    max_tries: int = 60
    stalled: bool = False
    rejected: int = 0


_MATFREE_OPTIONS = {"maxiter", "solver_tol", "jvp_mode", "scale"}


def _matrix_free(prob, x, dy, damping, solver, solver_options):
    from . import matfree  # optional module (matrix-free Krylov solvers over jvp/vjp)

    dx, _info = matfree.solve_ls(prob, x, dy, damping=damping, method=solver, **solver_options)
    return dx


def ig(prob: Problem, x: Tensor, step_size: float = 1.0, damping: Union[float, str] = 0.0,
       solver: str = "auto", state: Optional[LMState] = None, rcond: Optional[float] = None,
       damping_scale: str = "marquardt", **solver_options) -> Tensor:
    r"""Inverse-gradient step ``Δx = (∂y/∂x)^{-1} Δy`` with ``Δy = η (y* − P(x))``
    (chapter 4, eq. ``ig-update``), using the pseudo-inverse ``J^+`` so that square, tall and
    wide Jacobians all work.

    ``damping``
        ``0.0`` (default): the pure inverse gradient of the book. A rank-deficient Jacobian falls
        back to the pseudo-inverse (directions with numerically-zero singular values get no
        update); a numerically zero Jacobian raises :class:`~physgrad.errors.SingularMatrixError`.
        A float ``λ > 0``: fixed Levenberg–Marquardt damping,
        ``Δx = argmin ||J Δx − Δy||² + λ ||D Δx||²`` with Marquardt's ``D² = diag(J^T J)``
        (``damping_scale="marquardt"``, scale-invariant) or ``D = I`` (``"identity"``, Tikhonov).
        ``"auto"``: adaptive Levenberg–Marquardt (Moré 1978; Nielsen's λ update). Trial steps are
        rejected until the loss decreases, so every returned step is an accepted one; pass an
        :class:`LMState` to carry λ between calls.
    ``solver``
        ``"dense"`` forms ``J`` (small problems); ``"lsqr"``/``"cg"`` never form it and solve the
        (damped) least-squares problem with Krylov iterations over ``jvp``/``vjp``
        (:mod:`physgrad.matfree`). ``"auto"`` (default) picks dense when ``J`` has at most
        4·10⁶ entries (32 MB in float64) and LSQR above; ``damping="auto"`` always uses dense.
        Options of the Krylov solver pass through: ``maxiter``, ``solver_tol`` (its relative
        tolerance; plain ``tol`` belongs to :func:`physgrad.optimize`), ``jvp_mode``, and
        ``scale`` (the diagonal ``D²`` of the damping term). On the matrix-free path
        ``diag(J^T J)`` is not available without forming ``J``, so a float damping is plain
        Tikhonov (``D = I``) unless ``scale`` is given; ``damping_scale`` applies to ``"dense"``.
    """
    unknown = set(solver_options) - _MATFREE_OPTIONS
    if unknown:
        raise TypeError(f"ig() got unexpected option(s) {sorted(unknown)}; known: damping, solver, state, "
                        f"rcond, damping_scale, and for the matrix-free solvers {sorted(_MATFREE_OPTIONS)}")
    if solver == "auto":
        small = prob.target.numel() * x.numel() <= 4_000_000
        solver = "dense" if small or damping == "auto" else "lsqr"
    if solver == "dense" and solver_options:
        raise TypeError(f"option(s) {sorted(solver_options)} only apply to solver='lsqr'/'cg', not 'dense'")
    if solver not in ("dense", "lsqr", "cg"):
        raise ValueError(f"solver must be 'dense', 'lsqr', 'cg' or 'auto', got {solver!r}")
    if damping == "auto":
        if solver != "dense":
            raise ValueError("damping='auto' (adaptive LM) is implemented for solver='dense' only")
        return _lm_step(prob, x, step_size, LMState() if state is None else state)
    if isinstance(damping, str) or not math.isfinite(float(damping)) or float(damping) < 0:
        raise ValueError(f"damping must be a float >= 0 or 'auto', got {damping!r}")
    dy = y_step(prob, x, step_size)
    if solver != "dense":
        return _matrix_free(prob, x, dy, float(damping), solver, solver_options)
    J = prob.jacobian(x)
    if float(damping) == 0.0:
        dx = spectral_solve(J, _flat(dy), kappa=1.0, truncation=rcond)[0]
    else:
        if damping_scale not in ("marquardt", "identity"):
            raise ValueError("damping_scale must be 'marquardt' or 'identity'")
        scale = (J * J).sum(0) if damping_scale == "marquardt" else None
        dx = damped_solve(J, _flat(dy), float(damping), scale)
    return dx.reshape(x.shape)


def _lm_step(prob: Problem, x: Tensor, step_size: float, st: LMState) -> Tensor:
    r = _flat(prob.residual(x))
    L = 0.5 * float(r @ r)
    J = prob.jacobian(x)
    d = (J * J).sum(0)
    st.scale = d if st.scale is None else torch.maximum(st.scale, d)
    scale = torch.where(st.scale > 0, st.scale, torch.ones_like(st.scale))
    rhs = -step_size * r
    fi = torch.finfo(x.dtype)
    lam_max, lam_min = fi.max ** 0.5 * 1e-2, fi.tiny ** 0.5  # lam * diag(J^T J) must stay finite
    for _ in range(st.max_tries):
        dx = damped_solve(J, rhs, st.lam, scale)
        pred = L - 0.5 * float((r + J @ dx).pow(2).sum())
        xt = x + dx.reshape(x.shape)
        Lt = prob.loss(xt)
        actual = L - float(Lt)
        if pred > 0 and bool(torch.isfinite(Lt)) and actual > 0:
            rho = actual / pred
            st.lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            st.lam = max(st.lam, lam_min)
            st.nu = 2.0
            return dx.reshape(x.shape)
        st.rejected += 1
        st.lam *= st.nu
        st.nu *= 2.0
        if st.lam > lam_max:  # no decrease for any damping this dtype can represent
            break
    st.stalled = True  # no decrease found: we are at a (local) minimum to working precision
    return torch.zeros_like(x)


def pg(prob: Problem, x: Tensor, step_size: float = 1.0, y0: Optional[Tensor] = None,
       check: bool = True) -> Tensor:
    r"""Physical-gradient step from the local inverse simulator (chapter 5, eq. ``pg-update``):

    .. math:: \Delta x_{PG} = P^{-1}(y_0 + \Delta y;\, x_0) - x_0,\qquad
              y_0 = P(x_0),\ \Delta y = η (y^* - y_0).

    With an exact inverse, ``P(x_0 + Δx) = y_0 + Δy`` holds exactly, however non-linear P is.
    Needs ``prob.inverse``; without one raises :class:`~physgrad.errors.MissingInverseError`.
    ``y0``: an already computed, finite ``P(x)`` (saves one forward; :func:`physgrad.optimize`
    passes the one from its loss evaluation). ``check=False`` leaves the finiteness check of the
    inverse's output to the caller.
    """
    return pg_point(prob, x, step_size, y0, check) - x


def pg_point(prob: Problem, x: Tensor, step_size: float = 1.0, y0: Optional[Tensor] = None,
             check: bool = True) -> Tensor:
    r"""The new iterate of a PG step, ``x + Δx_PG = P^{-1}(y_0 + η (y^* - y_0);\, x)``, without
    forming ``Δx`` (what :func:`physgrad.optimize` uses: two fewer passes over x per step). The
    intermediate target is one fused ``torch.lerp``, which is ``y*`` itself, bit for bit, at η = 1."""
    if y0 is None:
        y0 = prob.checked_simulate(x)
    return prob.apply_inverse(torch.lerp(y0, prob.target_like(y0), step_size), x, check=check)


def hig(prob: Problem, x: Tensor, step_size: float = 1.0, kappa: float = 0.5,
        truncation: float = 1e-6, line_search: Optional[str] = "armijo") -> Tensor:
    r"""Half-inverse gradient (Schnell et al. 2022; eq. ``hig-update``):

    .. math:: \Delta x = η\, V Σ^{-κ} U^T (y^* - P(x)),\qquad J = U Σ V^T ,

    with ``κ = 1/2`` by default; ``κ = 1`` is the Gauss–Newton / inverse-gradient step and
    ``κ = −1`` the GD direction ``J^T (y* − P)``. Singular values below
    ``truncation · σ_max`` are dropped (not clamped). The direction always descends
    (``g·Δx = −r^T U Σ^{1−κ} U^T r <= 0``). ``line_search="armijo"`` (default, the safe form)
    backtracks from ``η`` until the Armijo condition holds (no extra Jacobian: ``g = J^T r``);
    ``None`` takes the fixed step ``η`` (the paper's form, which can overshoot)."""
    if truncation is None or not (float(truncation) >= 0):
        raise ValueError(f"truncation must be a number >= 0, got {truncation!r}")
    J = prob.jacobian(x)
    r = _flat(prob.residual(x))
    dx, _ = spectral_solve(J, -r, kappa=kappa, truncation=truncation)
    if line_search is None:
        return (step_size * dx).reshape(x.shape)
    L = 0.5 * (r * r).sum()
    g = J.mT @ r
    t = _line_search(line_search, prob, x, L, g.reshape(x.shape), dx.reshape(x.shape), step_size)
    return (t * dx).reshape(x.shape)
