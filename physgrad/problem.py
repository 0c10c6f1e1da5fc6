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

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.func import grad as _fgrad
from torch.func import hessian as _fhessian
from torch.func import jacfwd, jacrev, jvp, vjp

from .errors import (
    InverseSimulatorError,
    MissingInverseError,
    NonFiniteError,
    ShapeError,
)

__all__ = ["Problem", "check_finite"]

Tensor = torch.Tensor


def check_finite(t: Tensor, what: str) -> Tensor:
    """Raise :class:`~physgrad.errors.NonFiniteError` if ``t`` holds a NaN or Inf."""
    if not torch.is_tensor(t):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise NonFiniteError(f"{what} contains {bad} non-finite value(s) (NaN or Inf) out of {t.numel()}.")
    return t


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
        (:func:`torch.func.jacfwd`, cheap when x is small). Default ``"auto"`` picks by size.
    batched:
        ``True`` declares ``B`` independent problems: x has shape ``(B, n)``, ``P(x)`` and the
        target ``(B, m)``, and row ``b`` of ``P(x)`` depends on row ``b`` of x only.
        :func:`physgrad.optimize` then solves all samples at once (:mod:`physgrad.batched`).
    """

    forward: Callable[[Tensor], Tensor]
    target: Tensor
    inverse: Optional[Callable[[Tensor, Tensor], Tensor]] = None
    name: str = "problem"
    jacobian_mode: str = "auto"
    counts: dict = field(default_factory=dict, repr=False, compare=False)
    batched: bool = False

    def __post_init__(self):
        if not callable(self.forward):
            raise TypeError("Problem.forward must be callable: a function x -> P(x)")
        if self.inverse is not None and not callable(self.inverse):
            raise TypeError("Problem.inverse must be callable: a function (y, x0) -> x, or None")
        if not torch.is_tensor(self.target):
            self.target = torch.as_tensor(self.target)
        if not (self.target.is_floating_point() or self.target.is_complex()):
            self.target = self.target.to(torch.get_default_dtype())  # [1, 2] -> float, not int64
        check_finite(self.target, "target y*")
        if self.jacobian_mode not in ("auto", "rev", "fwd"):
            raise ValueError(f"jacobian_mode must be 'auto', 'rev' or 'fwd', got {self.jacobian_mode!r}")
        if self.batched and self.target.ndim < 2:
            raise ShapeError(f"a batched problem needs a target of shape (B, m); got {tuple(self.target.shape)}")

    # ------------------------------------------------------------------ helpers
    def _count(self, key: str, k: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + k

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
        r = self.residual(x)
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
        if mode == "auto":
            m = self.target.numel()
            mode = "fwd" if xf.numel() <= m else "rev"
        # .to(xf.dtype): forward mode can promote to float64 when P mixes 0-dim tensors with
        # Python floats (torch 2.13); the Jacobian must follow x's dtype like everything else
        J = (jacfwd(f) if mode == "fwd" else jacrev(f))(xf).to(xf.dtype)
        if J.shape != (self.target.numel(), xf.numel()):
            raise ShapeError(
                f"the Jacobian has shape {tuple(J.shape)}; expected {(self.target.numel(), xf.numel())}. "
                "Does P(x) have the shape of the target?"
            )
        return J

    def grad(self, x: Tensor) -> Tensor:
        r"""Gradient ``g = (dL/dx)^T = J^T (P(x) - y*)`` (eq. ``loss-deriv``), shaped like x."""
        self._count("grad")
        return _fgrad(lambda z: self.loss(z))(x.detach())

    def value_and_grad(self, x: Tensor):
        """``(L(x), grad L(x))`` from one forward and one backward pass."""
        self._count("grad")
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self.loss(xr)
            (g,) = torch.autograd.grad(L, xr)
        return L.detach(), g

    def hessian(self, x: Tensor) -> Tensor:
        r"""Exact Hessian ``d^2L/dx^2`` as an ``(n, n)`` matrix (torch.func.hessian)."""
        self._count("hessian")
        shape = x.shape

        def Lf(xf):
            return self.loss(xf.reshape(shape))

        return _fhessian(Lf)(x.detach().reshape(-1)).to(x.dtype)

    def grad_and_hessian(self, x: Tensor):
        r"""``(∇L, ∂²L/∂x²)`` from one forward-over-reverse pass (``jacfwd(grad)`` with the
        gradient as auxiliary output): cheaper than :meth:`grad` and :meth:`hessian` separately.
        The gradient is shaped like ``x``, the Hessian is ``(n, n)``."""
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
        self._count("jvp")
        return jvp(self.forward, (x.detach(),), (v,))[1]

    def vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """Vector-Jacobian product ``J^T u`` (reverse mode), shaped like x."""
        self._count("vjp")
        _, pull = vjp(self.forward, x.detach())
        return pull(u)[0]

    # ------------------------------------------------------------------ inverse
    def apply_inverse(self, y: Tensor, x0: Tensor) -> Tensor:
        """Evaluate the local inverse ``P^{-1}(y; x0)`` with checks on what it returns."""
        if self.inverse is None:
            raise MissingInverseError(
                "this method needs a local inverse simulator, but the problem has none. Supply one "
                "as Problem(forward=P, target=y_star, inverse=lambda y, x0: ...), returning the x "
                "closest to x0 with P(x) = y; or use physgrad.inverse.numerical_inverse(P) for a "
                "generic Newton-type local inverse of a differentiable P."
            )
        self._count("inverse")
        try:
            x = self.inverse(y, x0)
        except Exception as e:  # the user's code failed: say so, keep the cause
            raise InverseSimulatorError(f"the inverse simulator raised {type(e).__name__}: {e}") from e
        if not torch.is_tensor(x):
            raise InverseSimulatorError(f"the inverse simulator returned {type(x).__name__}, not a torch.Tensor")
        if x.shape != x0.shape:
            raise ShapeError(
                f"the inverse simulator returned shape {tuple(x.shape)}, but x has shape {tuple(x0.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                "the inverse simulator returned non-finite values (NaN/Inf): the requested y = P(x0) + dy "
                "may lie outside the range of P. Use a smaller step_size, or a damped/regularized inverse."
            )
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
                       jacobian_mode=self.jacobian_mode)
