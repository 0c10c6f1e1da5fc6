r"""Step-length searches over a batch of independent samples.

A search gets a direction ``p`` per sample (rows of ``(B, n)`` tensors) and returns one step
length ``t`` per sample. It never sees a problem: it asks for values through the functions it
is given (``losses(x) -> (B,)`` and ``value_and_grad(x) -> ((B,), (B, n))``), the way scipy's
and torchmin's line searches take callables. So one search serves a single problem (``B = 1``)
and a batch, and this module imports nothing from physgrad.

``active`` (a ``(B,)`` bool mask, or ``None`` for all samples) says which samples search; the
others get ``t = 0``. Decisions are made in float64, whatever the dtype of ``x``.

* :func:`armijo`: backtracking until ``L(x + t p) <= L(x) + c1 t g·p`` (Nocedal & Wright,
  Alg. 3.1).
* :func:`wolfe`: the strong-Wolfe search, driving one :func:`wolfe_search` per sample and
  evaluating all pending trials in one call per round.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

__all__ = ["armijo", "wolfe", "wolfe_search", "search", "check_kind", "KINDS"]

Tensor = torch.Tensor

#: the accepted values of a method's ``line_search`` option
KINDS = (None, "armijo", "wolfe")


def check_kind(kind) -> None:
    if kind not in KINDS:
        raise ValueError(f"line_search must be None, 'armijo' or 'wolfe', got {kind!r}")


def _per_sample(t0, B: int, device) -> Tensor:
    if torch.is_tensor(t0):
        return t0.to(device=device, dtype=torch.float64).expand(B).clone()
    return torch.full((B,), float(t0), dtype=torch.float64, device=device)


def armijo(losses: Callable[[Tensor], Tensor], x: Tensor, L0: Tensor, g: Tensor, p: Tensor, t0,
           active: Optional[Tensor] = None, c1: float = 1e-4, shrink: float = 0.5, max_tries: int = 40) -> Tensor:
    """Largest ``t = t0 · shrink^k`` per sample with ``L(x + t p) <= L(x) + c1 t g·p``.
    ``t = 0`` (no step) where ``p`` does not descend or no tried length lowers the loss."""
    B = x.shape[0]
    if active is None and B == 1:  # one problem: the same test on Python floats, no masks
        return _armijo_one(losses, x, float(L0), float((g * p).sum()), p, float(t0), c1, shrink, max_tries)
    slope = (g * p).sum(-1).double()
    L0 = L0.double()
    t = _per_sample(t0, B, x.device)
    descent = slope < 0
    searching = descent if active is None else active & descent
    t = torch.where(descent, t, torch.zeros_like(t))
    for _ in range(max_tries):
        if not bool(searching.any()):
            break
        tt = t if active is None and B == 1 else torch.where(searching, t, torch.zeros_like(t))
        Lt = losses(x + tt.to(x.dtype)[:, None] * p).double()
        ok = torch.isfinite(Lt) & (Lt <= L0 + c1 * t * slope)
        searching = searching & ~ok
        t = torch.where(searching, t * shrink, t)
    t = torch.where(searching, torch.zeros_like(t), t)
    return t.to(x.dtype)


def _armijo_one(losses, x, L0: float, slope: float, p, t: float, c1, shrink, max_tries) -> Tensor:
    if slope < 0:
        for _ in range(max_tries):
            Lt = float(losses(x + t * p))
            if math.isfinite(Lt) and Lt <= L0 + c1 * t * slope:
                return torch.full((1,), t, dtype=x.dtype, device=x.device)
            t *= shrink
    return torch.zeros(1, dtype=x.dtype, device=x.device)


def wolfe_search(phi0: float, dphi0: float, t0: float, c1: float = 1e-4, c2: float = 0.9,
                 max_iter: int = 30):
    """The strong-Wolfe line search (Nocedal & Wright, Alg. 3.5 with the bisection-safeguarded
    ``zoom`` of Alg. 3.6) for one sample, as a generator (reverse communication, as scipy's
    ``_dcsrch``): it yields a trial step ``t`` and receives ``(L(x + t p), ∇L(x + t p)·p)``; its
    return value is the accepted ``t`` (0 when ``p`` does not descend)."""
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


def wolfe(value_and_grad: Callable, x: Tensor, L0: Tensor, g: Tensor, p: Tensor, t0,
          active: Optional[Tensor] = None, c1: float = 1e-4, c2: float = 0.9, max_iter: int = 30) -> Tensor:
    """Per-sample strong-Wolfe step lengths (guarantee ``s^T y > 0`` for a BFGS pair, which
    Armijo backtracking alone does not)."""
    B = x.shape[0]
    phi0, dphi0 = L0.tolist(), (g * p).sum(-1).tolist()
    t0s = _per_sample(t0, B, x.device).tolist()
    rows = range(B) if active is None else torch.nonzero(active).flatten().tolist()
    t_out, gens, req = [0.0] * B, {}, {}
    for b in rows:
        gen = wolfe_search(phi0[b], dphi0[b], t0s[b], c1, c2, max_iter)
        try:
            req[b] = gen.send(None)
            gens[b] = gen
        except StopIteration as stop:
            t_out[b] = stop.value
    while gens:
        tt = [0.0] * B
        for b, t in req.items():
            tt[b] = t
        Lt, gt = value_and_grad(x + torch.tensor(tt, dtype=x.dtype, device=x.device)[:, None] * p)
        f, d = Lt.tolist(), (gt * p).sum(-1).tolist()
        for b in list(gens):
            try:
                req[b] = gens[b].send((f[b], d[b]))
            except StopIteration as stop:
                t_out[b] = stop.value
                del gens[b], req[b]
    return torch.tensor(t_out, dtype=x.dtype, device=x.device)


def search(kind, losses: Callable, value_and_grad: Callable, x: Tensor, L0: Tensor, g: Tensor, p: Tensor,
           t0, active: Optional[Tensor] = None) -> Tensor:
    """The step lengths of line search ``kind`` (``None``: ``t0`` itself)."""
    if kind is None:
        return _per_sample(t0, x.shape[0], x.device).to(x.dtype)
    if kind == "armijo":
        return armijo(losses, x, L0, g, p, t0, active)
    if kind == "wolfe":
        return wolfe(value_and_grad, x, L0, g, p, t0, active)
    check_kind(kind)
