"""Exception types. Every error the library raises on bad input is one of these."""

from __future__ import annotations


class PerforateError(Exception):
    """Base class of every error raised by `perforate`."""


class ConfigError(PerforateError, ValueError):
    """A configuration field has an invalid value."""


class TargetError(PerforateError, ValueError):
    """Target selection matched nothing, or matched a module that cannot be wrapped."""


class PhaseError(PerforateError, RuntimeError):
    """A phase transition was requested from the wrong phase."""


class NonFiniteError(PerforateError, FloatingPointError):
    """Non-finite errors or activations were seen while training dendrites."""


class LoadError(PerforateError, ValueError):
    """Saved weights or a checkpoint do not fit the network they are loaded into."""


class RunLockedError(PerforateError, RuntimeError):
    """Another run writes to the same ``out_dir`` (the message names its PID)."""


class MissingExtraError(PerforateError, ImportError):
    """An optional dependency is not installed (the message names the ``pip install``)."""


class CLIError(PerforateError):
    """A user-facing error of the ``perforate`` command: printed as one line, exit code 2."""


class DistributedError(PerforateError, RuntimeError):
    """The ranks of a distributed run disagree (different numbers of batches in an epoch) or
    one has not come to the end of an epoch within the timeout (the message names it)."""
