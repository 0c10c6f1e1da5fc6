r"""physgrad: inverted gradients for physics-based optimization and learning.

The package behind the book *Inverting Gradients*. The core objects:

* :class:`Problem` — a simulator ``P``, a target ``y*`` and optionally a local inverse
  ``P^{-1}(y; x0)``; loss ``L(x) = ½||P(x) − y*||²``.
* :func:`optimize` — runs one of the book's updates (``gd``, ``adam``, ``newton``, ``bfgs``,
  ``lbfgs``, ``ig``, ``pg``, ``hig``) and returns a :class:`Result`.
* :mod:`physgrad.updates` — each update as a plain function returning ``Δx``.
* :mod:`physgrad.linalg` — pseudo-inverse, truncated SVD, damped solves.
* :mod:`physgrad.problems` — the book's example problems.
"""

from . import errors, linalg, problems, updates
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

__version__ = "0.1.0"

__all__ = [
    "Problem", "optimize", "Result", "METHODS", "updates", "linalg", "problems", "errors",
    "PhysgradError", "ShapeError", "NonFiniteError", "SingularMatrixError", "MissingInverseError",
    "InverseSimulatorError", "MemoryBudgetError",
]
