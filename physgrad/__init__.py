r"""physgrad: inverted gradients for physics-based optimization and learning.

The package behind the book *Inverting Gradients*. The core objects:

* :class:`~physgrad.problem.Problem` — a simulator ``P``, a target ``y*`` and optionally a local inverse
  ``P^{-1}(y; x0)``; loss ``L(x) = ½||P(x) − y*||²``.
* :func:`~physgrad.optimize.optimize` — runs one of the book's updates (``gd``, ``adam``, ``newton``, ``bfgs``,
  ``lbfgs``, ``ig``, ``pg``, ``hig``) and returns a :class:`~physgrad.optimize.Result`.
* :mod:`physgrad.updates` — each update as a plain function returning ``Δx``.
* :mod:`physgrad.linalg` — pseudo-inverse, truncated SVD, damped solves.
* :mod:`physgrad.matfree` — matrix-free least squares (LSQR / CGLS over ``jvp``/``vjp``).
* :mod:`physgrad.batched` — batches of independent problems (``Problem(..., batched=True)``).
* :mod:`physgrad.inverse` — a numerical local inverse for any differentiable simulator.
* :mod:`physgrad.external` — simulators from outside torch (your own ``vjp``/``jvp``/``jacobian``,
  numpy code with a hand-written adjoint), given to ``Problem(forward, target, vjp=..., ...)``.
* :mod:`physgrad.bounds` — ``optimize(..., bounds=(lo, hi), x_scale=...)``: bounded and rescaled
  unknowns through a documented change of variables.
* :mod:`physgrad.linesearch`, :mod:`physgrad.views` — the searches and the problem as the
  kernels see it (one problem is a batch of one); ``physgrad.METHODS`` declares each method.
* ``physgrad.problems`` — the book's example problems (toy, heat, Poisson, Burgers, oscillators).
* :mod:`physgrad.nn`, :mod:`physgrad.runs`, :mod:`physgrad.widgets`, :mod:`physgrad.plotting`,
  :mod:`physgrad.bench`, :mod:`physgrad.machine` — network training, headless runs and live
  explorers, figures, benchmark and machine info (imported on demand).

.. rubric:: Dtype and device policy (checked by :func:`~physgrad.optimize.optimize` before the first step)

* The run follows ``x0``: its dtype and device are those of every iterate, Jacobian and loss;
  the target is converted to them on use. Nothing hard-codes a device.
* float32 and float64: every method.
* float16 and bfloat16: ``gd``, ``adam``, ``lbfgs`` and ``pg``. ``newton``, ``bfgs``, ``ig`` and
  ``hig`` need dense linear algebra (eigh, SVD, solves) that torch lacks in half precision and
  raise ``TypeError`` at the start, asking for float32. physgrad never upcasts silently.
* complex x: ``gd``, ``adam`` and ``pg`` (the loss is ``½||P(x) − y*||²`` with ``|·|²``). The
  other methods assume real numbers and raise ``TypeError`` at the start: optimize
  ``torch.view_as_real(x0)`` instead.
* The forward's output must have the precision of x (``P(x).dtype == x.dtype``, or its complex
  counterpart); otherwise ``TypeError`` at the start. A complex output of a real x is refused by
  ``ig`` and ``hig`` (their Jacobian must be real). An inverse simulator must return the dtype of
  its ``x0`` (else :class:`~physgrad.errors.InverseSimulatorError`).
* ``Problem(P, None)`` raises ``TypeError``; a list or array target becomes a tensor.
* Dense matrices (Jacobian, Hessian, BFGS matrix) are checked against a memory budget before
  allocation (default 2 GiB including work space; environment variable
  ``PHYSGRAD_MEMORY_BUDGET``, e.g. ``8G`` or ``inf``): above it :class:`~physgrad.errors.MemoryBudgetError`
  suggests ``lbfgs`` or ``ig`` with ``solver="lsqr"``. ``ig``'s default ``solver="auto"`` goes
  matrix-free above 4·10⁶ Jacobian entries.

Safe defaults, pure on request: ``newton`` and ``hig`` backtrack (Armijo) from η, ``newton``
modifies an indefinite Hessian to descend, ``bfgs``/``lbfgs`` use a strong-Wolfe search;
``line_search=None`` gives the book's pure fixed-step forms. Outcome fields and stopping
criteria (``tol``, ``atol``, ``gtol``, ``xtol``): see :func:`~physgrad.optimize.optimize` and :class:`~physgrad.optimize.Result`.
"""

from . import batched, bounds, errors, external, inverse, linalg, matfree, problems, updates
from .errors import (
    InverseSimulatorError,
    MemoryBudgetError,
    MissingInverseError,
    NonFiniteError,
    PhysgradError,
    ShapeError,
    SingularMatrixError,
)
from .optimize import METHODS, STATUS, Result, optimize
from .problem import Problem
from .batched import BatchResult

__version__ = "0.1.0"

__all__ = [
    "Problem", "optimize", "Result", "BatchResult", "METHODS", "STATUS", "updates", "batched",
    "linalg", "matfree", "inverse", "problems", "external", "bounds",
    "errors",
    "PhysgradError", "ShapeError", "NonFiniteError", "SingularMatrixError", "MissingInverseError",
    "InverseSimulatorError", "MemoryBudgetError",
]
