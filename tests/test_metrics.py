"""Reliability metrics, scorers and the reliability diagram (skprompt.metrics)."""

import itertools
import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_validate

from skprompt.metrics import (
    expected_calibration_error,
    get_scorer,
    get_scorer_names,
    max_prob_uncertainty,
    misclassification_auroc,
    misclassification_auroc_entropy_scorer,
    neg_expected_calibration_error_scorer,
    neg_risk_rejection_auc_max_prob_scorer,
    ood_auroc,
    predictive_entropy,
    reliability_diagram,
    risk_rejection_auc,
    risk_rejection_curve,
    scorers,
)


# ------------------------------------------------------------------------ ECE
def test_ece_hand_computed_five_samples():
    proba = np.array([
        [0.90, 0.10],  # conf .90, pred 0, y 0: correct
        [0.20, 0.80],  # conf .80, pred 1, y 1: correct
        [0.70, 0.30],  # conf .70, pred 0, y 1: wrong
        [0.45, 0.55],  # conf .55, pred 1, y 0: wrong
        [0.30, 0.70],  # conf .70, pred 1, y 1: correct
    ])
    y = [0, 1, 1, 0, 1]
    # 5 uniform bins (0,.2], ..., (.8,1]:
    #   (.4,.6]: {.55 wrong}           -> |0 - .55|         = .55
    #   (.6,.8]: {.8 c, .7 w, .7 c}    -> |2 - (.8+.7+.7)|  = .20
    #   (.8,1.]: {.9 c}                -> |1 - .9|          = .10
    # ECE = (.55 + .20 + .10) / 5 = .17
    assert expected_calibration_error(y, proba, n_bins=5) == pytest.approx(0.17)
    # one bin: |3 - (.9+.8+.7+.55+.7)| / 5 = |3 - 3.65| / 5 = .13
    assert expected_calibration_error(y, proba, n_bins=1) == pytest.approx(0.13)


def test_ece_confidence_on_an_edge_goes_to_the_lower_bin():
    # conf .6 correct, conf .7 wrong, 5 bins with an edge at .6.
    # lower-bin convention: (.4,.6] holds .6 -> |1-.6| = .4 ; (.6,.8] holds .7 -> .7 ; ECE = 1.1/2 = .55
    # (the other convention would pool both in [.6,.8): |1 - 1.3| / 2 = .15)
    proba = np.array([[0.4, 0.6], [0.7, 0.3]])
    assert expected_calibration_error([1, 1], proba, n_bins=5) == pytest.approx(0.55)
    # 0.3 is an edge of 10 bins too (3/10, not linspace's 0.30000000000000004):
    # conf .3 correct in (.2,.3], conf .35 wrong in (.3,.4]: (.7 + .35)/2 = .525 (pooled: |1-.65|/2 = .175)
    proba3 = np.array([[0.3, 0.3, 0.3, 0.1], [0.35, 0.25, 0.2, 0.2]])
    assert expected_calibration_error([0, 1], proba3, n_bins=10) == pytest.approx(0.525)
    # 5/6 is the edge of 6 bins (np.linspace(0, 1, 7)[5] is one ulp *below* 5/6 and would move it up):
    # conf 5/6 correct in (4/6, 5/6] -> 1/6 ; conf .9 wrong in (5/6, 1] -> .9 ; pooled: |1 - 1.7333| / 2
    proba6 = np.array([[5 / 6, 1 - 5 / 6], [0.1, 0.9]])
    assert expected_calibration_error([0, 0], proba6, n_bins=6) == pytest.approx((1 / 6 + 0.9) / 2)


def test_ece_confidence_one_lands_in_the_last_bin():
    # conf 1.0 wrong and conf .95 correct share (.9, 1]: |1 - 1.95| / 2 = .475.
    # Dropping the 1.0 sample (a "conf < upper" bug) would give |1-.95|/1 = .05;
    # a bin of its own, (|0-1| + |1-.95|) / 2 = .525.
    proba = np.array([[1.0, 0.0], [0.05, 0.95]])
    assert expected_calibration_error([1, 1], proba, n_bins=10) == pytest.approx(0.475)


def test_ece_quantile_strategy_uses_equal_mass_bins():
    # P(class 1) = .6 .7 .8 .9, all predicted 1; y = 1 1 0 0 -> correct 1 1 0 0.
    p1 = np.array([0.6, 0.7, 0.8, 0.9])
    y = [1, 1, 0, 0]
    # quantile, 2 bins: median .75 -> {.6,.7}: |2 - 1.3| = .7 ; {.8,.9}: |0 - 1.7| = 1.7 ; (.7+1.7)/4 = .6
    assert expected_calibration_error(y, p1, n_bins=2, strategy="quantile") == pytest.approx(0.6)
    # uniform, 2 bins: all in (.5, 1]: |2 - 3.0| / 4 = .25
    assert expected_calibration_error(y, p1, n_bins=2, strategy="uniform") == pytest.approx(0.25)


def test_ece_quantile_keeps_tied_confidences_together():
    # confidences .8 .8 .8 .9 with 2 equal-mass bins: median .8, so the three .8 share bin 1.
    # correct 1 0 0 1: {.8,.8,.8}: |1 - 2.4| = 1.4 ; {.9}: |1-.9| = .1 ; (1.4 + .1)/4 = .375
    p1 = np.array([0.8, 0.8, 0.8, 0.9])
    y = [1, 0, 0, 1]
    for perm in itertools.permutations(range(4)):
        perm = list(perm)
        assert expected_calibration_error(np.array(y)[perm], p1[perm], n_bins=2, strategy="quantile") == (
            pytest.approx(0.375)
        )


def test_ece_binary_1d_equals_two_columns_and_string_labels():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=40)
    y = rng.integers(0, 2, size=40)
    two = np.column_stack([1 - p1, p1])
    for strategy in ("uniform", "quantile"):
        a = expected_calibration_error(y, p1, n_bins=7, strategy=strategy)
        b = expected_calibration_error(y, two, n_bins=7, strategy=strategy)
        c = expected_calibration_error(np.where(y == 1, "pos", "neg"), p1, n_bins=7, strategy=strategy,
                                       labels=["neg", "pos"])
        assert a == pytest.approx(b) and a == pytest.approx(c)
    # the label order names the columns: swapping labels is swapping the classes
    swapped = expected_calibration_error(np.where(y == 1, "pos", "neg"), two[:, ::-1], labels=["pos", "neg"])
    assert swapped == pytest.approx(expected_calibration_error(y, two))


def test_ece_is_zero_for_perfect_calibration_and_large_for_overconfidence():
    # 10 samples at conf .8 with 8 correct, 4 at conf .5 with 2 correct (3 classes)
    proba = np.array([[0.8, 0.1, 0.1]] * 10 + [[0.5, 0.25, 0.25]] * 4)
    y = [0] * 8 + [1, 2] + [0, 0, 1, 2]
    assert expected_calibration_error(y, proba) == pytest.approx(0.0, abs=1e-12)
    # always-wrong and fully confident: ECE = 1
    assert expected_calibration_error([1, 1, 0], [[1, 0], [1, 0], [0, 1]]) == pytest.approx(1.0)


def test_ece_string_labels_in_any_column_order():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    idx = [1, 0, 1]  # wrong, wrong, correct -> conf .7 .8 .6, 10 bins -> (.7 + .8 + .4) / 3
    expected = (0.7 + 0.8 + 0.4) / 3
    assert expected_calibration_error(idx, proba) == pytest.approx(expected)
    labels = np.array(["zebra", "ant", "mole"])  # deliberately unsorted: labels[j] names column j
    assert expected_calibration_error(labels[idx], proba, labels=labels) == pytest.approx(expected)
    # indices as Python ints in an object array, and labels of mixed types
    assert expected_calibration_error(np.array(idx, dtype=object), proba) == pytest.approx(expected)
    mixed = np.array([1, "b", 2.5], dtype=object)
    assert expected_calibration_error(mixed[idx], proba, labels=mixed) == pytest.approx(expected)


# ------------------------------------------------------------ risk–rejection
def test_risk_rejection_hand_example_and_perfect_ranking():
    u = [0.1, 0.2, 0.3, 0.4]
    # kept 1,2,3,4 -> errors [0],[0,1],[0,1,0],[0,1,0,1] -> 0, 1/2, 1/3, 2/4 ; mean = 1.3333/4
    coverage, risk = risk_rejection_curve([0, 1, 0, 1], u, n_bins=4)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 1 / 2, 1 / 3, 1 / 2])
    assert risk_rejection_auc([0, 1, 0, 1], u, n_bins=4) == pytest.approx((0 + 1 / 2 + 1 / 3 + 1 / 2) / 4)
    # perfect ranking: errors are the most uncertain -> 0, 0, 1/3, 1/2
    perfect = risk_rejection_auc([0, 0, 1, 1], u, n_bins=4)
    assert perfect == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    # worst ranking: 1, 1, 2/3, 1/2
    worst = risk_rejection_auc([1, 1, 0, 0], u, n_bins=4)
    assert worst == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
    assert perfect < risk_rejection_auc([0, 1, 0, 1], u, n_bins=4) < worst


def test_risk_rejection_kept_count_is_ceil():
    # n = 5, 2 bins: keep ceil(2.5) = 3 then 5. errors by rank 0 0 1 1 1 -> 1/3, 3/5
    # (floor would keep 2 -> risk 0)
    auc = risk_rejection_auc([0, 0, 1, 1, 1], [1, 2, 3, 4, 5], n_bins=2)
    assert auc == pytest.approx((1 / 3 + 3 / 5) / 2)
    # n = 10, 10 bins: 3*10/10 must keep exactly 3 (float 0.3*10 = 3.0000000000000004 would ceil to 4)
    errors = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    _, risk = risk_rejection_curve(errors, np.arange(10), n_bins=10)
    np.testing.assert_allclose(risk, errors.cumsum() / np.arange(1, 11))
    assert risk[2] == 0.0


def test_risk_rejection_averages_partial_ties():
    # sorted: s0 (u .1, ok), tie group {u .5: one error, one ok}, s3 (u .9, error)
    # kept 1: 0 ; kept 2: s0 + 1 of the pair -> expected errors 1/2 -> risk .25 ;
    # kept 3: 1/3 ; kept 4: 2/4
    expected = [0, 0.25, 1 / 3, 0.5]
    for errors, u in [([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]), ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9])]:
        _, risk = risk_rejection_curve(errors, u, n_bins=4)
        np.testing.assert_allclose(risk, expected)


def test_risk_rejection_all_tied_gives_the_error_rate_everywhere():
    errors = [1, 0, 0, 0, 1]
    _, risk = risk_rejection_curve(errors, [0.7] * 5, n_bins=10)
    np.testing.assert_allclose(risk, 0.4)
    assert risk_rejection_auc(errors, np.zeros(5)) == pytest.approx(0.4)


def test_risk_rejection_ties_equal_expectation_over_all_tie_breaks():
    # Reference: break ties by input order (stable sort) and average over every
    # permutation of the input; must equal the closed-form tie averaging.
    rng = np.random.default_rng(3)
    for _ in range(5):
        n = 6
        errors = rng.integers(0, 2, size=n)
        u = rng.integers(0, 3, size=n).astype(float)  # many ties
        n_bins = int(rng.integers(1, 8))
        kept = [-(-k * n // n_bins) for k in range(1, n_bins + 1)]
        total = np.zeros(n_bins)
        perms = list(itertools.permutations(range(n)))
        for perm in perms:
            order = np.argsort(u[list(perm)], kind="stable")
            ranked = errors[list(perm)][order]
            total += [ranked[:m].mean() for m in kept]
        _, risk = risk_rejection_curve(errors, u, n_bins=n_bins)
        np.testing.assert_allclose(risk, total / len(perms))


def test_risk_rejection_is_for_ood_too():
    # OOD inputs (1) are the failures; they have higher uncertainty than all in-distribution ones
    is_ood = np.array([False, True, False, True])
    u = np.array([0.2, 0.9, 0.1, 0.8])
    # ranked: in, in, ood, ood -> 0, 0, 1/3, 1/2
    assert risk_rejection_auc(is_ood, u, n_bins=4) == pytest.approx((1 / 3 + 1 / 2) / 4)


# ---------------------------------------------------------------------- AUROC
def test_misclassification_auroc_matches_a_pair_count():
    y_true = np.array(["a", "b", "a", "b", "c"])
    y_pred = np.array(["b", "b", "c", "b", "c"])  # errors at 0 and 2
    u = np.array([0.9, 0.3, 0.4, 0.5, 0.4])
    # errors .9 .4 vs correct .3 .5 .4: (.9>.3) (.9>.5) (.9>.4) (.4>.3) (.4<.5) (.4=.4 -> 1/2) = 4.5 / 6
    assert misclassification_auroc(y_true, y_pred, u) == pytest.approx(0.75)
    assert ood_auroc(y_true != y_pred, u) == pytest.approx(0.75)
    assert ood_auroc([1, 0, 1, 0, 0], u) == pytest.approx(0.75)


def test_auroc_is_nan_with_a_warning_when_undefined():
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(misclassification_auroc([0, 1], [0, 1], [0.1, 0.2]))


def test_uncertainty_scores():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    ent = -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))
    np.testing.assert_allclose(predictive_entropy(p), [np.log(2), 0.0, ent])
    np.testing.assert_allclose(max_prob_uncertainty(p), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(predictive_entropy([0.5, 1.0]), [np.log(2), 0.0])
    np.testing.assert_allclose(max_prob_uncertainty([0.1, 0.6]), [0.1, 0.4])


# ----------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda: expected_calibration_error([0, 1], [[0.5, 0.5], [0.2, 0.7]]),
            ValueError, "y_prob rows must sum to 1",
        ),
        (
            lambda: expected_calibration_error([0, 1], [[1.5, -0.5], [0.2, 0.8]]),
            ValueError, r"y_prob must hold probabilities in \[0, 1\]",
        ),
        (lambda: expected_calibration_error([0, 1], [0.2, np.nan]), ValueError, "y_prob contains NaN"),
        (lambda: expected_calibration_error([0, 1], [[0.2], [0.3]]), ValueError, "y_prob has 1 column"),
        (
            lambda: expected_calibration_error([0, 1], np.ones((2, 1, 2)) / 2),
            ValueError, "y_prob must be 1-D .* or 2-D",
        ),
        (lambda: expected_calibration_error([0, 1], []), ValueError, "y_prob is empty"),
        (
            lambda: expected_calibration_error([0, 1, 1], [0.2, 0.8]),
            ValueError, "y_true and y_prob have different lengths",
        ),
        (lambda: expected_calibration_error([0, 2], [0.2, 0.8]), ValueError, r"outside the class indices 0..1"),
        (
            lambda: expected_calibration_error(["a", "b"], [0.2, 0.8]),
            ValueError, "y_true must hold class indices 0..1 when labels is None",
        ),
        (
            lambda: expected_calibration_error(["a", "c"], [0.2, 0.8], labels=["a", "b"]),
            ValueError, r"y_true holds labels not in labels: \['c'\]",
        ),
        (
            lambda: expected_calibration_error(["a", "b"], [0.2, 0.8], labels=["a", "b", "c"]),
            ValueError, "labels has 3 entries but y_prob has 2 classes",
        ),
        (
            lambda: expected_calibration_error(["a", "b"], [0.2, 0.8], labels=["a", "a"]),
            ValueError, "labels must be unique",
        ),
        (
            lambda: expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0),
            ValueError, "n_bins must be an int >= 1",
        ),
        (
            lambda: expected_calibration_error([0, 1], [0.2, 0.8], n_bins=2.5),
            ValueError, "n_bins must be an int >= 1",
        ),
        (
            lambda: expected_calibration_error([0, 1], [0.2, 0.8], strategy="kmeans"),
            ValueError, "strategy must be one of",
        ),
        (lambda: expected_calibration_error([[0], [1]], [0.2, 0.8]), ValueError, "y_true must be 1-D"),
        (lambda: risk_rejection_auc([0, 2], [0.1, 0.2]), ValueError, "is_error must be binary"),
        (
            lambda: risk_rejection_auc([0, 1], [0.1, 0.2, 0.3]),
            ValueError, "uncertainty has 3 entries but 2 samples",
        ),
        (lambda: risk_rejection_auc([0, 1], [0.1, np.inf]), ValueError, "uncertainty contains NaN or infinite"),
        (lambda: risk_rejection_auc([0, 1], ["x", "y"]), TypeError, "uncertainty must hold numbers"),
        (lambda: risk_rejection_auc([], []), ValueError, "is_error is empty"),
        (lambda: risk_rejection_auc([0, 1], [0.1, 0.2], n_bins=-1), ValueError, "n_bins must be an int >= 1"),
        (lambda: ood_auroc(["in", "out"], [0.1, 0.2]), ValueError, "is_ood must be binary"),
        (
            lambda: misclassification_auroc([0, 1], [0, 1, 1], [0.1, 0.2]),
            ValueError, "y_pred has 3 entries but 2 samples",
        ),
        (lambda: predictive_entropy([[0.6, 0.6]]), ValueError, "y_prob rows must sum to 1"),
        (lambda: max_prob_uncertainty(["a", "b"]), TypeError, "y_prob must hold probabilities"),
        (lambda: get_scorer("neg_expected_calibration_error", n_bins=0), ValueError, "n_bins must be an int >= 1"),
        (lambda: get_scorer("misclassification_auroc_entropy", n_bins=5), TypeError, "takes no options"),
        (lambda: get_scorer("not_a_scorer"), ValueError, "scoring must be a skprompt scorer name"),
    ],
)
def test_validation_errors_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_float32_probabilities_pass_the_sum_check():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 4)).astype(np.float32)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # float32 rounding
    y = rng.integers(0, 4, size=50)
    assert 0 <= expected_calibration_error(y, proba) <= 1


# ------------------------------------------------------------------- property
def test_random_inputs_stay_in_range_and_constant_uncertainty_gives_error_rate():
    rng = np.random.default_rng(2024)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        n_classes = int(rng.integers(2, 6))
        proba = rng.dirichlet(np.full(n_classes, rng.uniform(0.1, 3.0)), size=n)
        y = rng.integers(0, n_classes, size=n)
        n_bins = int(rng.integers(1, 20))
        for strategy in ("uniform", "quantile"):
            ece = expected_calibration_error(y, proba, n_bins=n_bins, strategy=strategy)
            assert 0.0 <= ece <= 1.0
            # ECE never exceeds the per-sample mean gap |correct - conf| (triangle inequality)
            correct = proba.argmax(1) == y
            assert ece <= np.mean(np.abs(correct - proba.max(1))) + 1e-12
        errors = proba.argmax(1) != y
        u = np.round(predictive_entropy(proba), 1)  # coarse: many ties
        auc = risk_rejection_auc(errors, u, n_bins=n_bins)
        assert 0.0 <= auc <= 1.0
        perm = rng.permutation(n)
        assert risk_rejection_auc(errors[perm], u[perm], n_bins=n_bins) == pytest.approx(auc)
        assert risk_rejection_auc(errors, np.full(n, rng.normal()), n_bins=n_bins) == pytest.approx(errors.mean())


# -------------------------------------------------------------------- scorers
@pytest.fixture(scope="module")
def three_class_data():
    X, y_idx = make_classification(n_samples=120, n_features=6, n_informative=4, n_redundant=0,
                                   n_classes=3, n_clusters_per_class=1, random_state=0)
    return X, np.array(["cat", "dog", "eel"])[y_idx]


def test_get_scorer_names_and_objects():
    assert set(get_scorer_names()) == {
        "neg_expected_calibration_error", "neg_risk_rejection_auc_entropy", "neg_risk_rejection_auc_max_prob",
        "misclassification_auroc_entropy", "misclassification_auroc_max_prob",
    }
    assert repr(get_scorer("neg_expected_calibration_error", n_bins=15)) == (
        "skprompt.metrics.get_scorer('neg_expected_calibration_error', n_bins=15)"
    )
    assert get_scorer("accuracy")._response_method == "predict"  # delegated to sklearn
    assert get_scorer("neg_expected_calibration_error") is not neg_expected_calibration_error_scorer
    assert pickle.loads(pickle.dumps(neg_expected_calibration_error_scorer))._kwargs == {}


def test_scorer_in_grid_search_with_string_labels_matches_the_metric(three_class_data):
    X, y = three_class_data
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.01, 1.0]},
                          scoring=neg_expected_calibration_error_scorer, cv=cv).fit(X, y)
    for i, params in enumerate(search.cv_results_["params"]):
        for split, (train, test) in enumerate(cv.split(X, y)):
            est = clone(LogisticRegression(max_iter=500)).set_params(**params).fit(X[train], y[train])
            direct = expected_calibration_error(y[test], est.predict_proba(X[test]), labels=est.classes_)
            assert search.cv_results_[f"split{split}_test_score"][i] == pytest.approx(-direct)
    assert search.best_params_["C"] in (0.01, 1.0)


def test_scorer_on_a_fold_missing_a_class_and_on_binary_strings(three_class_data):
    X, y = three_class_data
    est = LogisticRegression(max_iter=500).fit(X, y)
    keep = y != "dog"  # a test set without one class: columns must still follow classes_
    proba = est.predict_proba(X[keep])
    expected = expected_calibration_error(y[keep], proba, labels=est.classes_)
    assert neg_expected_calibration_error_scorer(est, X[keep], y[keep]) == pytest.approx(-expected)
    # binary with string labels: sklearn hands the scorer P(classes_[1]) only
    yb = np.where(y == "cat", "yes", "no")
    est_b = LogisticRegression(max_iter=500).fit(X, yb)
    proba_b = est_b.predict_proba(X)
    errors = est_b.classes_[proba_b.argmax(1)] != yb
    assert neg_expected_calibration_error_scorer(est_b, X, yb) == pytest.approx(
        -expected_calibration_error(yb, proba_b, labels=est_b.classes_))
    assert neg_risk_rejection_auc_max_prob_scorer(est_b, X, yb) == pytest.approx(
        -risk_rejection_auc(errors, 1 - proba_b.max(1)))
    assert misclassification_auroc_entropy_scorer(est_b, X, yb) == pytest.approx(
        misclassification_auroc(yb, est_b.classes_[proba_b.argmax(1)], predictive_entropy(proba_b)))


class CountingLogisticRegression(LogisticRegression):
    n_predict_proba = 0

    def predict_proba(self, X):
        type(self).n_predict_proba += 1
        return super().predict_proba(X)


def test_multimetric_scoring_shares_one_predict_proba_call(three_class_data):
    X, y = three_class_data
    CountingLogisticRegression.n_predict_proba = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no AUROC is undefined here
        result = cross_validate(CountingLogisticRegression(max_iter=500), X, y, cv=3,
                                scoring=scorers("accuracy", *get_scorer_names()))
    assert CountingLogisticRegression.n_predict_proba == 3  # one per fold for five proba scorers
    assert np.all(result["test_neg_expected_calibration_error"] <= 0)
    assert np.all((result["test_misclassification_auroc_entropy"] >= 0)
                  & (result["test_misclassification_auroc_entropy"] <= 1))
    search = GridSearchCV(LogisticRegression(max_iter=500), {"C": [0.1, 1.0]}, cv=3,
                          scoring=scorers(), refit="neg_expected_calibration_error").fit(X, y)
    assert search.best_params_ == search.cv_results_["params"][
        int(np.argmin(search.cv_results_["rank_test_neg_expected_calibration_error"]))]


# --------------------------------------------------------- reliability diagram
def test_reliability_diagram_returns_a_calibration_display():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay

    proba = np.array([[0.9, 0.1], [0.15, 0.85], [0.6, 0.4], [0.35, 0.65], [0.55, 0.45]])
    y = np.array(["neg", "pos", "pos", "pos", "neg"])
    # conf .9 c, .85 c, .6 w, .65 c, .55 c ; 2 uniform bins: (.5, 1] holds all -> one point
    # (mean conf = 3.55/5 = .71, accuracy = 4/5)
    fig, ax = plt.subplots()
    disp = reliability_diagram(y, proba, labels=["neg", "pos"], n_bins=2, ax=ax, name="toy")
    assert isinstance(disp, CalibrationDisplay)
    assert disp.ax_ is ax
    np.testing.assert_allclose(disp.prob_pred, [0.71])
    np.testing.assert_allclose(disp.prob_true, [0.8])
    assert ax.get_xlabel() == "Confidence (max probability)"
    # 4 bins: (.5,.75] {.6 w, .65 c, .55 c} -> (.6, 2/3) ; (.75, 1] {.9 c, .85 c} -> (.875, 1)
    disp4 = reliability_diagram(y, proba, labels=["neg", "pos"], n_bins=4, ref_line=False)
    np.testing.assert_allclose(disp4.prob_pred, [0.6, 0.875])
    np.testing.assert_allclose(disp4.prob_true, [2 / 3, 1.0])
    plt.close("all")
