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


