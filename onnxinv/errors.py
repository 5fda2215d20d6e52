"""Typed errors raised by onnxinv.

Every error a user can cause derives from :class:`OnnxInvError`; its message is one line that
names the problem, so the CLI prints it as is and exits non-zero.
"""

from __future__ import annotations

import contextvars
import time


class OnnxInvError(Exception):
    """Base class of every error onnxinv raises for bad input or an impossible request."""

    exit_code = 1


class ModelError(OnnxInvError):
    """The model cannot be loaded or used: not ONNX, fails the checker, missing data, bad I/O."""


class TargetError(OnnxInvError):
    """The target file or dict is malformed or does not fit the model's output."""


class OptionError(OnnxInvError):
    """An option is out of range or inconsistent (bounds, samples, method, device...)."""


class UnsupportedOperatorError(ModelError):
    """An operator has no converter (for Jacobians) and no inverse rule."""

    def __init__(self, message: str, op_type: str | None = None, node: str | None = None):
        super().__init__(message)
        self.op_type = op_type
        self.node = node


class ConversionError(UnsupportedOperatorError):
    """The ONNX → PyTorch conversion failed or disagrees with onnxruntime."""


class UnreachableTargetError(OnnxInvError):
    """No sample reached the target within tolerance, or no input in the bounds can.

    Attributes:
        result: the best (unverified) :class:`~onnxinv.result.InversionResult`, if any.
        best_error: the smallest verification error any sample reached.
        proven: True when sound bounds show that no input inside ``--bounds`` gives the target
            (then nothing was solved); False when the solvers only did not reach it.
    """

    def __init__(
        self, message: str, result=None, best_error: float | None = None, proven: bool = False
    ):
        super().__init__(message)
        self.result = result
        self.best_error = best_error
        self.proven = proven


class MemoryBudgetError(OnnxInvError):
    """A step would need more memory than the budget (``--max-memory``) allows."""


class OutputExistsError(OptionError):
    """The output folder exists and is not empty, and overwriting was not requested."""


class DeadlineReached(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside a long computation (a Jacobian, a CG solve, an iterative pseudo-inverse)
    once ``time.monotonic()`` passes the run's deadline; the solver returns what it has."""


#: The run's deadline (``time.monotonic()`` value) for computations deep below the solvers
#: that have no problem object to ask (see :func:`check_deadline`).
_deadline: list[float | None] = [None]


def set_deadline(deadline: float | None) -> None:
    """Make ``deadline`` the one :func:`check_deadline` enforces (None: no limit)."""
    _deadline[0] = deadline


def check_deadline() -> None:
    """Raise :class:`DeadlineReached` when the deadline set by :func:`set_deadline` passed."""
    d = _deadline[0]
    if d is not None and time.monotonic() > d:
        raise DeadlineReached


class RuntimeMissingError(ImportError):
    """Neither onnxruntime nor onnxruntime-gpu is installed."""


#: What a run is doing, for the message of an unexpected failure ("onnxinv failed while ...").
_PHASE: contextvars.ContextVar[str] = contextvars.ContextVar("phase", default="while starting")


def set_phase(text: str) -> None:
    """Say what the run is doing now (``"while partitioning the graph"``)."""
    _PHASE.set(text)


def current_phase() -> str:
    return _PHASE.get()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), at most 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
