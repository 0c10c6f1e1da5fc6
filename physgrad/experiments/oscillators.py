r"""Experiment 3 of chapter 8: a network controls coupled oscillators (HIG paper)."""

from __future__ import annotations

from typing import Optional

import torch

from ..nn import mlp, train

__all__ = ["run"]


def run(method: str, steps: int = 200, lr: Optional[float] = None, n_train: int = 256,
                    n_test: int = 64, batch_size: int = 32, hidden: int = 32, nonlinear: bool = False,
                    truncation: float = 1e-6, seed: int = 0, dtype=torch.float64,
                    eval_every: int = 10, progress: bool = False, **kw):
    r"""Experiment 3 of chapter 8: a network maps the initial state ``s0`` of two coupled
    oscillators (:mod:`physgrad.problems.oscillators`, 24 steps of dt 0.5, coupling 0.2) to a
    control sequence (24 x 2 forces) that brings the system back to ``s0``:
    loss ``1/2 ||P(f(s0); s0) - s0||^2``.

    Returns ``(result, osc, test_states)``; ``result.eval_losses`` holds the mean loss on
    ``n_test`` held-out initial states every ``eval_every`` steps. Default step sizes:
    Adam/SIP 1e-3, GN 1.0, HIG 1.0; ``kw`` goes to :func:`physgrad.nn.train` (e.g.
    ``line_search``).
    """
    from ..problems.oscillators import oscillators

    osc = oscillators(nonlinear=nonlinear)
    s_train = osc.sample_states(n_train, seed=seed, dtype=dtype)
    s_test = osc.sample_states(n_test, seed=seed + 1000, dtype=dtype)
    if lr is None:
        lr = {"adam": 1e-3, "sip": 1e-3, "gn": 1.0, "hig": 1.0}[method]
    net = mlp([2 * osc.n, hidden, hidden, osc.x_size], seed=seed, dtype=dtype)
    res = train(net, s_train, s_train, osc.simulate, method, steps=steps, lr=lr, batch_size=batch_size,
                condition=s_train, inverse=osc.inverse, truncation=truncation, seed=seed,
                progress=progress, eval_data=(s_test, s_test, s_test), eval_every=eval_every, **kw)
    return res, osc, s_test




# ----------------------------------------------------------------------------- published setting
PUBLISHED_SETTINGS = {
    # method: (train keyword arguments, batch size) as in the HIG paper's oscillator notebook
    "adam": (dict(lr=1e-3), 256),
    "sip": (dict(lr=1e-3), 256),
    "hig": (dict(lr=1.0, kappa=0.5, truncation=1e-10, line_search=None, residual_scale=2 / 32), 32),
    "gn": (dict(lr=1.0, truncation=1e-10, line_search=None, residual_scale=2 / 32), 32),
}


def run_published(method: str, time_budget: float = 10.0, n_train: int = 4096, n_test: int = 256,
                  seed: int = 0, eval_every: int = 20, progress: bool = False):
    r"""The oscillator task as in the HIG paper's notebook: two linear oscillators (coupling 0.2),
    24 RK4 steps of 0.5, only the **last** mass actuated (24 controls), initial states uniform on
    [-1, 1]^4, network 4 → 20 → 20 → 20 → 24 (tanh, float64). Adam and SIP: learning rate 1e-3,
    batch 256; HIG: η = 1 on ∂L/∂y = 2r/B (``residual_scale = 2/B``), batch 32, truncation
    1e-10, no line search; GN likewise with κ = 1. Every method trains for the same
    ``time_budget`` seconds of wall time. Returns ``(result, osc, test_states)``."""
    from ..problems.oscillators import oscillators

    osc = oscillators(integrator="rk4", actuated="last")
    s_train = osc.sample_states(n_train, seed=seed, uniform=True)
    s_test = osc.sample_states(n_test, seed=seed + 1000, uniform=True)
    kw, bs = PUBLISHED_SETTINGS[method]
    net = mlp([4, 20, 20, 20, osc.x_size], seed=seed)
    res = train(net, s_train, s_train, osc.simulate, method, steps=10 ** 7, batch_size=bs,
                condition=s_train, inverse=osc.inverse, seed=seed, time_budget=time_budget,
                eval_data=(s_test, s_test, s_test), eval_every=eval_every, progress=progress, **kw)
    return res, osc, s_test


def bench(full: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """``python -m physgrad.bench nn-oscillators [--full]``: the published setting with an equal
    wall-time budget per method (10 s quick, 100 s full, as in the paper's notebook); rows give
    the final mean test loss ½|P(f(s0); s0) − s0|² over 256 held-out states. Published: HIG
    about four orders of magnitude below Adam (figure only, no number)."""
    import time

    from . import row

    budget = 100.0 if full else 10.0
    rows, finals = [], {}
    for method in ("adam", "sip", "gn", "hig"):
        t0 = time.perf_counter()
        res, _, _ = run_published(method, time_budget=budget, seed=seed, progress=progress)
        finals[method] = res.eval_losses[-1]
        rows.append(row("oscillators", "published (last mass, RK4)", method, "final_test_loss",
                        res.eval_losses[-1], None, steps=len(res.losses),
                        wall_s=time.perf_counter() - t0, budget_s=budget))
    rows.append(row("oscillators", "published (last mass, RK4)", "adam/hig", "final_test_loss_ratio",
                    finals["adam"] / finals["hig"], 1e4))
    return {"config": {"budget_s": budget, "seed": seed, "n_train": 4096, "n_test": 256,
                       "settings": {k: [v[0], v[1]] for k, v in PUBLISHED_SETTINGS.items()}},
            "rows": rows}
