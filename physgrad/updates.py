r"""The updates of the book: one kernel per method, and the one-step functions of the chapters.

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

Each function above computes one step ``Δx`` for one problem, shaped like ``x``. Stateful
methods (``adam``, ``bfgs``, ``lbfgs``, ``ig`` with ``damping="auto"``) take a ``state`` object
that the caller creates once (``state = BFGSState()``) and passes to every call; the function
updates it in place. :func:`physgrad.optimize` does this for you.

Behind every function stands one **kernel** ``kernel(view, x, η, active, state, **options) ->``
:class:`Step`. It works on ``B`` samples at once: ``x`` is ``(B, n)``, ``view`` is a
:mod:`physgrad.views` object, and ``active`` is a ``(B,)`` mask of the samples still running, or
``None`` for one problem (then the kernel skips every mask and raises on a singular matrix). The
same kernel serves :func:`physgrad.optimize` for one problem, the batched loop of
:mod:`physgrad.batched`, and the functions above. :data:`METHODS` declares each method once: its
kernel, options, state, and whether η is a learning rate, which dtypes it supports, and so on.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Union

import torch

from . import errors as E
from .linalg import damped, descent_direction, kept, sanitize, singular_hessian_error, spectral, symmetric, \
    thin_svd, zero_matrix_error
from .linesearch import check_kind, search, wolfe_search  # noqa: F401 (wolfe_search: public here)
from .lm import LMState, lm_step
from .problem import Problem, _dense_bytes, check_memory, squared_norm
from .views import SingleView

__all__ = [
    "gd", "adam", "newton", "bfgs", "lbfgs", "ig", "pg", "pg_point", "hig",
    "AdamState", "BFGSState", "LBFGSState", "LMState", "y_step", "descent_newton_direction",
    "Step", "Method", "METHODS", "default_learning_rate",
]

Tensor = torch.Tensor


class Step(NamedTuple):
    """What a kernel returns. ``dx`` ``(B, n)`` (``None`` when only ``x_next`` is known);
    ``fail`` ``(B,)`` status codes of :mod:`physgrad.errors` (0: none; ``None`` on one problem);
    ``x_next`` the new iterate when the method computes it directly (pg); ``stalled`` true (per
    sample) when the method found no decrease at all (adaptive LM)."""

    dx: Optional[Tensor]
    fail: Optional[Tensor] = None
    x_next: Optional[Tensor] = None
    stalled: Union[None, bool, Tensor] = None


def _fail(active, ok=None, singular=None):
    """Per-sample failure codes of a batched step (``None`` for one problem)."""
    if active is None:
        return None
    code = torch.zeros(active.shape, dtype=torch.long, device=active.device)
    if singular is not None:
        code = torch.where(active & singular, E.SINGULAR, code)
    if ok is not None:
        code = torch.where(active & ~ok, E.NONFINITE, code)
    return code


def _finite_rows(active, *ts):
    """The active samples whose tensors are all finite (``None`` on one problem)."""
    if active is None:
        return None
    ok = active
    for t in ts:  # (B, ...) with ndim >= 2; no flatten: J may be strided
        dims = tuple(range(1, t.ndim))
        fin = torch.isfinite(t.sum(dim=dims))  # finite unless the row holds a NaN/Inf ...
        if not bool(fin.all()):  # ... or its sum overflowed: the exact scan (no temporary of t's size otherwise)
            fin = torch.isfinite(t).all(dim=dims)
        ok = ok & fin
    return ok


def _clean(M, ok):
    return M if ok is None else sanitize(M, ok)


def _run(active, fail):
    return None if active is None else active & (fail == 0)


def _search(kind, view, x, L, g, p, t0, active):
    return search(kind, view.losses, view.value_and_grad, x, L, g, p, t0, active)


# ============================================================================ kernels
def _gd(view, x, eta, active, st):
    _, g = view.value_and_grad(x)
    return Step(-eta * g)


@dataclass
class AdamState:
    """State of :func:`adam`: the moments ``m``, ``v`` and the step count of every sample
    (``(B, n)``, ``(B, n)``, ``(B,)``; a complex x keeps them for its real view). The update is
    :class:`torch.optim.Adam`'s, operation for operation (the same numbers for one problem in
    every dtype, and for each sample of a batch in float32 and float64), with one step count per
    sample, so that a warm start continues a sample of a batch that stopped early exactly as its
    own run would."""

    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    m: Optional[Tensor] = None
    v: Optional[Tensor] = None
    steps: Optional[list] = None


def _adam(view, x, eta, active, st):
    b1, b2 = st.betas
    xr = torch.view_as_real(x) if x.is_complex() else x
    if st.m is None or st.m.shape != xr.shape or st.m.dtype != xr.dtype or st.m.device != xr.device:
        st.m, st.v, st.steps = torch.zeros_like(xr), torch.zeros_like(xr), [0] * x.shape[0]
    g = view.value_and_grad(x)[1]
    g = torch.view_as_real(g) if g.is_complex() else g
    if active is None:  # torch's in-place moment updates
        st.m.lerp_(g, 1 - b1)
        st.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        st.steps = [k + 1 for k in st.steps]
    else:  # only the running samples move on (a frozen sample keeps its moments and count)
        rows = active.reshape(-1, *([1] * (xr.ndim - 1)))
        st.m = torch.where(rows, st.m.lerp(g, 1 - b1), st.m)
        st.v = torch.where(rows, st.v.mul(b2).addcmul_(g, g, value=1 - b2), st.v)
        st.steps = [k + a for k, a in zip(st.steps, active.tolist())]
    # per sample: step size η / (1 - β1^k) and sqrt(1 - β2^k), as torch forms them in double
    per = [(-(eta / (1 - b1 ** k)), (1 - b2 ** k) ** 0.5) if k else (0.0, 1.0) for k in st.steps]
    if len(per) == 1:  # one sample: the two numbers as Python scalars, exactly as torch passes them
        (ns, c2), = per
        x_new = xr.addcdiv(st.m, (st.v.sqrt() / c2).add_(st.eps), value=ns)
    else:  # one per sample (half precision then rounds the product ns * m once more)
        coef = torch.tensor(per, dtype=torch.float64).to(device=xr.device, dtype=xr.dtype)
        shape = (-1,) + (1,) * (xr.ndim - 1)
        denom = (st.v.sqrt() / coef[:, 1].reshape(shape)).add_(st.eps)
        x_new = xr.addcdiv(coef[:, 0].reshape(shape) * st.m, denom)
    if x.is_complex():
        x_new = torch.view_as_complex(x_new)
    return Step(x_new - x)


def _newton(view, x, eta, active, st, fallback="raise", rcond=None, line_search="armijo"):
    check_kind(line_search)
    g, H = view.grad_and_hessian(x)
    ok = _finite_rows(active, g, H)
    H, g = _clean(H, ok), _clean(g, ok)
    if line_search is None:  # the textbook step with the unmodified Hessian
        sol, singular = symmetric(H, g, rcond, fallback)
        if active is None and fallback == "raise" and bool(singular):
            raise singular_hessian_error(H[0], rcond)
        return Step(-eta * sol, _fail(active, ok, singular))
    p, modified = descent_direction(H, g, rcond)
    fail = _fail(active, ok)
    run = _run(active, fail)
    k = int(modified.sum() if run is None else (modified & run).sum())
    L = view.losses(x)
    if k:
        view.count("hessian_modified", k)
        # bounded step: L >= 0, so a modified model that promises a decrease -g.p/2 beyond L
        # itself overreaches; shorten its first trial to -g.p = 2L (units-free, saves backtracking)
        slope = -(g * p).sum(-1)
        over = modified & (slope > 2 * L)
        p = torch.where(over[:, None], p * (2 * L / torch.where(over, slope, torch.ones_like(slope)))[:, None], p)
    t = _search(line_search, view, x, L, g, p, eta, run)
    return Step(t[:, None] * p, fail)


# ----------------------------------------------------------------------------- quasi-Newton
def _curvature_ok(s, yv):
    sy = (s * yv).sum(-1)
    return sy, (sy > 1e-12 * (s.norm(dim=-1) * yv.norm(dim=-1))) & (sy > 0)


@dataclass
class BFGSState:
    r"""State of :func:`bfgs`: the inverse-Hessian approximation and the last (x, g), one per
    sample (``H`` is ``(B, n, n)``; :attr:`B` is the matrix of a single problem).

    ``init_scale=False`` (default) starts from ``B_0 = I``, so the first step is a GD step of
    size η; ``True`` applies the standard scaling ``B_0 = (s^T y / y^T y) I`` right before the
    first update (Nocedal & Wright, eq. 6.20)."""

    init_scale: bool = False
    H: Optional[Tensor] = None
    x_prev: Optional[Tensor] = None
    g_prev: Optional[Tensor] = None
    fresh: Optional[Tensor] = None
    skips: Optional[Tensor] = None

    @property
    def B(self) -> Optional[Tensor]:
        """The matrix ``B_k ≈ H^{-1}`` (``(n, n)`` for one problem, ``(B, n, n)`` for a batch)."""
        return None if self.H is None else (self.H[0] if self.H.shape[0] == 1 else self.H)

    @property
    def skipped(self):
        """Updates skipped because ``y^T s <= 0``."""
        if self.skips is None:
            return 0
        return int(self.skips[0]) if self.skips.numel() == 1 else self.skips

    # the strategy of the shared quasi-Newton kernel
    def _start(self, x):
        B, n = x.shape
        if self.H is None:
            check_memory(B * _dense_bytes(n, n, x.dtype), f"the dense {n}x{n} BFGS matrix")
            self.H = torch.eye(n, dtype=x.dtype, device=x.device).expand(B, n, n).clone()
            self.fresh = torch.ones(B, dtype=torch.bool, device=x.device)
            self.skips = torch.zeros(B, dtype=torch.long, device=x.device)
        elif self.H.shape != (B, n, n):
            raise ValueError(f"this BFGSState holds {tuple(self.H.shape)} matrices, but the run has {B} sample(s) "
                             f"of {n} unknowns; pass a fresh state")

    def _update(self, s, yv, active):
        sy, ok = _curvature_ok(s, yv)
        if active is not None:
            ok = ok & active
        if self.init_scale:
            sc = ok & self.fresh & (self.skips == 0)
            gamma = sy / torch.where(sc, (yv * yv).sum(-1), torch.ones_like(sy))
            self.H = torch.where(sc[:, None, None], gamma[:, None, None] * self.H, self.H)
        rho = 1.0 / torch.where(ok, sy, torch.ones_like(sy))
        V = torch.eye(s.shape[-1], dtype=s.dtype, device=s.device) - rho[:, None, None] * (yv[:, :, None] * s[:, None, :])
        Hn = V.mT @ self.H @ V + rho[:, None, None] * (s[:, :, None] * s[:, None, :])
        self.H = torch.where(ok[:, None, None], Hn, self.H)
        self.fresh = self.fresh & ~ok
        self.skips = self.skips + ((~ok) if active is None else (active & ~ok)).long()

    def _direction(self, g):
        return -(self.H @ g.unsqueeze(-1)).squeeze(-1)

    def _first_length(self, g, eta):
        return eta


@dataclass
class LBFGSState:
    """State of :func:`lbfgs`: the last ``history`` pairs (s, y) of each sample.

    ``s`` and ``y`` list the pairs of a single problem, oldest first. In a batch, a pair that
    violates the curvature condition for some samples is kept with a per-sample mask, so each
    sample uses its own last ``history`` valid pairs, as its single run would."""

    history: int = 10
    S: list = field(default_factory=list)
    Y: list = field(default_factory=list)
    R: list = field(default_factory=list)      # ρ = 1 / (y^T s) per pair and sample (0 where invalid)
    masks: list = field(default_factory=list)  # per pair: the samples for which it is valid (None: all)
    x_prev: Optional[Tensor] = None
    g_prev: Optional[Tensor] = None

    @property
    def s(self) -> list:
        return [t[0] if t.shape[0] == 1 else t for t in self.S]

    @property
    def y(self) -> list:
        return [t[0] if t.shape[0] == 1 else t for t in self.Y]

    def _start(self, x):
        if self.x_prev is not None and self.x_prev.shape != x.shape:
            raise ValueError(f"this LBFGSState holds pairs of shape {tuple(self.x_prev.shape)}, but the run's x is "
                             f"{tuple(x.shape)}; pass a fresh state")

    def _update(self, s, yv, active):
        sy, ok = _curvature_ok(s, yv)
        if active is None:  # one problem: keep only valid pairs, no masks
            if not bool(ok.all()):
                return
            ok, rho = None, 1.0 / sy
        else:
            ok = ok & active
            if not bool(ok.any()):
                return
            rho = torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        self.S.append(s)
        self.Y.append(yv)
        self.R.append(rho)
        self.masks.append(ok)
        while len(self.S) > self.history and (self.masks[0] is None or not bool(self._used()[0].any())):
            del self.S[0], self.Y[0], self.R[0], self.masks[0]

    def _used(self):
        """Per pair, the samples that use it (each sample's last ``history`` valid pairs; ``None``:
        every sample)."""
        used, c = [None] * len(self.S), 0
        for j in range(len(self.S) - 1, -1, -1):
            m = self.masks[j]
            if m is not None:
                c = c + m.long()
                used[j] = m & (c <= self.history)
        return used

    def _direction(self, g):
        used = self._used()
        rhos = [r if u is None else r * u for r, u in zip(self.R, used)]
        dot = torch.linalg.vecdot
        q, alphas = g.clone(), []
        for s, yv, r in zip(reversed(self.S), reversed(self.Y), reversed(rhos)):
            a = r * dot(s, q)
            alphas.append(a)
            q = q - a[:, None] * yv
        gamma = torch.ones_like(g[:, 0])
        self._has_pairs = torch.zeros_like(g[:, 0], dtype=torch.bool)
        for s, yv, u in zip(reversed(self.S), reversed(self.Y), reversed(used)):
            if u is None:
                gamma, self._has_pairs = dot(s, yv) / dot(yv, yv), torch.ones_like(self._has_pairs)
                break
            take = u & ~self._has_pairs
            gamma = torch.where(take, dot(s, yv) / dot(yv, yv), gamma)
            self._has_pairs = self._has_pairs | u
        q = q * gamma[:, None]
        for (s, yv, r), a in zip(zip(self.S, self.Y, rhos), reversed(alphas)):
            q = q + (a - r * dot(yv, q))[:, None] * s
        return -q

    def _first_length(self, g, eta):
        # no curvature pair yet: scale the first trial step as torch.optim.LBFGS does,
        # t = η min(1, 1/||g||_1), instead of a step of length η ||g|| along -g
        if self.S and self.masks[-1] is None:
            return eta
        first = eta * torch.clamp(1.0 / g.abs().sum(-1).double(), max=1.0)
        return torch.where(self._has_pairs, torch.full_like(first, float(eta)), first)


def _quasi_newton(view, x, eta, active, st, line_search="wolfe"):
    """BFGS and L-BFGS: one loop; the state is the strategy (dense matrix or pair history)."""
    check_kind(line_search)
    st._start(x)
    L, g = view.value_and_grad(x)
    if st.x_prev is not None:
        st._update(x - st.x_prev, g - st.g_prev, active)
    p = st._direction(g)
    t = _search(line_search, view, x, L, g, p, st._first_length(g, eta), active)
    if active is None or st.x_prev is None:
        st.x_prev, st.g_prev = x.clone(), g.clone()
    else:  # a frozen sample keeps the point of its last step: a warm start goes on from there, as one problem's
        st.x_prev, st.g_prev = torch.where(active[:, None], x, st.x_prev), torch.where(active[:, None], g, st.g_prev)
    return Step(t[:, None] * p)


# ----------------------------------------------------------------------------- inverted updates
def _lm(view, x, eta, active, st: LMState):
    """One accepted Levenberg–Marquardt step per sample (:func:`physgrad.lm.lm_step`)."""
    step = lm_step(view, x, eta, active, st)
    return Step(step.dx, _fail(active, step.ok), None, step.stalled)


#: options of the matrix-free Krylov solvers that ``ig`` passes through
MATFREE_OPTIONS = ("maxiter", "solver_tol", "jvp_mode", "scale")


def _dense_only(solver, solver_options):
    if solver == "dense" and solver_options:
        raise TypeError(f"option(s) {sorted(solver_options)} only apply to solver='lsqr'/'cg', not 'dense'")


def _check_ig(damping=0.0, solver="auto", rcond=None, damping_scale="marquardt", **solver_options):
    unknown = set(solver_options) - set(MATFREE_OPTIONS)
    if unknown:
        raise TypeError(f"ig() got unexpected option(s) {sorted(unknown)}; known: damping, solver, state, "
                        f"rcond, damping_scale, and for the matrix-free solvers {sorted(MATFREE_OPTIONS)}")
    if solver not in ("auto", "dense", "lsqr", "cg"):
        raise ValueError(f"solver must be 'dense', 'lsqr', 'cg' or 'auto', got {solver!r}")
    _dense_only(solver, solver_options)
    if damping == "auto":
        if solver not in ("auto", "dense"):
            raise ValueError("damping='auto' (adaptive LM) is implemented for solver='dense' only")
    elif isinstance(damping, (str, bool)) or not math.isfinite(float(damping)) or float(damping) < 0:
        raise ValueError(f"damping must be a float >= 0 or 'auto', got {damping!r}")
    if damping_scale not in ("marquardt", "identity"):
        raise ValueError("damping_scale must be 'marquardt' or 'identity'")


def _ig(view, x, eta, active, st, damping=0.0, solver="auto", rcond=None, damping_scale="marquardt",
        **solver_options):
    _check_ig(damping, solver, rcond, damping_scale, **solver_options)
    if solver == "auto":
        solver = "dense" if view.m * view.n <= 4_000_000 or damping == "auto" else "lsqr"
        _dense_only(solver, solver_options)
    if damping == "auto":
        return _lm(view, x, eta, active, st)
    dy = -eta * view.residual(x)
    if solver != "dense":
        from . import matfree  # matrix-free Krylov solvers over jvp/vjp

        prob = view.problem
        dx, _ = matfree.solve_ls(prob, x.reshape(view.x_shape), dy.reshape(prob.target.shape),
                                 damping=float(damping), method=solver, **solver_options)
        dx = dx.reshape(x.shape)
        return Step(dx, _fail(active, _finite_rows(active, dx)))
    J = view.jacobian(x)
    ok = _finite_rows(active, J)
    J = _clean(J, ok)
    if float(damping) == 0.0:
        dx, singular = spectral(J, dy, 1.0, rcond)
    else:
        scale = (J * J).sum(-2) if damping_scale == "marquardt" else None
        dx, singular = damped(J, dy, float(damping), scale)
    if active is None:
        if bool(singular):
            raise zero_matrix_error(float(torch.linalg.matrix_norm(J[0], 2)) if J.numel() else 0.0)
        return Step(dx)
    return Step(dx, _fail(active, ok, singular))


def _pg(view, x, eta, active, st):
    x_next, good = view.inverse_point(x, eta)
    if good is None:  # one problem: a failing inverse raises
        return Step(None, None, x_next)
    # the new point itself goes back too, so the loop takes it as it is (not x + (x_next - x))
    return Step(x_next - x, torch.where(active & ~good, E.INVERSE_FAILED, 0), x_next)


def _hig(view, x, eta, active, st, kappa=0.5, truncation=1e-6, line_search="armijo"):
    check_kind(line_search)
    if truncation is None or isinstance(truncation, bool) or not (float(truncation) >= 0):
        raise ValueError(f"truncation must be a number >= 0, got {truncation!r}")
    J = view.jacobian(x)
    r = view.residual(x)
    ok = _finite_rows(active, J)
    J = _clean(J, ok)
    dx, singular = spectral(J, -r, kappa, truncation)
    if active is None and bool(singular):
        raise zero_matrix_error(float(torch.linalg.matrix_norm(J[0], 2)) if J.numel() else 0.0)
    fail = _fail(active, ok, singular)
    if line_search is None:
        return Step(eta * dx, fail)
    L = 0.5 * squared_norm(r, -1)
    g = (J.mT @ r.unsqueeze(-1)).squeeze(-1)
    t = _search(line_search, view, x, L, g, dx, eta, _run(active, fail))
    return Step(t[:, None] * dx, fail)


# ============================================================================ the declarations
@dataclass(frozen=True)
class Method:
    """Everything physgrad knows about one method, in one place.

    ``kernel``: the step over ``(B, n)``. ``options``: the options the kernel takes.
    ``state``: ``options -> state class or None`` (the state the method keeps between steps).
    ``state_options``: options that configure a fresh state. ``learning_rate``: η is a learning
    rate (without ``step_size`` it comes from :func:`default_learning_rate`). ``dense``: needs
    dense linear algebra (no float16 / bfloat16). ``real_only``: needs real x. ``real_jacobian``: refuses a complex P(x) of a real x.
    ``matrix``: the per-sample dense matrix it forms, ``"nn"`` (Hessian-sized) or ``"mn"``
    (Jacobian-sized). ``batched``: runs on batched problems. ``growth_guard``: a run whose
    parameters run away ends (pure ig). ``hint``: what to try when a run diverges. ``family``:
    ``"first-order"``, ``"newton"`` (Newton and quasi-Newton) or ``"inverse"`` (the inverted
    updates); the book's figures give each family its own dash pattern."""

    name: str
    kernel: Callable
    options: tuple = ()
    state: Callable = staticmethod(lambda options: None)
    state_options: tuple = ()
    learning_rate: bool = False
    dense: bool = False
    real_only: bool = False
    real_jacobian: bool = False
    matrix: Optional[str] = None
    batched: bool = True
    growth_guard: bool = False
    hint: str = "Try a smaller step_size."
    family: str = "inverse"
    check: Callable = staticmethod(lambda **options: None)

    def state_type(self, options: dict):
        return self.state(options)

    def extendable(self, options: dict) -> bool:
        """A run can be continued from its last iterate without recomputing it (no hidden state)."""
        return self.state(options) is None

    def make_state(self, options: dict, state_kw: dict):
        cls = self.state(options)
        return None if cls is None else cls(**state_kw)


def _check_line_search(line_search="x", **_):
    if line_search != "x":
        check_kind(line_search)


def _check_newton(fallback="raise", rcond=None, line_search="armijo"):
    check_kind(line_search)
    if fallback not in ("raise", "pinv", "gd"):
        raise ValueError(f"fallback must be 'raise', 'pinv' or 'gd', got {fallback!r}")


def _check_hig(kappa=0.5, truncation=1e-6, line_search="armijo"):
    check_kind(line_search)
    if truncation is None or isinstance(truncation, bool) or not (float(truncation) >= 0):
        raise ValueError(f"truncation must be a number >= 0, got {truncation!r}")


_DAMPED_HINT = "Use damping='auto' (adaptive Levenberg-Marquardt), or a smaller step_size."

#: name -> :class:`Method`: the one declaration that optimize, batched, widgets and tests read
METHODS = {m.name: m for m in (
    Method("gd", _gd, learning_rate=True, family="first-order"),
    Method("adam", _adam, state=lambda o: AdamState, state_options=("betas", "eps"), learning_rate=True,
           family="first-order"),
    Method("newton", _newton, ("fallback", "rcond", "line_search"), dense=True, real_only=True, matrix="nn",
           check=_check_newton, family="newton"),
    Method("bfgs", _quasi_newton, ("line_search",), state=lambda o: BFGSState, state_options=("init_scale",),
           dense=True, real_only=True, matrix="nn", check=_check_line_search, family="newton"),
    Method("lbfgs", _quasi_newton, ("line_search",), state=lambda o: LBFGSState, state_options=("history",),
           real_only=True, check=_check_line_search, family="newton"),
    Method("ig", _ig, ("damping", "solver", "rcond", "damping_scale") + MATFREE_OPTIONS,
           state=lambda o: LMState if o.get("damping") == "auto" else None, dense=True, real_only=True,
           real_jacobian=True, matrix="mn", growth_guard=True, hint=_DAMPED_HINT, check=_check_ig),
    Method("pg", _pg),
    Method("hig", _hig, ("kappa", "truncation", "line_search"), dense=True, real_only=True, real_jacobian=True,
           matrix="mn", check=_check_hig),
)}


# ============================================================================ the book's one-step functions
def _one(method: str, prob: Problem, x: Tensor, step_size: float, state=None, **options) -> Tensor:
    """One step of ``method`` on one problem, shaped like ``x`` (the kernel with ``B = 1``)."""
    view = SingleView(prob, x.shape)
    step = METHODS[method].kernel(view, x.reshape(1, -1), step_size, None, state, **options)
    dx = step.x_next - x.reshape(1, -1) if step.dx is None else step.dx
    return dx.reshape(x.shape)


def y_step(prob: Problem, x: Tensor, step_size: float) -> Tensor:
    r"""The requested change in y-space, ``Δy = η (y* − P(x))`` (chapter 4, eq. ``ig-update``)."""
    return -step_size * prob.residual(x)


def gd(prob: Problem, x: Tensor, step_size: float) -> Tensor:
    r"""Gradient descent, ``Δx = −η ∂L/∂x`` (chapter 2, eq. ``gd-update``)."""
    return _one("gd", prob, x, step_size)


def adam(prob: Problem, x: Tensor, step_size: float, state: Optional[AdamState] = None) -> Tensor:
    r"""One step of Adam (torch's implementation; betas and eps from ``state``, torch's defaults
    unless set) with learning rate ``η``.

    Adam divides each gradient component by a running RMS of its history, which removes the
    ``c``-scaling of the step *per component* but still moves by about ``η`` per step in x
    (chapter 2)."""
    return _one("adam", prob, x, step_size, AdamState() if state is None else state)


def newton(prob: Problem, x: Tensor, step_size: float, fallback: str = "raise",
           rcond: Optional[float] = None, line_search: Optional[str] = "armijo") -> Tensor:
    r"""Newton's method with the exact Hessian, ``Δx = −η (∂²L/∂x²)^{-1} ∂L/∂x``
    (chapter 3, eq. ``newton-update``).

    ``line_search="armijo"`` (default, the safe form): the step length is backtracked from
    ``η`` until the Armijo condition ``L(x + t p) <= L(x) + 10⁻⁴ t g·p`` holds, and the
    direction is always a descent direction: where the Hessian is indefinite or singular its
    eigenvalues are replaced by ``max(|λ_i|, √eps · max|λ|)`` (Nocedal & Wright §3.4), and a
    zero Hessian gives the gradient direction. The modification is made on the Jacobi-scaled
    Hessian ``D^{-1} H D^{-1}``, ``D = diag(|H_ii|)^{1/2}``, so it does not depend on the units
    of x (:func:`physgrad.linalg.descent_direction`), and the first trial of a modified step is
    bounded: since ``L >= 0``, it is shortened until its model decrease ``−g·p/2`` is at most ``L``.
    Each such step is counted as ``counts["hessian_modified"]`` and reported in
    :attr:`~physgrad.optimize.Result.message`. ``"wolfe"`` searches a strong-Wolfe step instead.

    ``line_search=None``: the pure textbook step ``η`` with the unmodified Hessian. A singular
    Hessian then raises :class:`~physgrad.errors.SingularMatrixError` unless ``fallback`` is
    ``"pinv"`` or ``"gd"`` (see :func:`physgrad.linalg.symmetric_solve`); an indefinite one
    gives a step that may go uphill."""
    return _one("newton", prob, x, step_size, fallback=fallback, rcond=rcond, line_search=line_search)


def descent_newton_direction(H: Tensor, g: Tensor, rcond: Optional[float] = None):
    r"""Newton direction ``p = −H^{-1} g`` that always descends, for one Hessian: see
    :func:`physgrad.linalg.descent_direction`. Returns ``(p, modified)``."""
    p, modified = descent_direction(H, g, rcond)
    return p, bool(modified)


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
    return _one("bfgs", prob, x, step_size, BFGSState() if state is None else state, line_search=line_search)


def lbfgs(prob: Problem, x: Tensor, step_size: float = 1.0, state: Optional[LBFGSState] = None,
          line_search: Optional[str] = "wolfe") -> Tensor:
    r"""Limited-memory BFGS (Liu & Nocedal): ``Δx = −t B_k g`` with ``B_k g`` from the
    two-loop recursion over the last ``state.history`` pairs and the standard initial scaling
    ``γ_k = s^T y / y^T y`` (Nocedal & Wright, Alg. 7.4). Memory ``O(history · n)`` instead of
    BFGS's ``O(n^2)``. With the default ``line_search="wolfe"``, ``t`` starts at ``η`` and satisfies
    the strong Wolfe conditions; ``"armijo"`` backtracks; ``None`` uses ``η`` as it is. Before the
    first curvature pair exists the first trial length is ``η · min(1, 1/||g||_1)``, as in
    :class:`torch.optim.LBFGS` (an unscaled step along a huge gradient would leave the search
    nothing but bisections)."""
    return _one("lbfgs", prob, x, step_size, LBFGSState() if state is None else state, line_search=line_search)


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
        ``"auto"``: adaptive Levenberg–Marquardt as in MINPACK (Moré 1978): a trust region of
        radius ``Δ`` bounds the scaled step ``||D Δx||`` (``D²`` the running maximum of
        ``diag(J^T J)``, ``Δ`` starting at ``100 ||D x_0||``); the step is Gauss–Newton when it
        fits, else damped until it does, all from one SVD of ``J D^{-1}`` per Jacobian. ``Δ``
        grows after good steps and shrinks after poor ones; trial steps are rejected until the
        loss decreases, so every returned step is an accepted one. Pass an :class:`LMState` to
        carry ``Δ``, λ and ``D`` between calls (or to set the starting ``radius`` or ``factor``).
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
    if damping == "auto" and state is None:
        state = LMState()
    return _one("ig", prob, x, step_size, state, damping=damping, solver=solver, rcond=rcond,
                damping_scale=damping_scale, **solver_options)


def pg(prob: Problem, x: Tensor, step_size: float = 1.0, y0: Optional[Tensor] = None,
       check: bool = True) -> Tensor:
    r"""Physical-gradient step from the local inverse simulator (chapter 5, eq. ``pg-update``):

    .. math:: \Delta x_{PG} = P^{-1}(y_0 + \Delta y;\, x_0) - x_0,\qquad
              y_0 = P(x_0),\ \Delta y = η (y^* - y_0).

    With an exact inverse, ``P(x_0 + Δx) = y_0 + Δy`` holds exactly, however non-linear P is.
    Needs ``prob.inverse``; without one raises :class:`~physgrad.errors.MissingInverseError`.
    ``y0``: an already computed, finite ``P(x)`` (saves one forward). ``check=False`` leaves the
    finiteness check of the inverse's output to the caller.
    """
    return pg_point(prob, x, step_size, y0, check) - x


def pg_point(prob: Problem, x: Tensor, step_size: float = 1.0, y0: Optional[Tensor] = None,
             check: bool = True) -> Tensor:
    r"""The new iterate of a PG step, ``x + Δx_PG = P^{-1}(y_0 + η (y^* - y_0);\, x)``, without
    forming ``Δx``. The intermediate target is one fused ``torch.lerp``, which is ``y*`` itself,
    bit for bit, at η = 1."""
    view = SingleView(prob, x.shape, check_inverse=check)
    xb = x.reshape(1, -1)
    if y0 is not None:
        view.remember(xb, y0)
    return _pg(view, xb, step_size, None, None).x_next.reshape(x.shape)


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
    return _one("hig", prob, x, step_size, kappa=kappa, truncation=truncation, line_search=line_search)


# ============================================================================ run arguments (both loops)
_HALF = (torch.float16, torch.bfloat16)


def check_tolerance(name, v):
    """``None`` or a finite number >= 0 (``bool`` and ``inf`` are refused)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= float(v) < math.inf):
        raise ValueError(f"{name} must be None or a finite number >= 0, got {v!r}")
    return float(v)


def check_run(method, steps, step_size, tols: dict, time_budget, on_nonfinite, options: dict, state):
    """The checks of a run's arguments, shared by one problem and a batch: returns
    ``(method spec, η, tolerances, kernel options, state options)``; raises before any work."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    spec = METHODS[method]
    if on_nonfinite not in ("raise", "stop"):
        raise ValueError("on_nonfinite must be 'raise' or 'stop'")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    tols = {k: check_tolerance(k, v) for k, v in tols.items()}
    if time_budget is not None and not (isinstance(time_budget, numbers.Real) and time_budget == math.inf):
        check_tolerance("time_budget", time_budget)  # (an infinite budget means none)
    if step_size is None:
        if spec.learning_rate:  # the caller picks it at x0 with default_learning_rate
            return _after_step_size(spec, None, tols, options, state)
        step_size = 1.0
    if type(step_size) is not float and (isinstance(step_size, (str, bytes, bool)) or not (
            isinstance(step_size, numbers.Real) or (torch.is_tensor(step_size) and step_size.numel() == 1))):
        raise TypeError(f"step_size must be a number, got {type(step_size).__name__} {step_size!r}")
    step_size = float(step_size)
    if not (step_size > 0 and step_size < float("inf")):
        raise ValueError(f"step_size must be a positive finite number, got {step_size}")
    return _after_step_size(spec, step_size, tols, options, state)


def _after_step_size(spec, step_size, tols, options, state):
    method = spec.name
    kw, state_kw = {}, {}
    if options:
        unknown = sorted(set(options) - set(spec.options) - set(spec.state_options))
        if unknown:
            known = sorted(spec.options + spec.state_options)
            raise TypeError(f"{method}() got unexpected option(s) {unknown}; known: {known or 'none'}")
        kw = {k: v for k, v in options.items() if k in spec.options}
        state_kw = {k: v for k, v in options.items() if k in spec.state_options}
    spec.check(**kw)
    expected = spec.state_type(kw)
    if state is not None:
        if expected is None:
            raise TypeError(f"method {method!r} has no state; state= applies to adam (AdamState), bfgs "
                            "(BFGSState), lbfgs (LBFGSState) and ig with damping='auto' (LMState)")
        if not isinstance(state, expected):
            raise TypeError(f"state= for method {method!r} must be a {expected.__name__}, got "
                            f"{type(state).__name__}")
        if state_kw:
            raise TypeError(f"pass either state= or the state option(s) {sorted(state_kw)}, not both")
    return spec, step_size, tols, kw, state_kw


#: power iterations of the step-size heuristic of gd and adam
POWER_ITERATIONS = 20


def default_learning_rate(method: str, view, x: Tensor, g: Optional[Tensor] = None,
                          iters: int = POWER_ITERATIONS) -> float:
    r"""The step size of ``gd`` and ``adam`` when none is given: a documented heuristic.

    * ``gd``: ``η = 1/λ_max(J^T J)`` at ``x0``, the classic ``1/L`` step of gradient descent
      (``L`` the largest curvature of the Gauss–Newton model). It makes GD stable on the
      linearized problem whatever the units; ``λ_max`` comes from ``iters`` power iterations on
      ``J^T J v`` (one jvp and one vjp each), from a fixed pseudo-random start.
    * ``adam``: Adam moves each parameter by about its learning rate per step, so the rate is a
      length in the units of x: the largest entry ``||η g_0||_∞`` of that first ``1/L`` gradient
      step.

    In a batch, the smallest value over the samples (every sample stays stable). Where it cannot
    be formed (a zero Jacobian or gradient at x0) it is 1. It is a starting point, not a tuned
    value: pass ``step_size`` to override it."""
    B, n = x.shape
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(B, n, generator=gen, dtype=torch.float64).to(dtype=x.dtype, device=x.device)
    lam = torch.zeros(B, dtype=x.real.dtype if x.is_complex() else x.dtype, device=x.device)
    for _ in range(max(1, int(iters))):
        v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp_min(torch.finfo(lam.dtype).tiny)
        w = view.gauss_newton_product(x, v)
        lam = (v.conj() * w).sum(-1).real if v.is_complex() else (v * w).sum(-1)
        v = w
    eta = 1.0 / lam
    if method == "adam":
        if g is None:
            g = view.value_and_grad(x)[1]
        eta = eta * g.abs().amax(-1)
    eta = eta[torch.isfinite(eta) & (eta > 0)]
    return float(eta.min()) if eta.numel() else 1.0


def check_dtypes(spec: Method, x: Tensor, y: Tensor) -> None:
    """The dtype policy at the entrance (see the :mod:`physgrad` module docstring)."""
    method = spec.name
    real = (lambda dt: dt.to_real() if dt.is_complex else dt)
    if x.dtype in _HALF and spec.dense:
        raise TypeError(
            f"method {method!r} needs dense linear algebra (eigh/SVD/solves), which torch does not provide "
            f"for {x.dtype}. Run it in float32: optimize(prob, x0.float(), ...), and cast the result back "
            "if needed; gd, adam, lbfgs and pg accept half precision.")
    if x.is_complex() and spec.real_only:
        raise TypeError(
            f"method {method!r} does not support complex x (its Jacobian/Hessian algebra assumes real "
            "numbers). Optimize the real and imaginary parts as a real tensor instead: pass "
            "torch.view_as_real(x0) and rebuild z = torch.view_as_complex(x) inside the forward; gd, adam "
            "and pg accept complex x.")
    if not torch.is_tensor(y):
        raise TypeError(f"P(x) must return a torch.Tensor, got {type(y).__name__}")
    if real(y.dtype) != real(x.dtype):
        raise TypeError(
            f"the simulator returned dtype {y.dtype} for x of dtype {x.dtype}; P(x) must follow x's "
            "precision (build constants with dtype=x.dtype, avoid .float()/.double() inside P), or pass x0 "
            f"as {real(y.dtype)}.")
    if y.is_complex() and not x.is_complex() and spec.real_jacobian:
        raise TypeError(f"method {method!r} needs a real Jacobian, but P(x) is complex for a real x; "
                        "return torch.view_as_real(P(x)) from the forward (and the target likewise).")


#: a run whose parameters grow this many times beyond max(||x0||, ||x1||) has run away (growth_guard)
GROWTH_LIMIT = 1e10
