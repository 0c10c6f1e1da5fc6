r"""physgrad: inverted gradients for physics-based optimization and learning.

The package behind the book *Inverting Gradients*. The core objects:

* :class:`Problem` — a simulator ``P``, a target ``y*`` and optionally a local inverse
  ``P^{-1}(y; x0)``; loss ``L(x) = ½||P(x) − y*||²``.
* :func:`optimize` — runs one of the book's updates (``gd``, ``adam``, ``newton``, ``bfgs``,
  ``lbfgs``, ``ig``, ``pg``, ``hig``) and returns a :class:`Result`.
* :mod:`physgrad.updates` — each update as a plain function returning ``Δx``.
* :mod:`physgrad.linalg` — pseudo-inverse, truncated SVD, damped solves.
* :mod:`physgrad.matfree` — matrix-free least squares (LSQR / CGLS over ``jvp``/``vjp``).
* :mod:`physgrad.batched` — batches of independent problems (``Problem(..., batched=True)``).
* :mod:`physgrad.inverse` — a numerical local inverse for any differentiable simulator.
* :mod:`physgrad.problems` — the book's example problems (toy, heat, Poisson, Burgers, oscillators).
* :mod:`physgrad.nn`, :mod:`physgrad.widgets`, :mod:`physgrad.plotting`, :mod:`physgrad.bench` —
  network training, interactive explorers, figures, benchmark (imported on demand).
"""

from . import batched, errors, inverse, linalg, matfree, problems, updates
from .errors import (
    InverseSimulatorError,
    MemoryBudgetError,
    MissingInverseError,
    NonFiniteError,
    PhysgradError,
    ShapeError,
    SingularMatrixError,
)
from .optimize import METHODS, Result, optimize
from .problem import Problem
from .batched import BatchResult

__version__ = "0.1.0"

__all__ = [
    "Problem", "optimize", "Result", "BatchResult", "METHODS", "updates", "batched", "linalg", "matfree", "inverse", "problems",
    "errors",
    "PhysgradError", "ShapeError", "NonFiniteError", "SingularMatrixError", "MissingInverseError",
    "InverseSimulatorError", "MemoryBudgetError",
]
