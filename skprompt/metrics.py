"""Reliability metrics: calibration, selective prediction, OOD detection.

The evaluation of Shen et al. (2023): expected calibration error with 10
bins, and the area under the risk–rejection curve for misclassification and
out-of-distribution (OOD) detection, with the predictive entropy or
``1 - max probability`` as uncertainty score. The AUROC of the same scores
is added as the threshold-free, ranking-only view.

========================== ================================================ ============
metric                     definition                                       better
========================== ================================================ ============
expected_calibration_error ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` on    lower,
                           the top label: ``conf_i = max_c p_ic``,          in [0, 1]
                           ``correct_i = [argmax_c p_ic == y_i]``
risk_rejection_auc         ``(1/K) sum_{k=1..K} risk(k/K)``; ``risk(c)`` =  lower,
                           share of failures (errors or OOD inputs) among   in [0, 1]
                           the ``ceil(c * n)`` least uncertain samples
misclassification_auroc    ``roc_auc_score(y_pred != y_true, uncertainty)`` higher,
                                                                            0.5 = chance
ood_auroc                  ``roc_auc_score(is_ood, uncertainty)``           higher,
                                                                            0.5 = chance
predictive_entropy         ``-sum_c p_c log p_c`` (natural log, 0 log 0 =   (a score)
                           0), in ``[0, log C]``
max_prob_uncertainty       ``1 - max_c p_c``, in ``[0, 1 - 1/C]``           (a score)
========================== ================================================ ============

The conventions (ties, bins, the uncertainty scores) and the scorers:
docs/algorithms.md, "Metrics".

Examples
--------
>>> import numpy as np
>>> from skprompt.metrics import expected_calibration_error, risk_rejection_auc
>>> proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
>>> y = np.array([0, 1, 1, 1])
>>> round(expected_calibration_error(y, proba, n_bins=5), 4)
0.25
>>> round(risk_rejection_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], n_bins=4), 4)
0.2083
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy.special import entr
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import roc_auc_score

# Private sklearn API, used on purpose: a subclass of ``_BaseScorer`` receives
# sklearn's cached ``predict_proba`` caller in multi-metric search, so several
# reliability scorers cost one round of model queries instead of one each.
# ``_BaseScorer(score_func, sign, kwargs, response_method)`` and
# ``_score(method_caller, estimator, X, y_true, **kwargs)`` are stable since
# scikit-learn 1.4.
from sklearn.metrics._scorer import _BaseScorer

__all__ = [
    "expected_calibration_error",
    "risk_rejection_curve",
    "risk_rejection_auc",
    "misclassification_auroc",
    "ood_auroc",
    "predictive_entropy",
    "max_prob_uncertainty",
    "reliability_diagram",
    "get_scorer",
    "get_scorer_names",
    "scorers",
    "neg_expected_calibration_error_scorer",
    "neg_risk_rejection_auc_entropy_scorer",
    "neg_risk_rejection_auc_max_prob_scorer",
    "misclassification_auroc_entropy_scorer",
    "misclassification_auroc_max_prob_scorer",
]

STRATEGIES = ("uniform", "quantile")
UNCERTAINTIES = ("entropy", "max_prob")


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _check_n_bins(n_bins):
    if not isinstance(n_bins, numbers.Integral) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1; got {n_bins!r}.")
    return int(n_bins)


def _check_strategy(strategy):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {strategy!r}.")
    return strategy


def _check_uncertainty_name(uncertainty):
    if uncertainty not in UNCERTAINTIES:
        raise ValueError(f"uncertainty must be one of {list(UNCERTAINTIES)}; got {uncertainty!r}.")
    return uncertainty


def _check_proba(y_prob, name="y_prob"):
    """Return ``y_prob`` as a float64 ``(n, C)`` array with ``C >= 2``."""
    arr = np.asarray(y_prob)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold probabilities (numbers); got an array of dtype {arr.dtype}.")
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be 1-D (binary: probability of the positive class) or 2-D "
            f"(n_samples, n_classes); got shape {arr.shape}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one sample is required.")
    if arr.ndim == 2 and arr.shape[1] < 2:
        raise ValueError(
            f"{name} has {arr.shape[1]} column(s); pass at least 2 columns (one per class) or a "
            "1-D array of positive-class probabilities."
        )
    # Row sums are checked to sqrt(eps) of the input's own precision, as
    # sklearn.metrics.log_loss does (float32 softmax outputs pass).
    eps = np.finfo(arr.dtype).eps if arr.dtype.kind == "f" else np.finfo(np.float64).eps
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must hold probabilities in [0, 1]; got values in [{lo:g}, {hi:g}].")
    if arr.ndim == 1:
        return np.column_stack([1.0 - arr, arr])
    sums = arr.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > math.sqrt(eps))
    if bad.size:
        shown = ", ".join(f"row {i}: {sums[i]:.6g}" for i in bad[:3])
        raise ValueError(
            f"{name} rows must sum to 1 (probabilities over the classes); {bad.size} do not ({shown})."
        )
    return arr


def _check_1d(values, name, n=None, numeric=False):
    if hasattr(values, "to_numpy"):  # pandas
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample); got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one sample is required.")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but {n} samples were expected.")
    if numeric:
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold numbers; got an array of dtype {arr.dtype}.")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values.")
    return arr


def _check_binary(values, name, n=None):
    """A 1-D bool array from bool or 0/1 values."""
    arr = _check_1d(values, name, n)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind in "iuf":
        ok = (arr == 0) | (arr == 1)
        if ok.all():
            return arr == 1
    try:
        shown = np.unique(arr)
    except TypeError:  # mixed, unorderable types
        shown = arr
    raise ValueError(f"{name} must be binary (bool, or 0/1 with 1 marking a failure); got values {_preview(shown)}.")


def _check_uncertainty(uncertainty, n):
    return _check_1d(uncertainty, "uncertainty", n, numeric=True)


def _preview(values, k=5):
    values = list(values)
    head = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:k])
    return f"[{head}{', ...' if len(values) > k else ''}]"


def _lookup_codes(y, lookup):
    """Codes of ``y`` in ``lookup`` (-1 where absent) and the absent values."""
    try:  # map the few distinct values, not every sample
        uniq, inverse = np.unique(y, return_inverse=True)
    except TypeError:  # mixed, unorderable label types
        uniq, inverse = np.asarray(y.tolist(), dtype=object), np.arange(y.shape[0])
    codes = np.array([lookup.get(v, -1) for v in uniq.tolist()], dtype=np.int64)
    missing = [v for v, c in zip(uniq.tolist(), codes) if c < 0]
    return codes[np.ravel(inverse)], missing


def _encode(y_true, labels, n_classes):
    """Class indices (int64) of ``y_true`` in the column order of ``y_prob``."""
    y = _check_1d(y_true, "y_true")
    if labels is None:
        kind = y.dtype.kind
        if kind in "biu" or (kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
            idx = y.astype(np.int64)
            bad = (idx < 0) | (idx >= n_classes)
            if not bad.any():
                return idx
            raise ValueError(
                f"y_true holds {_preview(np.unique(y[bad]))}, outside the class indices "
                f"0..{n_classes - 1} of y_prob's {n_classes} columns. Pass labels= (the class of "
                "each column, e.g. estimator.classes_) when y_true holds labels."
            )
        if kind == "O":  # e.g. Python ints in an object array
            idx, missing = _lookup_codes(y, {j: j for j in range(n_classes)})
            if not missing:
                return idx
        raise ValueError(
            f"y_true must hold class indices 0..{n_classes - 1} when labels is None; got values "
            f"{_preview(y)} of dtype {y.dtype}. Pass labels= (the class of each column, e.g. "
            "estimator.classes_)."
        )
    if hasattr(labels, "to_numpy"):
        labels = labels.to_numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per column of y_prob); got shape {labels.shape}.")
    if labels.shape[0] != n_classes:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but y_prob has {n_classes} classes "
            "(a 1-D y_prob is binary: 2 labels, the positive class second)."
        )
    lookup = {lab: j for j, lab in enumerate(labels.tolist())}
    if len(lookup) != n_classes:
        raise ValueError(f"labels must be unique; got {_preview(labels, k=n_classes)}.")
    idx, missing = _lookup_codes(y, lookup)
    if missing:
        raise ValueError(f"y_true holds labels not in labels: {_preview(missing)}.")
    return idx


def _prepare(y_true, y_prob, labels):
    """Validated ``(y_idx, proba)``; ``proba`` is 2-D float64."""
    proba = _check_proba(y_prob)
    y_idx = _encode(y_true, labels, proba.shape[1])
    if y_idx.shape[0] != proba.shape[0]:
        raise ValueError(
            f"y_true and y_prob have different lengths: {y_idx.shape[0]} labels and "
            f"{proba.shape[0]} rows of probabilities."
        )
    return y_idx, proba


# ---------------------------------------------------------------------------
# Uncertainty scores
# ---------------------------------------------------------------------------


def predictive_entropy(y_prob):
    """Entropy of each predictive distribution, ``-sum_c p_c log p_c``.

    Natural logarithm, with ``0 log 0 = 0``; values lie in ``[0, log C]``.

    Parameters
    ----------
    y_prob : array-like of shape (n_samples, n_classes) or (n_samples,)
        Class probabilities (rows summing to 1), or the positive-class
        probability of a binary problem.

    Returns
    -------
    entropy : ndarray of shape (n_samples,)

    Examples
    --------
    >>> from skprompt.metrics import predictive_entropy
    >>> predictive_entropy([[0.5, 0.5], [1.0, 0.0]]).round(4)
    array([0.6931, 0.    ])
    """
    return entr(_check_proba(y_prob)).sum(axis=1)


def max_prob_uncertainty(y_prob):
    """One minus the largest class probability, ``1 - max_c p_c``.

    Values lie in ``[0, 1 - 1/C]``.

    Parameters
    ----------
    y_prob : array-like of shape (n_samples, n_classes) or (n_samples,)
        Class probabilities (rows summing to 1), or the positive-class
        probability of a binary problem.

    Returns
    -------
    uncertainty : ndarray of shape (n_samples,)

    Examples
    --------
    >>> from skprompt.metrics import max_prob_uncertainty
    >>> max_prob_uncertainty([0.9, 0.3]).round(4)
    array([0.1, 0.3])
    """
    return 1.0 - _check_proba(y_prob).max(axis=1)


def _uncertainty_of(proba, uncertainty):
    return entr(proba).sum(axis=1) if uncertainty == "entropy" else 1.0 - proba.max(axis=1)


# ---------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------


def _top_label(y_idx, proba):
    pred = proba.argmax(axis=1)
    return (pred == y_idx).astype(np.float64), proba[np.arange(proba.shape[0]), pred]


def _bin_ids(confidence, n_bins, strategy):
    if strategy == "uniform":
        # b / n_bins is correctly rounded, so an edge equals the float literal
        # (0.3 is the edge 3/10, not 0.30000000000000004 as with linspace).
        edges = np.arange(n_bins + 1) / n_bins
    else:
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, n_bins + 1))
    # side="left" on the inner edges: bins (e_{b-1}, e_b], the first [e_0, e_1].
    return np.searchsorted(edges[1:-1], confidence, side="left")


def expected_calibration_error(y_true, y_prob, *, n_bins=10, strategy="uniform", labels=None):
    """Top-label expected calibration error (ECE).

    ``ECE = sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``, where each sample's
    confidence is its largest class probability, it is correct when the
    class of that probability is ``y_true``, and ``B_b`` are the samples whose
    confidence falls into bin ``b``. See docs/algorithms.md ("Metrics") for
    the bin edge convention (right-closed bins; 1.0 in the last bin).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True classes: indices ``0..C-1`` of ``y_prob``'s columns, or labels
        of any type when ``labels`` is given.
    y_prob : array-like of shape (n_samples, n_classes) or (n_samples,)
        Class probabilities (rows summing to 1), or for a binary problem the
        probability of the positive class (``labels[1]``, or class 1).
    n_bins : int, default=10
        Number of confidence bins (>= 1).
    strategy : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: equal-width bins on [0, 1]; ``"quantile"``: equal-mass
        bins at the quantiles of the confidences.
    labels : array-like of shape (n_classes,), default=None
        The class of each column of ``y_prob`` (e.g. ``estimator.classes_``).

    Returns
    -------
    ece : float
        In [0, 1]; lower is better, 0 for perfect calibration.

    Examples
    --------
    >>> from skprompt.metrics import expected_calibration_error
    >>> y_prob = [0.25, 0.75, 0.5]  # P("yes"); p = 0.5 predicts "no"
    >>> round(expected_calibration_error(["no", "yes", "yes"], y_prob, labels=["no", "yes"]), 4)
    0.3333
    """
    n_bins = _check_n_bins(n_bins)
    strategy = _check_strategy(strategy)
    y_idx, proba = _prepare(y_true, y_prob, labels)
    correct, confidence = _top_label(y_idx, proba)
    bins = _bin_ids(confidence, n_bins, strategy)
    # |B_b|/n * |acc_b - conf_b| = |sum_{B_b} correct - sum_{B_b} conf| / n
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / len(confidence))


# ---------------------------------------------------------------------------
# Selective prediction and detection
# ---------------------------------------------------------------------------


def risk_rejection_curve(is_error, uncertainty, *, n_bins=10):
    """Risk of the most confident ``c`` share of samples, for ``c = 1/K, 2/K, ..., 1``.

    Samples are ranked by ``uncertainty`` (ascending) and the ``ceil(k n / K)``
    least uncertain are kept at coverage ``k / K``, ``K = n_bins``. Ties are
    averaged: a group of tied uncertainties cut by the threshold counts its
    failures in proportion to the share of it that is kept (the expected risk
    under random tie-breaking).

    Parameters
    ----------
    is_error : array-like of shape (n_samples,)
        1 (or True) where a sample counts as a failure: a misclassification,
        or an OOD input when evaluating OOD detection.
    uncertainty : array-like of shape (n_samples,)
        Uncertainty score; higher means less confident.
    n_bins : int, default=10
        Number of coverage levels ``K``.

    Returns
    -------
    coverage : ndarray of shape (n_bins,)
        ``k / n_bins`` for ``k = 1 .. n_bins``.
    risk : ndarray of shape (n_bins,)
        Expected share of failures among the kept samples.

    Examples
    --------
    >>> from skprompt.metrics import risk_rejection_curve
    >>> coverage, risk = risk_rejection_curve([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9], n_bins=4)
    >>> coverage.tolist(), risk.round(4).tolist()
    ([0.25, 0.5, 0.75, 1.0], [0.0, 0.25, 0.3333, 0.5])
    """
    n_bins = _check_n_bins(n_bins)
    failed = _check_binary(is_error, "is_error").astype(np.float64)
    n = failed.shape[0]
    u = _check_uncertainty(uncertainty, n)
    order = np.argsort(u, kind="stable")
    values, counts = np.unique(u[order], return_counts=True)  # groups of tied uncertainty, ascending
    group_end = np.cumsum(counts)
    group_start = group_end - counts
    group_failures = np.add.reduceat(failed[order], group_start)
    failures_before = np.cumsum(group_failures) - group_failures
    k = np.arange(1, n_bins + 1)
    kept = -(-k * n // n_bins)  # ceil(k n / K) in integers, >= 1
    g = np.searchsorted(group_end, kept, side="left")  # group holding the last kept sample
    expected_failures = failures_before[g] + (kept - group_start[g]) * group_failures[g] / counts[g]
    return k / n_bins, expected_failures / kept


def risk_rejection_auc(is_error, uncertainty, *, n_bins=10):
    """Area under the risk–rejection curve: the mean of its ``n_bins`` risks.

    ``(1/K) sum_{k=1..K} risk(k/K)`` with ``risk`` from
    :func:`risk_rejection_curve` (ties averaged, kept count ``ceil(k n / K)``).
    Lower is better; a constant uncertainty gives the overall failure rate.

    Parameters
    ----------
    is_error : array-like of shape (n_samples,)
        1 (or True) where a sample counts as a failure: a misclassification,
        or an OOD input when evaluating OOD detection.
    uncertainty : array-like of shape (n_samples,)
        Uncertainty score; higher means less confident.
    n_bins : int, default=10
        Number of coverage levels (the paper uses 10: 10%, ..., 100%).

    Returns
    -------
    area : float
        In [0, 1]; lower is better.

    Examples
    --------
    >>> from skprompt.metrics import risk_rejection_auc
    >>> risk_rejection_auc([1, 0, 0, 1], [0.3, 0.3, 0.3, 0.3])
    0.5
    """
    return float(np.mean(risk_rejection_curve(is_error, uncertainty, n_bins=n_bins)[1]))


def misclassification_auroc(y_true, y_pred, uncertainty):
    """AUROC of ``uncertainty`` for telling misclassified samples from correct ones.

    ``roc_auc_score(y_pred != y_true, uncertainty)``: the probability that a
    random error gets a higher uncertainty than a random correct prediction
    (ties count 1/2). Undefined (``nan``, with sklearn's
    ``UndefinedMetricWarning``) when there are no errors or only errors.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels (any type).
    y_pred : array-like of shape (n_samples,)
        Predicted labels, comparable with ``y_true``. From probabilities:
        ``classes_[np.argmax(proba, axis=1)]``.
    uncertainty : array-like of shape (n_samples,)
        Uncertainty score; higher means less confident.

    Returns
    -------
    auroc : float
        In [0, 1]; higher is better, 0.5 is chance.

    Examples
    --------
    >>> from skprompt.metrics import misclassification_auroc
    >>> misclassification_auroc(["a", "b", "a"], ["a", "a", "a"], [0.1, 0.9, 0.2])
    1.0
    """
    y_true = _check_1d(y_true, "y_true")
    y_pred = _check_1d(y_pred, "y_pred", y_true.shape[0])
    u = _check_uncertainty(uncertainty, y_true.shape[0])
    # element-wise Python equality: labels of any (mixed) type compare safely
    is_error = y_true.astype(object) != y_pred.astype(object)
    return float(roc_auc_score(is_error.astype(np.int64), u))


def ood_auroc(is_ood, uncertainty):
    """AUROC of ``uncertainty`` for telling OOD inputs from in-distribution ones.

    ``roc_auc_score(is_ood, uncertainty)`` (ties count 1/2; ``nan`` with a
    warning when only one kind of input is present).

    Parameters
    ----------
    is_ood : array-like of shape (n_samples,)
        1 (or True) for an out-of-distribution input.
    uncertainty : array-like of shape (n_samples,)
        Uncertainty score; higher means less confident.

    Returns
    -------
    auroc : float
        In [0, 1]; higher is better, 0.5 is chance.

    Examples
    --------
    >>> from skprompt.metrics import ood_auroc
    >>> ood_auroc([False, False, True], [0.2, 0.6, 0.4])
    0.5
    """
    ood = _check_binary(is_ood, "is_ood")
    u = _check_uncertainty(uncertainty, ood.shape[0])
    return float(roc_auc_score(ood.astype(np.int64), u))


# ---------------------------------------------------------------------------
# Reliability diagram
# ---------------------------------------------------------------------------


def reliability_diagram(
    y_true, y_prob, *, labels=None, n_bins=10, strategy="uniform", ax=None, name=None, **kwargs
):
    """Plot the top-label reliability diagram (accuracy against confidence).

    Each sample contributes its confidence ``max_c p_c`` and whether the
    class of that probability is right; the curve is
    :meth:`sklearn.calibration.CalibrationDisplay.from_predictions` on
    (correct, confidence), so each point is (mean confidence, accuracy) of a
    non-empty bin. Needs matplotlib (the ``plots`` extra).

    Parameters
    ----------
    y_true, y_prob, labels, n_bins, strategy
        As in :func:`expected_calibration_error`.
    ax : matplotlib Axes, default=None
        Axes to draw on; a new figure when ``None``.
    name : str, default=None
        Legend label of the curve.
    **kwargs
        Passed to ``CalibrationDisplay.from_predictions`` (e.g.
        ``ref_line=False``) and on to ``matplotlib.pyplot.plot``.

    Returns
    -------
    display : sklearn.calibration.CalibrationDisplay
        With ``prob_pred`` (mean confidence per bin), ``prob_true``
        (accuracy per bin), ``y_prob`` (the confidences), ``ax_`` and
        ``figure_``.

    Notes
    -----
    ``calibration_curve`` places its uniform edges with ``np.linspace``, so a
    confidence lying exactly on an edge such as 0.3 may sit in a neighbouring
    bin compared with :func:`expected_calibration_error`.
    """
    n_bins = _check_n_bins(n_bins)
    strategy = _check_strategy(strategy)
    y_idx, proba = _prepare(y_true, y_prob, labels)
    try:
        import matplotlib.pyplot  # noqa: F401  (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "reliability_diagram needs matplotlib: pip install 'skprompt[plots]'."
        ) from exc
    from sklearn.calibration import CalibrationDisplay

    correct, confidence = _top_label(y_idx, proba)
    display = CalibrationDisplay.from_predictions(
        correct.astype(np.int64), confidence, n_bins=n_bins, strategy=strategy,
        pos_label=1, ax=ax, name=name, **kwargs,
    )
    display.ax_.set(xlabel="Confidence (max probability)", ylabel="Accuracy")
    return display


# ---------------------------------------------------------------------------
# Scorers
# ---------------------------------------------------------------------------


def _misclassification_rra(y_true, y_prob, *, labels=None, uncertainty="entropy", n_bins=10):
    """Risk–rejection area of misclassification, from probabilities."""
    uncertainty = _check_uncertainty_name(uncertainty)
    y_idx, proba = _prepare(y_true, y_prob, labels)
    errors = proba.argmax(axis=1) != y_idx
    return risk_rejection_auc(errors, _uncertainty_of(proba, uncertainty), n_bins=n_bins)


def _misclassification_auroc_proba(y_true, y_prob, *, labels=None, uncertainty="entropy"):
    """Misclassification AUROC, from probabilities."""
    uncertainty = _check_uncertainty_name(uncertainty)
    y_idx, proba = _prepare(y_true, y_prob, labels)
    pred = proba.argmax(axis=1)
    return misclassification_auroc(y_idx, pred, _uncertainty_of(proba, uncertainty))


class _ReliabilityScorer(_BaseScorer):
    """``scorer(estimator, X, y)`` from ``predict_proba`` and ``classes_``.

    Unlike ``make_scorer``, which hands the metric only ``y_true`` and the
    probabilities (a 1-D positive-class column for binary problems), this
    passes ``labels=estimator.classes_``: the columns are named by the
    fitted estimator, never inferred from the classes present in a fold.
    """

    def __init__(self, name, score_func, sign, kwargs):
        super().__init__(score_func, sign, kwargs, response_method="predict_proba")
        self._name = name

    def _score(self, method_caller, estimator, X, y_true, **kwargs):
        classes = getattr(estimator, "classes_", None)
        if classes is None:
            raise AttributeError(
                f"The {self._name!r} scorer needs a fitted classifier with classes_ and "
                f"predict_proba; {type(estimator).__name__} has no classes_."
            )
        # For a binary classifier sklearn returns P(classes_[-1]) as a 1-D
        # array, which the metrics read as the probability of labels[1].
        y_prob = method_caller(estimator, "predict_proba", X, pos_label=None)
        return self._sign * self._score_func(y_true, y_prob, labels=classes, **{**self._kwargs, **kwargs})

    def __repr__(self):
        args = "".join(f", {k}={v!r}" for k, v in self._kwargs.items() if k not in self._fixed)
        return f"skprompt.metrics.get_scorer({self._name!r}{args})"

    @property
    def _fixed(self):
        return _SCORER_SPECS[self._name][2]


# name -> (score function, sign, fixed kwargs, tunable kwargs)
_SCORER_SPECS = {
    "neg_expected_calibration_error": (expected_calibration_error, -1, {}, ("n_bins", "strategy")),
    "neg_risk_rejection_auc_entropy": (_misclassification_rra, -1, {"uncertainty": "entropy"}, ("n_bins",)),
    "neg_risk_rejection_auc_max_prob": (_misclassification_rra, -1, {"uncertainty": "max_prob"}, ("n_bins",)),
    "misclassification_auroc_entropy": (_misclassification_auroc_proba, 1, {"uncertainty": "entropy"}, ()),
    "misclassification_auroc_max_prob": (_misclassification_auroc_proba, 1, {"uncertainty": "max_prob"}, ()),
}


def get_scorer_names():
    """Names of the skprompt scorers (see :func:`get_scorer`).

    Returns
    -------
    names : list of str
    """
    return list(_SCORER_SPECS)


def _make_scorer(name, **kwargs):
    func, sign, fixed, tunable = _SCORER_SPECS[name]
    unknown = sorted(set(kwargs) - set(tunable))
    if unknown:
        raise TypeError(
            f"scorer {name!r} takes {list(tunable) or 'no options'}; got unexpected {unknown}."
        )
    if "n_bins" in kwargs:
        _check_n_bins(kwargs["n_bins"])
    if "strategy" in kwargs:
        _check_strategy(kwargs["strategy"])
    return _ReliabilityScorer(name, func, sign, {**fixed, **kwargs})


def get_scorer(scoring, **kwargs):
    """A scorer by name: skprompt's reliability scorers, else scikit-learn's.

    Parameters
    ----------
    scoring : str or callable
        One of :func:`get_scorer_names`, or any name known to
        :func:`sklearn.metrics.get_scorer` (e.g. ``"accuracy"``); a callable
        is returned as is.
    **kwargs
        Options of a skprompt metric: ``n_bins`` and ``strategy`` for
        ``neg_expected_calibration_error``, ``n_bins`` for the
        risk–rejection scorers.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y)``, greater is better; pass it as
        ``scoring=`` to ``GridSearchCV``, ``cross_validate``, ...

    Examples
    --------
    >>> from skprompt.metrics import get_scorer
    >>> get_scorer("neg_expected_calibration_error", n_bins=15)
    skprompt.metrics.get_scorer('neg_expected_calibration_error', n_bins=15)
    """
    if callable(scoring):
        if kwargs:
            raise TypeError("options apply to skprompt scorer names only, not to a callable.")
        return scoring
    if isinstance(scoring, str) and scoring in _SCORER_SPECS:
        return _make_scorer(scoring, **kwargs)
    if kwargs:
        raise TypeError(f"options apply to skprompt scorers {get_scorer_names()} only; got {scoring!r}.")
    try:
        return _sklearn_get_scorer(scoring)
    except (ValueError, TypeError):
        raise ValueError(
            f"scoring must be a skprompt scorer name {get_scorer_names()}, a scikit-learn scorer "
            f"name (sklearn.metrics.get_scorer_names()) or a callable; got {scoring!r}."
        ) from None


def scorers(*names):
    """A ``{name: scorer}`` dict for multi-metric search.

    Parameters
    ----------
    *names : str
        skprompt or scikit-learn scorer names; all skprompt scorers when
        none is given.

    Returns
    -------
    scoring : dict of str to callable
        Pass as ``scoring=`` (with ``refit=`` one of the names).

    Examples
    --------
    >>> from skprompt.metrics import scorers
    >>> sorted(scorers("accuracy", "neg_expected_calibration_error"))
    ['accuracy', 'neg_expected_calibration_error']
    """
    names = names or tuple(_SCORER_SPECS)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"scorers takes scorer names (str); got {name!r}.")
    return {name: get_scorer(name) for name in names}


neg_expected_calibration_error_scorer = _make_scorer("neg_expected_calibration_error")
neg_risk_rejection_auc_entropy_scorer = _make_scorer("neg_risk_rejection_auc_entropy")
neg_risk_rejection_auc_max_prob_scorer = _make_scorer("neg_risk_rejection_auc_max_prob")
misclassification_auroc_entropy_scorer = _make_scorer("misclassification_auroc_entropy")
misclassification_auroc_max_prob_scorer = _make_scorer("misclassification_auroc_max_prob")
