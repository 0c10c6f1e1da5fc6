r"""Training neural networks through a simulator, with plain and inverted updates (chapter 8).

The setting of chapter 8: a network :math:`f_\theta` maps an input :math:`c_b` (often the target
itself, :math:`c_b = y^*_b`) to a simulator input :math:`x_b = f_\theta(c_b)`; the simulator maps it to
:math:`y_b = P(x_b)` and the loss over a batch of :math:`B` samples is

.. math:: L(\theta) = \frac{1}{B} \sum_b \tfrac12 \lVert P(f_\theta(c_b)) - y^*_b \rVert_2^2 .

:func:`train` minimises it with one of six methods (``method=``):

``"adam"``
    Differentiable physics: back-propagate through ``P`` and the network, update with Adam
    (chapter 8, eqs. ``nn-loss``, ``nn-grad``).
``"sgd"``
    Differentiable physics with plain (stochastic) gradient descent, ``θ ← θ − lr ∇L``.
``"supervised"``
    Adam on :math:`\frac1B\sum_b \tfrac12\lVert f_\theta(c_b) - x^{\rm true}_b\rVert^2`; needs
    ground-truth ``x_true``. The simulator is only used to *report* the physics loss.
``"sip"``
    Scale-invariant physics training (Holl et al. 2022, chapter 8, eq. ``sip-proxy``): for the
    current prediction compute a physics-inverted target
    :math:`\tilde x_b = P^{-1}(y_b + \eta_y (y^*_b - y_b);\, x_b)` with the problem's local inverse,
    then take an Adam step on the proxy loss
    :math:`\frac1B\sum_b \tfrac12 \lVert x_b - \mathrm{sg}(\tilde x_b) \rVert^2`
    (``sg`` = stop-gradient). Memory: that of ordinary back-propagation.
``"gn"``
    Gauss–Newton over the weights (chapter 8, eq. ``gn-weights``): :math:`\Delta\theta = -\eta\, J^+ r`, with :math:`J` the stacked
    per-sample Jacobian of the simulator outputs w.r.t. all weights and :math:`r` the stacked
    residuals (the HIG step with :math:`\kappa = 1`).
``"hig"``
    Half-inverse gradients (Schnell et al. 2022, chapter 8, eq. ``hig-update``):
    :math:`\Delta\theta = -\eta\, V \Sigma^{-\kappa} U^\top r` with the thin SVD
    :math:`J = U\Sigma V^\top`, :math:`\kappa = 1/2`, and singular values below
    ``truncation * sigma_max`` dropped.

Memory cost of ``gn``/``hig`` (chapter 8, eq. ``hig-memory``): the stacked Jacobian has ``B * m * p`` entries (batch size times
simulator-output size per sample times number of weights), e.g. 64 samples x 48 outputs x 10^4
weights = 3.1e7 doubles = 246 MB, and the thin SVD needs about as much again. :func:`train`
and :func:`stacked_jacobian` estimate this *before* allocating and raise
:class:`~physgrad.errors.MemoryBudgetError` above ``max_jacobian_bytes`` (default 2 GiB).

Conventions: the simulator ``physics`` and the local ``inverse`` act on **batches** (leading
dimension ``B``); if a ``condition`` tensor is given (e.g. the initial state of a controlled
system), it is passed as a second argument, ``physics(x, cond)`` and ``inverse(y, x0, cond)``.
Per-sample Jacobians call ``physics`` on batches of one inside :func:`torch.vmap`, so it must be
written with vmap-compatible torch operations. dtype and device follow the model and the data.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.func import functional_call, jacrev, vmap

from .errors import MemoryBudgetError, NonFiniteError, ShapeError, SingularMatrixError
from .linalg import spectral_solve

__all__ = [
    "TrainResult", "train", "mlp", "stacked_jacobian", "stacked_jacobian_loop", "jacobian_bytes",
    "inverted_step", "sip_targets", "sip_loss", "physics_loss",
    "multimodality_demo", "scaling_demo", "oscillator_demo", "heat_demo", "HeatNet", "METHODS", "run_nn_heat",
]

Tensor = torch.Tensor
METHODS = ("adam", "sgd", "supervised", "sip", "gn", "hig")
GiB = 1024 ** 3


# ----------------------------------------------------------------------------- building blocks
def mlp(sizes, activation=torch.nn.Tanh, seed: int = 0, dtype=torch.float64, device=None) -> torch.nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between
    layers (none after the last), initialised reproducibly from ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    net = torch.nn.Sequential(*layers).to(dtype=dtype, device=device)
    torch.random.set_rng_state(gen_state)
    return net


def _call(fn: Callable, x: Tensor, cond: Optional[Tensor]):
    return fn(x) if cond is None else fn(x, cond)


def jacobian_bytes(batch: int, out_per_sample: int, n_params: int, dtype=torch.float64) -> int:
    """Bytes of the stacked per-sample Jacobian: ``batch * out_per_sample * n_params * itemsize``."""
    return int(batch) * int(out_per_sample) * int(n_params) * torch.empty((), dtype=dtype).element_size()


def _check_budget(batch, m, p, dtype, max_bytes):
    need = jacobian_bytes(batch, m, p, dtype)
    if max_bytes is not None and need > max_bytes:
        raise MemoryBudgetError(
            f"the stacked Jacobian would need {batch} samples x {m} outputs x {p} weights = "
            f"{need / GiB:.3g} GiB (plus about as much for its SVD), above max_jacobian_bytes = "
            f"{max_bytes / GiB:.3g} GiB. Use a smaller batch_size or network, method='adam'/'sip', "
            "or raise max_jacobian_bytes if the memory is really there."
        )
    return need


def _per_sample_fn(model: torch.nn.Module, physics: Callable, names, buffers):
    def f(params, inp, cond):
        x = functional_call(model, ({**dict(zip(names, params)), **buffers},), (inp.unsqueeze(0),))
        y = physics(x) if cond is None else physics(x, cond.unsqueeze(0))
        return y.reshape(-1)
    return f


def stacked_jacobian(model: torch.nn.Module, inputs: Tensor, physics: Callable,
                     condition: Optional[Tensor] = None,
                     max_jacobian_bytes: Optional[int] = 2 * GiB,
                     chunk_size: Optional[int] = None):
    r"""Per-sample Jacobians of the simulator outputs w.r.t. all weights, stacked.

    Returns ``(J, y)`` with ``J`` of shape ``(B*m, p)``: rows ``b*m .. b*m+m-1`` hold
    :math:`\partial P(f_\theta(c_b)) / \partial \theta` (the weights flattened in the order of
    ``model.named_parameters()``), and ``y`` the stacked outputs ``(B*m,)``. Computed with
    ``torch.func.functional_call`` + ``vmap(jacrev(.))`` over the batch.

    Memory: ``B*m*p*itemsize`` bytes for ``J`` (checked against ``max_jacobian_bytes`` before
    anything is allocated; :class:`~physgrad.errors.MemoryBudgetError` if exceeded) plus
    reverse-mode intermediates of ``m`` backward passes per sample. ``chunk_size`` bounds how
    many samples vmap processes at once.
    """
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach() for _, p in model.named_parameters())
    buffers = {n: b for n, b in model.named_buffers()}
    B = inputs.shape[0]
    p = sum(t.numel() for t in params)
    with torch.no_grad():
        y0 = _call(physics, model(inputs[:1]), None if condition is None else condition[:1])
    m = y0[0].numel()
    _check_budget(B, m, p, params[0].dtype, max_jacobian_bytes)
    f = _per_sample_fn(model, physics, names, buffers)
    in_dims = (None, 0, None if condition is None else 0)

    def f_and_out(params, inp, cond):
        y = f(params, inp, cond)
        return y, y

    jac, y = vmap(jacrev(f_and_out, has_aux=True), in_dims=in_dims, chunk_size=chunk_size)(
        params, inputs, condition)
    J = torch.cat([j.reshape(B, m, -1) for j in jac], dim=2).reshape(B * m, p)
    return J, y.reshape(-1).detach()


def stacked_jacobian_loop(model: torch.nn.Module, inputs: Tensor, physics: Callable,
                          condition: Optional[Tensor] = None) -> Tensor:
    """Reference for :func:`stacked_jacobian`: a python loop over samples with
    ``torch.autograd.functional.jacobian`` (slow; for tests)."""
    params = [p for _, p in model.named_parameters()]
    rows = []
    for b in range(inputs.shape[0]):
        def g(*ps):
            x = functional_call(model, {n: t for (n, _), t in zip(model.named_parameters(), ps)},
                                (inputs[b:b + 1],))
            cond = None if condition is None else condition[b:b + 1]
            return _call(physics, x, cond).reshape(-1)
        jac = torch.autograd.functional.jacobian(g, tuple(p.detach() for p in params))
        rows.append(torch.cat([j.reshape(j.shape[0], -1) for j in jac], dim=1))
    return torch.cat(rows, dim=0)


def inverted_step(J: Tensor, r: Tensor, step_size: float = 1.0, kappa: float = 0.5,
                  truncation: float = 1e-6) -> Tensor:
    r"""The spectral step :math:`\Delta\theta = -\eta\, V \Sigma^{-\kappa} U^\top r` (chapter 8,
    eq. ``hig-update``) from the thin SVD :math:`J = U \Sigma V^\top`; singular values below
    ``truncation * sigma_max`` are dropped (not damped). ``kappa = 1`` gives the Gauss–Newton /
    pseudo-inverse step :math:`-\eta J^+ r`, ``kappa = 1/2`` the half-inverse gradient,
    ``kappa = -1`` gradient descent on ``1/2 ||r||^2``. Computed by
    :func:`physgrad.linalg.spectral_solve`; a numerically zero ``J`` gives a zero step."""
    try:
        dtheta = spectral_solve(J, r, kappa=kappa, truncation=truncation)[0]
    except SingularMatrixError:
        # a batch whose physics output does not depend on the weights at all (e.g. every unit
        # saturated): there is nothing to invert, so this step leaves the weights unchanged
        return torch.zeros(J.shape[1], dtype=J.dtype, device=J.device)
    return -step_size * dtheta


def sip_targets(x: Tensor, y: Tensor, y_star: Tensor, inverse: Callable, y_step: float = 1.0,
                condition: Optional[Tensor] = None) -> Tensor:
    r"""SIP's physics-inverted targets :math:`\tilde x = P^{-1}(y + \eta_y (y^* - y);\, x)`,
    detached (chapter 8, eq. ``sip-proxy``)."""
    with torch.no_grad():
        y_req = y + y_step * (y_star - y)
        xt = inverse(y_req, x) if condition is None else inverse(y_req, x, condition)
    if xt.shape != x.shape:
        raise ShapeError(f"the inverse returned shape {tuple(xt.shape)}, expected {tuple(x.shape)}")
    return xt.detach()


def sip_loss(model: torch.nn.Module, inputs: Tensor, targets: Tensor, physics: Callable,
             inverse: Callable, y_step: float = 1.0, condition: Optional[Tensor] = None) -> Tensor:
    r"""SIP's proxy loss :math:`\frac1B \sum_b \tfrac12 \lVert f_\theta(c_b) - \mathrm{sg}(\tilde x_b)\rVert^2`
    (chapter 8, eq. ``sip-proxy``); its gradient w.r.t. the weights is
    :math:`\frac1B \sum_b (\partial x_b/\partial\theta)^\top (x_b - \tilde x_b)`: no simulator Jacobian."""
    x = model(inputs)
    with torch.no_grad():
        y = _call(physics, x, condition)
    xt = sip_targets(x.detach(), y, targets, inverse, y_step, condition)
    return 0.5 * (x - xt).pow(2).reshape(x.shape[0], -1).sum(1).mean()


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What :func:`train` records: per step the physics loss of the batch (before the update),
    the loss the method actually minimised, and cumulative wall time in seconds."""
    method: str
    losses: list = field(default_factory=list)
    train_losses: list = field(default_factory=list)
    times: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)
    model: Optional[torch.nn.Module] = None
    message: str = ""

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _add_flat(model, d: Tensor):
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            k = p.numel()
            p.add_(d[i:i + k].reshape(p.shape))
            i += k


def physics_loss(model, inputs, targets, physics, condition=None) -> Tensor:
    """Mean over the batch of ``1/2 ||P(f(c_b)) - y*_b||^2``."""
    y = _call(physics, model(inputs), condition)
    return 0.5 * (y - targets).pow(2).reshape(y.shape[0], -1).sum(1).mean()


def train(model: torch.nn.Module, inputs: Tensor, targets: Tensor, physics: Callable,
          method: str = "adam", *, steps: int = 100, lr: float = 1e-3, batch_size: Optional[int] = None,
          condition: Optional[Tensor] = None, inverse: Optional[Callable] = None,
          x_true: Optional[Tensor] = None, y_step: float = 1.0, kappa: Optional[float] = None,
          truncation: float = 1e-6, max_jacobian_bytes: Optional[int] = 2 * GiB, seed: int = 0,
          progress: bool = False, time_budget: Optional[float] = None,
          eval_data: Optional[tuple] = None, eval_every: int = 0, callback=None) -> TrainResult:
    r"""Train ``model`` so that ``physics(model(inputs)) ≈ targets`` (chapter 8, eq. ``nn-loss``).

    Parameters
    ----------
    model
        Network mapping a batch of ``inputs`` to a batch of simulator inputs ``x``.
    inputs, targets
        Tensors with the batch as leading dimension (``targets`` holds ``y*``).
    physics
        Batched simulator ``P(x)``, or ``P(x, cond)`` when ``condition`` is given.
    method
        ``"adam"``, ``"sgd"``, ``"supervised"`` (needs ``x_true``), ``"sip"`` (needs
        ``inverse``), ``"gn"`` or ``"hig"``; see the module docstring for each update.
    steps
        Number of updates.
    lr
        Learning rate of Adam/SGD (adam, sgd, supervised, sip), or the step ``η`` of gn/hig.
    batch_size
        Mini-batch size (``None``: full batch). Batches are drawn by a generator seeded with
        ``seed``.
    condition
        Optional per-sample tensor passed to ``physics`` and ``inverse``.
    inverse
        SIP's batched local inverse ``inverse(y, x0)`` or ``inverse(y, x0, cond)``.
    x_true
        Ground-truth simulator inputs for ``"supervised"``.
    y_step
        SIP's fraction ``η_y`` of the way to ``y*`` requested from the inverse.
    kappa
        Exponent of the spectral step (default 0.5 for hig, 1 for gn).
    truncation
        Singular values below ``truncation * sigma_max`` are dropped.
    max_jacobian_bytes
        Memory budget for the stacked Jacobian of gn/hig (``B*m*p*itemsize`` bytes);
        :class:`~physgrad.errors.MemoryBudgetError` is raised before allocating beyond it.
    seed
        Seeds the mini-batch order and ``torch.manual_seed``. The network's initial weights
        are the caller's business (e.g. :func:`mlp` with its own ``seed``).
    progress
        Show a tqdm progress bar. Off by default, so that notebook outputs stay comparable.
    time_budget
        Stop after this many wall-clock seconds (this makes runs non-reproducible).
    eval_data
        Optional tuple ``(inputs, targets)`` or ``(inputs, targets, condition)`` whose mean
        physics loss is recorded every ``eval_every`` steps.
    eval_every
        Evaluation interval in steps (0: never).
    callback
        ``callback(step, result)``; returning True stops the run.

    Returns
    -------
    TrainResult
        Per-step losses and cumulative wall times; the model is trained in place and is also
        ``result.model``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "supervised" and x_true is None:
        raise ValueError("method='supervised' needs ground-truth simulator inputs x_true")
    if method == "sip" and inverse is None:
        from .errors import MissingInverseError
        raise MissingInverseError("method='sip' needs a local inverse: inverse(y, x0[, cond]) -> x")
    if inputs.shape[0] != targets.shape[0]:
        raise ShapeError(f"inputs and targets need the same batch size, got {inputs.shape[0]} and {targets.shape[0]}")
    if kappa is None:
        kappa = 1.0 if method == "gn" else 0.5
    from tqdm.auto import tqdm

    N = inputs.shape[0]
    bs = N if batch_size is None else min(batch_size, N)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    opt = None
    if method in ("adam", "supervised", "sip"):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif method == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    if method in ("gn", "hig"):
        p = sum(q.numel() for q in model.parameters())
        with torch.no_grad():
            m = _call(physics, model(inputs[:1]), None if condition is None else condition[:1])[0].numel()
        _check_budget(bs, m, p, next(model.parameters()).dtype, max_jacobian_bytes)

    res = TrainResult(method=method, model=model)
    perm = torch.randperm(N, generator=gen)
    pos = 0
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=method, disable=not progress, leave=False)
    for k in bar:
        if bs == N:
            idx = slice(None)
        else:
            if pos + bs > N:
                perm, pos = torch.randperm(N, generator=gen), 0
            idx = perm[pos:pos + bs].to(inputs.device)
            pos += bs
        c, ys = inputs[idx], targets[idx]
        cond = None if condition is None else condition[idx]

        if opt is not None:
            opt.zero_grad(set_to_none=True)
            x = model(c)
            y = _call(physics, x, cond)
            Lphys = 0.5 * (y - ys).pow(2).reshape(y.shape[0], -1).sum(1).mean()
            if method in ("adam", "sgd"):
                Ltrain = Lphys
            elif method == "supervised":
                Ltrain = 0.5 * (x - x_true[idx]).pow(2).reshape(x.shape[0], -1).sum(1).mean()
            else:
                xt = sip_targets(x.detach(), y.detach(), ys, inverse, y_step, cond)
                Ltrain = 0.5 * (x - xt).pow(2).reshape(x.shape[0], -1).sum(1).mean()
            Ltrain.backward()
            opt.step()
            lp, lt = Lphys.item(), Ltrain.item()
        else:
            J, y = stacked_jacobian(model, c, physics, cond, max_jacobian_bytes)
            if not bool(torch.isfinite(J).all()):
                raise NonFiniteError(f"{method}: the stacked Jacobian is not finite at step {k}; the "
                                     "simulator diverged for some sample (check its inputs / the step size).")
            r = y - ys.reshape(-1)
            lp = lt = 0.5 * r.pow(2).sum().item() / c.shape[0]
            d = inverted_step(J, r, lr, kappa, truncation)
            _add_flat(model, d)
        if not math.isfinite(lp):
            res.message = f"non-finite loss at step {k}"
            raise NonFiniteError(f"{method}: the loss became {lp} at step {k}; lower lr (step size).")
        res.losses.append(lp)
        res.train_losses.append(lt)
        res.times.append(time.perf_counter() - t0)
        if eval_data is not None and eval_every and (k % eval_every == 0 or k == steps - 1):
            with torch.no_grad():
                res.eval_losses.append(physics_loss(model, eval_data[0], eval_data[1], physics,
                                                    eval_data[2] if len(eval_data) > 2 else None).item())
            res.eval_steps.append(k)
        if progress:
            bar.set_postfix(loss=f"{lp:.3g}")
        if callback is not None and callback(k, res):
            res.message = "stopped by callback"
            break
        if time_budget is not None and res.times[-1] > time_budget:
            res.message = "time budget reached"
            break
    bar.close()
    if not res.message:
        res.message = f"{len(res.losses)} steps"
    return res




# ----------------------------------------------------------------------------- chapter 8 experiments
def _square(x: Tensor) -> Tensor:
    return x ** 2


def _square_inverse(y: Tensor, x0: Tensor) -> Tensor:
    """Local inverse of ``x -> x^2``: the root on the branch of ``x0`` (``x0 = 0`` -> positive)."""
    sign = torch.where(x0 >= 0, torch.ones_like(x0), -torch.ones_like(x0))
    return sign * y.clamp_min(0).sqrt()


def multimodality_demo(method: str, n: int = 128, steps: int = 500, lr: float = 1e-2,
                       hidden: int = 16, seed: int = 0, dtype=torch.float64, progress: bool = False):
    r"""Experiment 1 of chapter 8: learn ``x`` from ``y = x^2`` for ``y`` in ``[0.05, 1]``.

    The ground truth ``x_true = ±sqrt(y)`` has a random sign per sample (both branches are
    correct answers). Returns ``(y, x_pred, result)`` with the network's predictions ``x_pred``
    on the training inputs ``y`` (sorted). ``supervised`` averages the branches (``x ≈ 0``);
    ``adam`` (through the simulator) and ``sip`` (via the local inverse) settle on a branch.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.linspace(0.05, 1.0, n, dtype=dtype).reshape(n, 1)
    sign = torch.where(torch.rand(n, 1, generator=g, dtype=dtype) < 0.5, -1.0, 1.0).to(dtype)
    x_true = sign * y.sqrt()
    net = mlp([1, hidden, hidden, 1], seed=seed, dtype=dtype)
    res = train(net, y, y, _square, method, steps=steps, lr=lr, x_true=x_true,
                inverse=_square_inverse, seed=seed, progress=progress)
    with torch.no_grad():
        xp = net(y)
    return y, xp, res


def scaling_demo(lam: float, method: str, steps: int = 300, lr: Optional[float] = None, n: int = 64,
                 hidden: int = 20, seed: int = 0, dtype=torch.float64, progress: bool = False):
    r"""Experiment 2 of chapter 8: a network ``t -> (a(t), b(t))`` fitted to ``a = sin 6t`` and
    ``b = cos 9t`` on ``[-1, 1]``, where the "simulator" multiplies the second output by ``lam``:
    ``P(a, b) = (a, lam * b)``, ``y* = (sin 6t, lam cos 9t)``.

    Returns ``(result, errors)`` with ``errors = (e_a, e_b)``, the mean squared errors of the
    two *unscaled* outputs after training. Default step sizes: Adam 1e-2, GN 1.0, HIG 0.3.
    """
    t = torch.linspace(-1.0, 1.0, n, dtype=dtype).reshape(n, 1)
    ref = torch.cat([torch.sin(6 * t), torch.cos(9 * t)], 1)
    scale = torch.tensor([1.0, lam], dtype=dtype)
    phys = lambda x: x * scale  # noqa: E731
    if lr is None:
        lr = {"adam": 1e-2, "gn": 1.0, "hig": 0.3}.get(method, 1e-2)
    net = mlp([1, hidden, hidden, 2], seed=seed, dtype=dtype)
    res = train(net, t, ref * scale, phys, method, steps=steps, lr=lr, seed=seed, progress=progress)
    with torch.no_grad():
        err = (net(t) - ref).pow(2).mean(0)
    return res, (err[0].item(), err[1].item())


def oscillator_demo(method: str, steps: int = 200, lr: Optional[float] = None, n_train: int = 256,
                    n_test: int = 64, batch_size: int = 32, hidden: int = 32, nonlinear: bool = False,
                    truncation: float = 1e-6, seed: int = 0, dtype=torch.float64,
                    eval_every: int = 10, progress: bool = False):
    r"""Experiment 3 of chapter 8: a network maps the initial state ``s0`` of two coupled
    oscillators (:mod:`physgrad.problems.oscillators`, 24 steps of dt 0.5, coupling 0.2) to a
    control sequence (24 x 2 forces) that brings the system back to ``s0``:
    loss ``1/2 ||P(f(s0); s0) - s0||^2``.

    Returns ``(result, osc, test_states)``; ``result.eval_losses`` holds the mean loss on
    ``n_test`` held-out initial states every ``eval_every`` steps. Default step sizes:
    Adam/SIP 1e-3, GN 1.0, HIG 1.0.
    """
    from .problems.oscillators import oscillators

    osc = oscillators(nonlinear=nonlinear)
    s_train = osc.sample_states(n_train, seed=seed, dtype=dtype)
    s_test = osc.sample_states(n_test, seed=seed + 1000, dtype=dtype)
    if lr is None:
        lr = {"adam": 1e-3, "sip": 1e-3, "gn": 1.0, "hig": 1.0}[method]
    net = mlp([2 * osc.n, hidden, hidden, osc.x_size], seed=seed, dtype=dtype)
    res = train(net, s_train, s_train, osc.simulate, method, steps=steps, lr=lr, batch_size=batch_size,
                condition=s_train, inverse=osc.inverse, truncation=truncation, seed=seed,
                progress=progress, eval_data=(s_test, s_test, s_test), eval_every=eval_every)
    return res, osc, s_test


class HeatNet(torch.nn.Module):
    """A small periodic convolutional network for experiment 4: ``y* (B, n, n) -> x (B, n, n)``,
    three 5x5 circular-padded convolutions with tanh in between."""

    def __init__(self, channels: int = 16):
        super().__init__()
        kw = dict(kernel_size=5, padding=2, padding_mode="circular")
        self.a = torch.nn.Conv2d(1, channels, **kw)
        self.b = torch.nn.Conv2d(channels, channels, **kw)
        self.c = torch.nn.Conv2d(channels, 1, **kw)

    def forward(self, y: Tensor) -> Tensor:
        h = torch.tanh(self.a(y.unsqueeze(1)))
        h = torch.tanh(self.b(h))
        return self.c(h).squeeze(1)


def heat_demo(method: str, n: int = 32, n_train: int = 64, n_test: int = 16, steps: int = 200,
              lr: Optional[float] = None, batch_size: int = 16, channels: int = 16, nu_T: float = 8.0,
              inv_damping: float = 1e-6, seed: int = 0, dtype=torch.float32, device=None,
              progress: bool = False):
    r"""Experiment 4 of chapter 8: a network reconstructs initial temperatures ``x`` from the
    diffused fields ``y* = P(x)`` of :func:`physgrad.problems.heat.heat_2d` (``n x n``, ``νT``).

    ``adam``/``sgd`` back-propagate through the heat solver; ``sip`` uses its damped spectral
    inverse (``inv_damping`` = ε) to build the targets ``x~``. Initial states are smooth random
    fields (:func:`~physgrad.problems.heat.random_field`, seeds ``0..n_train-1`` for training and
    ``10^6 + j`` for testing). Returns ``(result, test_l1, net, data)`` with ``test_l1`` the mean
    over test samples of ``sum |x_pred - x_true|`` (the metric of Holl et al. 2022) and
    ``data = (X_test, Y_test)``. Default learning rate 1e-2 (Adam/SIP); SGD needs about 1e-4 (it diverges at 3e-4 here).
    """
    from .problems.heat import heat_2d, random_field

    prob = heat_2d(n=n, nu_T=nu_T, inv_damping=inv_damping, dtype=dtype, device=device)
    X = torch.stack([random_field((n, n), corr=3.0, seed=s, dtype=dtype, device=device) for s in range(n_train)])
    Xt = torch.stack([random_field((n, n), corr=3.0, seed=10 ** 6 + s, dtype=dtype, device=device)
                      for s in range(n_test)])
    Y, Yt = prob.forward(X), prob.forward(Xt)
    if lr is None:
        lr = 1e-2
    torch.manual_seed(seed)
    net = HeatNet(channels).to(dtype=dtype, device=device)
    res = train(net, Y, Y, prob.forward, method, steps=steps, lr=lr, batch_size=batch_size,
                inverse=prob.inverse, seed=seed, progress=progress)
    with torch.no_grad():
        l1 = (net(Yt) - Xt).abs().sum((1, 2)).mean().item()
    return res, l1, net, (Xt, Yt)


def run_nn_heat(full: bool = False, device=None, seed: int = 0, progress: bool = True) -> dict:
    r"""Benchmark entry ``python -m physgrad.bench nn-heat [--full]`` (experiment 4).

    ``full=False``: the notebook's CI size (32x32, 64 training fields, 400 steps, lr 1e-2;
    SGD 1e-4). ``full=True``: the published grid, 64x64 with νT = 8; 512 training fields,
    3000 steps of batch 16, 16 channels, lr 3e-3 (SGD 2.5e-5): about 4 minutes per method on
    one CPU thread (the published networks are larger U-Nets trained longer). Measured on a
    2-core CPU (1 thread): test x-L1 Adam 564.6, SGD 974.1, SIP 248.2, ratio 2.27. Runs Adam, SGD and SIP and returns a dict with, per method, the final training
    loss, the test x-L1 (mean over 64 test fields of ``sum |x - x_true|``; published: Adam 125.0,
    SGD 118.9, SIP 50.4) and the wall time, plus the Adam/SIP ratio of test x-L1.
    """
    if full:
        cfg = dict(n=64, n_train=512, n_test=64, steps=3000, batch_size=16, channels=16)
        lrs = {"adam": 3e-3, "sgd": 2.5e-5, "sip": 3e-3}
    else:
        cfg = dict(n=32, n_train=64, n_test=16, steps=400, batch_size=16, channels=16)
        lrs = {"adam": 1e-2, "sgd": 1e-4, "sip": 1e-2}
    out = {"config": dict(cfg, nu_T=8.0, device=str(device) if device is not None else "cpu", seed=seed)}
    # SGD's stable learning rate shrinks with the number of pixels (the loss sums over them);
    # Adam at 1e-2 blows up late in the 3000-step run, so the full run uses 3e-3 for Adam and SIP.
    for method, lr in lrs.items():
        t0 = time.perf_counter()
        try:
            res, l1, _, _ = heat_demo(method, lr=lr, seed=seed, device=device, progress=progress, **cfg)
        except NonFiniteError as e:  # report a diverged run instead of losing the others
            out[method] = {"diverged": str(e), "lr": lr, "wall_s": time.perf_counter() - t0}
            continue
        out[method] = {"final_loss": res.final_loss, "test_x_l1": l1, "wall_s": time.perf_counter() - t0,
                       "lr": lr}
    if "test_x_l1" in out["adam"] and "test_x_l1" in out["sip"]:
        out["adam_over_sip"] = out["adam"]["test_x_l1"] / out["sip"]["test_x_l1"]
    out["published"] = {"adam": 125.0, "sgd": 118.9, "sip": 50.4, "adam_over_sip": 125.0 / 50.4}
    return out
