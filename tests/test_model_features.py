"""scikit-learn fit: ModelFeatures (images -> a detector's features) in Pipelines, cross-validation
and grid searches on digits; FisherSpectrumDetector behind a StandardScaler."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from fisherscope.attacks import PGD
from fisherscope.data import load_dataset
from fisherscope.detectors import FisherScoreDetector, FisherSpectrumDetector
from fisherscope.features import ModelFeatures, fisher_eigenvalues, pixels, softmax_stats
from fisherscope.models import load_model

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:G_x has rank at most")]


@pytest.fixture(scope="module")
def problem(digits_model):
    """60 clean digits test images (y = 0) and PGD examples of 60 others (y = 1), (N, 1, 8, 8) numpy."""
    model = digits_model.model
    ds = load_dataset("digits", "test")
    x, y = ds.x[:120], ds.y[:120]
    adv = PGD(eps=0.1, step_size=0.02, steps=10)(model, x[60:], y[60:])
    X = torch.cat([x[:60], adv]).numpy()
    labels = np.r_[np.zeros(60), np.ones(60)].astype(np.int64)
    return model, X, labels


CV = StratifiedKFold(3, shuffle=True, random_state=0)


def test_transform_equals_the_feature_function(problem):
    model, X, _ = problem
    mf = ModelFeatures(model, feature="fisher_eigenvalues", feature_kwargs={"k": 9}, batch_size=16)
    F = mf.fit_transform(X)
    np.testing.assert_array_equal(F, fisher_eigenvalues(model, torch.from_numpy(X), k=9))
    assert F.dtype == np.float64 and mf.n_features_out_ == 9
    assert list(mf.get_feature_names_out()[:2]) == ["fisher_eigenvalues_0", "fisher_eigenvalues_1"]
    flat = ModelFeatures(model, feature="softmax_stats", image_shape=(1, 8, 8)).transform(X.reshape(len(X), -1))
    np.testing.assert_allclose(flat, softmax_stats(model, torch.from_numpy(X)))
    np.testing.assert_array_equal(ModelFeatures(feature="pixels").transform(X), pixels(X))  # no model needed
    loaded = load_model(model)
    np.testing.assert_array_equal(ModelFeatures(loaded, feature="softmax_stats").transform(X),
                                  softmax_stats(model, torch.from_numpy(X)))


def test_pipeline_on_images_cross_validates_like_the_detector_on_features(problem):
    model, X, y = problem
    pipe = Pipeline([("features", ModelFeatures(model, feature_kwargs={"k": 9})),
                     ("detector", FisherSpectrumDetector(n_estimators=25, random_state=0))])
    on_images = cross_val_score(pipe, X, y, cv=CV, error_score="raise")
    F = fisher_eigenvalues(model, torch.from_numpy(X), k=9)
    on_features = cross_val_score(FisherSpectrumDetector(n_estimators=25, random_state=0), F, y, cv=CV)
    np.testing.assert_array_equal(on_images, on_features)
    assert on_images.mean() > 0.75  # PGD examples separate from clean digits by their spectrum


def test_grid_search_on_images_with_a_scaler_in_the_pipeline(problem):
    model, X, y = problem
    pipe = Pipeline([("features", ModelFeatures(model, feature="param_fisher_scores")),
                     ("scale", StandardScaler()),
                     ("detector", FisherScoreDetector(column=0))])
    with pytest.raises(ValueError, match=r"Negative values .*StandardScaler"):
        pipe.fit(X[y == 0])  # the trace's standardised values are negative: said precisely
    pipe = Pipeline([("features", ModelFeatures(model, feature="fisher_eigenvalues", feature_kwargs={"k": 9})),
                     ("scale", StandardScaler()),
                     ("detector", FisherSpectrumDetector(n_estimators=15, random_state=0))])
    search = GridSearchCV(pipe, {"detector__classifier": ["random_forest", "naive_bayes"]},
                          cv=StratifiedKFold(2, shuffle=True, random_state=1), error_score="raise").fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    best = search.best_estimator_
    assert best.named_steps["detector"].log_ is False and best.named_steps["features"].model is model
    assert 0.5 < search.best_score_ <= 1.0


def test_standard_scaler_then_fisher_spectrum_detector_in_grid_search(problem):
    model, X, y = problem
    F = fisher_eigenvalues(model, torch.from_numpy(X), k=9)
    pipe = Pipeline([("scale", StandardScaler()), ("detector", FisherSpectrumDetector(random_state=0))])
    search = GridSearchCV(pipe, {"detector__max_depth": [2, 5], "detector__classifier": ["random_forest", "naive_bayes"]},
                          cv=CV, error_score="raise").fit(F, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"])) and search.best_score_ > 0.75
    # "auto" on standardised features: no log, naive Bayes sees the scaled values themselves
    Z = StandardScaler().fit_transform(F)
    nb = FisherSpectrumDetector(classifier="naive_bayes").fit(Z, y)
    assert nb.log_ is False and nb.offset_ == 0.0
    np.testing.assert_allclose(nb.decision_function(Z), GaussianNB().fit(Z, y).predict_proba(Z)[:, 1])
    # on raw eigenvalues "auto" is the log transform, exactly as log_transform=True
    raw_auto = FisherSpectrumDetector(classifier="naive_bayes").fit(F, y)
    raw_true = FisherSpectrumDetector(classifier="naive_bayes", log_transform=True).fit(F, y)
    assert raw_auto.log_ is True
    np.testing.assert_array_equal(raw_auto.decision_function(F), raw_true.decision_function(F))


def test_why_a_feature_must_stay_positive_is_said_precisely(problem):
    model, X, y = problem
    F = fisher_eigenvalues(model, torch.from_numpy(X), k=9)
    Z = StandardScaler().fit_transform(F)
    with pytest.raises(ValueError) as info:
        FisherSpectrumDetector(log_transform=True).fit(Z, y)
    msg = str(info.value)
    assert msg.startswith("Negative values in data passed to FisherSpectrumDetector")  # scikit-learn's wording
    assert "log transform log(λ + c) needs them so" in msg and "log_transform='auto' or False" in msg
    fitted = FisherSpectrumDetector().fit(F, y)  # "auto" chose the log on raw eigenvalues
    with pytest.raises(ValueError, match=r"fitted on non-negative X, so log_transform='auto' chose the log"):
        fitted.decision_function(Z)
    with pytest.raises(ValueError, match=r"log_transform must be True or False or one of 'auto'; got 'yes'"):
        FisherSpectrumDetector(log_transform="yes").fit(F, y)


def test_clone_shares_the_model_and_the_transformer_pickles(problem):
    model, X, _ = problem
    mf = ModelFeatures(model, feature="softmax_stats", batch_size=8)
    twin = clone(mf)
    assert twin is not mf and twin.model is model and twin.get_params() == mf.get_params()
    twin.set_params(feature="fisher_eigenvalues", feature_kwargs={"k": 3})
    assert twin.transform(X[:4]).shape == (4, 3)
    again = pickle.loads(pickle.dumps(mf))
    np.testing.assert_allclose(again.transform(X[:5]), mf.transform(X[:5]))


@pytest.mark.parametrize("kw, X_shape, match", [
    (dict(feature="fisher_eigen"), (2, 1, 8, 8),
     r"^ModelFeatures: feature must be one of .*; got 'fisher_eigen'\. Did you mean 'fisher_eigenvalues'\?"),
    (dict(), (2, 64), r"^ModelFeatures: X must be images of shape \(N, C, H, W\); got an array of shape \(2, 64\)"),
    (dict(image_shape=(1, 4, 4)), (2, 64), r"rows of C·H·W = 16 values for image_shape=\(1, 4, 4\)"),
    (dict(image_shape=(8, 8)), (2, 64), r"^ModelFeatures: image_shape must be None or \(C, H, W\)"),
    (dict(feature="softmax_stats", feature_kwargs={"kk": 3}), (2, 1, 8, 8),
     r"feature_kwargs must be keyword arguments of fisherscope.features.softmax_stats; got \{'kk': 3\}\. \['kk'\]"),
    (dict(feature_kwargs=[1]), (2, 1, 8, 8), r"feature_kwargs must be None or a dict"),
    (dict(batch_size=0), (2, 1, 8, 8), r"^ModelFeatures: batch_size must be an integer >= 1"),
])
def test_bad_parameters_in_the_template(problem, kw, X_shape, match):
    model = problem[0]
    with pytest.raises(ValueError, match=match):
        ModelFeatures(model, **kw).fit(np.zeros(X_shape, np.float32))


def test_a_model_feature_needs_a_model_and_names_before_transform():
    with pytest.raises(TypeError, match=r"^ModelFeatures: model must be a torch.nn.Module .*runs the model"):
        ModelFeatures(feature="softmax_stats").fit(np.zeros((2, 1, 8, 8)))
    with pytest.raises(ValueError, match=r"called before get_feature_names_out"):
        ModelFeatures(feature="pixels").get_feature_names_out()
    with pytest.raises(TypeError, match=r"an array of real numbers"):
        ModelFeatures(feature="pixels").fit(np.array([["a"]], dtype=object))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ModelFeatures(feature="pixels").fit_transform(np.zeros((3, 1, 2, 2))).shape == (3, 4)
