r"""Bounds and scaling as a change of variables: ``optimize(..., bounds=(lo, hi), x_scale=s)``.

Every method of :func:`physgrad.optimize` runs unchanged on a reparametrized problem
``P̃(z) = P(T(z))`` whose unknown ``z`` is free, and the :class:`~physgrad.optimize.Result` is
mapped back, ``x = T(z)``. The map ``T`` acts entry by entry:

.. math::

   x = \begin{cases}
     s\, z & \text{no bound,} \\
     \ell + s\,\operatorname{softplus}(z) & \text{lower bound } \ell, \\
     u - s\,\operatorname{softplus}(z) & \text{upper bound } u, \\
     \ell + (u - \ell)\,\sigma(z) & \text{both,}
   \end{cases}

with ``softplus(z) = log(1 + e^z)`` and the logistic ``σ``. Far from a one-sided bound the map
is linear (``x ≈ ℓ + s z``), close to it logarithmic (``x − ℓ ≈ s e^z``), so the bound is
approached but never crossed: a rate stays positive however large a step in ``z`` is. Near a
bound ``dx/dz`` is small, so methods slow down there; a solution *on* a bound is reached only in
the limit ``z → ±∞``.

``x_scale`` (``s`` above; default 1) is the characteristic size of each unknown, as in
:func:`scipy.optimize.least_squares`: the method works on ``z ≈ x / s``. ``x_scale="jac"``
takes ``s_j = 1 / ‖J_{:,j}‖`` from the Jacobian at ``x0`` (computed once, within the memory
budget). Gradient-type methods (gd, adam, bfgs, lbfgs) then take steps ``Δx_j ∝ s_j² g_j``;
ig, LM and newton are invariant to a diagonal scaling anyway. For entries with both bounds the
width ``u − ℓ`` sets the scale and ``s`` is not used.

``pg``'s inverse is composed with the map: ``z_new = T^{-1}(P^{-1}(y; T(z)))``, where ``T^{-1}``
first moves an ``x`` on or beyond a bound just inside (by ``√eps·|bound|``, or by a tiny
number for a bound at 0), as it does with an ``x0`` on a bound. ``tol`` and ``atol`` act on the loss as
always; ``gtol`` and ``xtol`` measure the gradient and the step in ``z``. ``Result.x`` and
``Result.xs`` are in ``x``, and so is ``Result.grad_norm`` (at a solution on a bound it is not
zero).

A batched problem takes the same arguments: ``lo``, ``hi`` and ``x_scale`` broadcast to ``x0``'s
shape ``(B, ...)``, so they are shared by every sample (shape of one sample) or given per sample;
``x_scale="jac"`` uses each sample's own Jacobian.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

__all__ = ["BoxMap", "optimize_transformed"]

Tensor = torch.Tensor


def _as_bound(b, like: Tensor, default: float, what: str) -> Tensor:
    if b is None:
        return torch.full_like(like, default)
    t = torch.as_tensor(b, dtype=like.dtype, device=like.device) if not torch.is_tensor(b) else \
        b.detach().to(dtype=like.dtype, device=like.device)
    try:
        return torch.broadcast_to(t, like.shape).clone()
    except RuntimeError:
        raise ValueError(f"{what} of shape {tuple(t.shape)} does not broadcast to x0's shape {tuple(like.shape)}") from None


class BoxMap:
    r"""The entrywise map ``x = T(z)`` of the module docstring for bounds ``lo``/``hi`` (``±inf``
    for none) and scale ``s``; :meth:`to_x`, its derivative :meth:`dx_dz`, and the inverse
    :meth:`to_z` (which clamps into the open domain)."""

    def __init__(self, lo: Tensor, hi: Tensor, scale: Tensor):
        if bool((lo.isnan() | hi.isnan()).any()) or not bool((lo < hi).all()):
            raise ValueError("bounds must satisfy lo < hi in every entry (use a constant in the forward to fix an "
                             "unknown)")
        if not (bool(torch.isfinite(scale).all()) and bool((scale > 0).all())):
            raise ValueError("x_scale must be finite and > 0 in every entry")
        self.lo, self.hi, self.s = lo, hi, scale
        fl, fh = torch.isfinite(lo), torch.isfinite(hi)
        self.both, self.lower, self.upper = fl & fh, fl & ~fh, fh & ~fl
        self.free = ~fl & ~fh
        self._lo = torch.where(fl, lo, torch.zeros_like(lo))  # finite stand-ins for the unused branches
        self._hi = torch.where(fh, hi, torch.zeros_like(hi))
        self._w = torch.where(self.both, hi - lo, torch.ones_like(lo))

    def _like(self, z):
        return (t.to(dtype=z.dtype, device=z.device) for t in (self._lo, self._hi, self._w, self.s))

    def to_x(self, z: Tensor) -> Tensor:
        """``x = T(z)`` (differentiable; broadcasts over leading dimensions)."""
        lo, hi, w, s = self._like(z)
        sp = s * F.softplus(z)
        return torch.where(self.both, lo + w * torch.sigmoid(z),
                           torch.where(self.lower, lo + sp, torch.where(self.upper, hi - sp, s * z)))

    def dx_dz(self, z: Tensor) -> Tensor:
        """``dx/dz`` entrywise."""
        lo, hi, w, s = self._like(z)
        sg = torch.sigmoid(z)
        return torch.where(self.both, w * sg * (1 - sg),
                           torch.where(self.lower, s * sg, torch.where(self.upper, -s * sg, s)))

    def to_z(self, x: Tensor) -> Tensor:
        """``z = T^{-1}(x)``, after moving ``x`` into the open domain by a relative margin ``√eps``."""
        lo, hi, w, s = self._like(x)
        x = x.detach()
        fi = torch.finfo(x.dtype)
        rel, small = fi.eps ** 0.5, fi.tiny ** 0.5
        # one-sided: t = (x - lo)/s (or (hi - x)/s) at least a margin of sqrt(eps)*|bound| (or a tiny
        # number for a zero bound); softplus^{-1}(t) = t + log(-expm1(-t))
        t_lo = torch.maximum((x - lo) / s, (rel * lo.abs() / s).clamp_min(small))
        t_hi = torch.maximum((hi - x) / s, (rel * hi.abs() / s).clamp_min(small))

        def spinv(t):
            return t + torch.log(-torch.expm1(-t))

        p_lo = (rel * lo.abs() / w).clamp_min(small)
        p_hi = 1 - (rel * hi.abs() / w).clamp_min(fi.eps)
        p = torch.minimum(torch.maximum((x - lo) / w, p_lo), p_hi)
        return torch.where(self.both, torch.log(p) - torch.log1p(-p),
                           torch.where(self.lower, spinv(t_lo), torch.where(self.upper, spinv(t_hi), x / s)))


def _box_for(problem, x0: Tensor, bounds, x_scale) -> BoxMap:
    if bounds is None:
        lo, hi = None, None
    else:
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise TypeError(f"bounds must be a pair (lo, hi), each None, a number or an array; got {bounds!r}")
        lo, hi = bounds
    lo = _as_bound(lo, x0, -float("inf"), "the lower bound")
    hi = _as_bound(hi, x0, float("inf"), "the upper bound")
    if x_scale is None:
        s = torch.ones_like(x0)
    elif isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"x_scale must be None, a positive array or 'jac', got {x_scale!r}")
        from .problem import count_calls

        with count_calls(isolated=True):
            if getattr(problem, "batched", False):  # every sample's own Jacobian (B, m, n)
                from .views import BatchView

                J = BatchView(problem, x0).jacobian(x0.reshape(x0.shape[0], -1))
            else:
                J = problem.jacobian(x0).unsqueeze(0)
        cn = torch.linalg.vector_norm(J, dim=-2).reshape(x0.shape)
        s = torch.where(cn > 0, 1 / cn, torch.ones_like(cn))
    else:
        s = _as_bound(x_scale, x0, 1.0, "x_scale")
    box = BoxMap(lo, hi, s)
    bad = (x0 < lo) | (x0 > hi)
    if bool(bad.any()):
        raise ValueError(f"x0 lies outside the bounds in {int(bad.sum())} of {x0.numel()} entries; start inside "
                         "lo <= x0 <= hi")
    return box


def optimize_transformed(optimize, problem, x0, method="gd", steps=100, step_size=None, *, bounds=None,
                         x_scale=None, callback=None, **kw):
    """Run ``optimize`` on the reparametrized problem of the module docstring and map the
    :class:`~physgrad.optimize.Result` (also ``err.result`` of an exception) back to ``x``."""
    x0 = problem.check_x(x0, "x0").detach()
    if x0.is_complex():
        raise TypeError("bounds and x_scale need a real x0")
    box = _box_for(problem, x0, bounds, x_scale)
    pz = problem.reparametrized(box.to_x, box.to_z, box.dx_dz, name=problem.name)
    cb = None if callback is None else (lambda k, z, L: callback(k, box.to_x(z), L))
    extra = {"bounds": bounds, "x_scale": x_scale}
    try:
        rz = optimize(pz, box.to_z(x0), method, steps, step_size, callback=cb, **kw)
    except BaseException as e:
        r = getattr(e, "result", None)
        if r is not None and hasattr(r, "xs"):
            e.result = _in_x(r, box, problem, extra)
        raise
    return _in_x(rz, box, problem, extra)


def _in_x(r, box: BoxMap, problem, extra):
    names = {f.name for f in dataclasses.fields(r)}
    change = {"x": box.to_x(r.x).detach(), "xs": box.to_x(r.xs).detach(),
              "options": dict(r.options, **{k: v for k, v in extra.items() if v is not None})}
    if "_problem" in names:
        change["_problem"] = problem
    if "_grad_norm" in names:
        change["_grad_norm"] = None
    return dataclasses.replace(r, **change)
