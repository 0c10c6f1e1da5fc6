r"""Simulators whose derivatives come from their author, not from autograd.

Most simulators in the field are not differentiable PyTorch code: a legacy numpy, C or Fortran
code comes with a hand-written adjoint (or none), an ODE package with its own sensitivities. A
:class:`Simulator` bundles such a forward ``P`` with the derivatives its author supplies,

* ``vjp(x, u) = Jᵀ u`` (the adjoint, shaped like x),
* ``jvp(x, v) = J v`` (the tangent, shaped like y),
* ``jacobian(x) = J`` (a ``(y.numel(), x.numel())`` matrix),

any of them optional, and is called like a torch function. Autograd never looks inside it: the
call is one :class:`torch.autograd.Function` whose backward is ``vjp`` (so ``loss.backward()``
works) and whose second backward (the derivative of ``u ↦ Jᵀu`` in ``u``) is ``jvp``, which is
what matrix-free Krylov solvers need. :class:`~physgrad.problem.Problem` uses the derivatives
directly (``Problem(P, y, vjp=..., jvp=...)`` builds a Simulator; ``Problem(sim, y)`` takes one).

:func:`numpy_simulator` wraps numpy functions: the simulator receives numpy arrays and returns
arrays, and the results come back as tensors with the dtype and device of the input.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["Simulator", "numpy_simulator"]

Tensor = torch.Tensor


class _VJP(torch.autograd.Function):
    """``u ↦ Jᵀ u`` at a fixed x, as a linear function of u: its derivative is ``J`` (the jvp)."""

    @staticmethod
    def forward(x, u, sim):
        return sim.vjp(x, u)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.sim = inputs[2]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, w):
        (x,) = ctx.saved_tensors
        return None, ctx.sim.jvp(x, w), None


class _Forward(torch.autograd.Function):
    """``y = P(x)`` with the user's ``vjp`` as backward (forward mode: use :meth:`Simulator.jvp`)."""

    @staticmethod
    def forward(x, sim):
        return sim.fn(x.detach())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.sim = inputs[1]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, u):
        (x,) = ctx.saved_tensors
        # detached x: second derivatives in x are not available from first derivatives
        return _VJP.apply(x.detach(), u, ctx.sim), None



class Simulator:
    r"""A forward simulator with user-supplied derivatives, callable like a torch function.

    Parameters
    ----------
    forward
        ``forward(x) -> y`` on torch tensors. It is never traced by autograd, so it may call
        numpy, C or anything else.
    vjp
        ``vjp(x, u) -> Jᵀ u``, shaped like ``x`` (the adjoint). Needed by gd, adam, bfgs and
        lbfgs (unless ``jacobian`` is given) and by matrix-free ig.
    jvp
        ``jvp(x, v) -> J v``, shaped like ``y``. Needed by matrix-free ig.
    jacobian
        ``jacobian(x) -> J`` as a ``(y.numel(), x.numel())`` matrix (or shaped
        ``y.shape + x.shape``). Without it, the dense methods (ig, hig, LM) assemble ``J``
        from ``x.numel()`` jvps or ``y.numel()`` vjps, within the memory budget.
    name
        A label for messages.

    Notes
    -----
    Second derivatives (``method="newton"``) cannot be formed from these and are refused.
    Every supplied function must return tensors with the dtype and device of ``x``;
    :func:`numpy_simulator` does this conversion for numpy code.
    """

    def __init__(self, forward: Callable, vjp: Optional[Callable] = None, jvp: Optional[Callable] = None,
                 jacobian: Optional[Callable] = None, name: str = "simulator"):
        for what, f in (("forward", forward), ("vjp", vjp), ("jvp", jvp), ("jacobian", jacobian)):
            if f is not None and not callable(f):
                raise TypeError(f"Simulator's {what} must be callable, got {type(f).__name__}")
        if forward is None:
            raise TypeError("Simulator needs a forward function x -> P(x)")
        if vjp is None and jvp is None and jacobian is None:
            raise TypeError("Simulator needs at least one derivative: vjp=(x, u) -> J^T u, "
                            "jvp=(x, v) -> J v, or jacobian=x -> J")
        self.fn, self._vjp, self._jvp, self._jacobian, self.name = forward, vjp, jvp, jacobian, name

    def __call__(self, x: Tensor) -> Tensor:
        return _Forward.apply(x, self)

    def __repr__(self) -> str:
        have = [k for k in ("vjp", "jvp", "jacobian") if self.has(k)]
        return f"Simulator({self.name!r}, derivatives: {', '.join(have)})"

    def has(self, kind: str) -> bool:
        """Whether ``kind`` (``"vjp"``, ``"jvp"`` or ``"jacobian"``) was supplied."""
        return getattr(self, "_" + kind) is not None

    # -- the derivatives, checked; used by Problem and by the autograd.Function above
    def vjp(self, x: Tensor, u: Tensor) -> Tensor:
        """``Jᵀ u`` shaped like ``x`` (from ``vjp``, else from ``jacobian``)."""
        if self._vjp is not None:
            return _checked(self._vjp(x, u), x.shape, x, "vjp(x, u)")
        if self._jacobian is not None:
            return (self.jacobian(x, u.shape).mT @ u.reshape(-1)).reshape(x.shape)
        raise TypeError(f"{self.name}: this needs J^T u, but the simulator has neither vjp= nor jacobian=; "
                        "supply vjp=lambda x, u: ... (the adjoint)")

    def jvp(self, x: Tensor, v: Tensor) -> Tensor:
        """``J v`` (from ``jvp``, else from ``jacobian``); flat if no output shape is known."""
        if self._jvp is not None:
            y = self._jvp(x, v)
            return _checked(y, y.shape if torch.is_tensor(y) else None, x, "jvp(x, v)")
        if self._jacobian is not None:
            return self.jacobian(x) @ v.reshape(-1)
        raise TypeError(f"{self.name}: this needs J v, but the simulator has neither jvp= nor jacobian=; "
                        "supply jvp=lambda x, v: ... (the tangent; matrix-free ig needs both vjp and jvp)")

    def jacobian(self, x: Tensor, y_shape=None) -> Tensor:
        """``J`` as an ``(m, n)`` matrix: the user's, or assembled from jvps (columns) or vjps
        (rows), whichever needs fewer products (``y_shape``: the output's shape, else one
        forward call finds it)."""
        n = x.numel()
        if y_shape is None and self._jacobian is None:
            y_shape = self.fn(x.detach()).shape
        m = None if y_shape is None else torch.Size(y_shape).numel()
        if self._jacobian is not None:
            J = self._jacobian(x)
            if not torch.is_tensor(J):
                raise TypeError(f"{self.name}: jacobian(x) must return a torch.Tensor, got {type(J).__name__}")
            _check_like(J, x, "jacobian(x)")
            if J.numel() % max(n, 1) or (m is not None and J.numel() != m * n):
                raise ValueError(f"{self.name}: jacobian(x) has shape {tuple(J.shape)}, which is not "
                                 f"({m if m is not None else 'm'}, {n})")
            return J.reshape(-1, n)
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        if self._jvp is not None and (n <= m or self._vjp is None):
            cols = [self.jvp(x, eye[j].reshape(x.shape)).reshape(-1) for j in range(n)]
            return torch.stack(cols, 1) if cols else torch.zeros(m, 0, dtype=x.dtype, device=x.device)
        rows = []
        for i in range(m):
            u = torch.zeros(m, dtype=x.dtype, device=x.device)
            u[i] = 1
            rows.append(self.vjp(x, u.reshape(y_shape)).reshape(-1))
        return torch.stack(rows) if rows else torch.zeros(0, n, dtype=x.dtype, device=x.device)

    # -- new simulators from this one (Problem.scaled, Problem.reparametrized)
    def output_scaled(self, c: float) -> "Simulator":
        """``c·P`` with derivatives ``c·J``."""
        return Simulator(lambda x: c * self.fn(x),
                         None if not (self.has("vjp") or self.has("jacobian")) else (lambda x, u: self.vjp(x, c * u)),
                         None if not (self.has("jvp") or self.has("jacobian")) else (lambda x, v: c * self.jvp(x, v)),
                         None if not self.has("jacobian") else (lambda x: c * self.jacobian(x)),
                         name=f"{self.name} (c={c:g})")

    def composed(self, to_x: Callable, dx_dz: Callable) -> "Simulator":
        """``z ↦ P(to_x(z))`` for an elementwise map ``to_x`` with derivative ``dx_dz(z)``:
        ``J_z = J diag(dx/dz)``."""
        def fn(z):
            return self.fn(to_x(z))

        def vjp(z, u):
            return dx_dz(z) * self.vjp(to_x(z), u)

        def jvp(z, v):
            return self.jvp(to_x(z), (dx_dz(z) * v))

        def jac(z):
            x = to_x(z)
            return self.jacobian(x) * dx_dz(z).reshape(1, -1)

        return Simulator(fn, vjp if (self.has("vjp") or self.has("jacobian")) else None,
                         jvp if (self.has("jvp") or self.has("jacobian")) else None,
                         jac if self.has("jacobian") else None, name=self.name)


def _check_like(t: Tensor, x: Tensor, what: str) -> None:
    if t.dtype != x.dtype or t.device != x.device:
        raise TypeError(f"{what} returned dtype {t.dtype} on {t.device} for x of dtype {x.dtype} on {x.device}; "
                        "user derivatives must follow x (numpy_simulator converts for you)")


def _checked(t, shape, x: Tensor, what: str) -> Tensor:
    if not torch.is_tensor(t):
        raise TypeError(f"{what} must return a torch.Tensor, got {type(t).__name__} "
                        "(wrap numpy code with physgrad.external.numpy_simulator)")
    _check_like(t, x, what)
    if shape is not None and t.numel() != torch.Size(shape).numel():
        raise ValueError(f"{what} returned {t.numel()} values; expected shape {tuple(shape)}")
    return t.reshape(shape) if shape is not None else t


def numpy_simulator(forward: Callable, vjp: Optional[Callable] = None, jvp: Optional[Callable] = None,
                    jacobian: Optional[Callable] = None, name: str = "numpy simulator") -> Simulator:
    r"""Wrap a numpy forward and its numpy derivatives as a :class:`Simulator`.

    ``forward(x) -> y``, ``vjp(x, u) -> Jᵀ u``, ``jvp(x, v) -> J v`` and ``jacobian(x) -> J``
    take and return numpy arrays (``x``, ``u``, ``v`` with the shapes of the tensors, copies
    the simulator may overwrite). Their results become tensors with the dtype and device of
    the ``x`` they were called with (a float64 numpy code serves a float32 run, rounded once
    on the way back). Pass the result to ``Problem(sim, target)``::

        sim = numpy_simulator(heat_np, vjp=heat_np_adjoint, jvp=heat_np)  # a linear simulator
        prob = physgrad.Problem(sim, y_star)
        physgrad.optimize(prob, x0, "lbfgs")
    """
    import numpy as np

    def to_np(t: Tensor):
        return t.detach().cpu().numpy().copy()  # a copy: the simulator may write into its input

    def to_torch(a, like: Tensor, what: str) -> Tensor:
        a = np.asarray(a)
        if np.iscomplexobj(a) and not like.is_complex():
            raise TypeError(f"{name}: {what} returned complex values for a real x")
        return torch.as_tensor(a).to(dtype=like.dtype, device=like.device)

    def wrap1(f, what):
        return None if f is None else (lambda x: to_torch(f(to_np(x)), x, what))

    def wrap2(f, what):
        return None if f is None else (lambda x, w: to_torch(f(to_np(x), to_np(w)), x, what))

    if not callable(forward):
        raise TypeError(f"numpy_simulator's forward must be callable, got {type(forward).__name__}")
    return Simulator(wrap1(forward, "forward(x)"), wrap2(vjp, "vjp(x, u)"), wrap2(jvp, "jvp(x, v)"),
                     wrap1(jacobian, "jacobian(x)"), name=name)
