r"""The problem as the update kernels see it: ``B`` samples of flat parameters ``x`` ``(B, n)``.

A kernel of :mod:`physgrad.updates` never touches a :class:`~physgrad.problem.Problem` directly.
It asks a view for per-sample losses ``(B,)``, residuals ``(B, m)``, gradients ``(B, n)``,
Jacobians ``(B, m, n)``, Hessians ``(B, n, n)`` and local-inverse points ``(B, n)``:

* :class:`SingleView` presents one problem as ``B = 1``. Every derivative comes from the
  problem's own methods (:meth:`~physgrad.problem.Problem.jacobian`,
  :meth:`~physgrad.problem.Problem.value_and_grad`, ...), so the automatic Jacobian mode, the
  memory guard, user-supplied derivatives and the call counts all apply.
* :class:`BatchView` presents a batched problem (``Problem(..., batched=True)``): the forward is
  always called on the whole batch and per-sample Jacobians come from :func:`batch_jacobian`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .errors import InverseSimulatorError, MissingInverseError, PhysgradError, ShapeError
from .problem import _autograd_jacobian, _explain_random, squared_norm

__all__ = ["SingleView", "BatchView", "batch_jacobian"]

Tensor = torch.Tensor


def _plain(t: Tensor) -> Tensor:
    """``t`` cut from any autograd graph: a simulator with trainable parameters of its own (an
    ``nn.Module``, a weight with ``requires_grad``) gives outputs that carry a graph, but the
    kernels only ever need values, and a run must not keep (or return) that graph."""
    return t.detach() if t.requires_grad else t


class SingleView:
    """One :class:`~physgrad.problem.Problem` as a batch of one sample (``x`` is ``(1, n)``)."""

    B = 1

    def __init__(self, problem, x_shape, check_inverse: bool = True):
        self.problem = problem
        self.x_shape = tuple(x_shape)
        self.n = 1
        for s in self.x_shape:
            self.n *= s
        self.m = problem.target.numel()
        self.check_inverse = check_inverse
        self._cx = self._cy = self._cxn = None
        self._inv = (None, None)  # the last inverse result: (1, n) and in the problem's shape

    def count(self, key: str, k: int = 1) -> None:
        self.problem._count(key, k)

    def remember(self, x: Tensor, y: Tensor, x_natural: Optional[Tensor] = None) -> None:
        """Keep ``y = P(x)`` (already computed by the caller, with ``x`` in the problem's shape if
        given) for the kernel that asks for it."""
        self._cx, self._cy, self._cxn = x, y, x_natural

    def natural(self, xf: Tensor) -> Tensor:
        """``xf`` ``(1, n)`` in the problem's shape (the inverse's own result, without a reshape,
        when ``xf`` is the flat view of it that :meth:`inverse_point` returned)."""
        if xf is self._inv[0]:
            return self._inv[1]
        return xf.reshape(self.x_shape)

    def output(self, x: Tensor) -> Tensor:
        """``P(x)`` in the problem's shape (the remembered one if ``x`` is the remembered point)."""
        if x is self._cx:
            return self._cy
        return self.problem.checked_simulate(x.reshape(self.x_shape))

    def residual(self, x: Tensor) -> Tensor:
        return _plain(self.problem.residual(x.reshape(self.x_shape))).reshape(1, -1)

    def losses(self, x: Tensor) -> Tensor:
        return _plain(self.problem.loss(x.reshape(self.x_shape))).reshape(1)

    def value_and_grad(self, x: Tensor):
        L, g = self.problem.value_and_grad(x.reshape(self.x_shape))
        return _plain(L).reshape(1), _plain(g).reshape(1, -1)

    def jacobian(self, x: Tensor) -> Tensor:
        return _plain(self.problem.jacobian(x.reshape(self.x_shape))).unsqueeze(0)

    def grad_and_hessian(self, x: Tensor):
        g, H = self.problem.grad_and_hessian(x.reshape(self.x_shape))
        return _plain(g).reshape(1, -1), _plain(H).unsqueeze(0)

    def gauss_newton_product(self, x: Tensor, v: Tensor) -> Tensor:
        """``J^T J v`` (through the problem's jvp and vjp, user-supplied ones included)."""
        xs = x.reshape(self.x_shape)
        Jv = self.problem.jvp(xs, v.reshape(self.x_shape))
        return _plain(self.problem.vjp(xs, Jv)).reshape(1, -1)

    def inverse_point(self, x: Tensor, eta: float):
        """``P^{-1}(P(x) + η (y* − P(x)); x)`` as ``(1, n)``, and ``None`` (no per-sample flag:
        a failing inverse raises)."""
        y0 = self.output(x)
        xs = self._cxn if x is self._cx and self._cxn is not None else x.reshape(self.x_shape)
        x_new = _plain(self.problem.apply_inverse(torch.lerp(y0, self.problem.target_like(y0), eta), xs,
                                                  check=self.check_inverse))
        self._inv = (x_new.reshape(1, -1), x_new)
        return self._inv[0], None


def batch_jacobian(forward: Callable[[Tensor], Tensor], x: Tensor, mode: str = "auto") -> Tensor:
    r"""Per-sample Jacobians ``J_b = ∂P(x)_b / ∂x_b`` of a batched simulator, shape ``(B, m, n)``.

    ``forward`` maps ``(B, n) -> (B, m)`` with independent rows. ``mode="fwd"`` differentiates
    ``z ↦ P(x + z)`` for one shared ``z`` of shape ``(n,)`` (``n`` batched JVPs); ``"rev"``
    differentiates ``x ↦ Σ_b P(x)_b`` (``m`` batched VJPs). ``"auto"`` picks forward mode when
    ``n <= m``. ``"autograd"``: ``m`` plain backward passes of ``Σ_b P(x)_{b,i}`` (no
    :mod:`torch.func`: for a forward that draws random numbers or a classic
    :class:`torch.autograd.Function`). All are exact for independent samples and cost ``O(B)``
    memory."""
    from torch.func import jacfwd, jacrev

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
    elif mode == "autograd":  # as for one problem, on x ↦ Σ_b P(x)_b
        J = _autograd_jacobian(lambda xx: forward(xx).sum(0), x).reshape(-1, B, n).permute(1, 0, 2)
    else:
        raise ValueError(f"mode must be 'auto', 'fwd', 'rev' or 'autograd', got {mode!r}")
    return J.to(x.dtype)


class BatchView:
    """A batched problem seen as flat ``(B, n) -> (B, m)`` with per-sample losses."""

    check_inverse = False

    def __init__(self, problem, x0: Tensor):
        self.problem = problem
        if x0.ndim < 1 or x0.shape[0] == 0:
            raise ShapeError(f"a batched problem needs x0 of shape (B, ...) with B >= 1 (e.g. (B, n), or (B,) for "
                             f"one unknown per sample); got {tuple(x0.shape)}")
        tgt = problem.target
        if tgt.ndim < 1 or tgt.shape[0] != x0.shape[0]:
            raise ShapeError(f"a batched problem needs a target of shape (B, ...) with B = x0.shape[0] = "
                             f"{x0.shape[0]}; got {tuple(tgt.shape)}")
        self.B = x0.shape[0]
        self.x_shape = tuple(x0.shape)
        self.Y = problem.target_like(x0).reshape(self.B, -1)
        self.m = self.Y.shape[1]
        self.n = x0[0].numel()
        self._cx = self._cy = None

    def count(self, key: str, k: int = 1) -> None:
        self.problem._count(key, k)

    def P(self, xf: Tensor) -> Tensor:
        """Flat batched forward ``(B, n) -> (B, m)`` (no counting, usable inside transforms)."""
        y = self.problem.forward(xf.reshape(self.x_shape))
        if not torch.is_tensor(y):
            raise TypeError(f"P(x) must return a torch.Tensor, got {type(y).__name__}")
        if tuple(y.shape) != tuple(self.problem.target.shape):
            raise ShapeError(f"P(x) has shape {tuple(y.shape)} but the target y* has shape "
                             f"{tuple(self.problem.target.shape)}")
        return y.reshape(self.B, -1)

    def simulate(self, xf: Tensor) -> Tensor:
        """``P(x)`` ``(B, m)``, counted."""
        self.count("forward")
        return _plain(self.P(xf))

    def remember(self, xf: Tensor, y: Tensor) -> None:
        """Keep ``y = P(xf)`` (computed by the loop) for the kernel that asks for it."""
        self._cx, self._cy = xf, y

    def output(self, xf: Tensor) -> Tensor:
        """``P(xf)`` ``(B, m)``: the remembered one if ``xf`` is the remembered point."""
        return self._cy if xf is self._cx else self.simulate(xf)

    def residual(self, xf: Tensor) -> Tensor:
        return self.simulate(xf) - self.Y

    @staticmethod
    def _half_sq(r: Tensor) -> Tensor:
        """Per-sample losses ``½ Σ |r_b|²`` of flat residuals ``(B, m)``."""
        return 0.5 * squared_norm(r, -1)

    def losses(self, xf: Tensor) -> Tensor:
        return self._half_sq(self.residual(xf.detach()))

    def value_and_grad(self, xf: Tensor):
        self.count("grad")
        self.count("forward")  # (as one problem counts the forward of its gradient)
        sim = self.problem.simulator
        if sim is not None:  # every sample's J^T r from one batched vjp of the user's
            r = _plain(self.P(xf.detach())) - self.Y
            g = sim.vjp(xf.detach().reshape(self.x_shape), r.reshape(self.problem.target.shape))
            return self._half_sq(r), g.reshape(self.B, -1)
        xr = xf.detach().requires_grad_(True)
        with torch.enable_grad():
            L = self._half_sq(self.P(xr) - self.Y)
            (g,) = torch.autograd.grad(L.sum(), xr)
        return L.detach(), g

    def jacobian(self, xf: Tensor) -> Tensor:
        self.count("jacobian")
        if self.problem.simulator is not None:
            return self._user_jacobian(xf)
        mode = self.problem.jacobian_mode
        if mode == "auto":
            mode = "fwd" if self.n <= self.m else "rev"
        return _plain(_explain_random(batch_jacobian, self.P, xf, mode))

    def grad_and_hessian(self, xf: Tensor):
        """Per-sample gradients ``(B, n)`` and Hessians ``(B, n, n)`` (forward over reverse)."""
        from torch.func import jacfwd

        self.count("grad")
        self.count("hessian")
        self.count("forward")
        xf = xf.detach()

        def total_grad(z):
            g = torch.func.grad(lambda xx: self._half_sq(self.P(xx) - self.Y).sum())(xf + z)
            return g, g

        H, g = _explain_random(jacfwd(total_grad, has_aux=True), torch.zeros(self.n, dtype=xf.dtype, device=xf.device))
        return _plain(g.to(xf.dtype)), _plain(H.to(xf.dtype))

    def _user_jacobian(self, xf: Tensor) -> Tensor:
        """Per-sample Jacobians ``(B, m, n)`` from the user's batched products: column ``j`` of
        every sample from one jvp with ``e_j`` in every row (``n`` jvps), or row ``i`` from one vjp
        (``m`` vjps), whichever is fewer (as one problem assembles its Jacobian)."""
        sim, x = self.problem.simulator, xf.detach().reshape(self.x_shape)
        B, n, m = self.B, self.n, self.m

        def unit_products(product, k, in_shape, out_len):  # product(x, e_j in every row), j < k: (B, out_len, k)
            eye = torch.eye(k, dtype=xf.dtype, device=xf.device)
            outs = [product(x, eye[j].expand(B, k).reshape(in_shape).clone()).reshape(B, out_len) for j in range(k)]
            return torch.stack(outs, -1) if outs else xf.new_zeros(B, out_len, 0)

        if sim.has("jvp") and (n <= m or not sim.has("vjp")):
            self.count("jvp", n)
            return unit_products(sim.jvp, n, self.x_shape, m)  # columns
        self.count("vjp", m)
        return unit_products(sim.vjp, m, self.problem.target.shape, n).mT  # rows

    def gauss_newton_product(self, xf: Tensor, v: Tensor) -> Tensor:
        """Every sample's ``J_b^T J_b v_b`` ``(B, n)`` (one jvp and one vjp of the batched forward)."""
        self.count("jvp")
        self.count("vjp")
        sim = self.problem.simulator
        if sim is not None:
            x = xf.detach().reshape(self.x_shape)
            Jv = sim.jvp(x, v.reshape(self.x_shape)).reshape(self.problem.target.shape)
            return sim.vjp(x, Jv).reshape(self.B, -1)
        Jv = torch.func.jvp(self.P, (xf.detach(),), (v,))[1]
        xr = xf.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.P(xr), xr, _plain(Jv))
        return g

    def inverse_point(self, x: Tensor, eta: float):
        """Every sample's ``P^{-1}(P(x) + η (y* − P(x)); x)`` ``(B, n)`` and a ``(B,)`` flag of
        the samples whose result is finite (the others keep ``x``)."""
        prob = self.problem
        if prob.inverse is None:
            raise MissingInverseError(
                "method 'pg' needs a local inverse simulator; for a batched problem pass one that maps "
                "(B, m) targets and (B, n) starts to (B, n), e.g. physgrad.inverse.numerical_inverse(P)")
        y0 = self.output(x)  # (P(x_k) of the loop's last loss evaluation)
        # the same fused intermediate target as a single problem (y* itself at η = 1)
        y = torch.lerp(y0, self.Y.to(y0), eta)
        prob._count("inverse")
        try:
            xi = prob.inverse(y.reshape(prob.target.shape), x.reshape(self.x_shape))
        except PhysgradError:
            raise
        except Exception as e:
            raise InverseSimulatorError(f"the inverse simulator raised {type(e).__name__}: {e}") from e
        if not torch.is_tensor(xi) or tuple(xi.shape) != self.x_shape:
            raise ShapeError(f"the batched inverse simulator must return a tensor of shape {self.x_shape}, got "
                             f"{tuple(xi.shape) if torch.is_tensor(xi) else type(xi).__name__}")
        xi = _plain(xi.reshape(self.B, -1).to(x.dtype))
        good = torch.isfinite(xi).all(-1)
        return torch.where(good[:, None], xi, x), good
