"""Conformal prediction sets around the estimator: skprompt.conformal and MAPIE (>= 1.0).

``skprompt.conformal.SplitConformalSets`` (no MAPIE) and MAPIE's
``SplitConformalClassifier`` / ``CrossConformalClassifier`` work with
:class:`~skprompt.BlackBoxPromptClassifier` unchanged. MAPIE needs the texts
as an array: ``X = np.asarray(texts, dtype=object)`` (a pandas Series or a
one-column array works too). A plain ``list`` of str is refused by MAPIE
itself (its ``_check_n_features_in`` asks scikit-learn's ``_num_features``,
which raises ``TypeError`` for a list of str) before the estimator is called,
so nothing on skprompt's side can make a list work there;
``SplitConformalSets`` takes the list as it is.

Vote probabilities (label-only backends and methods) take few distinct
values; a threshold on a tie takes the whole tie and the sets overcover, up
to returning every label for every text. ``SplitConformalSets(randomized=True)``
and MAPIE with ``skprompt.conformal.RandomizedLAC`` break the ties at random.

The toy tests (tests/toy_tasks.py) check the marginal guarantee of split
conformal prediction and that it is not loose: with ``n`` conformalization
texts and no ties (or ties broken at random) the expected coverage is
``ceil((n + 1) * 0.9) / (n + 1)``, in ``[0.9, 0.9 + 1 / (n + 1))``.
The empirical coverage of one seed on ``n_test`` texts has a standard
deviation of about ``sqrt(0.09 / n + 0.09 / n_test)`` (conformalization draw
plus test draw), 0.022 for 320 and 400 texts; the mean over 5 seeds about
0.010, so the tolerance ``TOLERANCE`` = 0.03 is three standard errors.
Simulations with fixed probabilities (no model) check the exact expected
coverage to a few thousandths.

The real-model test (``real_model`` mark) does the same on held-out Rotten
Tomatoes texts with SmolLM2-135M: ``method="zero-shot"`` (scores, calibrated
read-out) and a label-only view of the same model tuned by ``"abc-smc"``
(vote probabilities). docs/conformal.md has the figures it printed.
"""

from __future__ import annotations

import copy
import doctest
import importlib.util
import math
import pickle
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

import skprompt.conformal as conformal
from skprompt import BlackBoxPromptClassifier, BudgetWarning
from skprompt.backends import FunctionBackend
from skprompt.conformal import CONFORMITY_SCORES, SplitConformalSets, coverage_and_size

from toy_tasks import make_toy_task

try:
    import mapie.classification as mapie_classification
except ImportError:  # the conformal extra is optional: SplitConformalSets needs no MAPIE
    mapie_classification = None

needs_mapie = pytest.mark.skipif(mapie_classification is None, reason="needs MAPIE (pip install 'skprompt[conformal]')")


def _load_example():
    path = Path(__file__).resolve().parent.parent / "examples" / "conformal_prediction.py"
    spec = importlib.util.spec_from_file_location("conformal_prediction_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; main() runs only as a script
    return module


def mapie_sets(sets):
    """MAPIE's sets (n_texts, n_classes, 1) as (n_texts, n_classes)."""
    assert sets.ndim == 3 and sets.shape[2] == 1
    return sets[:, :, 0]


CONFIDENCE = 0.9
SEEDS = (0, 1, 2, 3, 4)
TOLERANCE = 0.03
N_FIT, N_CONF, N_TEST = 80, 320, 400

TOY_METHODS = {
    # score-based: softmax of the kept prompts' class scores, MAPIE's default "lac" score
    "ensemble": dict(labels_only=False, score=lambda: "lac",
                     params=dict(n_prompts=2, popsize=6, max_iter=8)),
    # label-only black box: the posterior's smoothed, weighted vote
    "abc-smc": dict(labels_only=True, score=lambda: conformal.RandomizedLAC(),
                    params=dict(n_prompts=30, popsize=8, method_params={"max_rounds": 10, "move": "mcmc"})),
}

#: Label-only toys that predict like the real label-only setting: the plain
#: vote histogram (``vote_smoothing=1.0``) of 16 abc-smc prompts, right on
#: about 75% of the texts, so the probabilities take 17 values and tie.
VOTE_TOYS = {
    "2 classes": dict(n_classes=2, max_rounds=2),
    "3 classes": dict(n_classes=3, max_rounds=3),
}


def toy_classifier(method, backend, seed):
    return BlackBoxPromptClassifier(backend, method=method, n_prompt_tokens=1, intrinsic_dim=6, sigma0=1.0,
                                    random_state=seed, **TOY_METHODS[method]["params"])


def toy_split(method, seed):
    backend, X, y, _ = make_toy_task(n_texts=N_FIT + N_CONF + N_TEST, seed=seed,
                                     labels_only=TOY_METHODS[method]["labels_only"])
    X = np.asarray(X, dtype=object)  # MAPIE needs an array (see the module docstring)
    fit, conf, test = np.split(np.arange(len(X)), [N_FIT, N_FIT + N_CONF])
    return backend, (X[fit], y[fit]), (X[conf], y[conf]), (X[test], y[test])


_VOTE_FITS = {}


def vote_toy(name, seed):
    """A fitted 16-prompt vote classifier and its conformalization / test split (cached)."""
    if (name, seed) not in _VOTE_FITS:
        toy = VOTE_TOYS[name]
        backend, X, y, model = make_toy_task(n_texts=N_FIT + N_CONF + N_TEST, n_classes=toy["n_classes"],
                                             seed=seed, labels_only=True)
        X = np.asarray(X, dtype=object)
        fit, conf, test = np.split(np.arange(len(X)), [N_FIT, N_FIT + N_CONF])
        clf = BlackBoxPromptClassifier(backend, method="abc-smc", n_prompt_tokens=1, intrinsic_dim=6, sigma0=1.0,
                                       n_prompts=16, popsize=8, vote_smoothing=1.0, random_state=seed,
                                       method_params={"max_rounds": toy["max_rounds"], "move": "mcmc"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BudgetWarning)
            clf.fit(X[fit], y[fit])
        _VOTE_FITS[name, seed] = clf, (X[conf], y[conf]), (X[test], y[test]), model
    return _VOTE_FITS[name, seed]


def conformal_sets(clf, score, seed, X_conf, y_conf, X_test):
    mapie = mapie_classification.SplitConformalClassifier(clf, confidence_level=CONFIDENCE, conformity_score=score,
                                                          prefit=True, random_state=seed)
    return mapie.conformalize(X_conf, y_conf).predict_set(X_test)


def _truth(text):
    return zlib.crc32(text.encode()) % 2


def _noisy_label_api(prompts, texts):
    """A label-only API that ignores the prompt and is right on 80% of the texts."""
    answers = [_truth(t) if zlib.crc32(b"noise " + t.encode()) % 5 else 1 - _truth(t) for t in texts]
    return np.tile(answers, (len(prompts), 1))


def one_vote_classifier(seed):
    """One vote per text: two probability values only; and its split."""
    backend = FunctionBackend(_noisy_label_api, embedding_dim=4, labels_only=True)
    X = np.asarray([f"review {seed}-{i}" for i in range(N_FIT + N_CONF + N_TEST)], dtype=object)
    y = np.array(["negative", "positive"])[[_truth(t) for t in X]]
    fit, conf, test = np.split(np.arange(len(X)), [N_FIT, N_FIT + N_CONF])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zero-shot has no validation split to smooth from
        clf = BlackBoxPromptClassifier(backend, method="zero-shot", random_state=seed).fit(X[fit], y[fit])
    assert clf.labels_only_ and len(np.unique(clf.predict_proba(X[conf]))) == 2
    return clf, (X[conf], y[conf]), (X[test], y[test])


class FixedProba:
    """A fitted "classifier" whose probabilities are its input rows: scores without a model."""

    def __init__(self, n_classes):
        self.classes_ = np.arange(n_classes)

    def predict_proba(self, X):
        return np.asarray(X, dtype=float)

    def predict(self, X):
        return self.classes_[np.argmax(X, axis=1)]


def tied_votes(rng, n, n_classes, n_votes=4, accuracy=0.7):
    """Smoothed vote shares of ``n_votes`` voters, each right with probability ``accuracy``."""
    y = rng.integers(n_classes, size=n)
    counts = np.zeros((n, n_classes))
    for _ in range(n_votes):
        wrong = (y + 1 + rng.integers(n_classes - 1, size=n)) % n_classes
        counts[np.arange(n), np.where(rng.random(n) < accuracy, y, wrong)] += 1
    return (counts + 0.5) / (n_votes + 0.5 * n_classes), y


# --------------------------------------------------------------------------
# skprompt.conformal.SplitConformalSets (no MAPIE)
# --------------------------------------------------------------------------
@pytest.mark.parametrize("toy", list(VOTE_TOYS))
def test_split_conformal_sets_on_label_only_votes(toy):
    """Coverage of the randomized sets within 3 points of 0.9 (mean of 5
    seeds), for both scores; the randomized "lac" sets are subsets of the
    plain ones and smaller on average, since the votes tie."""
    rows = {(score, randomized): [] for score in CONFORMITY_SCORES for randomized in (True, False)}
    for seed in SEEDS:
        clf, (X_conf, y_conf), (X_test, y_test), _ = vote_toy(toy, seed)
        assert clf.labels_only_
        proba = clf.predict_proba(X_test)
        assert len(np.unique(proba.round(12))) <= 17  # vote shares of 16 prompts
        sets = {}
        for score, randomized in rows:
            cp = SplitConformalSets(clf, confidence_level=CONFIDENCE, conformity_score=score, randomized=randomized,
                                    random_state=seed).conformalize(X_conf, y_conf)
            y_pred, sets[score, randomized] = cp.predict_set(X_test)
            assert sets[score, randomized].shape == (N_TEST, VOTE_TOYS[toy]["n_classes"])
            assert sets[score, randomized].dtype == bool
            np.testing.assert_array_equal(y_pred, clf.predict(X_test))
            np.testing.assert_array_equal(cp.classes_, clf.classes_)
            rows[score, randomized].append(coverage_and_size(y_test, sets[score, randomized], clf.classes_))
        # same threshold score; the randomized sets take only part of the tie
        assert not np.any(sets["lac", True] & ~sets["lac", False])
    summary = {key: np.mean(values, axis=0).round(3).tolist() for key, values in rows.items()}
    for score in CONFORMITY_SCORES:
        coverages = [c for c, _ in rows[score, True]]
        assert abs(np.mean(coverages) - CONFIDENCE) <= TOLERANCE, summary
        assert min(coverages) >= CONFIDENCE - 3 * 0.022, (score, coverages)
    (cov_r, size_r), (cov_p, size_p) = summary["lac", True], summary["lac", False]
    assert size_r < size_p - 0.03 and cov_r < cov_p, summary  # the ties cost the plain score
    assert size_r < 1.5 if VOTE_TOYS[toy]["n_classes"] == 2 else size_r < 1.8, summary


def test_split_conformal_sets_break_the_ties_of_one_vote():
    """One vote per text: the plain sets hold both labels for every text; the
    randomized ones reach the target with about 1 + (0.9 - 0.8) / 0.2 = 1.5 labels."""
    results = {"plain": [], "randomized": []}
    for seed in SEEDS:
        clf, (X_conf, y_conf), (X_test, y_test) = one_vote_classifier(seed)
        for name, randomized in (("plain", False), ("randomized", True)):
            cp = SplitConformalSets(clf, randomized=randomized, random_state=seed).conformalize(X_conf, y_conf)
            results[name].append(coverage_and_size(y_test, cp.predict_set(X_test)[1], clf.classes_))
    plain, randomized = np.mean(results["plain"], axis=0), np.mean(results["randomized"], axis=0)
    np.testing.assert_allclose(plain, [1.0, 2.0])
    assert abs(randomized[0] - CONFIDENCE) <= TOLERANCE, results["randomized"]
    assert 1.3 < randomized[1] < 1.7, results["randomized"]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("score", CONFORMITY_SCORES)
def test_randomized_coverage_is_exact_on_tied_scores(score, n_classes):
    """Many conformalization draws, no model: the mean coverage is
    ceil((n + 1) * 0.9) / (n + 1) to within 4 standard errors with
    randomization, and the plain sets overcover on these tied votes (and
    with "lac", where the randomized sets are subsets of the plain ones,
    are larger)."""
    n, n_test, trials = 50, 200, 300
    expected = math.ceil((n + 1) * CONFIDENCE) / (n + 1)
    results = {True: [], False: []}
    rng = np.random.default_rng(n_classes)
    for trial in range(trials):
        X_conf, y_conf = tied_votes(rng, n, n_classes)
        X_test, y_test = tied_votes(rng, n_test, n_classes)
        for randomized in results:
            cp = SplitConformalSets(FixedProba(n_classes), conformity_score=score, randomized=randomized,
                                    random_state=trial).conformalize(X_conf, y_conf)
            results[randomized].append(coverage_and_size(y_test, cp.predict_set(X_test)[1], cp.classes_))
    coverage = np.asarray(results[True])[:, 0]
    standard_error = coverage.std() / np.sqrt(trials)
    assert abs(coverage.mean() - expected) <= 4 * standard_error + 1e-3, (coverage.mean(), expected, standard_error)
    plain = np.asarray(results[False])
    assert plain[:, 0].mean() > expected + 0.02
    if score == "lac":  # (randomized "aps" is another score than plain "aps": its own sets)
        assert np.asarray(results[True])[:, 1].mean() < plain[:, 1].mean() - 0.05


@pytest.mark.parametrize("n, k", [(9, 9), (19, 18), (99, 90), (100, 91), (320, 289)])
def test_threshold_is_the_exact_order_statistic(n, k):
    """k = ceil((n + 1) * 0.9), computed without float error where (n + 1) * 0.9 is whole."""
    scores = np.random.default_rng(n).permutation(n) / (2 * n)  # distinct: no tie to break
    X = np.column_stack([1 - scores, scores])  # true label 0 has probability 1 - score
    for randomized in (True, False):
        cp = SplitConformalSets(FixedProba(2), randomized=randomized, random_state=0).conformalize(X, np.zeros(n, int))
        assert cp.threshold_ == pytest.approx(np.sort(scores)[k - 1], abs=1e-12)
        np.testing.assert_allclose(np.sort(cp.conformity_scores_), np.sort(scores), atol=1e-12)


def test_too_few_conformalization_samples_give_full_sets():
    X, y = tied_votes(np.random.default_rng(0), 8, 2)
    with pytest.warns(UserWarning, match=r"8 conformalization samples are too few .*\(at least 9 samples"):
        cp = SplitConformalSets(FixedProba(2), random_state=0).conformalize(X, y)
    assert cp.threshold_ == np.inf
    assert cp.predict_set(X)[1].all()


def test_aps_sets_grow_from_the_most_probable_label():
    """Plain "aps" sets are the top labels, tied labels entering together;
    randomized ones are nested too (a label is in only if every more
    probable label is)."""
    rng = np.random.default_rng(0)
    X_conf, y_conf = tied_votes(rng, 300, 4, n_votes=3)
    X_test, _ = tied_votes(rng, 500, 4, n_votes=3)
    for randomized in (False, True):
        cp = SplitConformalSets(FixedProba(4), conformity_score="aps", randomized=randomized,
                                random_state=0).conformalize(X_conf, y_conf)
        y_set = cp.predict_set(X_test)[1]
        for proba, labels in zip(X_test, y_set):
            if labels.any():  # every label at least as probable as the least probable one in the set
                assert labels[proba > proba[labels].min()].all()
            if not randomized:  # ties enter together
                assert labels[proba == proba[labels].min()].all() if labels.any() else True


def test_matches_mapie_plain_lac_without_ties():
    """The same quantile as MAPIE's "lac": identical sets on continuous
    probabilities (both settings of ``randomized``), and on tied votes for the
    plain score."""
    pytest.importorskip("mapie")
    backend, (X_fit, y_fit), (X_conf, y_conf), (X_test, _) = toy_split("ensemble", 0)
    clf = toy_classifier("ensemble", backend, 0).fit(X_fit, y_fit)
    expected = mapie_sets(conformal_sets(clf, "lac", 0, X_conf, y_conf, X_test)[1])
    for randomized in (False, True):
        cp = SplitConformalSets(clf, randomized=randomized, random_state=0).conformalize(X_conf, y_conf)
        np.testing.assert_array_equal(cp.predict_set(X_test)[1], expected)
    clf, (X_conf, y_conf), (X_test, _), _ = vote_toy("2 classes", 0)
    expected = mapie_sets(conformal_sets(clf, "lac", 0, X_conf, y_conf, X_test)[1])
    cp = SplitConformalSets(clf, randomized=False).conformalize(X_conf, y_conf)
    np.testing.assert_array_equal(cp.predict_set(X_test)[1], expected)


def test_reproducible_with_random_state():
    clf, (X_conf, y_conf), (X_test, _) = one_vote_classifier(0)
    runs = []
    for _ in range(2):
        cp = SplitConformalSets(clf, random_state=3).conformalize(X_conf, y_conf)
        runs.append((cp.threshold_, cp.predict_set(X_test)[1], cp.predict_set(X_test)[1]))
    (t1, first1, second1), (t2, first2, second2) = runs
    assert t1 == t2
    np.testing.assert_array_equal(first1, first2)
    np.testing.assert_array_equal(second1, second2)
    assert np.any(first1 != second1)  # each call draws anew, from the same seeded stream
    other = SplitConformalSets(clf, random_state=4).conformalize(X_conf, y_conf).predict_set(X_test)[1]
    assert np.any(other != first1)
    rs = np.random.RandomState(3)  # a RandomState instance is accepted (and advanced)
    SplitConformalSets(clf, random_state=rs).conformalize(X_conf, y_conf).predict_set(X_test)
    assert rs.randint(2**31) != np.random.RandomState(3).randint(2**31)


def test_lists_arrays_and_series_of_texts_give_the_same_sets():
    clf, (X_conf, y_conf), (X_test, _) = one_vote_classifier(1)
    pd = pytest.importorskip("pandas")
    expected = None
    for as_input in (list, lambda t: np.asarray(t, dtype=object), lambda t: pd.Series(list(t)),
                     lambda t: np.asarray(t, dtype=object).reshape(-1, 1)):
        cp = SplitConformalSets(clf, random_state=0).conformalize(as_input(X_conf), list(y_conf))
        sets = cp.predict_set(as_input(X_test))[1]
        if expected is None:
            expected = sets
        np.testing.assert_array_equal(sets, expected)


def test_prefit_false_fits_a_clone():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 3))
    y = np.where(X[:, 0] + 0.5 * rng.standard_normal(600) > 0, "b", "a")
    estimator = KNeighborsClassifier()
    cp = SplitConformalSets(estimator, prefit=False, random_state=0)
    assert cp.fit(X[:300], y[:300], ) is cp
    assert not hasattr(estimator, "classes_") and cp.estimator_ is not estimator
    cp.conformalize(X[300:450], y[300:450])
    y_pred, y_set = cp.predict_set(X[450:])
    np.testing.assert_array_equal(cp.classes_, ["a", "b"])
    np.testing.assert_array_equal(cp.predict(X[450:]), cp.estimator_.predict(X[450:]))
    assert set(y_pred) <= {"a", "b"} and y_set.shape == (150, 2)
    assert cp.fit(X[:300], y[:300]) is cp and not hasattr(cp, "threshold_")  # refit drops the threshold
    with pytest.raises(NotFittedError, match="conformalize"):
        cp.predict_set(X[450:])


def test_sklearn_conventions_and_pickle():
    cp = SplitConformalSets("not validated here", confidence_level="nor this")  # __init__ only stores
    assert cp.get_params()["confidence_level"] == "nor this"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 2))
    y = (X[:, 0] > 0).astype(int)
    lr = LogisticRegression().fit(X[:200], y[:200])
    cp = SplitConformalSets(lr, conformity_score="aps", random_state=0)
    twin = clone(cp)
    assert twin.get_params()["conformity_score"] == "aps" and twin.estimator is not lr
    cp.conformalize(X[200:300], y[200:300])
    copy = pickle.loads(pickle.dumps(cp))
    np.testing.assert_array_equal(copy.predict_set(X[300:])[1], cp.predict_set(X[300:])[1])
    copy = pickle.loads(pickle.dumps(cp))
    cp.set_params(conformity_score="lac", randomized=False)  # takes effect at the next conformalize only
    np.testing.assert_array_equal(copy.predict_set(X[300:])[1], cp.predict_set(X[300:])[1])
    assert repr(cp).startswith("SplitConformalSets(") and "estimator=LogisticRegression()" in repr(cp)


# -------------------------------------------------------------- bad arguments
class CountingProba(FixedProba):
    calls = 0

    def predict_proba(self, X):
        CountingProba.calls += 1
        return super().predict_proba(X)


BAD_PARAMS = [
    (dict(confidence_level=0), ValueError, r"confidence_level must be a float in the open interval \(0, 1\)"),
    (dict(confidence_level=1.0), ValueError, "confidence_level must be"),
    (dict(confidence_level=90), ValueError, "confidence_level must be .*got 90"),
    (dict(confidence_level="0.9"), ValueError, "confidence_level must be"),
    (dict(confidence_level=True), ValueError, "confidence_level must be"),
    (dict(confidence_level=float("nan")), ValueError, "confidence_level must be"),
    (dict(conformity_score="raps"), ValueError, r"conformity_score must be one of \['lac', 'aps'\]; got 'raps'"),
    (dict(randomized="yes"), ValueError, "randomized must be True or False; got 'yes'"),
    (dict(prefit=None), ValueError, "prefit must be True or False"),
    (dict(random_state="seed"), ValueError, "random_state must be None, an int or a numpy RandomState; got 'seed'"),
]


@pytest.mark.parametrize("params, error, match", BAD_PARAMS)
def test_bad_parameters_raise_before_any_query(params, error, match):
    X, y = tied_votes(np.random.default_rng(0), 50, 2)
    before = CountingProba.calls
    with pytest.raises(error, match=match):
        SplitConformalSets(CountingProba(2), **params).conformalize(X, y)
    assert CountingProba.calls == before


def test_bad_data_raise_before_any_query():
    clf, (X_conf, y_conf), _, model = vote_toy("2 classes", 0)
    before = len(model.calls)
    cp = SplitConformalSets(clf, random_state=0)
    cases = [
        ((X_conf, y_conf[:-1]), ValueError, "X_conformalize and y_conformalize have different lengths: 320 samples and 319"),
        ((X_conf, np.where(y_conf == "class_0", "cat", y_conf)), ValueError,
         r"y_conformalize has labels that are not in the estimator's classes_ \['class_0', 'class_1'\]: \['cat'\]"),
        ((X_conf, np.stack([y_conf, y_conf], axis=1)), ValueError, "y_conformalize must be 1-D"),
        (("one text", ["class_0"]), TypeError, "X_conformalize must be a sequence of samples"),
        ((X_conf[:0], y_conf[:0]), ValueError, "X_conformalize is empty"),
        ((X_conf, None), ValueError, "y_conformalize is required"),
    ]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            cp.conformalize(*args)
    with pytest.raises(TypeError, match="estimator must be a classifier with a predict_proba method; got object"):
        SplitConformalSets(object()).conformalize(X_conf, y_conf)
    unfitted = BlackBoxPromptClassifier(clf.backend, method="zero-shot")
    with pytest.raises(NotFittedError, match=r"estimator \(BlackBoxPromptClassifier\) is not fitted"):
        SplitConformalSets(unfitted).conformalize(X_conf, y_conf)
    with pytest.raises(NotFittedError, match=r"prefit=False: call fit\(X_train, y_train\) before conformalize"):
        SplitConformalSets(unfitted, prefit=False).conformalize(X_conf, y_conf)
    with pytest.raises(ValueError, match="prefit=True: estimator is used as it is"):
        SplitConformalSets(clf).fit(X_conf, y_conf)
    with pytest.raises(NotFittedError, match=r"call conformalize\(X_conformalize, y_conformalize\) first"):
        SplitConformalSets(clf).predict_set(X_conf)
    assert len(model.calls) == before  # not one query


def test_bad_predict_proba_is_named():
    class Broken(FixedProba):
        def predict_proba(self, X):
            return np.asarray(X, dtype=float)[:, :1]

    X, y = tied_votes(np.random.default_rng(0), 50, 2)
    with pytest.raises(ValueError, match=r"Broken.predict_proba returned an array of shape \(50, 1\) for 50 samples"):
        SplitConformalSets(Broken(2)).conformalize(X, y)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="FixedProba.predict_proba returned NaN"):
        SplitConformalSets(FixedProba(2)).conformalize(X, y)


def test_coverage_and_size():
    y_set = np.array([[True, False], [True, True], [False, False], [False, True]])
    assert coverage_and_size(["neg", "pos", "pos", "neg"], y_set, ["neg", "pos"]) == (0.5, 1.0)
    assert coverage_and_size(np.array([1, 0, 0, 1]), y_set.astype(int), np.array([1, 0])) == (0.5, 1.0)
    coverage, size = coverage_and_size(["neg", "pos", "pos", "neg"], np.stack([y_set, ~y_set], axis=2),
                                       ["neg", "pos"])
    np.testing.assert_allclose(coverage, [0.5, 0.5])
    np.testing.assert_allclose(size, [1.0, 1.0])
    with pytest.raises(ValueError, match=r"y_true has labels that are not in classes \['neg', 'pos'\]: \['cat'\]"):
        coverage_and_size(["neg", "pos", "pos", "cat"], y_set, ["neg", "pos"])
    with pytest.raises(ValueError, match="y_set and y_true have different lengths: 4 samples and 3 labels"):
        coverage_and_size(["neg", "pos", "pos"], y_set, ["neg", "pos"])
    with pytest.raises(ValueError, match="classes must be 1-D with one label per column of y_set"):
        coverage_and_size(["neg", "pos", "pos", "neg"], y_set, ["neg", "pos", "mixed"])
    with pytest.raises(ValueError, match="y_set must have shape"):
        coverage_and_size(["neg"], np.array([True, False]), ["neg", "pos"])
    with pytest.raises(ValueError, match="y_set must hold booleans"):
        coverage_and_size(["neg", "pos", "pos", "neg"], y_set * 0.5, ["neg", "pos"])


def test_import_needs_no_mapie_and_says_what_to_install():
    code = ("import sys, skprompt, skprompt.conformal as c\n"
            "print(sorted(m for m in sys.modules if m.startswith('mapie')))\n"
            "sys.modules['mapie'] = None\n"  # from here on, as if MAPIE were not installed
            "assert 'RandomizedLAC' in dir(c) and 'RandomizedLAC' in c.__all__\n"
            "try:\n    c.RandomizedLAC\nexcept ImportError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    imported, message = proc.stdout.strip().split("\n", 1)
    assert imported == "[]"
    assert 'pip install "skprompt[conformal]"' in message and "SplitConformalSets needs no MAPIE" in message
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        conformal.Nope


# --------------------------------------------------------------------------
# RandomizedLAC in MAPIE
# --------------------------------------------------------------------------
@needs_mapie
@pytest.mark.parametrize("method", list(TOY_METHODS))
def test_split_conformal_coverage_on_the_toy(method):
    coverages, sizes = [], []
    for seed in SEEDS:
        backend, (X_fit, y_fit), (X_conf, y_conf), (X_test, y_test) = toy_split(method, seed)
        clf = toy_classifier(method, backend, seed).fit(X_fit, y_fit)
        assert clf.labels_only_ == TOY_METHODS[method]["labels_only"]
        y_point, sets = conformal_sets(clf, TOY_METHODS[method]["score"](), seed, X_conf, y_conf, X_test)
        assert sets.shape == (N_TEST, 2, 1)
        np.testing.assert_array_equal(y_point, clf.predict(X_test))
        coverage, size = coverage_and_size(y_test, mapie_sets(sets), clf.classes_)
        coverages.append(coverage)
        sizes.append(size)
    assert abs(np.mean(coverages) - CONFIDENCE) <= TOLERANCE, (coverages, sizes)
    assert min(coverages) >= CONFIDENCE - 3 * 0.022, coverages  # no seed far below the target
    assert 0.5 < np.mean(sizes) < 1.5, sizes  # informative sets: the toy classifier is accurate


@needs_mapie
def test_randomized_lac_breaks_the_ties_of_vote_probabilities():
    """One vote per text: two probability values only. Plain "lac" must return
    both labels for every text (the 20% of confidently wrong texts put the
    threshold on a tie); the randomized score reaches the target with sets of
    about 1 + (0.9 - 0.8) / 0.2 = 1.5 labels."""
    results = {"lac": [], "randomized": []}
    for seed in SEEDS:
        clf, (X_conf, y_conf), (X_test, y_test) = one_vote_classifier(seed)
        for name, score in (("lac", "lac"), ("randomized", conformal.RandomizedLAC())):
            _, sets = conformal_sets(clf, score, seed, X_conf, y_conf, X_test)
            results[name].append(coverage_and_size(y_test, mapie_sets(sets), clf.classes_))
    lac, randomized = np.mean(results["lac"], axis=0), np.mean(results["randomized"], axis=0)
    np.testing.assert_allclose(lac, [1.0, 2.0])
    assert abs(randomized[0] - CONFIDENCE) <= TOLERANCE, results["randomized"]
    assert 1.3 < randomized[1] < 1.7, results["randomized"]


@needs_mapie
def test_randomized_lac_on_16_prompt_votes():
    """Inside MAPIE on the 16-prompt vote toys: the target within 3 points,
    and smaller sets than plain "lac"."""
    for toy in VOTE_TOYS:
        rows = {"lac": [], "randomized": []}
        for seed in SEEDS:
            clf, (X_conf, y_conf), (X_test, y_test), _ = vote_toy(toy, seed)
            for name, score in (("lac", "lac"), ("randomized", conformal.RandomizedLAC())):
                _, sets = conformal_sets(clf, score, seed, X_conf, y_conf, X_test)
                rows[name].append(coverage_and_size(y_test, mapie_sets(sets), clf.classes_))
        plain, randomized = np.mean(rows["lac"], axis=0), np.mean(rows["randomized"], axis=0)
        assert abs(randomized[0] - CONFIDENCE) <= TOLERANCE, (toy, rows)
        assert randomized[1] < plain[1] - 0.03, (toy, rows)


@needs_mapie
def test_randomized_lac_is_reproducible_and_keeps_continuous_scores_in_order():
    backend, (X_fit, y_fit), (X_conf, y_conf), (X_test, _) = toy_split("ensemble", 0)
    clf = toy_classifier("ensemble", backend, 0).fit(X_fit, y_fit)
    _, plain = conformal_sets(clf, "lac", 0, X_conf, y_conf, X_test)
    _, first = conformal_sets(clf, conformal.RandomizedLAC(), 0, X_conf, y_conf, X_test)
    _, again = conformal_sets(clf, conformal.RandomizedLAC(), 0, X_conf, y_conf, X_test)
    np.testing.assert_array_equal(first, again)
    # distinct softmax probabilities: the jitter changes a set only at the threshold
    assert np.mean(np.any(first != plain, axis=(1, 2))) <= 0.01


@needs_mapie
@pytest.mark.parametrize("jitter", [0, -1e-4, 1.5, "1e-4", None, float("inf")])
def test_randomized_lac_bad_jitter_raises_before_any_query(jitter):
    clf, (X_conf, y_conf), _, model = vote_toy("2 classes", 0)
    before = len(model.calls)
    with pytest.raises(ValueError, match=r"RandomizedLAC's jitter must be a float in \(0, 1\), e.g. 1e-4; got"):
        conformal_sets(clf, conformal.RandomizedLAC(jitter=jitter), 0, X_conf, y_conf, X_conf)
    assert len(model.calls) == before


@needs_mapie
def test_randomized_lac_is_one_picklable_class():
    score = conformal.RandomizedLAC(jitter=1e-3)
    assert conformal.RandomizedLAC is conformal.RandomizedLAC  # built once
    from mapie.conformity_scores import LACConformityScore

    assert isinstance(score, LACConformityScore)  # what MAPIE asks of a score for a binary target
    copy = pickle.loads(pickle.dumps(score))
    assert type(copy) is conformal.RandomizedLAC and copy.jitter == 1e-3
    assert f"{type(score).__module__}.{type(score).__qualname__}" == "skprompt.conformal.RandomizedLAC"


@needs_mapie
def test_docstring_examples_run():
    conformal.RandomizedLAC  # built on first use: doctest finds it in the module afterwards
    result = doctest.testmod(conformal, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 25 and result.failed == 0


@needs_mapie
def test_plain_list_of_texts_needs_the_array_one_liner():
    """Documents the one-liner: the same texts as a list, an object array, a
    str array, a column and a pandas Series. If MAPIE starts accepting lists,
    the first check fails and docs/conformal.md can drop the one-liner."""
    backend, (X_fit, y_fit), (X_conf, y_conf), (X_test, _) = toy_split("ensemble", 0)
    clf = toy_classifier("ensemble", backend, 0).fit(list(X_fit), y_fit)
    with pytest.raises(TypeError, match="number of features"):
        mapie_classification.SplitConformalClassifier(clf, prefit=True).conformalize(list(X_conf), y_conf)
    pd = pytest.importorskip("pandas")
    expected = None
    for as_input in (lambda t: np.asarray(list(t), dtype=object), lambda t: np.asarray(list(t)),
                     lambda t: np.asarray(t, dtype=object).reshape(-1, 1), lambda t: pd.Series(list(t))):
        _, sets = conformal_sets(clf, "lac", 0, as_input(X_conf), y_conf, as_input(X_test))
        if expected is None:
            expected = sets
        np.testing.assert_array_equal(sets, expected)


@needs_mapie
def test_cross_conformal_fits_clones_on_folds():
    backend, (X_fit, y_fit), (X_conf, y_conf), (X_test, y_test) = toy_split("ensemble", 1)
    X = np.concatenate([X_fit, X_conf[:70]])
    y = np.concatenate([y_fit, y_conf[:70]])
    clf = toy_classifier("ensemble", backend, 1)
    mapie = mapie_classification.CrossConformalClassifier(clf, confidence_level=CONFIDENCE, cv=3, random_state=0)
    mapie.fit_conformalize(X, y)
    assert not hasattr(clf, "classes_")  # MAPIE fitted clones, not the estimator given
    y_point, sets = mapie.predict_set(X_test)
    assert sets.shape == (N_TEST, 2, 1)
    assert set(y_point) <= set(np.unique(y))
    coverage, size = coverage_and_size(y_test, mapie_sets(sets), np.unique(y))
    # cross-conformal guarantees 1 - 2 * alpha = 0.8 only; in practice it is close to 0.9
    assert coverage >= 0.8, coverage
    assert size < 1.5, size


# --------------------------------------------------------------------------
# Real model
# --------------------------------------------------------------------------
#: Held-out Rotten Tomatoes texts, split anew by each seed into
#: conformalization and test halves. Every text is scored once per prompt
#: (the backends' result caches answer the later seeds).
N_POOL, N_REAL_CONF = 500, 250
LABEL_ONLY_BUDGET = 1500


@needs_mapie
@pytest.mark.real_model
def test_conformal_coverage_on_rotten_tomatoes():
    """Coverage of 90% sets on held-out texts, mean of 5 seeds, within 3 points.

    ``zero-shot`` (scores): each seed draws its own 16 fit texts per class
    (outside the pool) for the read-out, and its own split of the pool.
    ``abc-smc`` on the label-only view (votes of 16 prompts, ``RandomizedLAC``):
    fitted once (seed 0's fit texts, ``budget=1500``), since scoring the pool
    costs 16 queries per text; the seeds draw the split of the pool. Plain
    "lac" on the votes is reported for contrast (and must still cover), and
    ``SplitConformalSets`` ("lac" and "aps", randomized) on the same votes
    (the backend's result cache answers their queries).
    A seed's coverage has a standard deviation of about 0.027 here (0.012
    for the mean of 5 seeds). About 10,000 (prompt, text) queries in all;
    measured: zero-shot 0.890 (mean set size 1.25), abc-smc 0.891 (1.43),
    plain "lac" on the votes 1.000 (2.00) (docs/conformal.md; measured with
    the ``RandomizedLAC`` of examples/conformal_prediction.py, now
    ``skprompt.conformal.RandomizedLAC``, the same code).
    """
    from skprompt.datasets import few_shot_split, load_task
    from skprompt.models import default_backend

    start = time.perf_counter()
    task = load_task("rotten_tomatoes")
    texts, y = np.asarray(task.texts, dtype=object), np.asarray(task.target)
    order = np.random.default_rng(0).permutation(len(texts))
    pool, reservoir = order[:N_POOL], order[N_POOL:]  # conformalization + test texts / fit texts

    def fit_split(seed):
        return few_shot_split(texts[reservoir], y[reservoir], n_per_class=16, n_test=0, random_state=seed)

    model = default_backend(template=task.template, verbalizer=task.verbalizer)
    api = _load_example().label_only_view(model, sorted(task.verbalizer))
    first = fit_split(0)
    voter = BlackBoxPromptClassifier(api, method="abc-smc", n_prompt_tokens=model.default_prompt_length,
                                     budget=LABEL_ONLY_BUDGET, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BudgetWarning)  # the budget stops it after 2 rounds, as intended
        voter.fit(first.X_train, first.y_train)
    assert voter.labels_only_ and len(voter.weights_) == 16

    # the same votes read out through the error channel (vote_smoothing="error"), for comparison
    error_channel = copy.copy(voter)
    error_channel.vote_smoothing_ = "error"
    rows = {"zero-shot": [], "abc-smc": [], "abc-smc, plain lac": [],
            "abc-smc, SplitConformalSets lac": [], "abc-smc, SplitConformalSets aps": [],
            "abc-smc, error channel": []}
    for seed in SEEDS:
        split = fit_split(seed)
        scorer = BlackBoxPromptClassifier(model, method="zero-shot", random_state=seed)
        scorer.fit(split.X_train, split.y_train)
        shuffled = np.random.default_rng(seed).permutation(pool)
        conf, test = shuffled[:N_REAL_CONF], shuffled[N_REAL_CONF:]
        for name, clf, score in (("zero-shot", scorer, "lac"), ("abc-smc", voter, conformal.RandomizedLAC()),
                                 ("abc-smc, plain lac", voter, "lac"),
                                 ("abc-smc, error channel", error_channel, conformal.RandomizedLAC())):
            y_point, sets = conformal_sets(clf, score, seed, texts[conf], y[conf], texts[test])
            coverage, size = coverage_and_size(y[test], mapie_sets(sets), clf.classes_)
            rows[name].append((coverage, size, np.mean(y_point == y[test])))
        for score in CONFORMITY_SCORES:
            cp = SplitConformalSets(voter, conformity_score=score, random_state=seed)
            y_point, sets = cp.conformalize(texts[conf], y[conf]).predict_set(texts[test])
            coverage, size = coverage_and_size(y[test], sets, voter.classes_)
            rows[f"abc-smc, SplitConformalSets {score}"].append((coverage, size, np.mean(y_point == y[test])))

    print(f"\n90% conformal sets on Rotten Tomatoes, {N_REAL_CONF} conformalization + {N_POOL - N_REAL_CONF} "
          f"test texts, seeds {SEEDS}, {time.perf_counter() - start:.0f} s")
    for name, values in rows.items():
        values = np.asarray(values)
        per_seed = ", ".join(f"{c:.3f}/{s:.2f}" for c, s, _ in values)
        print(f"{name:>31}: coverage {values[:, 0].mean():.3f}, mean set size {values[:, 1].mean():.3f}, "
              f"accuracy {values[:, 2].mean():.3f}  (coverage/size per seed: {per_seed})")
    for name in ("zero-shot", "abc-smc", "abc-smc, SplitConformalSets lac", "abc-smc, SplitConformalSets aps"):
        coverage, size, _ = np.mean(rows[name], axis=0)
        assert abs(coverage - CONFIDENCE) <= TOLERANCE, (name, rows[name])
        assert size < 1.8, (name, rows[name])  # the sets say something
    assert np.mean(rows["abc-smc, plain lac"], axis=0)[0] >= CONFIDENCE - TOLERANCE
