"""A scikit-learn transformer from images to a detector's features: :class:`ModelFeatures`.

With it a detector runs on images inside scikit-learn's model selection::

    from sklearn.pipeline import Pipeline
    from sklearn.model_selection import GridSearchCV
    pipe = Pipeline([("features", ModelFeatures(model, feature="fisher_eigenvalues",
                                                 feature_kwargs={"k": 9})),
                     ("detector", FisherSpectrumDetector(random_state=0))])
    GridSearchCV(pipe, {"detector__max_depth": [2, 5]}).fit(images, is_adversarial)

The transformer is stateless (``fit`` only checks its parameters), so cloning it shares the
model instead of copying it (models are read, never changed). Each fit of a grid search
computes the features again; give the pipeline ``memory=`` (a joblib cache folder) to
compute them once per fold.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from .._validation import POSITIVE_INT, check_param, one_of, param_error
from ..exceptions import ParameterTypeError

__all__ = ["ModelFeatures"]

_OWNER = "ModelFeatures"


class _Shown(str):
    """A description that error messages show as it is (not quoted)."""

    def __repr__(self) -> str:
        return str(self)


def _features() -> Any:
    from . import FEATURES  # the registry is built in the package's __init__

    return FEATURES


class ModelFeatures(TransformerMixin, BaseEstimator):
    """Images -> the features a detector works on, as a scikit-learn transformer.

    Parameters
    ----------
    model : nn.Module or LoadedModel
        Maps images in ``bounds`` to logits (the model contract); a
        :class:`~fisherscope.models.LoadedModel` is unwrapped. Not needed for ``"pixels"``.
    feature : str
        A key of :data:`fisherscope.features.FEATURES` (``"fisher_eigenvalues"``,
        ``"param_fisher_scores"``, ``"softmax_stats"``, ...; a detector class names its own as
        ``Detector.feature``).
    feature_kwargs : dict, optional
        Keyword arguments of the feature function (``{"k": 9}``, ``{"scores": ("trace",)}``,
        ``{"bounds": (0, 255)}``, ...).
    image_shape : (C, H, W), optional
        Reshape 2-D input rows (N, C·H·W) to images, e.g. (1, 8, 8) for scikit-learn's digits.
    batch_size : int, optional
        Passed to the feature function (its own default when ``None``).
    device : str or torch.device, optional
        Where the inputs go (default: the model's parameters' device, else the CPU).

    Attributes
    ----------
    n_features_out_ : int
        Columns of the last ``transform``.

    Shapes
    ------
    X: (N, C, H, W), or (N, C·H·W) with ``image_shape`` -> (N, n_features) float64.

    Examples
    --------
    >>> import numpy as np, torch, warnings
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    >>> X = np.random.default_rng(0).random((5, 16))
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     F = ModelFeatures(net, feature_kwargs={"k": 2}, image_shape=(1, 4, 4)).fit_transform(X)
    >>> F.shape
    (5, 2)
    """

    def __init__(self, model: Any = None, feature: str = "fisher_eigenvalues", *,
                 feature_kwargs: Mapping[str, Any] | None = None, image_shape: Sequence[int] | None = None,
                 batch_size: int | None = None, device: Any = None) -> None:
        self.model = model
        self.feature = feature
        self.feature_kwargs = feature_kwargs
        self.image_shape = image_shape
        self.batch_size = batch_size
        self.device = device

    # ----------------------------------------------------------------- sklearn API
    def fit(self, X: Any, y: Any = None) -> ModelFeatures:
        """Check the parameters and X; nothing is learned."""
        self._function()
        self._images(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The ``feature`` columns of every image in X, float64 (N, n_features)."""
        fn, takes_model = self._function()
        x = self._images(X)
        kwargs = dict(self.feature_kwargs or {})
        if self.batch_size is not None:
            if "batch_size" in inspect.signature(fn).parameters:
                kwargs["batch_size"] = self.batch_size
        out = fn(self._model(), x, **kwargs) if takes_model else fn(x, **kwargs)
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 1:
            out = out[:, None]
        self.n_features_out_ = int(out.shape[1])
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``"<feature>_<i>"`` for each column of the last ``transform``."""
        n = getattr(self, "n_features_out_", None)
        if n is None:
            raise param_error(_OWNER, "transform", None, "called before get_feature_names_out",
                              "The number of columns is known once X has been transformed.")
        return np.array([f"{self.feature}_{i}" for i in range(n)], dtype=object)

    def __sklearn_clone__(self) -> ModelFeatures:
        # stateless; the model is read only: share it rather than deep-copy it per fold
        return type(self)(**self.get_params(deep=False))

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    # ------------------------------------------------------------------ internals
    def _function(self) -> tuple[Any, bool]:
        check_param(_OWNER, "batch_size", self.batch_size, POSITIVE_INT.or_none("the feature's default"))
        features = _features()
        check_param(_OWNER, "feature", self.feature, one_of(*features))
        fn = features[self.feature]
        first = next(iter(inspect.signature(fn).parameters))
        takes_model = first != "x"
        if self.feature_kwargs is not None and not isinstance(self.feature_kwargs, Mapping):
            raise param_error(_OWNER, "feature_kwargs", self.feature_kwargs, "None or a dict of keyword arguments",
                              f"Pass e.g. {{'k': 9}} for {self.feature}.", ParameterTypeError)
        params = inspect.signature(fn).parameters
        open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = sorted(set(self.feature_kwargs or {}) - set(params) - {"model", "x"})
        if unknown and not open_kwargs:
            raise param_error(_OWNER, "feature_kwargs", dict(self.feature_kwargs or {}),
                              f"keyword arguments of fisherscope.features.{self.feature}",
                              f"{sorted(unknown)} are not among {[p for p in params if p not in ('model', 'x')]}.")
        if takes_model:
            self._model()
        return fn, takes_model

    def _module(self) -> nn.Module | None:
        """``model`` itself, or the module of a LoadedModel; None if neither."""
        if isinstance(self.model, nn.Module):
            return self.model
        inner = getattr(self.model, "model", None)
        return inner if isinstance(inner, nn.Module) else None

    def _model(self) -> nn.Module:
        model = self._module()
        if model is None:
            raise param_error(_OWNER, "model", model, "a torch.nn.Module mapping images to logits",
                              f"The feature {self.feature!r} runs the model; pass it as ModelFeatures(model, ...).",
                              ParameterTypeError)
        return model

    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        model = self._module()
        if model is not None:
            for p in model.parameters():
                return p.device
        return torch.device("cpu")

    def _images(self, X: Any) -> torch.Tensor:
        if isinstance(X, torch.Tensor):
            x = X.detach()
        else:
            arr = np.asarray(X)
            if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise param_error(_OWNER, "X", _Shown(f"an array of dtype {arr.dtype}"), "an array of real numbers",
                                  "Pass images as a float array (N, C, H, W).", ParameterTypeError)
            x = torch.from_numpy(np.ascontiguousarray(arr))
        shape = self.image_shape
        if shape is not None:
            ok = (isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) == 3
                  and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape))
            if not ok:
                raise param_error(_OWNER, "image_shape", shape, "None or (C, H, W), three integers >= 1",
                                  "Pass e.g. (1, 8, 8) for scikit-learn's digits.")
            c, h, w = (int(v) for v in shape)
            if x.ndim != 2 or x.shape[1] != c * h * w:
                raise param_error(_OWNER, "X", _Shown(f"an array of shape {tuple(x.shape)}"),
                                  f"rows of C·H·W = {c * h * w} values for image_shape={tuple(shape)}",
                                  "Pass (N, C·H·W) rows, or drop image_shape for (N, C, H, W) images.")
            x = x.reshape(x.shape[0], c, h, w)
        elif x.ndim != 4:
            raise param_error(_OWNER, "X", _Shown(f"an array of shape {tuple(x.shape)}"), "images of shape (N, C, H, W)",
                              "Reshape the images, or pass image_shape=(C, H, W) for flattened rows "
                              "(scikit-learn's digits: image_shape=(1, 8, 8) and X / 16).")
        model = self._module()
        dtype = torch.float32
        if model is not None:
            for p in model.parameters():
                if p.is_floating_point():
                    dtype = p.dtype
                break
        return x.to(device=self._device(), dtype=dtype)
