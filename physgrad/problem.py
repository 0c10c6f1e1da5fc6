r"""The problem statement of the book: find x such that a simulator P maps it onto a target y*.

A :class:`Problem` bundles the forward simulator ``P``, the target ``y*`` and, optionally, a
local inverse simulator ``P^{-1}(y; x0)``. The loss is the book's convention (chapter 1,
eq. ``loss``)

.. math:: L(x) = \tfrac12 \lVert P(x) - y^* \rVert_2^2 .

``x`` and ``y`` may be tensors of any shape (a 1-D parameter vector, a 2-D field, ...).
Derivatives treat them as flat vectors: :meth:`Problem.jacobian` returns a matrix of shape
``(y.numel(), x.numel())``. Everything follows the dtype and device of the ``x`` passed in;
the target is moved there on use.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .errors import (
    InverseSimulatorError,
    MissingInverseError,
    NonFiniteError,
    PhysgradError,
    ShapeError,
)
from .external import Simulator

# torch.func is imported inside the methods that need it (Jacobians, Hessians, forward mode):
# its first use in a process costs 1-2 s (torch._dynamo), which paths that need only plain
# autograd (gd, adam, lbfgs, pg with an analytic inverse) never pay.

__all__ = ["Problem", "check_finite", "count_calls", "DerivativeCheckError"]

Tensor = torch.Tensor

class DerivativeCheckError(PhysgradError, ValueError):
    """``check_derivatives=True`` found a derivative (autograd's or a user-supplied one) that
    disagrees with a central finite difference of the forward, or a ``vjp`` that is not the
    adjoint of the ``jvp``."""


# Per-run call counters: a stack of dicts private to the current thread / context, so that
# optimize() reports the calls of *its* run even when a Problem is shared between threads.
_RUN_COUNTERS: contextvars.ContextVar = contextvars.ContextVar("physgrad_run_counters", default=())
_COUNTS_LOCK = threading.Lock()


class count_calls:
    """Count the calls of every :class:`Problem` made inside the ``with`` block, in this thread
    (or asyncio context) only::

        with count_calls() as c:
            prob.jacobian(x)
        c  # {'jacobian': 1}

    ``isolated=True`` hides the calls from enclosing counters (used to label the work inside an
    inverse simulator separately). (A small class rather than a generator: it is entered once
    per run and once per inverse call, so its cost is part of every PG step.)"""

    __slots__ = ("isolated", "_token")

    def __init__(self, isolated: bool = False):
        self.isolated, self._token = isolated, None

    def __enter__(self) -> dict:
        d: dict = {}
        self._token = _RUN_COUNTERS.set((d,) if self.isolated else _RUN_COUNTERS.get() + (d,))
        return d

    def __exit__(self, *exc) -> None:
        _RUN_COUNTERS.reset(self._token)


def squared_norm(r: Tensor, dim=None) -> Tensor:
    r"""``Σ |r|²`` over ``dim`` (all entries if ``None``), real also for a complex ``r``: the one
    formula behind every loss of physgrad, of one problem and per sample of a batch. It is
    ``r * conj(r)``, not ``abs(r)²``: ``abs`` has a zero second derivative at ``r = 0``, which
    would corrupt Hessians."""
    sq = (r * r.conj()).real if r.is_complex() else r * r
    return sq.sum() if dim is None else sq.sum(dim)


def check_finite(t: Tensor, what: str) -> Tensor:
    """Raise :class:`~physgrad.errors.NonFiniteError` if ``t`` holds a NaN or Inf."""
    if not torch.is_tensor(t):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    # fast path: one reduction, finite unless t holds a NaN/Inf (or the sum overflows, which the
    # exact scan below then clears)
    s = (t.detach() if t.requires_grad else t).sum()
    if s.is_complex():
        s = s.real + s.imag
    if math.isfinite(float(s)):
        return t
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{what} contains {bad} non-finite value(s) (NaN or Inf) out of {t.numel()}.")
    return t


INVERSE_NONFINITE = (
    "the inverse simulator returned non-finite values (NaN/Inf): the requested y = P(x0) + dy "
    "may lie outside the range of P. Use a smaller step_size, or a damped/regularized inverse.")

_JACOBIAN_MODES = ("auto", "rev", "fwd", "autograd")

#: default memory budget for one dense matrix (Jacobian, Hessian, BFGS matrix) and its work space
DEFAULT_MEMORY_BUDGET = 2 * 1024 ** 3
_WORKSPACE_FACTOR = 3  # the matrix, its factorization (SVD/eigh) and the transform's work space


def memory_budget() -> int:
    """The budget in bytes: the environment variable ``PHYSGRAD_MEMORY_BUDGET`` (bytes, or with
    a suffix ``K``/``M``/``G``, e.g. ``"8G"``; ``"inf"`` disables the guard), else 2 GiB."""
    import os

    v = os.environ.get("PHYSGRAD_MEMORY_BUDGET", "").strip()
    if not v:
        return DEFAULT_MEMORY_BUDGET
    if v.lower() in ("inf", "none", "off"):
        return 2 ** 63
    mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
    u = v[-1].upper()
    if u == "B" and len(v) > 1 and v[-2].upper() in mult:
        v, u = v[:-1], v[-2].upper()
    try:
        return int(float(v[:-1]) * mult[u]) if u in mult else int(float(v))
    except ValueError:
        raise ValueError(f"PHYSGRAD_MEMORY_BUDGET must be a number of bytes (e.g. 4e9 or 8G), got {v!r}") from None


def _dense_bytes(m: int, n: int, dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return _WORKSPACE_FACTOR * m * n * itemsize


def check_memory(nbytes: int, what: str) -> None:
    """Raise :class:`~physgrad.errors.MemoryBudgetError` *before* allocating if ``nbytes``
    exceeds :func:`memory_budget`."""
    budget = memory_budget()
    if nbytes > budget:
        from .errors import MemoryBudgetError

        raise MemoryBudgetError(
            f"{what} needs about {nbytes / 1e9:.3g} GB (matrix and work space), above the memory budget "
            f"of {budget / 1e9:.3g} GB. Use a method that never forms it: method='lbfgs', or "
            "method='ig' with solver='lsqr' (matrix-free); or raise the budget with the environment "
            "variable PHYSGRAD_MEMORY_BUDGET (e.g. PHYSGRAD_MEMORY_BUDGET=16G).")


#: jacobian_mode="auto" times the other mode only when one Jacobian takes longer than this (s)
AUTO_MEASURE_S = 0.02


def _dense_jacobian(f, xf: Tensor, mode: str) -> Tensor:
    if mode == "autograd":
        return _autograd_jacobian(f, xf)
    from torch.func import jacfwd, jacrev

    # .to(xf.dtype): forward mode can promote to float64 when P mixes 0-dim tensors with
    # Python floats (torch 2.13); the Jacobian must follow x's dtype like everything else
    return (jacfwd(f) if mode == "fwd" else jacrev(f))(xf).to(xf.dtype)


def _explain_random(fn, *args):
    """Run a torch.func transform; a forward that draws random numbers gets a hint instead of
    vmap's raw "called random operation while in randomness error mode"."""
    try:
        return fn(*args)
    except RuntimeError as e:
        if "randomness" not in str(e):
            raise
        raise RuntimeError(
            "the forward draws random numbers (torch.randn, dropout, ...), which torch.func's vmap refuses "
            "inside a dense Jacobian or Hessian. Draw the noise once outside the forward and close over it, "
            "or use Problem(..., jacobian_mode=\"autograd\") (plain autograd, one backward per output entry; "
            "it does not apply to the Hessian of method='newton').") from e


def _grad_or_zeros(out: Tensor, x: Tensor, grad_out: Optional[Tensor] = None) -> Tensor:
    """``torch.autograd.grad`` that returns zeros where ``out`` does not depend on ``x``
    (as ``torch.func`` does) instead of raising."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, grad_out, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def _autograd_jacobian(f, xf: Tensor) -> Tensor:
    """Dense Jacobian by plain reverse-mode autograd, one backward pass per output row
    (no torch.func): the cheapest choice for a Python-loop simulator with few outputs."""
    xr = xf.detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(xr)
        rows = []
        for i in range(y.numel()):
            (gi,) = torch.autograd.grad(y[i], xr, retain_graph=i + 1 < y.numel(), allow_unused=True)
            rows.append(torch.zeros_like(xf) if gi is None else gi)
    if not rows:
        return torch.zeros(0, xf.numel(), dtype=xf.dtype, device=xf.device)
    return torch.stack(rows).to(xf.dtype)


@dataclass(init=False)
class Problem:
    r"""An inverse problem ``P(x) = y*`` with the loss ``L(x) = 1/2 ||P(x) - y*||^2``.

    Parameters
    ----------
    forward:
        The simulator ``P``: a function of one tensor returning one tensor. It must be written
        with differentiable torch operations (``torch.func`` transforms are applied to it).
    target:
        The target ``y*``; its shape must equal that of ``P(x)``.
    inverse:
        Optional local inverse simulator ``inverse(y, x0) -> x``: returns the x closest to
        ``x0`` with ``P(x) = y`` (chapter 5, eq. ``pg-update``). Required by ``method="pg"``.
    name:
        A label used in plots and tables.
    jacobian_mode:
        ``"rev"`` (reverse mode, :func:`torch.func.jacrev`, cheap when y is small) or ``"fwd"``
        (:func:`torch.func.jacfwd`, cheap when x is small). Default ``"auto"``: the size rule
        (``"fwd"`` when x has at most as many entries as y), except that when one Jacobian takes
        longer than 20 ms the other mode is timed once and kept if it is 1.5x faster (forward
        mode can be several times slower than reverse mode on Python time-loop simulators).
        The choice is cached per shape, dtype and device. ``"autograd"``: plain reverse-mode
        autograd, one backward per output entry, no ``torch.func`` (for few outputs).

    batched:
        ``True`` declares ``B`` independent problems: x has shape ``(B, ...)`` (e.g. ``(B, n)``,
        or ``(B,)`` for one unknown per sample), ``P(x)`` and the target ``(B, ...)``, and row
        ``b`` of ``P(x)`` depends on row ``b`` of x only.
        :func:`physgrad.optimize` then solves all samples at once (:mod:`physgrad.batched`).
    vjp, jvp, jacobian:
        Keyword-only: derivatives supplied by the user, for a simulator outside torch or with
        its own adjoint: ``vjp(x, u) -> Jᵀu`` (shaped like x), ``jvp(x, v) -> J v`` (shaped like
        y), ``jacobian(x) -> J`` (``(m, n)``). The forward is then never traced by autograd
        (it is wrapped in a :class:`~physgrad.external.Simulator`; a Simulator, e.g. from
        :func:`~physgrad.external.numpy_simulator`, may also be passed as ``forward``). gd,
        adam, bfgs and lbfgs need ``vjp`` (or ``jacobian``); matrix-free ig needs ``vjp`` and
        ``jvp``; the dense methods (ig, hig, LM) use ``jacobian`` or assemble ``J`` from
        ``x.numel()`` jvps or ``y.numel()`` vjps within the memory budget; newton is refused.
        ``jacobian_mode`` does not apply. For a batched problem, ``vjp`` and ``jvp`` act on the
        whole batch, ``(B, ...)`` to ``(B, ...)``, row by row (a per-sample ``jacobian`` is not
        supported there: the Jacobians are assembled from ``n`` batched jvps or ``m`` batched vjps).

    Notes
    -----
    Without user derivatives the forward must be differentiable torch code: ``.item()``,
    ``float(t)``, ``.numpy()``, ``.detach()`` or integer casts on tensors that depend on x cut
    the derivative. :func:`physgrad.optimize` finds such a forward before step 1 and names the
    call (:meth:`check_entrance`); ``check_derivatives=True`` also compares with a finite
    difference. The target is detached (no graph is kept through a run). Dense Jacobians and Hessians are checked against a memory budget before they
    are allocated (``physgrad.problem.memory_budget()``, environment variable
    ``PHYSGRAD_MEMORY_BUDGET``). ``counts`` holds the cumulative calls over the Problem's life
    (all threads); :attr:`physgrad.optimize.Result.counts` holds those of one run.
    """

    forward: Callable[[Tensor], Tensor]
    target: Tensor
    inverse: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    name: str = "problem"
    jacobian_mode: str = "auto"
    counts: dict = field(default_factory=dict, repr=False, compare=False)
    batched: bool = False
    _auto_modes: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _checked: set = field(default_factory=set, init=False, repr=False, compare=False)
    _checked_forward: Optional[Callable] = field(default=None, init=False, repr=False, compare=False)
    _stash: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, forward: Callable[[Tensor], Tensor], target: Tensor,
                 inverse: Optional[Callable[[Tensor, Tensor], Tensor]] = None, name: str = "problem",
                 jacobian_mode: str = "auto", counts: Optional[dict] = None, batched: bool = False, *,
                 vjp: Optional[Callable] = None, jvp: Optional[Callable] = None,
                 jacobian: Optional[Callable] = None):
        if vjp is not None or jvp is not None or jacobian is not None:
            if isinstance(forward, Simulator):
                raise TypeError("the forward is already a physgrad.external.Simulator with its own derivatives; "
                                "pass vjp=/jvp=/jacobian= to the Simulator or to the Problem, not both")
            if forward is None or not callable(forward):
                raise TypeError("Problem.forward must be callable: a function x -> P(x)")
            forward = Simulator(forward, vjp, jvp, jacobian, name=name)
        self.forward, self.target, self.inverse, self.name = forward, target, inverse, name
        self.jacobian_mode, self.counts, self.batched = jacobian_mode, {} if counts is None else counts, batched
        self._auto_modes, self._checked, self._checked_forward, self._stash = {}, set(), None, None
        self.__post_init__()

    @property
    def simulator(self):
        """The :class:`~physgrad.external.Simulator` holding user-supplied derivatives, or
        ``None`` when the derivatives come from autograd."""
        return self.forward if isinstance(self.forward, Simulator) else None

    def __post_init__(self):
        if not callable(self.forward):
            raise TypeError("Problem.forward must be callable: a function x -> P(x)")
        if self.inverse is not None and not callable(self.inverse):
            raise TypeError("Problem.inverse must be callable: a function (y, x0) -> x, or None")
        if self.target is None:
            raise TypeError("Problem needs a target y*: Problem(forward, target), with target a tensor "
                            "(or array-like) of the shape of P(x); got None")
        if not torch.is_tensor(self.target):
            try:
                self.target = torch.as_tensor(self.target)
            except Exception as e:
                raise TypeError(f"Problem's target y* must be a tensor or array-like, got "
                                f"{type(self.target).__name__}: {e}") from None
        if self.target.requires_grad:  # physgrad never differentiates through a run: no graph kept
            self.target = self.target.detach()
        if not (self.target.is_floating_point() or self.target.is_complex()):
            self.target = self.target.to(torch.get_default_dtype())  # [1, 2] -> float, not int64
        check_finite(self.target, "target y*")
        if self.jacobian_mode not in _JACOBIAN_MODES:
            raise ValueError(f"jacobian_mode must be one of {_JACOBIAN_MODES}, got {self.jacobian_mode!r}")
        if self.batched and self.target.ndim < 1:
            raise ShapeError(f"a batched problem needs a target of shape (B, ...), e.g. (B, m) or (B,); got "
                             f"{tuple(self.target.shape)}")
        if self.batched and self.simulator is not None and self.simulator.has("jacobian"):
            raise TypeError("a batched problem takes user derivatives as vjp= and/or jvp= acting on the whole "
                            "batch (B, ...) -> (B, ...); jacobian= is not supported there (the per-sample Jacobians "
                            "are assembled from batched jvps or vjps)")

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, k: int = 1) -> None:
        with _COUNTS_LOCK:  # cumulative totals over the Problem's life (all threads)
            self.counts[key] = self.counts.get(key, 0) + k
        for d in _RUN_COUNTERS.get():  # the counters of the runs active in this thread
            d[key] = d.get(key, 0) + k

    def target_like(self, y: Tensor) -> Tensor:
        """The target on the dtype/device of ``y``. A complex target for a real ``y`` raises
        ``TypeError`` (casting would silently drop its imaginary part)."""
        t = self.target
        if t.dtype == y.dtype and t.device == y.device:  # the common case, at every loss evaluation
            return t
        if t.is_complex() and not y.is_complex():
            raise TypeError(
                f"the target y* is complex ({t.dtype}) but P(x) is real ({y.dtype}): the imaginary part "
                "of y* would be dropped. Fit the real and imaginary parts as a real target, "
                "torch.view_as_real(y_star), with a forward that returns torch.view_as_real(P(x)); or pass "
                "y_star.real if the imaginary part is meant to be zero.")
        return t.to(dtype=y.dtype, device=y.device)

    def check_x(self, x: Tensor, what: str = "x") -> Tensor:
        """Check that ``x`` is a finite floating-point tensor and return it."""
        if not torch.is_tensor(x):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}; use e.g. x.double()")
        if x.is_meta:
            raise TypeError(f"{what} is on the 'meta' device, which holds no data: optimization needs real values. "
                            "Create it on 'cpu' or 'cuda'.")
        return check_finite(x, what)

    def _check_y(self, y: Tensor, what: str = "P(x)") -> Tensor:
        if not torch.is_tensor(y):
            raise TypeError(f"{what} must return a torch.Tensor, got {type(y).__name__}")
        if y.shape != self.target.shape:
            raise ShapeError(
                f"{what} has shape {tuple(y.shape)} but the target y* has shape "
                f"{tuple(self.target.shape)}; the simulator output and the target must match."
            )
        return y

    # ------------------------------------------------------------------ evaluation
    def __call__(self, x: Tensor) -> Tensor:
        return self.simulate(x)

    def simulate(self, x: Tensor) -> Tensor:
        """``y = P(x)`` with a shape check against the target (no finiteness check: see
        :meth:`checked_simulate`)."""
        self._count("forward")
        st, self._stash = self._stash, None
        if st is not None and st[0] is x and st[1] == x._version:  # the entrance check's trial P(x0)
            return self._check_y(st[2])
        return self._check_y(self.forward(x))

    def checked_simulate(self, x: Tensor) -> Tensor:
        """``y = P(x)``; raises if the output has the wrong shape or is not finite."""
        return check_finite(self.simulate(x), "the simulator output P(x)")

    def residual(self, x: Tensor) -> Tensor:
        """``r(x) = P(x) - y*`` (same shape as the target)."""
        y = self.simulate(x)
        return y - self.target_like(y)

    def loss(self, x: Tensor) -> Tensor:
        r"""``L(x) = 1/2 ||P(x) - y*||_2^2`` (a 0-dim tensor)."""
        return self.loss_of_output(self.simulate(x))

    def loss_of_output(self, y: Tensor) -> Tensor:
        r"""The loss ``1/2 ||y - y*||^2`` of an already simulated ``y = P(x)`` (no forward call)."""
        return 0.5 * self._squared_residual(y)

    def _squared_residual(self, y: Tensor) -> Tensor:
        r"""``||y - y*||^2`` (``optimize`` halves it on the host)."""
        return squared_norm(y - self.target_like(y))

    # ------------------------------------------------------------------ derivatives
    def _flat_forward(self, x: Tensor):
        shape = x.shape

        def f(xf: Tensor) -> Tensor:
            return self.forward(xf.reshape(shape)).reshape(-1)

        return f

    def jacobian(self, x: Tensor) -> Tensor:
        r"""Dense Jacobian ``J = dP/dx`` at ``x`` as a ``(y.numel(), x.numel())`` matrix."""
        self._count("jacobian")
        f = self._flat_forward(x)
        xf = x.detach().reshape(-1)
        mode = self.jacobian_mode
        m = self.target.numel()
        check_memory(_dense_bytes(m, xf.numel(), xf.dtype), f"a dense {m}x{xf.numel()} Jacobian")
        sim = self.simulator
        if sim is not None:  # the user's Jacobian, or assembled from their jvps (columns) / vjps (rows)
            if not sim.has("jacobian"):
                by_columns = sim.has("jvp") and (xf.numel() <= m or not sim.has("vjp"))
                self._count("jvp" if by_columns else "vjp", xf.numel() if by_columns else m)
            J = sim.jacobian(x.detach(), self.target.shape)
        elif mode == "auto":
            key = (xf.numel(), m, xf.dtype, xf.device)
            mode = self._auto_modes.get(key)
            if mode is None:
                J, mode = _explain_random(self._pick_jacobian_mode, f, xf, m)
                self._auto_modes[key] = mode
            else:
                J = _explain_random(_dense_jacobian, f, xf, mode)
        else:
            J = _explain_random(_dense_jacobian, f, xf, mode)
        if J.shape != (self.target.numel(), xf.numel()):
            raise ShapeError(
                f"the Jacobian has shape {tuple(J.shape)}; expected {(self.target.numel(), xf.numel())}. "
                "Does P(x) have the shape of the target?"
            )
        return J

    def _pick_jacobian_mode(self, f, xf: Tensor, m: int):
        """``jacobian_mode="auto"``: start from the size rule (forward mode when x has at most as
        many entries as y); if one warm Jacobian takes longer than ``AUTO_MEASURE_S``, time the
        other mode once (warm) and keep it if it is at least 1.5x faster. Cheap Jacobians are
        never timed, so small problems get the deterministic size rule."""
        import time

        mode = "fwd" if xf.numel() <= m else "rev"
        for _ in range(2):  # a slow first call may only be torch.func's one-off import: time it warm
            t0 = time.perf_counter()
            J = _dense_jacobian(f, xf, mode)
            dt = time.perf_counter() - t0
            if dt < AUTO_MEASURE_S:
                return J, mode
        other = "rev" if mode == "fwd" else "fwd"
        J2 = _dense_jacobian(f, xf, other)  # warm-up of the other mode
        t0 = time.perf_counter()
        J2 = _dense_jacobian(f, xf, other)
        if 1.5 * (time.perf_counter() - t0) < dt:
            return J2, other
        return J, mode

    def grad(self, x: Tensor) -> Tensor:
        r"""Gradient ``g = (dL/dx)^T = J^T (P(x) - y*)`` (eq. ``loss-deriv``), shaped like x."""
        return self.value_and_grad(x)[1]

    def value_and_grad(self, x: Tensor):
        """``(L(x), grad L(x))`` from one forward and one backward pass."""
        self._count("grad")
        sim = self.simulator
        if sim is not None:  # g = J^T r from the user's vjp (or Jacobian); no autograd
            y = self.simulate(x.detach())
            r = y - self.target_like(y)
            return self.loss_of_output(y).detach(), sim.vjp(x.detach(), r)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self.loss(xr)
            g = _grad_or_zeros(L, xr)
        return L.detach(), g

    def hessian(self, x: Tensor) -> Tensor:
        r"""Exact Hessian ``d^2L/dx^2`` as an ``(n, n)`` matrix (torch.func.hessian)."""
        from torch.func import hessian as _fhessian

        self._no_second_derivatives()
        self._count("hessian")
        shape = x.shape
        check_memory(_dense_bytes(x.numel(), x.numel(), x.dtype), f"a dense {x.numel()}x{x.numel()} Hessian")

        def Lf(xf):
            return self.loss(xf.reshape(shape))

        return _explain_random(_fhessian(Lf), x.detach().reshape(-1)).to(x.dtype)

    def grad_and_hessian(self, x: Tensor):
        r"""``(∇L, ∂²L/∂x²)`` from one forward-over-reverse pass (``jacfwd(grad)`` with the
        gradient as auxiliary output): cheaper than :meth:`grad` and :meth:`hessian` separately.
        The gradient is shaped like ``x``, the Hessian is ``(n, n)``."""
        from torch.func import grad as _fgrad
        from torch.func import jacfwd

        self._no_second_derivatives()
        check_memory(_dense_bytes(x.numel(), x.numel(), x.dtype), f"a dense {x.numel()}x{x.numel()} Hessian")
        self._count("grad")
        self._count("hessian")
        shape = x.shape

        def g_aux(xf):
            g = _fgrad(lambda z: self.loss(z.reshape(shape)))(xf)
            return g, g

        H, g = _explain_random(jacfwd(g_aux, has_aux=True), x.detach().reshape(-1))
        return g.reshape(shape).to(x.dtype), H.to(x.dtype)

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Jacobian-vector product ``J v`` (forward mode), shaped like the target."""
        from torch.func import jvp

        self._count("jvp")
        sim = self.simulator
        if sim is not None:
            return sim.jvp(x.detach(), v).reshape(self.target.shape)
        return jvp(self.forward, (x.detach(),), (v,))[1]

    def vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """Vector-Jacobian product ``J^T u`` (reverse mode), shaped like x."""
        self._count("vjp")
        sim = self.simulator
        if sim is not None:
            return sim.vjp(x.detach(), u)
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.forward(xr)
            g = _grad_or_zeros(y, xr, u)
        return g

    def _no_second_derivatives(self):
        if self.simulator is not None:
            raise TypeError(
                "second derivatives (the Hessian, method='newton') cannot be formed from user-supplied first "
                "derivatives (vjp/jvp/jacobian); use method='lbfgs' or 'bfgs' (they need vjp), or 'ig' / 'hig' "
                "(they need the Jacobian, or jvp and vjp).")

    # ------------------------------------------------------------------ entrance check
    def check_entrance(self, x0: Tensor, method: Optional[str] = None, options: Optional[dict] = None,
                       check_derivatives: bool = False) -> None:
        r"""The cheap checks :func:`physgrad.optimize` makes before step 1 (once per shape, dtype
        and device of x, and again after ``forward`` is replaced; ``check_derivatives=True``
        always runs).

        * **A broken forward.** One trial ``P(x0)`` is recorded by autograd while a
          :class:`torch.overrides.TorchFunctionMode` notes every call that turns a tensor which
          depends on x into a constant: ``.item()``, ``.tolist()``, ``.numpy()``, ``float()``,
          ``int()``, ``.detach()``, ``.data`` and integer casts. If ``P(x0)`` then has no
          autograd path back to x, a ``TypeError`` names the calls seen (or, if none, the usual
          causes: ``torch.no_grad()``, a tensor rebuilt from values). If such a call was seen but
          the output still depends on x, one directional derivative is compared with a central
          finite difference, and a mismatch raises, naming the call. Skipped for ``method="pg"``
          (which needs no derivatives of P) and for user-supplied derivatives.
        * **A forward that writes into its argument** (``x.mul_(2)``, ``x[0] = 0``): it would
          corrupt the iterate itself; ``ValueError``.
        * **User-supplied derivatives** must cover the method: gd, adam, bfgs and lbfgs need
          ``vjp`` (or ``jacobian``), matrix-free ig needs ``vjp`` and ``jvp`` (or
          ``jacobian``), newton is refused (no second derivatives).
        * ``check_derivatives=True``: ``J v`` for a random ``v`` (the user's ``jvp``/``jacobian``;
          for autograd or a user ``vjp`` through the dot-product test ``uᵀ(J v) = (Jᵀu)ᵀv`` with
          a random ``u``) against a central finite difference of ``P``; with both ``vjp`` and ``jvp`` also the
          adjoint test ``uᵀ(J v) = (Jᵀu)ᵀv``. A relative mismatch above ``1e-5`` (float64)
          or ``3e-2`` (float32) raises :class:`DerivativeCheckError`.

        The trial ``P(x0)`` is not an extra call: the next :meth:`simulate` of this same ``x0``
        tensor returns it (and counts it). The calls of ``check_derivatives`` are not counted.
        """
        if not (torch.is_tensor(x0) and (x0.is_floating_point() or x0.is_complex()) and x0.device.type != "meta"
                and x0.numel() > 0 and bool(torch.isfinite(x0).all())):
            return  # optimize's own checks of x0 speak first
        self._entrance(x0, method, options, check_derivatives)

    def _entrance(self, x0: Tensor, method: Optional[str], options: Optional[dict], check_derivatives: bool) -> None:
        """:meth:`check_entrance` for an ``x0`` already known to be a finite, non-empty
        floating-point tensor with data (``optimize`` has just checked it, so the scan of x0 is
        not repeated on every call)."""
        sim = self.simulator
        if sim is not None and method is not None:
            _check_user_derivatives(sim, method, options or {})
        if self._checked_forward is not self.forward:  # a new forward: every earlier check is void
            self._checked, self._checked_forward = set(), self.forward
        key = (x0.shape, x0.dtype, x0.device, method == "pg")
        if key in self._checked and not check_derivatives:
            return
        if sim is not None or method == "pg":
            xc = x0.detach().clone()
            y = self.forward(xc)
            _check_unmodified(xc, x0)
        else:
            y = _trial_forward(self.forward, x0.detach())
        if torch.is_tensor(y):  # the trial is the run's first evaluation: simulate(x0) takes it once
            self._stash = (x0, x0._version, y.detach())
        if check_derivatives:
            with _quiet_rng(x0):
                _derivative_check(self, x0.detach())
        self._checked.add(key)

    # ------------------------------------------------------------------ inverse
    def apply_inverse(self, y: Tensor, x0: Tensor, check: bool = True) -> Tensor:
        """Evaluate the local inverse ``P^{-1}(y; x0)`` with checks on what it returns.

        The calls the inverse makes to any :class:`Problem` (e.g. the forwards and Jacobians of
        :func:`physgrad.inverse.numerical_inverse`) are counted as ``inverse_forward``,
        ``inverse_jacobian``, ... ``check=False`` skips the finiteness scan of the result (the
        caller checks it, as :func:`physgrad.optimize` does in its one check per step)."""
        if self.inverse is None:
            raise MissingInverseError(
                "this method needs a local inverse simulator, but the problem has none. Supply one "
                "as Problem(forward=P, target=y_star, inverse=lambda y, x0: ...), returning the x "
                "closest to x0 with P(x) = y; or use physgrad.inverse.numerical_inverse(P) for a "
                "generic Newton-type local inverse of a differentiable P."
            )
        self._count("inverse")
        try:
            with count_calls(isolated=True) as inner:
                x = self.inverse(y, x0)
        except Exception as e:  # the user's code failed: say so, keep the cause
            raise InverseSimulatorError(f"the inverse simulator raised {type(e).__name__}: {e}") from e
        finally:
            for key, k in inner.items():
                self._count(f"inverse_{key}", k)
        if not torch.is_tensor(x):
            raise InverseSimulatorError(f"the inverse simulator returned {type(x).__name__}, not a torch.Tensor")
        if x.shape != x0.shape:
            raise ShapeError(
                f"the inverse simulator returned shape {tuple(x.shape)}, but x has shape {tuple(x0.shape)}"
            )
        if x.dtype != x0.dtype:
            raise InverseSimulatorError(
                f"the inverse simulator returned dtype {x.dtype} for x of dtype {x0.dtype}; it must follow "
                "the dtype of its x0 argument (e.g. build its constants with dtype=x0.dtype)")
        if check and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(INVERSE_NONFINITE)
        return x

    # ------------------------------------------------------------------ transforms
    def scaled(self, c: float) -> "Problem":
        """The same problem with P and y* multiplied by ``c`` (the book's sensitivity experiment).
        The inverse is adapted: ``(cP)^{-1}(y; x0) = P^{-1}(y / c; x0)``."""
        if c == 0 or not math.isfinite(c):
            raise ValueError(f"scale c must be finite and non-zero, got {c}")
        inv = None
        if self.inverse is not None:
            inv0 = self.inverse
            inv = lambda y, x0: inv0(y / c, x0)  # noqa: E731
        fwd = self.forward
        sim = self.simulator
        return Problem(sim.output_scaled(c) if sim is not None else (lambda x: c * fwd(x)), c * self.target, inv,
                       name=f"{self.name} (c={c:g})", jacobian_mode=self.jacobian_mode, batched=self.batched)

    def reparametrized(self, to_x: Callable, to_z: Callable, dx_dz: Callable, name: Optional[str] = None) -> "Problem":
        r"""The same problem in a new variable ``z`` with ``x = to_x(z)``, an elementwise map
        with derivative ``dx_dz(z)`` and inverse ``to_z``: the forward is ``P(to_x(z))``, user
        derivatives are chained (``J_z = J diag(dx/dz)``), and a local inverse becomes
        ``to_z(P^{-1}(y; to_x(z_0)))``. :mod:`physgrad.bounds` builds its bounds and ``x_scale``
        on this."""
        inv = None
        if self.inverse is not None:
            inv0 = self.inverse
            inv = lambda y, z0: to_z(inv0(y, to_x(z0)))  # noqa: E731
        sim = self.simulator
        fwd = self.forward
        return Problem(sim.composed(to_x, dx_dz) if sim is not None else (lambda z: fwd(to_x(z))), self.target,
                       inv, name=name or self.name, jacobian_mode=self.jacobian_mode, batched=self.batched)


# ---------------------------------------------------------------------- entrance check helpers
#: calls that turn a tensor into a constant for autograd (name shown in messages)
_CUTS = {"item": ".item()", "tolist": ".tolist()", "numpy": ".numpy()", "__float__": "float()",
         "__int__": "int()", "__index__": "int()", "detach": ".detach()", "detach_": ".detach_()",
         "long": ".long()", "int": ".int()", "short": ".short()", "byte": ".byte()", "char": ".char()",
         "__array__": "numpy.asarray()"}
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool)


def _cut_name(func, args, kwargs):
    """The user-facing name of a call that cuts the autograd graph, or None."""
    if func is torch.Tensor.data.__get__:
        return ".data"
    name = getattr(func, "__name__", "")
    if name in _CUTS:
        return _CUTS[name]
    if name in ("to", "type"):
        dts = [a for a in list(args[1:]) + list(kwargs.values()) if isinstance(a, torch.dtype)]
        if any(d in _INT_DTYPES for d in dts) or any(isinstance(a, str) and ("Long" in a or "Int" in a)
                                                     for a in args[1:]):
            return f".{name}(<integer dtype>)"
    return None


def _reaches(start, goal, memo) -> bool:
    """Whether the autograd node ``start`` leads to ``goal`` (iterative, memoized DFS)."""
    if start is None:
        return False
    stack = [start]
    while stack:
        n = stack[-1]
        if n in memo:
            stack.pop()
            continue
        children = [c for c, _ in n.next_functions if c is not None]
        pending = [c for c in children if c not in memo]
        if pending:
            stack.extend(pending)
        else:
            memo[n] = n is goal or any(memo[c] for c in children)
            stack.pop()
    return memo[start]


class _CutRecorder(torch.overrides.TorchFunctionMode):
    """Notes the graph-cutting calls made on tensors that require grad during one forward."""

    def __init__(self):
        super().__init__()
        self.seen = []  # (name, autograd node of the tensor)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if args and torch.is_tensor(args[0]) and args[0].requires_grad:
            name = _cut_name(func, args, kwargs)
            if name is not None:
                self.seen.append((name, args[0].grad_fn))
        return func(*args, **kwargs)


_HOW_TO_FIX = ("Keep the computation in torch tensors (x[0] instead of x[0].item(), torch.where instead of a "
               "Python if, x.to(dtype) instead of numpy); or, for a simulator that is not torch code, supply its "
               "derivatives: Problem(P, y, vjp=..., jvp=...), or physgrad.external.numpy_simulator.")


def _trial_forward(forward, x0: Tensor) -> None:
    """One recorded P(x0): reject a forward that cuts x out of the autograd graph or writes
    into its argument (see :meth:`Problem.check_entrance`)."""
    xr = x0.clone().requires_grad_(True)
    xin = xr.clone()  # a non-leaf, so that an in-place op on it is allowed and can be seen
    goal = xin.grad_fn.next_functions[0][0]  # the AccumulateGrad node of xr
    version = xin._version
    rec = _CutRecorder()
    try:
        with torch.enable_grad(), rec:
            y = forward(xin)
    except Exception as e:
        names = _names(rec.seen, goal)
        if names:
            raise TypeError(f"P(x) calls {names} on a tensor that depends on x, which fails or cuts the "
                            f"derivative ({type(e).__name__}: {e}). {_HOW_TO_FIX}") from e
        raise
    _check_unmodified(xin, x0, xin._version != version)
    if not torch.is_tensor(y):
        return y  # optimize's type check of P(x) speaks
    memo: dict = {}
    connected = y.requires_grad and _reaches(y.grad_fn, goal, memo)
    names = _names(rec.seen, goal, memo)
    if not connected:
        cause = (f"it calls {names} on a tensor that depends on x, which turns the value into a constant"
                 if names else "no autograd path leads from P(x) back to x (a torch.no_grad() block, .data, a "
                 "tensor rebuilt from values such as torch.tensor(x.tolist()), or numpy code)")
        raise TypeError(f"P(x) does not depend on x through autograd: {cause}, so every derivative would be "
                        f"zero. {_HOW_TO_FIX}")
    if names:  # connected, but a value was taken out of the graph: does it matter?
        with _quiet_rng(x0):
            err = _fd_error(forward, x0, lambda u: torch.autograd.grad(y, xr, u, retain_graph=True,
                                                                         allow_unused=True)[0], None, y)
        if err > _fd_tolerance(x0):
            raise TypeError(f"P(x) calls {names} on a tensor that depends on x, so autograd misses part of its "
                            f"derivative: along a random direction, J v from autograd differs from a central "
                            f"finite difference by {err:.2g} (relative). {_HOW_TO_FIX}")
    return y


def _names(seen, goal, memo=None) -> str:
    memo = {} if memo is None else memo
    out = []
    for name, node in seen:
        if name not in out and _reaches(node, goal, memo):
            out.append(name)
    return ", ".join(out)


def _check_unmodified(xin: Tensor, x0: Tensor, written: bool = False) -> None:
    if written or not torch.equal(xin.detach(), x0):
        raise ValueError("the forward writes into its argument x (an in-place operation such as x.mul_(2), "
                         "x += ..., or x[0] = 0): it would change the optimizer's iterate itself. Work on a copy "
                         "(x = x.clone()) or use out-of-place operations (x = 2 * x).")


@contextlib.contextmanager
def _quiet_rng(x: Tensor):
    """The trial calls must not shift the random streams a seeded notebook relies on."""
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        import numpy as np
        state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np = state = None
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        if np is not None:
            np.random.set_state(state)


def _fd_tolerance(x: Tensor) -> float:
    return 1e-5 if (x.real if x.is_complex() else x).dtype == torch.float64 else 3e-2


def _fd_error(forward, x0: Tensor, vjp, jvp, y0) -> float:
    """Relative error of a derivative against a central difference along a random v:
    ``||J v − FD||`` (with ``jvp``) or ``|uᵀ J v − uᵀ FD|`` (with only ``vjp``, random u)."""
    g = torch.Generator(device="cpu").manual_seed(1234)
    v = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(dtype=x0.dtype, device=x0.device)
    eps = torch.finfo(x0.real.dtype if x0.is_complex() else x0.dtype).eps
    h = eps ** (1 / 3) * max(1.0, float(torch.linalg.vector_norm(x0))) / float(torch.linalg.vector_norm(v))
    with torch.no_grad():
        fd = ((forward(x0 + h * v) - forward(x0 - h * v)) / (2 * h)).detach().reshape(-1)
    if jvp is not None:
        jv = jvp(v).detach().reshape(-1)
        return float(torch.linalg.vector_norm(jv - fd)) / max(float(torch.linalg.vector_norm(fd)),
                                                            float(torch.linalg.vector_norm(jv)), 1e-300)
    u = torch.randn(y0.shape, generator=g, dtype=torch.float64).to(dtype=y0.dtype, device=y0.device)
    jtu = vjp(u)
    jtu = torch.zeros_like(x0) if jtu is None else jtu.detach()
    a, b = float((u.reshape(-1) * fd).sum()), float((jtu.reshape(-1) * v.reshape(-1)).sum())
    scale = float(torch.linalg.vector_norm(u)) * float(torch.linalg.vector_norm(fd))
    return abs(a - b) / max(scale, abs(b), 1e-300)


def _derivative_check(prob: "Problem", x0: Tensor) -> None:
    """``check_derivatives=True``: the problem's J v (and the adjoint test) against finite differences."""
    sim = prob.simulator
    tol = _fd_tolerance(x0)
    with count_calls(isolated=True):
        y0 = prob.forward(x0).detach()
        if sim is not None and (sim.has("jvp") or sim.has("jacobian")):
            err = _fd_error(prob.forward, x0, None, lambda v: prob.jvp(x0, v), y0)
            what = "J v (" + ("jvp=" if sim.has("jvp") else "jacobian=") + ")"
        else:  # reverse mode, as gd/lbfgs use it (autograd's backward, or the user's vjp)
            err = _fd_error(prob.forward, x0, lambda u: prob.vjp(x0, u), None, y0)
            what = "u^T J v from " + ("autograd's backward" if sim is None else "vjp=")
        if err > tol:
            raise DerivativeCheckError(f"check_derivatives: {what} differs from a central finite difference of P "
                                       f"along a random direction by {err:.2g} (relative; tolerance {tol:g}).")
        if sim is not None and sim.has("vjp") and (sim.has("jvp") or sim.has("jacobian")):
            g = torch.Generator(device="cpu").manual_seed(4321)
            v = torch.randn(x0.shape, generator=g, dtype=torch.float64).to(dtype=x0.dtype, device=x0.device)
            u = torch.randn(y0.shape, generator=g, dtype=torch.float64).to(dtype=y0.dtype, device=y0.device)
            a = float((u.reshape(-1) * prob.jvp(x0, v).reshape(-1)).sum())
            b = float((prob.vjp(x0, u).reshape(-1) * v.reshape(-1)).sum())
            rel = abs(a - b) / max(abs(a), abs(b), 1e-300)
            if rel > 100 * torch.finfo(x0.dtype).eps ** 0.5:
                raise DerivativeCheckError(f"check_derivatives: vjp= is not the adjoint of the jvp: u^T (J v) = "
                                           f"{a:.6g} but (J^T u)^T v = {b:.6g} for random u, v (relative "
                                           f"difference {rel:.2g}).")


#: methods that need derivatives of P, and what a user-supplied Simulator must provide for them
def _check_user_derivatives(sim, method: str, options: dict) -> None:
    if method == "newton":
        raise TypeError("method 'newton' needs second derivatives, which user-supplied vjp/jvp/jacobian do not "
                        "give; use 'lbfgs' or 'bfgs' (vjp), or 'ig' / 'hig' (Jacobian, or jvp and vjp).")
    has_vjp = sim.has("vjp") or sim.has("jacobian")
    has_jvp = sim.has("jvp") or sim.has("jacobian")
    if method in ("gd", "adam", "bfgs", "lbfgs") and not has_vjp:
        raise TypeError(f"method {method!r} needs the gradient J^T r: supply vjp=(x, u) -> J^T u (or jacobian=)")
    if method == "ig" and options.get("solver") in ("lsqr", "cg") and not (has_vjp and has_jvp):
        raise TypeError(f"matrix-free ig (solver={options['solver']!r}) needs both J v and J^T u: supply jvp= and "
                        "vjp= (or jacobian=)")
