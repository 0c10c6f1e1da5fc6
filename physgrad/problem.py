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
    ShapeError,
)

# torch.func is imported inside the methods that need it (Jacobians, Hessians, forward mode):
# its first use in a process costs 1-2 s (torch._dynamo), which paths that need only plain
# autograd (gd, adam, lbfgs, pg with an analytic inverse) never pay.

__all__ = ["Problem", "check_finite", "count_calls"]

Tensor = torch.Tensor

# Per-run call counters: a stack of dicts private to the current thread / context, so that
# optimize() reports the calls of *its* run even when a Problem is shared between threads.
_RUN_COUNTERS: contextvars.ContextVar = contextvars.ContextVar("physgrad_run_counters", default=())
_COUNTS_LOCK = threading.Lock()


@contextlib.contextmanager
def count_calls(isolated: bool = False):
    """Count the calls of every :class:`Problem` made inside the ``with`` block, in this thread
    (or asyncio context) only::

        with count_calls() as c:
            prob.jacobian(x)
        c  # {'jacobian': 1}

    ``isolated=True`` hides the calls from enclosing counters (used to label the work inside an
    inverse simulator separately)."""
    d: dict = {}
    token = _RUN_COUNTERS.set((d,) if isolated else _RUN_COUNTERS.get() + (d,))
    try:
        yield d
    finally:
        _RUN_COUNTERS.reset(token)


def check_finite(t: Tensor, what: str) -> Tensor:
    """Raise :class:`~physgrad.errors.NonFiniteError` if ``t`` holds a NaN or Inf."""
    if not torch.is_tensor(t):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    # fast path: one reduction, finite unless t holds a NaN/Inf (or the sum overflows, which the
    # exact scan below then clears)
    s = t.sum()
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


@dataclass
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
        ``True`` declares ``B`` independent problems: x has shape ``(B, n)``, ``P(x)`` and the
        target ``(B, m)``, and row ``b`` of ``P(x)`` depends on row ``b`` of x only.
        :func:`physgrad.optimize` then solves all samples at once (:mod:`physgrad.batched`).

    Notes
    -----
    The forward must be differentiable torch code: ``.item()``, ``float(t)`` or Python ``if`` on
    tensor values silently cut the derivative (wrong gradients, no error), and ``.numpy()``
    fails under ``torch.func`` with "Cannot access data pointer of Tensor that doesn't have
    storage". Dense Jacobians and Hessians are checked against a memory budget before they
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
        if not (self.target.is_floating_point() or self.target.is_complex()):
            self.target = self.target.to(torch.get_default_dtype())  # [1, 2] -> float, not int64
        check_finite(self.target, "target y*")
        if self.jacobian_mode not in _JACOBIAN_MODES:
            raise ValueError(f"jacobian_mode must be one of {_JACOBIAN_MODES}, got {self.jacobian_mode!r}")
        if self.batched and self.target.ndim < 2:
            raise ShapeError(f"a batched problem needs a target of shape (B, m); got {tuple(self.target.shape)}")

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, k: int = 1) -> None:
        with _COUNTS_LOCK:  # cumulative totals over the Problem's life (all threads)
            self.counts[key] = self.counts.get(key, 0) + k
        for d in _RUN_COUNTERS.get():  # the counters of the runs active in this thread
            d[key] = d.get(key, 0) + k

    def target_like(self, y: Tensor) -> Tensor:
        """The target on the dtype/device of ``y``."""
        return self.target.to(dtype=y.dtype, device=y.device)

    def check_x(self, x: Tensor, what: str = "x") -> Tensor:
        """Check that ``x`` is a finite floating-point tensor and return it."""
        if not torch.is_tensor(x):
            raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}; use e.g. x.double()")
        return check_finite(x, what)

    def _check_y(self, y: Tensor, what: str = "P(x)") -> Tensor:
        if not torch.is_tensor(y):
            raise TypeError(f"{what} must return a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape) != tuple(self.target.shape):
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
        r = y - self.target_like(y)
        # r*r (not |r|^2): abs() has a zero second derivative at r = 0, which would corrupt Hessians
        return 0.5 * (r * r.conj()).real.sum() if r.is_complex() else 0.5 * (r * r).sum()

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
        if mode == "auto":
            key = (xf.numel(), m, xf.dtype, xf.device)
            mode = self._auto_modes.get(key)
            if mode is None:
                J, mode = self._pick_jacobian_mode(f, xf, m)
                self._auto_modes[key] = mode
            else:
                J = _dense_jacobian(f, xf, mode)
        else:
            J = _dense_jacobian(f, xf, mode)
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
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self.loss(xr)
            g = _grad_or_zeros(L, xr)
        return L.detach(), g

    def hessian(self, x: Tensor) -> Tensor:
        r"""Exact Hessian ``d^2L/dx^2`` as an ``(n, n)`` matrix (torch.func.hessian)."""
        from torch.func import hessian as _fhessian

        self._count("hessian")
        shape = x.shape
        check_memory(_dense_bytes(x.numel(), x.numel(), x.dtype), f"a dense {x.numel()}x{x.numel()} Hessian")

        def Lf(xf):
            return self.loss(xf.reshape(shape))

        return _fhessian(Lf)(x.detach().reshape(-1)).to(x.dtype)

    def grad_and_hessian(self, x: Tensor):
        r"""``(∇L, ∂²L/∂x²)`` from one forward-over-reverse pass (``jacfwd(grad)`` with the
        gradient as auxiliary output): cheaper than :meth:`grad` and :meth:`hessian` separately.
        The gradient is shaped like ``x``, the Hessian is ``(n, n)``."""
        from torch.func import grad as _fgrad
        from torch.func import jacfwd

        check_memory(_dense_bytes(x.numel(), x.numel(), x.dtype), f"a dense {x.numel()}x{x.numel()} Hessian")
        self._count("grad")
        self._count("hessian")
        shape = x.shape

        def g_aux(xf):
            g = _fgrad(lambda z: self.loss(z.reshape(shape)))(xf)
            return g, g

        H, g = jacfwd(g_aux, has_aux=True)(x.detach().reshape(-1))
        return g.reshape(shape).to(x.dtype), H.to(x.dtype)

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """Jacobian-vector product ``J v`` (forward mode), shaped like the target."""
        from torch.func import jvp

        self._count("jvp")
        return jvp(self.forward, (x.detach(),), (v,))[1]

    def vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """Vector-Jacobian product ``J^T u`` (reverse mode), shaped like x."""
        self._count("vjp")
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = self.forward(xr)
            g = _grad_or_zeros(y, xr, u)
        return g

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
        return Problem(lambda x: c * fwd(x), c * self.target, inv, name=f"{self.name} (c={c:g})",
                       jacobian_mode=self.jacobian_mode, batched=self.batched)
