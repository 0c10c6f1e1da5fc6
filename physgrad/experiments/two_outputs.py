r"""Experiment 2 of chapter 8: two outputs of very different scale (Schnell et al. 2022, toy example).

A network maps ``t`` in ``[-1, 1]`` to ``(y1, y2)``; the "simulator" scales the second output,
``P(y) = (y1, λ y2)``, and the *unscaled* target is ``ŷ = (sin 6t, cos 9t)``, so the loss is

.. math:: L = \tfrac12 (y_1 - \hat y_1)^2 + \tfrac12 (\lambda y_2 - \hat y_2)^2

averaged over the samples, and the network must output ``y2 = cos(9t) / λ``: at ``λ = 0.01`` an
output a hundred times larger than the first one. Network: one hidden layer of 7 tanh units,
as in the paper.
"""

from __future__ import annotations

import time

import torch

from ..nn import mlp, train
from . import row

__all__ = ["data", "run", "split_losses", "bench", "SETTINGS"]

# step sizes: Adam as in the paper's toy code (1e-3 would need far longer runs on CPU)
SETTINGS = {"adam": dict(lr=1e-2), "gn": dict(lr=1.0, line_search=None),
            "hig": dict(lr=1.0, kappa=0.5, truncation=1e-6, line_search="armijo")}


def data(n: int = 128, dtype=torch.float64):
    """Inputs ``t`` (n, 1) on ``[-1, 1]`` and targets ``(sin 6t, cos 9t)`` (n, 2)."""
    t = torch.linspace(-1.0, 1.0, n, dtype=dtype).reshape(n, 1)
    return t, torch.cat([torch.sin(6 * t), torch.cos(9 * t)], 1)


def physics_for(lam: float, dtype=torch.float64):
    scale = torch.tensor([1.0, lam], dtype=dtype)
    return lambda y: y * scale


def split_losses(net, t, target, lam):
    """The two terms of the loss, ``(mean ½(y1 − ŷ1)², mean ½(λ y2 − ŷ2)²)``, as floats."""
    with torch.no_grad():
        y = net(t)
        e1 = 0.5 * (y[:, 0] - target[:, 0]).pow(2).mean().item()
        e2 = 0.5 * (lam * y[:, 1] - target[:, 1]).pow(2).mean().item()
    return e1, e2


def run(lam: float, method: str, steps: int = 300, n: int = 128, batch_size=None, hidden: int = 7,
        seed: int = 0, time_budget=None, progress: bool = False, **kw):
    """Train the 1×``hidden`` tanh network with ``method`` at scale ``lam``.

    Returns ``(result, (e1, e2), net)``: the training record, the two loss terms after training
    (:func:`split_losses`) and the network. ``kw`` overrides :data:`SETTINGS` (e.g. ``lr``)."""
    t, target = data(n)
    net = mlp([1, hidden, 2], seed=seed)
    opts = {**SETTINGS[method], **kw}
    res = train(net, t, target, physics_for(lam), method, steps=steps, batch_size=batch_size,
                seed=seed, time_budget=time_budget, progress=progress, **opts)
    return res, split_losses(net, t, target, lam), net


def saturation(net, t) -> float:
    """Fraction of hidden tanh activations with ``|tanh| > 0.99`` on the inputs ``t``."""
    with torch.no_grad():
        h = torch.tanh(net[0](t))
    return (h.abs() > 0.99).double().mean().item()


def bench(full: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """``python -m physgrad.bench nn-two-outputs [--full]``: Adam, GN and HIG at λ = 1 and 0.01
    with the same wall-time budget per run (5 s quick, 60 s full); rows give the final loss and
    its two terms. Published (Schnell et al. 2022, figure of the toy example): at λ = 0.01 Adam and
    GN stall near a loss of 0.2 while HIG keeps converging; no final numbers are given."""
    budget = 60.0 if full else 5.0
    n = 512 if full else 128
    rows = []
    for lam in (1.0, 0.01):
        for method in ("adam", "gn", "hig"):
            t0 = time.perf_counter()
            res, (e1, e2), net = run(lam, method, steps=10 ** 7, n=n, seed=seed,
                                     time_budget=budget, progress=progress)
            wall = time.perf_counter() - t0
            setting = f"lambda={lam:g}"
            for metric, v in (("final_loss", res.final_loss), ("loss_y1", e1), ("loss_y2", e2)):
                rows.append(row("two-outputs", setting, method, metric, v, None,
                                steps=len(res.losses), wall_s=wall))
            rows.append(row("two-outputs", setting, method, "tanh_saturation",
                            saturation(net, data(n)[0]), None))
    return {"config": {"budget_s": budget, "n": n, "hidden": 7, "seed": seed, "settings": SETTINGS},
            "rows": rows}
