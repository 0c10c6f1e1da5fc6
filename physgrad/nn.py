r"""Training neural networks through a simulator, with plain and inverted updates (chapter 8).

The setting of chapter 8: a network :math:`f_\theta` maps an input :math:`c_b` (often the target
itself, :math:`c_b = y^*_b`) to a simulator input :math:`x_b = f_\theta(c_b)`; the simulator maps it to
:math:`y_b = P(x_b)` and the loss over a batch of :math:`B` samples is

.. math:: L(\theta) = \frac{1}{B} \sum_b \tfrac12 \lVert P(f_\theta(c_b)) - y^*_b \rVert_2^2 .

:func:`train` minimises it with one of seven methods (``method=``):

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
``"lm"``
    Levenberg–Marquardt: the Gauss–Newton step with adaptive Marquardt damping (:class:`LM`).

The same updates are optimizer objects for a hand-written training loop: :class:`HIG`,
:class:`GN`, :class:`SIP` (around any ``torch.optim`` optimizer) and :class:`DP` (plain
differentiable physics). Each ``step(inputs, targets[, condition])`` updates the model in place
and returns the batch's physics loss before the update; :func:`train` is a thin loop over them.
HIG in a loop of your own::

    import torch
    from physgrad import nn

    t = torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(-1, 1)
    target = torch.cat([torch.sin(6 * t), torch.cos(9 * t)], 1)
    net = nn.mlp([1, 7, 2], seed=0)
    opt = nn.HIG(net, physics=lambda x: x, lr=1.0, truncation=1e-6)
    for epoch in range(200):
        for batch in torch.randperm(64).split(16):
            loss = opt.step(t[batch], target[batch])   # batch loss before the step

Adam through the simulator needs no object of ours: ``nn.physics_loss(net, c, y, P).backward()``
followed by any ``torch.optim`` step is the same update as ``nn.DP``.

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
from .linesearch import armijo

__all__ = [
    "TrainResult", "train", "make_step", "Step", "DP", "SIP", "GN", "HIG", "LM", "mlp",
    "stacked_jacobian", "stacked_jacobian_loop", "jacobian_bytes", "inverted_step",
    "sip_targets", "sip_loss", "physics_loss", "METHODS", "DEFAULT_LR",
]

Tensor = torch.Tensor
METHODS = ("adam", "sgd", "supervised", "sip", "gn", "hig", "lm")
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


def _trainable(model: torch.nn.Module):
    """``(name, parameter)`` of every parameter with ``requires_grad=True``: the weights the
    optimizer objects update (a frozen parameter is a constant of the network, like a buffer)."""
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (every parameter has requires_grad=False)")
    return named


def _check_data(model: torch.nn.Module, physics: Callable, inputs: Tensor, targets: Tensor,
                condition: Optional[Tensor] = None, per_sample: bool = False,
                check_dtype: bool = True, forward: bool = True) -> Optional[Tensor]:
    """The entrance checks of :func:`train` and of every optimizer object's ``step``: the same
    number of samples in ``inputs``, ``targets`` (and ``condition``), finite data, the model's
    dtype, targets shaped like the simulator's output per sample, and (``per_sample=True``, the
    stacked-Jacobian methods) no batch-statistics layers. ``check_dtype=False`` accepts inputs of
    another dtype (a model that converts them itself). With ``forward=True`` one sample is run
    through the model and the simulator to check the output shape, which is returned; the
    optimizer objects pass ``forward=False`` and check the output they compute anyway
    (:func:`_check_out`), so that no extra forward touches e.g. batch-norm statistics."""
    if inputs.shape[0] != targets.shape[0]:
        raise ShapeError(f"inputs and targets need the same batch size, got {inputs.shape[0]} and {targets.shape[0]}")
    if condition is not None and condition.shape[0] != inputs.shape[0]:
        raise ShapeError(f"condition needs the batch size of the inputs, got {condition.shape[0]} and {inputs.shape[0]}")
    if inputs.shape[0] == 0:
        raise ShapeError("inputs hold no samples")
    for name, t in (("inputs", inputs), ("targets", targets), ("condition", condition)):
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{name} contain NaN or Inf; clean the data before training")
    params = [q for q in model.parameters() if q.is_floating_point()]
    if check_dtype and params and inputs.is_floating_point() and inputs.dtype != params[0].dtype:
        raise TypeError(f"the model's parameters are {params[0].dtype} but the inputs are {inputs.dtype}: "
                        f"convert one of them, e.g. model.to({inputs.dtype}) or inputs.to({params[0].dtype})")
    if per_sample:
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.training:
                raise ValueError(f"the model has a batch-statistics layer ({type(mod).__name__}) in training "
                                 "mode; per-sample Jacobians (gn, hig) see one sample at a time. Use "
                                 "model.eval() for that layer, or LayerNorm/GroupNorm instead")
    if not forward:
        return None
    with torch.no_grad():
        y1 = _call(physics, model(inputs[:1]), None if condition is None else condition[:1])
    _check_out(y1, targets)
    return y1


def _check_out(y, targets) -> None:
    """The simulator's output must have the targets' per-sample shape (else a raw torch error, or
    worse, a silent broadcast in the loss)."""
    if not isinstance(y, Tensor):
        raise TypeError(f"physics must return a torch.Tensor, got {type(y).__name__}")
    if tuple(y.shape[1:]) != tuple(targets.shape[1:]):
        raise ShapeError(f"physics returns samples of shape {tuple(y.shape[1:])}, but the targets have "
                         f"shape {tuple(targets.shape[1:])} per sample")


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
    :math:`\partial P(f_\theta(c_b)) / \partial \theta` (the trainable weights,
    ``requires_grad=True``, flattened in the order of ``model.named_parameters()``; frozen ones are
    held fixed), and ``y`` the stacked outputs ``(B*m,)``. Computed with
    ``torch.func.functional_call`` + ``vmap(jacrev(.))`` over the batch.

    Memory: ``B*m*p*itemsize`` bytes for ``J`` (checked against ``max_jacobian_bytes`` before
    anything is allocated; :class:`~physgrad.errors.MemoryBudgetError` if exceeded) plus
    reverse-mode intermediates of ``m`` backward passes per sample. ``chunk_size`` bounds how
    many samples vmap processes at once.
    """
    trainable = _trainable(model)
    names = [n for n, _ in trainable]
    params = tuple(p.detach() for _, p in trainable)
    buffers = {n: b for n, b in model.named_buffers()}
    buffers.update({n: q.detach() for n, q in model.named_parameters() if not q.requires_grad})
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
    trainable = _trainable(model)
    params = [p for _, p in trainable]
    rows = []
    for b in range(inputs.shape[0]):
        def g(*ps):
            x = functional_call(model, {n: t for (n, _), t in zip(trainable, ps)}, (inputs[b:b + 1],))
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


# ----------------------------------------------------------------------------- optimizer objects
def physics_loss(model, inputs, targets, physics, condition=None) -> Tensor:
    """Mean over the batch of ``1/2 ||P(f(c_b)) - y*_b||^2``."""
    y = _call(physics, model(inputs), condition)
    _check_out(y, targets)
    return 0.5 * (y - targets).pow(2).reshape(y.shape[0], -1).sum(1).mean()


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class Step:
    """Base class of the optimizer objects (:class:`DP`, :class:`SIP`, :class:`HIG`,
    :class:`GN`): ``step(inputs, targets[, condition])`` performs one
    update of ``model`` in place and returns the physics loss of the batch *before* the update
    (a float). ``last_train_loss`` holds the loss the method actually minimised in that step.

    ``step`` first checks the batch as :func:`train` checks its data (batch sizes, finite values,
    the targets' per-sample shape; for :class:`HIG`/:class:`GN`/:class:`LM` also the dtype and no
    batch-statistics layers) and raises a clear error; only weights with ``requires_grad=True`` are updated."""

    per_sample = False  # True for the stacked-Jacobian methods

    def __init__(self, model, physics):
        self.model, self.physics = model, physics
        self.last_train_loss = float("nan")
        _trainable(model)

    def step(self, inputs: Tensor, targets: Tensor, condition: Optional[Tensor] = None, **kw) -> float:
        # the dtype is checked where the per-sample Jacobian needs it; DP/SIP models may convert
        _check_data(self.model, self.physics, inputs, targets, condition, self.per_sample,
                    check_dtype=self.per_sample, forward=False)
        return self._step(inputs, targets, condition, **kw)

    def _step(self, inputs: Tensor, targets: Tensor, condition: Optional[Tensor] = None) -> float:
        raise NotImplementedError


class DP(Step):
    r"""Differentiable physics: back-propagate the physics loss (chapter 8, eq. ``nn-loss``) through ``physics``
    and the network, then ``optimizer.step()`` (any ``torch.optim`` optimizer over
    ``model.parameters()``; default Adam with ``lr``)."""

    def __init__(self, model, physics, optimizer=None, lr: float = 1e-3):
        super().__init__(model, physics)
        if optimizer is None:
            _check_positive("lr", lr)
            optimizer = torch.optim.Adam([q for _, q in _trainable(model)], lr=lr)
        self.optimizer = optimizer

    def _step(self, inputs, targets, condition=None):
        self.optimizer.zero_grad(set_to_none=True)
        L = physics_loss(self.model, inputs, targets, self.physics, condition)
        L.backward()
        self.optimizer.step()
        self.last_train_loss = L.item()
        return self.last_train_loss



def _proxy_step(stepper, inputs, targets, condition, proxy_target) -> float:
    """One ``stepper.optimizer`` step on the proxy loss ``1/B Σ_b ½||x_b − x̃_b||²`` with
    ``x̃ = proxy_target(x, y)`` (ground truth for supervised training, the inverted targets for
    SIP). Returns the batch's physics loss before the step."""
    stepper.optimizer.zero_grad(set_to_none=True)
    x = stepper.model(inputs)
    with torch.no_grad():
        y = _call(stepper.physics, x, condition)
        _check_out(y, targets)
        lp = 0.5 * (y - targets).pow(2).reshape(y.shape[0], -1).sum(1).mean().item()
    xt = proxy_target(x, y)
    L = 0.5 * (x - xt).pow(2).reshape(x.shape[0], -1).sum(1).mean()
    L.backward()
    stepper.optimizer.step()
    stepper.last_train_loss = L.item()
    return lp


class _Supervised(Step):
    """Adam on the distance to ground-truth inputs (the x_true rows are passed as ``x_true``)."""

    def __init__(self, model, physics, optimizer):
        super().__init__(model, physics)
        self.optimizer = optimizer

    def _step(self, inputs, targets, condition=None, x_true=None):
        return _proxy_step(self, inputs, targets, condition, lambda x, y: x_true)


class SIP(Step):
    r"""Scale-invariant physics training as an optimizer object (chapter 8, eq. ``sip-proxy``).

    ``step`` runs the network, the simulator, the local ``inverse`` (batched,
    ``inverse(y, x0[, cond])``) for the targets :math:`\tilde x` at ``y_step`` = η_y of the way
    to ``y*``, and one step of ``optimizer`` (default ``torch.optim.Adam(model.parameters(),
    lr)``) on the proxy loss :math:`\frac1B\sum_b \tfrac12\lVert x_b - \tilde x_b\rVert^2`."""

    def __init__(self, model, physics, inverse, optimizer=None, lr: float = 1e-3, y_step: float = 1.0):
        super().__init__(model, physics)
        if inverse is None:
            from .errors import MissingInverseError
            raise MissingInverseError("SIP needs a local inverse: inverse(y, x0[, cond]) -> x")
        _check_positive("y_step", y_step)
        if optimizer is None:
            _check_positive("lr", lr)
            optimizer = torch.optim.Adam([q for _, q in _trainable(model)], lr=lr)
        self.inverse, self.optimizer, self.y_step = inverse, optimizer, y_step

    def _step(self, inputs, targets, condition=None):
        return _proxy_step(self, inputs, targets, condition, lambda x, y: sip_targets(
            x.detach(), y, targets, self.inverse, self.y_step, condition))


class HIG(Step):
    r"""Half-inverse gradients over the weights as an optimizer object (chapter 8, eq.
    ``hig-update``): per ``step`` the stacked per-sample Jacobian :math:`\mathcal J`
    (:func:`stacked_jacobian`), the residual ``r = y - y*`` and the update
    :math:`\Delta\theta = -\eta V\Sigma^{-\kappa}U^\top r` (:func:`inverted_step`).

    ``line_search="armijo"`` (the default) is the safeguard: it tries ``lr`` first and halves the
    step (at most ``max_backtracks`` times) until the batch loss falls by at least
    ``c1 * t * |g^T d|`` (Armijo, with ``g`` the gradient of the batch loss); if no trial step
    decreases the loss the weights stay unchanged for this batch. ``line_search=None`` is the
    pure fixed step of the papers. ``residual_scale`` multiplies ``r`` before the step (the HIG
    paper's code inverts :math:`\partial L/\partial y = 2r/B` instead of ``r``:
    ``residual_scale = 2 / B``)."""

    default_kappa = 0.5
    per_sample = True

    def __init__(self, model, physics, lr: float = 1.0, kappa: Optional[float] = None,
                 truncation: float = 1e-6, line_search: Optional[str] = "armijo",
                 max_jacobian_bytes: Optional[int] = 2 * GiB, residual_scale: float = 1.0,
                 c1: float = 1e-4, max_backtracks: int = 20):
        super().__init__(model, physics)
        _check_positive("lr", lr)
        _check_positive("residual_scale", residual_scale)
        if truncation < 0:
            raise ValueError(f"truncation must be >= 0, got {truncation!r}")
        if line_search not in (None, "armijo"):
            raise ValueError(f"line_search must be None or 'armijo', got {line_search!r}")
        self.lr, self.truncation, self.line_search = lr, truncation, line_search
        self.kappa = self.default_kappa if kappa is None else float(kappa)
        self.max_jacobian_bytes, self.residual_scale = max_jacobian_bytes, residual_scale
        self.c1, self.max_backtracks = c1, max_backtracks
        self.last_step_size = lr

    def _residual(self, inputs, targets, condition=None):
        """The stacked Jacobian ``J``, the stacked residual ``r = y - y*``, the batch size ``B`` and
        the batch loss ``L0`` at the current weights (shared by HIG, GN and LM)."""
        J, y = stacked_jacobian(self.model, inputs, self.physics, condition, self.max_jacobian_bytes)
        if not bool(torch.isfinite(J).all()):
            raise NonFiniteError(f"{type(self).__name__}: the stacked Jacobian is not finite; the simulator "
                                 "diverged for some sample (check its inputs and the step size).")
        B = inputs.shape[0]
        if y.numel() != targets.numel():
            raise ShapeError(f"physics returns {y.numel() // B} values per sample, but the targets have "
                             f"shape {tuple(targets.shape[1:])} per sample")
        r = y - targets.reshape(-1)
        return J, r, B, 0.5 * r.pow(2).sum().item() / B

    def _step(self, inputs, targets, condition=None):
        J, r, B, L0 = self._residual(inputs, targets, condition)
        d = inverted_step(J, self.residual_scale * r, self.lr, self.kappa, self.truncation)
        t = 1.0
        if self.line_search == "armijo":  # the library's one Armijo search, on the flat weights
            theta0 = _flat_params(self.model)

            def batch_loss(theta):
                _set_flat(self.model, theta[0])
                with torch.no_grad():
                    return physics_loss(self.model, inputs, targets, self.physics, condition).item()

            g = (J.T @ r) / B  # gradient of the batch loss
            t = float(armijo(batch_loss, theta0[None], L0, g[None], d[None], 1.0, c1=self.c1,
                             max_tries=self.max_backtracks + 1)[0])
            _set_flat(self.model, theta0 + t * d)
        else:
            _add_flat(self.model, d)
        self.last_step_size = t * self.lr
        self.last_train_loss = L0
        return L0


class GN(HIG):
    r"""Gauss–Newton over the weights (chapter 8, eq. ``gn-weights``): :class:`HIG` with
    ``kappa = 1``, default step ``lr = 1`` and no line search (the textbook step)."""

    default_kappa = 1.0

    def __init__(self, model, physics, lr: float = 1.0, kappa: Optional[float] = None,
                 truncation: float = 1e-6, line_search: Optional[str] = None, **kw):
        super().__init__(model, physics, lr, kappa, truncation, line_search, **kw)


class LM(HIG):
    r"""Levenberg–Marquardt over the weights: the Gauss–Newton step with Marquardt's
    scale-invariant damping, :math:`\Delta\theta = -(J^\top J + \mu\,\mathrm{diag}(J^\top J))^{-1}
    J^\top r` (solved as a stacked least-squares problem by
    :func:`physgrad.linalg.damped_solve`, no normal equations). ``μ`` adapts from step to step: a
    step that lowers the batch loss is taken and ``μ`` divided by 3; otherwise ``μ`` is doubled and
    the step retried (at most ``max_backtracks`` times; then the weights and ``μ`` stay as they
    were)."""

    default_kappa = 1.0

    def __init__(self, model, physics, damping: float = 1e-3, max_jacobian_bytes: Optional[int] = 2 * GiB,
                 residual_scale: float = 1.0, max_backtracks: int = 20):
        super().__init__(model, physics, lr=1.0, kappa=1.0, truncation=0.0, line_search=None,
                         max_jacobian_bytes=max_jacobian_bytes, residual_scale=residual_scale,
                         max_backtracks=max_backtracks)
        _check_positive("damping", damping)
        self.damping = float(damping)

    def _step(self, inputs, targets, condition=None):
        from .linalg import damped_solve

        J, r, B, L0 = self._residual(inputs, targets, condition)
        scale = J.pow(2).sum(0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # unused weights: plain λ
        theta0, mu0 = _flat_params(self.model), self.damping
        t = 0.0
        for _ in range(self.max_backtracks + 1):
            d = -damped_solve(J, self.residual_scale * r, self.damping, scale)
            _set_flat(self.model, theta0 + d)
            with torch.no_grad():
                L1 = physics_loss(self.model, inputs, targets, self.physics, condition).item()
            if math.isfinite(L1) and L1 < L0:
                self.damping = max(self.damping / 3, 1e-12)
                t = 1.0
                break
            self.damping *= 2
        else:  # no damping lowered the loss (e.g. at a minimum): keep the weights and μ
            _set_flat(self.model, theta0)
            self.damping = mu0
        self.last_step_size = t
        self.last_train_loss = L0
        return L0


# ----------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What :func:`train` records: per step the physics loss of the batch (before the update),
    the loss the method actually minimised, and cumulative wall time in seconds.

    ``final_train_loss`` is the mean physics loss over *all* training samples after the last
    update (evaluated once after the loop, also after an early stop; with ``steps=0`` it is the
    initial loss); ``final_loss`` returns it."""
    method: str
    losses: list = field(default_factory=list)
    train_losses: list = field(default_factory=list)
    times: list = field(default_factory=list)
    eval_losses: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)
    model: Optional[torch.nn.Module] = None
    message: str = ""
    final_train_loss: Optional[float] = None

    @property
    def final_loss(self) -> float:
        if self.final_train_loss is not None:
            return self.final_train_loss
        if not self.losses:
            raise ValueError("this TrainResult holds no loss (the run stopped before its first step)")
        return self.losses[-1]


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(model)])


def _split_flat(model, v: Tensor):
    """``(parameter, matching slice of the flat vector v, reshaped)`` for each trainable parameter."""
    i = 0
    for _, p in _trainable(model):
        k = p.numel()
        yield p, v[i:i + k].reshape(p.shape)
        i += k


def _add_flat(model, d: Tensor):
    with torch.no_grad():
        for p, dp in _split_flat(model, d):
            p.add_(dp)


def _set_flat(model, theta: Tensor):
    with torch.no_grad():
        for p, tp in _split_flat(model, theta):
            p.copy_(tp)


DEFAULT_LR = {"adam": 1e-3, "sgd": 1e-3, "supervised": 1e-3, "sip": 1e-3, "gn": 1.0, "hig": 1.0, "lm": 1.0}


def make_step(method: str, model, physics, *, lr: Optional[float] = None, inverse=None,
              y_step: float = 1.0, kappa: Optional[float] = None, truncation: float = 1e-6,
              line_search="default", max_jacobian_bytes: Optional[int] = 2 * GiB,
              residual_scale: float = 1.0):
    """The optimizer object that :func:`train` loops over for ``method`` (see ``METHODS``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    lr = DEFAULT_LR[method] if lr is None else lr
    _check_positive("lr", lr)
    if method == "lm":
        return LM(model, physics, max_jacobian_bytes=max_jacobian_bytes, residual_scale=residual_scale)
    if method in ("gn", "hig"):
        cls = GN if method == "gn" else HIG
        ls = ("armijo" if method == "hig" else None) if line_search == "default" else line_search
        return cls(model, physics, lr=lr, kappa=kappa, truncation=truncation, line_search=ls,
                   max_jacobian_bytes=max_jacobian_bytes, residual_scale=residual_scale)
    params = [q for _, q in _trainable(model)]
    if method == "sgd":
        return DP(model, physics, torch.optim.SGD(params, lr=lr))
    if method == "adam":
        return DP(model, physics, torch.optim.Adam(params, lr=lr))
    if method == "sip":
        return SIP(model, physics, inverse, torch.optim.Adam(params, lr=lr), y_step=y_step)
    return _Supervised(model, physics, torch.optim.Adam(params, lr=lr))


def train(model: torch.nn.Module, inputs: Tensor, targets: Tensor, physics: Callable,
          method: str = "adam", *, steps: int = 100, lr: Optional[float] = None,
          batch_size: Optional[int] = None, condition: Optional[Tensor] = None,
          inverse: Optional[Callable] = None, x_true: Optional[Tensor] = None, y_step: float = 1.0,
          kappa: Optional[float] = None, truncation: float = 1e-6, line_search="default",
          residual_scale: float = 1.0, max_jacobian_bytes: Optional[int] = 2 * GiB, seed: int = 0,
          progress: bool = False, time_budget: Optional[float] = None,
          eval_data: Optional[tuple] = None, eval_every: int = 0, callback=None) -> TrainResult:
    r"""Train ``model`` so that ``physics(model(inputs)) ≈ targets`` (chapter 8, eq. ``nn-loss``).

    A thin loop over the optimizer objects (:class:`DP`, :class:`SIP`, :class:`GN`,
    :class:`HIG`): draw a mini-batch, call ``.step``, record.

    Parameters
    ----------
    model
        Network mapping a batch of ``inputs`` to a batch of simulator inputs ``x``.
    inputs, targets
        Tensors with the batch as leading dimension (``targets`` holds ``y*``; its per-sample
        shape must equal that of ``physics``'s output, checked before training).
    physics
        Batched simulator ``P(x)``, or ``P(x, cond)`` when ``condition`` is given.
    method
        ``"adam"``, ``"sgd"``, ``"supervised"`` (needs ``x_true``), ``"sip"`` (needs
        ``inverse``), ``"gn"``, ``"hig"`` or ``"lm"``; see the module docstring for each update.
    steps
        Number of updates (``0``: only the final evaluation).
    lr
        Learning rate (> 0) of Adam/SGD (adam, sgd, supervised, sip), or the step ``η`` of gn/hig.
        Default per method (``DEFAULT_LR``): 1e-3 for the Adam/SGD methods, 1 for gn and hig.
    batch_size
        Mini-batch size ≥ 1 (``None``: full batch). Batches are drawn by a generator seeded with
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
    line_search
        gn/hig only: ``"armijo"`` (backtracking from ``lr``, see :class:`HIG`) or ``None`` (the
        pure fixed step). Default: ``"armijo"`` for hig (the safeguarded step), ``None`` for gn.
    residual_scale
        gn/hig only: the residual is multiplied by this before the spectral step.
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
        physics loss is recorded every ``eval_every`` steps and after the last step (also after
        an early stop).
    eval_every
        Evaluation interval in steps (0: never).
    callback
        ``callback(step, result)``; returning True stops the run.

    Returns
    -------
    TrainResult
        Per-step losses and cumulative wall times; the model is trained in place and is also
        ``result.model``. An error raised during training (a non-finite loss, an exception
        from ``physics``, ``inverse`` or ``callback``) carries the partial
        :class:`TrainResult` as ``err.result``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "supervised" and x_true is None:
        raise ValueError("method='supervised' needs ground-truth simulator inputs x_true")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None for the full batch), got {batch_size!r}")
    y1 = _check_data(model, physics, inputs, targets, condition, per_sample=method in ("gn", "hig", "lm"))
    stepper = make_step(method, model, physics, lr=lr, inverse=inverse, y_step=y_step, kappa=kappa,
                        truncation=truncation, line_search=line_search,
                        max_jacobian_bytes=max_jacobian_bytes, residual_scale=residual_scale)
    N = inputs.shape[0]
    bs = N if batch_size is None else min(batch_size, N)
    if method in ("gn", "hig", "lm"):
        p = sum(q.numel() for _, q in _trainable(model))
        _check_budget(bs, y1[0].numel(), p, next(model.parameters()).dtype, max_jacobian_bytes)
    from tqdm import tqdm  # plain text: no widget manager needed on the website

    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    res = TrainResult(method=method, model=model)

    def evaluate(k):
        if eval_data is not None and eval_every and (not res.eval_steps or res.eval_steps[-1] != k):
            with torch.no_grad():
                res.eval_losses.append(physics_loss(model, eval_data[0], eval_data[1], physics,
                                                    eval_data[2] if len(eval_data) > 2 else None).item())
            res.eval_steps.append(k)

    perm = torch.randperm(N, generator=gen)
    pos = 0
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=method, disable=not progress, leave=False)
    k = -1
    try:
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
            # the data were checked once above: the loop calls the unchecked update
            if method == "supervised":
                lp = stepper._step(c, ys, cond, x_true=x_true[idx])
            else:
                lp = stepper._step(c, ys, cond)
            lt = stepper.last_train_loss
            if not math.isfinite(lp) or not math.isfinite(lt):
                raise NonFiniteError(f"{method}: the loss became {lp} at step {k}; lower lr (step size).")
            res.losses.append(lp)
            res.train_losses.append(lt)
            res.times.append(time.perf_counter() - t0)
            if eval_every and k % eval_every == 0:
                evaluate(k)
            if progress:
                bar.set_postfix(loss=f"{lp:.3g}")
            if callback is not None and callback(k, res):
                res.message = "stopped by callback"
                break
            if time_budget is not None and res.times[-1] > time_budget:
                res.message = "time budget reached"
                break
    except Exception as e:
        bar.close()
        res.message = f"{type(e).__name__} at step {k}: {e}"
        try:
            e.result = res
        except AttributeError:  # an exception type without an instance dict
            pass
        raise
    bar.close()
    k_last = len(res.losses) - 1
    evaluate(max(k_last, 0))
    with torch.no_grad():
        res.final_train_loss = physics_loss(model, inputs, targets, physics, condition).item()
    if not res.message:
        res.message = f"{len(res.losses)} steps"
    return res
