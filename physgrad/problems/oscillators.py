r"""Controlled chain of coupled oscillators (chapter 8, the control experiment).

``n`` unit masses on unit springs, neighbours coupled with strength ``coupling``; state
``s = (q, p)`` in :math:`\mathbb R^{2n}`. A control force ``u_t`` in :math:`\mathbb R^n` acts in
each of ``steps`` symplectic-Euler steps of size ``dt``:

.. math::
   p_{t+1} = p_t + \Delta t\,\bigl(-q_t - F_c(q_t) + u_t\bigr), \qquad
   q_{t+1} = q_t + \Delta t\, p_{t+1},

with the coupling force :math:`F_c(q)_i = c \sum_{j \sim i} (q_i - q_j)` (linear) or
:math:`c \sum_{j \sim i} (q_i - q_j)^3` (``nonlinear=True``, quartic coupling potential).
The simulator maps a control sequence ``u`` (shape ``(steps, n)``) and an initial state ``s0`` to
the final state ``s_T``; the task is to return to the start, ``y* = s0``.

For the linear chain :math:`s_T = A s_0 + G u` is affine in ``u``; the local inverse
``u = u0 + G^+ (y - P(u0))`` is exact and returns the control closest to ``u0``. For the
non-linear chain the same formula is iterated (Gauss–Newton, min-norm) a few times.

Two further options reproduce the published setting of the HIG paper's notebook
(Schnell et al. 2022): ``integrator="rk4"`` (classical Runge–Kutta with the control held
constant over a step) and ``actuated="last"`` (only the last mass is pushed, ``steps``
controls instead of ``steps * n``).

Stability: symplectic Euler is stable while ``ω dt < 2`` for the stiffest mode. The linear chain
(``ω² ≤ 1 + 4c``) is far from the limit at ``dt = 0.5``; the quartic coupling stiffens like
``3c (q_i − q_j)²``, so with ``dt = 0.5`` the non-linear chain blows up once neighbours are
about 3 units apart. Use small initial states (e.g. ``0.5 * sample_states(...)``) or a smaller
``dt`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ..inverse import numerical_inverse

__all__ = ["Oscillators", "oscillators"]

Tensor = torch.Tensor


@dataclass
class Oscillators:
    n: int = 2
    steps: int = 24
    dt: float = 0.5
    coupling: float = 0.2
    nonlinear: bool = False
    inverse_iterations: int = 5
    integrator: str = "symplectic"
    actuated: str = "all"

    def __post_init__(self):
        if self.integrator not in ("symplectic", "rk4"):
            raise ValueError(f"integrator must be 'symplectic' or 'rk4', got {self.integrator!r}")
        if self.actuated not in ("all", "last"):
            raise ValueError(f"actuated must be 'all' or 'last', got {self.actuated!r}")

    @property
    def controls_per_step(self) -> int:
        return self.n if self.actuated == "all" else 1

    @property
    def x_size(self) -> int:
        """Number of control values, ``steps * n`` (all masses actuated) or ``steps`` (last)."""
        return self.steps * self.controls_per_step

    def _push(self, u_t: Tensor) -> Tensor:
        """The force on each mass from this step's controls."""
        if self.actuated == "all":
            return u_t
        return torch.nn.functional.pad(u_t, (self.n - 1, 0))

    def _step(self, q: Tensor, p: Tensor, f: Tensor):
        dt = self.dt
        if self.integrator == "symplectic":
            p = p + dt * (-self._force(q) + f)
            return q + dt * p, p

        def acc(qq):
            return -self._force(qq) + f

        k1q, k1p = p, acc(q)
        k2q, k2p = p + 0.5 * dt * k1p, acc(q + 0.5 * dt * k1q)
        k3q, k3p = p + 0.5 * dt * k2p, acc(q + 0.5 * dt * k2q)
        k4q, k4p = p + dt * k3p, acc(q + dt * k3q)
        return (q + dt / 6 * (k1q + 2 * k2q + 2 * k3q + k4q),
                p + dt / 6 * (k1p + 2 * k2p + 2 * k3p + k4p))

    def _force(self, q: Tensor) -> Tensor:
        d = q[..., :-1] - q[..., 1:]  # q_i - q_{i+1}
        if self.nonlinear:
            d = d ** 3
        f = torch.zeros_like(q)
        f = f + torch.nn.functional.pad(d, (0, 1)) - torch.nn.functional.pad(d, (1, 0))
        return q + self.coupling * f

    def simulate(self, u: Tensor, s0: Tensor) -> Tensor:
        """Final states for a batch: ``u`` of shape ``(B, steps*n)`` or ``(B, steps, n)``,
        ``s0`` of shape ``(B, 2n)`` -> ``(B, 2n)``."""
        u = u.reshape(u.shape[0], self.steps, self.controls_per_step)
        q, p = s0[..., : self.n], s0[..., self.n:]
        for t in range(self.steps):
            q, p = self._step(q, p, self._push(u[:, t]))
        return torch.cat([q, p], dim=-1)

    def trajectory(self, u: Tensor, s0: Tensor) -> Tensor:
        """All states ``(B, steps+1, 2n)`` (for plots)."""
        u = u.reshape(u.shape[0], self.steps, self.controls_per_step)
        q, p = s0[..., : self.n], s0[..., self.n:]
        out = [torch.cat([q, p], -1)]
        for t in range(self.steps):
            q, p = self._step(q, p, self._push(u[:, t]))
            out.append(torch.cat([q, p], -1))
        return torch.stack(out, 1)

    def inverse(self, y: Tensor, u0: Tensor, s0: Tensor) -> Tensor:
        r"""Local inverse for a batch: the control closest to ``u0`` whose final state is ``y``,
        ``u = u0 + G^+ (y - P(u0))`` per sample (one undamped Gauss–Newton step for the linear
        chain; ``inverse_iterations`` of them, stopping early per sample, when non-linear). It is
        :func:`physgrad.inverse.numerical_inverse` with ``batched=True`` on ``u ↦ P(u; s0)``."""
        shape = u0.shape
        u = u0.reshape(u0.shape[0], -1)
        iters = self.inverse_iterations if self.nonlinear else 1
        inv = numerical_inverse(lambda ub: self.simulate(ub, s0), batched=True, damping=0.0,
                                iters=iters, on_fail="best")
        return inv(y, u).reshape(shape)

    def sample_states(self, count: int, seed: int = 0, dtype=torch.float64, device=None,
                      uniform: bool = False, low: float = -1.0) -> Tensor:
        """``count`` random initial states, q and p standard normal, or with ``uniform=True``
        uniform on ``[low, 1)`` per component (``low=0``: ``np.random.rand``, as the pbdl-book
        notebook draws them), reproducible from ``seed``."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        if uniform:
            if not low < 1.0:
                raise ValueError(f"low must be < 1, got {low!r}")
            u = torch.rand(count, 2 * self.n, generator=g, dtype=dtype)
            return (low + (1.0 - low) * u).to(device)
        return torch.randn(count, 2 * self.n, generator=g, dtype=dtype).to(device)

    def problem(self, s0: Tensor):
        """A :class:`physgrad.Problem` for one initial state ``s0`` (shape ``(2n,)``): x = the
        flat control sequence, y* = s0, with the local inverse."""
        from ..problem import Problem

        return Problem(
            forward=lambda u: self.simulate(u.reshape(1, -1), s0[None])[0],
            target=s0,
            inverse=lambda y, u0: self.inverse(y[None], u0.reshape(1, -1), s0[None])[0].reshape(u0.shape),
            name=f"{'nonlinear' if self.nonlinear else 'linear'} oscillators (n={self.n})",
        )


def oscillators(n: int = 2, steps: int = 24, dt: float = 0.5, coupling: float = 0.2,
                nonlinear: bool = False, integrator: str = "symplectic",
                actuated: str = "all") -> Oscillators:
    """The chapter 8 control problem: ``n`` coupled oscillators, ``steps`` steps of ``dt``
    (``integrator="rk4", actuated="last"``: the HIG paper's setting)."""
    return Oscillators(n=n, steps=steps, dt=dt, coupling=coupling, nonlinear=nonlinear,
                       integrator=integrator, actuated=actuated)
