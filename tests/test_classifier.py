"""Contract tests of BlackBoxPromptClassifier.

sklearn's ``check_estimator`` skips almost every check for string input, so
the estimator's sklearn contract is tested here explicitly, on a toy black box
(tests/toy_tasks.py) where a perfect prompt exists.
"""

import pickle
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from skprompt import BlackBoxPromptClassifier, BudgetWarning
from skprompt.backends import FunctionBackend

from toy_tasks import make_toy_task


def lowercase(texts):
    return [t.lower() for t in texts]


def uppercase_then_lower(texts):  # a transformer whose output differs from its input
    return [t.upper() for t in texts]


@pytest.fixture(scope="module")
def toy():
    backend, X, y, model = make_toy_task(n_texts=60, seed=3)
    return backend, X, y, model


def make_clf(backend, **kw):
    params = dict(method="ensemble", n_prompts=2, n_prompt_tokens=1, intrinsic_dim=6, popsize=6, sigma0=1.0,
                  max_iter=8, random_state=0)
    params.update(kw)
    return BlackBoxPromptClassifier(backend, **params)


# --------------------------------------------------------------------- basics
def test_fit_predict_shapes_and_probabilities(toy):
    backend, X, y, _ = toy
    clf = make_clf(backend).fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(proba >= 0)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))
    dec = clf.decision_function(X)
    assert dec.shape == (len(X),)
    np.testing.assert_allclose(dec, np.log(proba[:, 1]) - np.log(proba[:, 0]))
    np.testing.assert_array_equal(clf.classes_, np.unique(y))
    assert clf.samples_.shape == (2, 6)
    np.testing.assert_allclose(clf.weights_, [0.5, 0.5])
    assert clf.prompt_embeddings_.shape == (2, 1, 6)
    assert clf.history_.shape == (clf.n_iter_, 2)
    # the history is the best training loss so far: non-increasing per run
    assert np.all(np.diff(clf.history_, axis=0) <= 1e-12)


def test_tuning_beats_untuned_model(toy):
    backend, X, y, _ = toy
    zero = make_clf(backend, method="zero-shot", calibration=None).fit(X, y)
    tuned = make_clf(backend, max_iter=25).fit(X, y)
    assert zero.n_queries_ == 0
    assert tuned.score(X, y) > zero.score(X, y) + 0.2


def test_multiclass_decision_function_is_log_proba():
    backend, X, y, _ = make_toy_task(n_texts=60, n_classes=3, seed=5)
    clf = make_clf(backend, intrinsic_dim=9, max_iter=5).fit(X, y)
    np.testing.assert_allclose(clf.decision_function(X[:5]), clf.predict_log_proba(X[:5]))


# --------------------------------------------------------------- sklearn glue
def test_clone_gives_equal_params_and_unfitted_estimator(toy):
    backend, X, y, _ = toy
    clf = make_clf(backend, loss="brier").fit(X, y)
    cl = clone(clf)
    assert cl.get_params() == clf.get_params()
    assert cl.backend is backend  # a backend is not copied (its weights stay shared)
    assert not [k for k in vars(cl) if k.endswith("_") and not k.startswith("_")]
    with pytest.raises(NotFittedError):
        cl.predict(X)


def test_get_set_params_round_trip(toy):
    backend = toy[0]
    clf = make_clf(backend)
    params = clf.get_params()
    other = BlackBoxPromptClassifier().set_params(**params)
    assert other.get_params() == params
    other.set_params(n_prompts=7, loss="hinge")
    assert other.n_prompts == 7 and other.loss == "hinge"


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_pickle_round_trip_keeps_predictions(toy, tmp_path, dump):
    backend, X, y, _ = toy
    clf = make_clf(backend).fit(X, y)
    if dump == "pickle":
        restored = pickle.loads(pickle.dumps(clf))
    else:
        joblib.dump(clf, tmp_path / "clf.joblib")
        restored = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.samples_, clf.samples_)


def test_same_random_state_same_predictions(toy):
    backend, X, y, _ = toy
    a = make_clf(backend, random_state=11).fit(X, y)
    np.random.seed(123)  # global state must not matter
    np.random.rand(10)
    b = make_clf(backend, random_state=11).fit(X, y)
    np.testing.assert_array_equal(a.samples_, b.samples_)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = make_clf(backend, random_state=12).fit(X, y)
    assert not np.array_equal(a.samples_, c.samples_)


def test_refit_is_idempotent_and_forgets_previous_data(toy):
    backend, X, y, _ = toy
    other_backend, X2, y2, _ = make_toy_task(n_texts=40, seed=9)
    clf = make_clf(backend)
    first = clf.fit(X, y).predict_proba(X)
    again = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, again)
    clf.fit(X2, y2)
    fresh = make_clf(backend).fit(X2, y2)
    np.testing.assert_array_equal(clf.predict_proba(X2), fresh.predict_proba(X2))


@pytest.mark.parametrize(
    "names",
    [np.array(["neg", "pos"]), np.array([0, 1]), np.array([3, 10]), np.array([-1, 7])],
    ids=["str", "int", "noncontiguous", "negative"],
)
def test_label_types(names):
    backend, X, y_str, _ = make_toy_task(n_texts=40, seed=4)
    idx = (y_str == np.unique(y_str)[1]).astype(int)
    y = names[idx]
    clf = make_clf(backend).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(X)
    assert set(pred) <= set(names.tolist())
    assert pred.dtype == clf.classes_.dtype
    assert clf.score(X, y) > 0.7


def test_input_containers(toy):
    backend, X, y, _ = toy
    ref = make_clf(backend).fit(X, y).predict_proba(X)
    for Xc, yc in [
        (tuple(X), list(y)),
        (np.array(X, dtype=object), y),
        (np.array(X), y),  # numpy str dtype
        (pd.Series(X), pd.Series(y)),
        (np.array(X, dtype=object).reshape(-1, 1), y),  # single column, as ColumnTransformer passes
        (pd.DataFrame({"text": X}), y),
    ]:
        np.testing.assert_array_equal(make_clf(backend).fit(Xc, yc).predict_proba(Xc), ref)


def test_pipeline_with_text_transformer(toy):
    backend, X, y, model = toy
    pipe = Pipeline([("prep", FunctionTransformer(lowercase)), ("clf", make_clf(backend))])
    pipe.fit(X, y)
    direct = make_clf(backend).fit(lowercase(X), y)
    np.testing.assert_array_equal(pipe.predict_proba(X), direct.predict_proba(lowercase(X)))
    # the transformer really runs: upper-casing changes the texts, so the features
    pipe_up = Pipeline([("prep", FunctionTransformer(uppercase_then_lower)), ("clf", make_clf(backend))])
    assert not np.array_equal(pipe_up.fit(X, y).predict_proba(X), pipe.predict_proba(X))


def test_column_transformer_single_column(toy):
    backend, X, y, _ = toy
    df = pd.DataFrame({"text": X, "other": np.arange(len(X))})
    ct = ColumnTransformer([("t", "passthrough", ["text"])])
    pipe = Pipeline([("cols", ct), ("clf", make_clf(backend))]).fit(df, y)
    np.testing.assert_array_equal(pipe.predict_proba(df), make_clf(backend).fit(X, y).predict_proba(X))


def test_grid_search_over_n_prompts_and_loss(toy):
    backend, X, y, _ = toy
    grid = GridSearchCV(make_clf(backend, max_iter=4), {"n_prompts": [1, 2], "loss": ["ce", "hinge"]},
                        cv=StratifiedKFold(2))
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    assert grid.best_estimator_.n_prompts in (1, 2)
    assert grid.best_estimator_.samples_.shape[0] == grid.best_estimator_.n_prompts


def test_cross_val_score(toy):
    backend, X, y, _ = toy
    scores = cross_val_score(make_clf(backend, max_iter=15), X, y, cv=3)
    assert scores.shape == (3,)
    assert scores.mean() > 0.7


def test_calibrated_classifier_cv(toy):
    backend, X, y, _ = toy
    cal = CalibratedClassifierCV(make_clf(backend, max_iter=5), cv=3).fit(X, y)
    proba = cal.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert len(cal.calibrated_classifiers_) == 3

    fitted = make_clf(backend, max_iter=5).fit(X[:40], y[:40])
    prefit = CalibratedClassifierCV(FrozenEstimator(fitted), method="sigmoid").fit(X[40:], y[40:])
    assert prefit.calibrated_classifiers_[0].estimator is not None
    assert prefit.predict_proba(X).shape == (len(X), 2)
    # the frozen estimator was not refitted
    np.testing.assert_array_equal(fitted.samples_, prefit.estimator.estimator.samples_)


def test_n_jobs_gives_the_same_result(toy):
    backend, X, y, _ = toy
    a = make_clf(backend, n_jobs=1).fit(X, y)
    b = make_clf(backend, n_jobs=2).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_n_jobs_none_is_one_request_at_a_time_whatever_the_outer_joblib_context():
    # Inside GridSearchCV on a Dask cluster (an outer parallel_config), a fit
    # with n_jobs=None must not split its requests: each generation is one call.
    from joblib import parallel_config

    _, X, y, model = make_toy_task(n_texts=40, seed=3)
    backend = FunctionBackend(model, embedding_dim=model.embedding_dim, cache_size=0)
    with parallel_config(backend="threading", n_jobs=4):
        make_clf(backend, max_iter=3).fit(X, y)
    n_members, popsize = 2, 6
    assert max(p for p, _ in model.calls) == n_members * popsize
    model.calls.clear()
    make_clf(backend, max_iter=3, n_jobs=2).fit(X, y)  # asked for: two requests at once
    assert max(p for p, _ in model.calls) == n_members * popsize // 2


def test_verbose_shows_a_progress_bar(toy, capsys):
    backend, X, y, _ = toy
    make_clf(backend, verbose=1, max_iter=3).fit(X, y)
    err = capsys.readouterr().err
    assert "skprompt ensemble" in err


@pytest.mark.parametrize("method", ["ensemble", "abc-smc"])
def test_verbose_logs_one_line_per_step(toy, caplog, method):
    """verbose writes through logging too (a log file keeps it), one INFO line
    per learner step, between a first and a last line; verbose=0 logs nothing."""
    import logging

    backend, X, y, _ = toy

    def build(**kw):
        if method == "abc-smc":  # its rounds are a method param; popsize and max_iter do not apply
            return BlackBoxPromptClassifier(backend, method=method, n_prompt_tokens=1, intrinsic_dim=6,
                                            sigma0=1.0, method_params={"max_rounds": 3}, random_state=0, **kw)
        return make_clf(backend, method=method, max_iter=3, **kw)

    with caplog.at_level(logging.INFO, logger="skprompt"):
        clf = build(verbose=1).fit(X, y)
    lines = [r.getMessage() for r in caplog.records if r.name == "skprompt"]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "skprompt")
    steps = [m for m in lines if " step " in m]
    assert len(steps) == clf.n_iter_ >= 1
    assert steps[0].startswith(f"method='{method}' step 1/") and "queries" in steps[0]
    assert lines[0].startswith(f"method='{method}': fitting on")
    assert lines[-1].startswith(f"method='{method}': done after {clf.n_iter_} steps and ")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="skprompt"):
        build().fit(X, y)
    assert not [r for r in caplog.records if r.name == "skprompt"]


# ----------------------------------------------------- batching and budgeting
def test_ensemble_members_share_one_backend_call_per_generation():
    backend, X, y, model = make_toy_task(n_texts=40, seed=6)
    backend.clear_cache()
    model.calls.clear()
    clf = make_clf(backend, n_prompts=3, popsize=6, max_iter=4, validation_fraction=None).fit(X, y)
    # the start z = 0 once, then one request per generation carries every member's whole population
    assert model.calls == [(1, len(X))] + [(3 * 6, len(X))] * clf.n_iter_
    assert clf.n_queries_ == (1 + clf.n_iter_ * 3 * 6) * len(X)


def test_budget_stops_cleanly_and_warns(toy):
    backend, X, y, _ = toy
    with pytest.warns(BudgetWarning, match="budget=3000"):
        clf = make_clf(backend, budget=3000, max_iter=100).fit(X, y)
    assert clf.budget_exhausted_
    assert 0 < clf.n_queries_ <= 3000
    assert clf.n_iter_ >= 1
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetWarning)
        roomy = make_clf(backend, budget=10**9).fit(X, y)
    assert not roomy.budget_exhausted_


def test_budget_below_one_iteration_is_rejected_before_querying(toy):
    backend, X, y, model = toy
    model.calls.clear()
    with pytest.raises(ValueError, match="budget=10 is below"):
        make_clf(backend, budget=10).fit(X, y)
    assert model.calls == []


def test_validation_fallback_warns_when_a_class_is_tiny():
    backend, X, y, _ = make_toy_task(n_texts=30, seed=3)
    y = y.copy()
    y[:] = "a"
    y[0] = "b"
    with pytest.warns(UserWarning, match="cannot hold out every class.*selecting by training loss") as record:
        make_clf(backend, max_iter=2).fit(X, y)
    assert record[0].filename == __file__  # points at the caller's fit, not at skprompt


# ---------------------------------------------------------------- bad input
class _Refusing:
    """A query function that fails the test if it is ever called."""

    def __call__(self, prompts, texts):  # pragma: no cover - must not run
        raise AssertionError("the model was queried before the input was validated")


@pytest.fixture
def refusing_backend():
    return FunctionBackend(_Refusing(), embedding_dim=4)


@pytest.mark.parametrize(
    "X, y, error, match",
    [
        ([], [], ValueError, "X is empty"),
        (["a", 3, "c"], ["x", "y", "x"], TypeError, r"X\[1\] is 3"),
        (["a", None], ["x", "y"], TypeError, r"X\[1\] is None"),
        ("just one string", ["x"], TypeError, "sequence of str"),
        (["a", "b", "c"], ["x", "y"], ValueError, "different lengths"),
        (["a", "b", "c"], ["x", "x", "x"], ValueError, "single class"),
        (["a", "b", "c"], [0.0, np.nan, 1.0], ValueError, "missing labels"),
        (["a", "b", "c"], ["x", None, "y"], ValueError, "missing labels"),
        (["a", "b", "c"], [0.5, 1.5, 2.5], ValueError, "Unknown label type"),
        (np.array([["a", "b"], ["c", "d"]]), ["x", "y"], ValueError, "single column"),
    ],
)
def test_bad_data_is_rejected_before_any_model_call(refusing_backend, X, y, error, match):
    with pytest.raises(error, match=match):
        BlackBoxPromptClassifier(refusing_backend, intrinsic_dim=4).fit(X, y)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"method": "nope"}, "method must be one of"),
        ({"n_prompts": 0}, "n_prompts must be >= 1"),
        ({"n_prompt_tokens": 1.5}, "n_prompt_tokens must be an int"),
        ({"popsize": 1}, "popsize must be >= 2"),
        ({"sigma0": 0.0}, "sigma0 must be > 0"),
        ({"loss": "mse"}, "loss must be one of"),
        ({"validation_fraction": 1.0}, "validation_fraction must be < 1"),
        ({"validation_fraction": 0.0}, "validation_fraction must be > 0"),
        ({"budget": 0}, "budget must be >= 1"),
        ({"n_jobs": 0}, "n_jobs must be a non-zero int"),
        ({"method_params": [1]}, "method_params must be a dict"),
    ],
)
def test_bad_params_are_rejected_in_fit(refusing_backend, params, match):
    clf = BlackBoxPromptClassifier(refusing_backend, **params)  # __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(["a", "b"], ["x", "y"])


def test_wrong_backend_kind_is_rejected():
    with pytest.raises(TypeError, match="backend must be a skprompt PromptBackend"):
        BlackBoxPromptClassifier(lambda p, t: None).fit(["a", "b"], ["x", "y"])


def test_label_only_backend_refuses_score_losses():
    backend, X, y, model = make_toy_task(n_texts=20, labels_only=True)
    with pytest.raises(ValueError, match="needs class scores.*label-only"):
        make_clf(backend, loss="ce").fit(X, y)
    assert model.calls == []


def test_unfitted_predict_raises(refusing_backend):
    clf = BlackBoxPromptClassifier(refusing_backend)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(NotFittedError):
            method(["a"])


def test_predict_rejects_bad_texts(toy):
    backend, X, y, _ = toy
    clf = make_clf(backend, max_iter=2).fit(X, y)
    with pytest.raises(TypeError, match=r"X\[0\] is 1"):
        clf.predict([1, 2])


class _InitBackend(FunctionBackend):
    """A backend that says where z = 0 should land."""

    def initial_prompt(self, n_prompt_tokens):
        return np.full((n_prompt_tokens, self.embedding_dim), 0.25)


def test_backend_initial_prompt_is_the_search_centre():
    _, X, y, model = make_toy_task(n_texts=40, seed=1)
    backend = _InitBackend(model, embedding_dim=model.embedding_dim)
    clf = make_clf(backend, max_iter=2).fit(X, y)
    np.testing.assert_allclose(clf.projection_(np.zeros((1, 6))), 0.25)
    plain = make_clf(FunctionBackend(model, embedding_dim=6), max_iter=2).fit(X, y)
    np.testing.assert_allclose(plain.projection_(np.zeros((1, 6))), 0.0)  # the mean embedding


# ------------------------------------------------------- parameter checks (#13)
def test_intrinsic_dim_larger_than_the_prompt_warns_before_any_query(toy):
    backend, X, y, _ = toy
    backend.reset_stats()
    size = 1 * backend.embedding_dim
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stop the fit at the warning
        with pytest.raises(UserWarning, match=rf"intrinsic_dim={size + 3} exceeds the {size} values.*3 of the"):
            make_clf(backend, n_prompt_tokens=1, intrinsic_dim=size + 3).fit(X, y)
        assert backend.stats["requests"] == 0
        make_clf(backend, n_prompt_tokens=1, intrinsic_dim=size, max_iter=1).fit(X, y)  # the limit itself is fine


@pytest.mark.parametrize("method, param, value, instead", [
    ("abc-smc", "max_iter", 50, "max_rounds"), ("abc-smc", "popsize", 20, "n_particles"),
    ("snpe", "max_iter", 3, "n_rounds"), ("snpe", "popsize", 100, "n_simulations"),
    ("snpe", "loss", "brier", "0-1 loss"), ("abc-smc", "loss", "hinge", "0-1 loss"),
])
def test_shared_parameters_the_likelihood_free_methods_ignore_are_refused(toy, method, param, value, instead):
    """On the previous main these were silently ignored."""
    backend, X, y, _ = toy
    clf = BlackBoxPromptClassifier(backend, method=method, **{param: value})
    with pytest.raises(ValueError, match=rf"{param}={value!r} does not apply to method='{method}'.*{instead}"):
        clf.fit(X, y)
    # what they do use: n_prompts (kept prompts) and sigma0 (the prior) are mapped
    learner = BlackBoxPromptClassifier(backend, method=method, n_prompts=20, sigma0=0.5)._make_learner()
    assert learner.prior_variance == 0.25
    assert (learner.n_samples if method == "snpe" else learner.n_particles) == 20


def test_an_absurdly_long_unbudgeted_fit_warns_before_any_query(toy):
    from skprompt import CostWarning

    backend, X, y, _ = toy
    backend.reset_stats()
    clf = make_clf(backend, method="ensemble", n_prompts=50, popsize=200, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)  # stop the fit at the warning
        with pytest.raises(CostWarning, match=r"about [\d,]+ queries .*pass budget="):
            clf.fit(X, y)
    assert backend.stats["requests"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)
        make_clf(backend, max_iter=1).fit(X, y)  # the usual settings do not warn
