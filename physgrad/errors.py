"""Errors raised by physgrad.

Every check in the package raises one of these, so a caller can catch a whole family
(``except physgrad.PhysgradError``) or a specific failure. Each message says what was
wrong *and* what to do about it; none of them is ever replaced by a silent NaN.
"""

from __future__ import annotations

__all__ = [
    "PhysgradError",
    "ShapeError",
    "NonFiniteError",
    "SingularMatrixError",
    "MissingInverseError",
    "InverseSimulatorError",
    "MemoryBudgetError",
]


class PhysgradError(Exception):
    """Base class of every error raised by physgrad."""


class ShapeError(PhysgradError, ValueError):
    """A tensor has a shape that does not fit the problem (e.g. P(x) vs. the target y*)."""


class NonFiniteError(PhysgradError, FloatingPointError):
    """A NaN or Inf appeared in an input, a simulator output, or the loss during a run."""


class SingularMatrixError(PhysgradError, ArithmeticError):
    """A Hessian or Jacobian that a method must invert is singular (numerically rank 0
    or not positive definite where required)."""


class MissingInverseError(PhysgradError, ValueError):
    """A method needs a local inverse simulator ``P^{-1}(y; x0)`` that the problem lacks."""


class InverseSimulatorError(PhysgradError, RuntimeError):
    """The user-supplied inverse simulator raised, or returned something unusable."""


class MemoryBudgetError(PhysgradError, MemoryError):
    """An allocation (e.g. a dense Jacobian) would exceed the configured memory budget."""
