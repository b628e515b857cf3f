"""Exception and warning classes shared by the whole package."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from ._registry import RegistryKeyError

__all__ = [
    "CheckpointError",
    "ConvergenceWarning",
    "DatasetNotFoundError",
    "ModelModeWarning",
    "NoTorchMirrorError",
    "NotFittedError",
    "RegistryKeyError",
    "ParameterTypeError",
]


class NotFittedError(_SklearnNotFittedError):
    """A detector was used before ``fit`` (a subclass of scikit-learn's, so its checks see it)."""


class NoTorchMirrorError(TypeError):
    """A detector has no differentiable torch mirror of its score (e.g. a random-forest head).

    The message names the fix: fit a differentiable surrogate on the same features
    (:class:`fisherscope.detectors.LogisticSurrogate`) and attack that, judging success by
    the real detector.
    """


class ModelModeWarning(UserWarning):
    """The model was in training mode on entry; it was run in eval mode and restored."""


class ConvergenceWarning(UserWarning):
    """An iterative solver (power iteration, Lanczos, C&W, DeepFool) hit its step limit."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing locally; the message says which file to put where."""


class CheckpointError(RuntimeError):
    """A cached checkpoint is corrupt or does not match the request; it is never overwritten."""


class ParameterTypeError(TypeError, ValueError):
    """A hyperparameter has the wrong type (e.g. ``steps=2.5`` or ``eps="0.1"``).

    A :class:`TypeError`; also a :class:`ValueError`, because earlier releases raised
    ValueError for these and code that catches that keeps working.
    """
