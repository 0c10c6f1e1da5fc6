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
    "STATUS",
    "CONVERGED", "STEP_LIMIT", "CALLBACK", "TIME_BUDGET", "NONFINITE", "STALLED", "UPHILL", "EXCEPTION",
    "SINGULAR", "INVERSE_FAILED",
]

# ----------------------------------------------------------------------------- how a run ends
# One vocabulary for Result.status (one problem), BatchResult.status (one code per sample) and
# the exceptions. As in scipy, ``success`` means that a stopping criterion was met: code 0 only.
CONVERGED = 0       #: a stopping criterion was met (tol, atol, gtol, xtol), or L = 0
STEP_LIMIT = 1      #: ran out of steps before any stopping criterion was met
CALLBACK = 2        #: the callback asked to stop
TIME_BUDGET = 3     #: the time budget was used
NONFINITE = -1      #: the loss or the update became NaN/Inf (or the parameters ran away)
STALLED = -2        #: no further decrease (zero update; LM or the line search found none)
UPHILL = -3         #: ended above the starting loss
EXCEPTION = -4      #: an exception was raised during the run (only on ``err.result``)
SINGULAR = -5       #: a singular Hessian or a numerically zero Jacobian (batched runs; one problem raises)
INVERSE_FAILED = -6  #: the inverse simulator returned NaN/Inf (batched runs; one problem raises)

#: status code -> what it means; shared by :class:`physgrad.optimize.Result` and :class:`physgrad.batched.BatchResult`
STATUS = {
    CONVERGED: "converged: a stopping criterion was met (tol, atol, gtol, xtol), or L = 0",
    STEP_LIMIT: "reached the step limit before any stopping criterion",
    CALLBACK: "stopped by the callback",
    TIME_BUDGET: "the time budget was used",
    NONFINITE: "diverged: the loss or the update became non-finite (NaN/Inf) or ran away",
    STALLED: "stalled: no further decrease (zero update, LM or line search found no decrease)",
    UPHILL: "ended above the starting loss",
    EXCEPTION: "an exception was raised during the run (see err.result)",
    SINGULAR: "singular Hessian or numerically zero Jacobian",
    INVERSE_FAILED: "the inverse simulator returned non-finite values (NaN/Inf)",
}


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


def nonfinite_start(L0: float, samples=None) -> "NonFiniteError":
    """The error of a start whose loss is not finite (one problem, or the listed samples of a
    batch), in the same words for both."""
    where = "" if samples is None else f" in sample(s) {list(samples)[:10]}"
    return NonFiniteError(f"the loss at x0 is {L0}{where}: the simulator output P(x0) is not finite")
