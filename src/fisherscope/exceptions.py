"""Exception and warning classes shared by the whole package."""

from __future__ import annotations

from typing import Any

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

from ._registry import RegistryKeyError

__all__ = [
    "BudgetWarning",
    "CheckpointError",
    "ConvergenceWarning",
    "DatasetNotFoundError",
    "ModelModeWarning",
    "ModelNotSavedError",
    "NoTorchMirrorError",
    "NotFittedError",
    "RegistryKeyError",
    "ParameterTypeError",
    "WriteError",
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


class BudgetWarning(UserWarning):
    """An attack budget that cannot be what was meant, e.g. an L∞ ``eps`` larger than the
    whole input range (``eps=8`` on images in [0, 1]: the 8 vs 8/255 slip)."""


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


class WriteError(OSError):
    """A file could not be written; the message names the path, the cause and the fix."""


class ModelNotSavedError(WriteError):
    """Training finished but its checkpoint could not be written; the model is not lost.

    The trained model is ``exc.trained`` (a :class:`~fisherscope.models.TrainedModel`
    with ``checkpoint_path=None``); ``exc.path`` is the file that could not be written.
    Save it elsewhere with :func:`fisherscope.models.save_checkpoint` (``cache_dir=``
    another folder), or repeat the request with another ``cache_dir`` / ``--cache-dir``.
    Nothing half-written is left behind.
    """

    def __init__(self, message: str, *, trained: Any, path: Any = None) -> None:
        super().__init__(message)
        self.trained = trained
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_not_saved, (str(self), self.trained, self.path))


def _rebuild_not_saved(message: str, trained: Any, path: Any) -> ModelNotSavedError:
    return ModelNotSavedError(message, trained=trained, path=path)
