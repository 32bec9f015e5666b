"""Conformal prediction sets, with the ties of vote probabilities broken at random.

Split conformal prediction turns a fitted classifier into one that predicts
*sets* of labels holding the true label with probability at least
``confidence_level`` on exchangeable data, whatever the model. Label-only
estimators (``method="abc-smc"`` / ``"snpe"``, or a label-only backend)
predict with the vote of a few prompts, whose probabilities take few distinct
values: the conformity scores tie, a threshold that falls on a tie takes the
whole tie, and the sets come out too large (on Rotten Tomatoes, every label
for every text). Breaking the ties at random makes the coverage exact again.

- :class:`SplitConformalSets`: split conformal sets for any fitted classifier
  with ``predict_proba`` ("lac" or "aps" score, randomized tie-breaking);
  needs no MAPIE.
- :class:`RandomizedLAC`: MAPIE's "lac" score with ties broken at random, for
  ``mapie.classification.SplitConformalClassifier``. MAPIE is an optional
  extra (``pip install "skprompt[conformal]"``), imported on first use of the
  name, never by ``import skprompt`` or ``import skprompt.conformal``.
- :func:`coverage_and_size`: the share of samples whose set holds the true
  label, and the mean set size, for sets in ``classes`` order.

The guide is ``docs/conformal.md``.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._validation import label_vector

__all__ = ["SplitConformalSets", "RandomizedLAC", "coverage_and_size", "CONFORMITY_SCORES"]

#: Conformity scores of :class:`SplitConformalSets`: ``"lac"`` (1 minus the
#: probability of the label) and ``"aps"`` (the probability mass of the labels
#: ranked at or above it).
CONFORMITY_SCORES = ("lac", "aps")

# Scores closer than this are equal (a tie): summation order must not decide
# which of two texts with the same vote counts is included.
_SCORE_DECIMALS = 12


def _is_bool(value):
    return isinstance(value, (bool, np.bool_))


def _n_samples(X, name):
    """Number of samples of ``X`` (an array, a DataFrame, a list of texts...)."""
    if isinstance(X, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of samples (e.g. a list of texts), not a single "
                        f"{type(X).__name__}.")
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[0])
    try:
        return len(X)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of samples (list, array, Series...); got "
                        f"{type(X).__name__}.") from None


def _label_indices(y, classes, name, classes_name):
    """Positions of the labels ``y`` in ``classes``; a clear error for unknown ones."""
    position = {label: i for i, label in enumerate(classes.tolist())}
    try:
        indices = np.array([position.get(label, -1) for label in y.tolist()], dtype=np.intp)
    except TypeError:  # unhashable labels
        raise TypeError(f"{name} must hold hashable labels (str, int...); got {y[:3].tolist()!r}...") from None
    unknown = y[indices < 0]
    if len(unknown):
        shown = list(dict.fromkeys(unknown.tolist()))
        raise ValueError(f"{name} has labels that are not in {classes_name} {classes.tolist()!r}: "
                         f"{shown[:5]!r}{' ...' if len(shown) > 5 else ''}.")
    return indices


def _check_labels_1d(y, n_samples, name, n_name):
    return label_vector(y, n_samples, name, x_name=n_name, unit="sample", required="one label per sample")


def _min_conformalize(confidence_level):
    """Fewest conformalization samples for which a set can leave a label out."""
    return math.ceil(confidence_level / (1.0 - confidence_level) - 1e-9)


class SplitConformalSets(MetaEstimatorMixin, BaseEstimator):
    """Split conformal prediction sets for a classifier with ``predict_proba``.

    On exchangeable data, the set of a new sample holds its true label with
    probability at least ``confidence_level`` (marginally, over the
    conformalization draw and the new sample), whatever the estimator and
    however (un)calibrated its probabilities. With ``randomized=True`` the
    expected coverage is also at most ``confidence_level + 1 / (n + 1)`` for
    ``n`` conformalization samples, even when the probabilities take few
    distinct values, as the vote probabilities of label-only estimators do:
    scores that tie are ordered at random, so that a threshold that falls on
    a tie takes the share of it that makes the coverage exact, instead of the
    whole tie. This needs no MAPIE, and no array one-liner: ``X`` is passed
    to the estimator as it is (a list of texts works).

    Parameters
    ----------
    estimator : classifier
        A classifier with ``predict_proba`` and ``classes_``, e.g. a
        :class:`~skprompt.BlackBoxPromptClassifier`. Fitted, unless
        ``prefit=False``. It is used as it is (not copied) with
        ``prefit=True``.
    confidence_level : float, default=0.9
        Target coverage of the sets, in (0, 1). At least
        ``confidence_level / (1 - confidence_level)`` conformalization
        samples are needed for a set to ever leave a label out (9 for 0.9).
    conformity_score : {"lac", "aps"}, default="lac"
        ``"lac"``: 1 minus the probability of the label (the smallest sets
        on average; a set can be empty where no label is likely enough).
        ``"aps"``: the probability mass of the labels ranked above the label
        plus its own (Romano et al., 2020), randomized as in that paper when
        ``randomized=True``; sets adapt their size to the sample's
        uncertainty and grow from the most probable label down.
    randomized : bool, default=True
        Break ties between scores at random (each (sample, label) score gets
        an independent uniform draw that orders equal scores), and with
        ``"aps"`` randomize the label's own mass. ``False`` gives the plain
        deterministic sets: every label tied with the threshold is in, and
        the coverage can be far above ``confidence_level`` on tied votes;
        with continuous probabilities both agree (sets differ only on exact
        ties).
    prefit : bool, default=True
        Whether ``estimator`` is fitted already (then call
        :meth:`conformalize` directly). With ``False``, :meth:`fit` fits a
        clone of it first.
    random_state : int, RandomState instance or None, default=None
        Seeds the tie-breaking draws, through
        :func:`sklearn.utils.check_random_state`, in :meth:`conformalize`;
        each :meth:`predict_set` call then draws anew from the same
        generator, so that a fixed seed and the same calls give the same
        sets.

    Attributes
    ----------
    estimator_ : classifier
        The fitted estimator that gives the probabilities: ``estimator``
        itself with ``prefit=True``, else the clone fitted by :meth:`fit`.
    classes_ : ndarray of shape (n_classes,)
        ``estimator_.classes_``: the order of the columns of the sets.
    conformity_scores_ : ndarray of shape (n_conformalize,)
        The score of the true label of each conformalization sample (lower
        is more conforming; rounded to 12 decimals, below which scores tie).
    threshold_ : float
        The ``ceil((n + 1) * confidence_level)``-th smallest of
        ``conformity_scores_`` (with ties broken at random), ``inf`` when
        that exceeds ``n``: a label is in a set when its score is below the
        threshold, or equal to it and its tie-breaking draw is not above
        the threshold sample's (every tied label with ``randomized=False``).

    See Also
    --------
    RandomizedLAC : the same tie-breaking, for MAPIE's ``SplitConformalClassifier``.
    coverage_and_size : measure sets on labelled samples.

    Notes
    -----
    With ``n`` conformalization samples, ``k = ceil((n + 1) * confidence_level)``.
    The scores of the conformalization samples' true labels, paired with
    their tie-breaking draws, are sorted (score first, then draw), and the
    k-th pair is the threshold. A new sample's true-label pair is exchangeable
    with the conformalization pairs and, with randomized draws, almost surely
    distinct from them, so it ranks among the ``n + 1`` pairs uniformly at
    random: the coverage is ``k / (n + 1)`` in expectation, which is in
    ``[confidence_level, confidence_level + 1 / (n + 1))``.

    References
    ----------
    Vovk, Gammerman and Shafer, *Algorithmic Learning in a Random World*
    (2005), for smoothed (randomized) conformal prediction. Sadinle, Lei and
    Wasserman, "Least Ambiguous Set-Valued Classifiers with Bounded Error
    Levels", JASA 2019 ("lac"). Romano, Sesia and Candès, "Classification
    with Valid and Adaptive Coverage", NeurIPS 2020 ("aps").

    Examples
    --------
    A k-nearest-neighbours classifier predicts the vote of 5 neighbours: its
    probabilities take 6 values, like the vote of a few prompts.

    >>> from sklearn.datasets import make_classification
    >>> from sklearn.neighbors import KNeighborsClassifier
    >>> from skprompt.conformal import SplitConformalSets, coverage_and_size
    >>> X, y = make_classification(n_samples=3000, flip_y=0.3, random_state=0)
    >>> knn = KNeighborsClassifier().fit(X[:1000], y[:1000])
    >>> sets = SplitConformalSets(knn, confidence_level=0.9, random_state=0)
    >>> sets.conformalize(X[1000:2000], y[1000:2000])
    SplitConformalSets(estimator=KNeighborsClassifier(), random_state=0)
    >>> y_pred, y_set = sets.predict_set(X[2000:])
    >>> y_set.shape
    (1000, 2)
    >>> coverage, size = coverage_and_size(y[2000:], y_set, sets.classes_)
    >>> print(f"coverage {coverage:.3f}, mean set size {size:.3f}")
    coverage 0.902, mean set size 1.508

    Without tie-breaking the threshold takes a whole tie of scores, and the
    sets are larger than they need to be:

    >>> plain = SplitConformalSets(knn, randomized=False).conformalize(X[1000:2000], y[1000:2000])
    >>> coverage, size = coverage_and_size(y[2000:], plain.predict_set(X[2000:])[1], plain.classes_)
    >>> print(f"coverage {coverage:.3f}, mean set size {size:.3f}")
    coverage 0.955, mean set size 1.813
    """

    def __init__(self, estimator, *, confidence_level=0.9, conformity_score="lac", randomized=True,
                 prefit=True, random_state=None):
        self.estimator = estimator
        self.confidence_level = confidence_level
        self.conformity_score = conformity_score
        self.randomized = randomized
        self.prefit = prefit
        self.random_state = random_state

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        level = self.confidence_level
        if (not isinstance(level, numbers.Real) or _is_bool(level) or not np.isfinite(level)
                or not 0.0 < level < 1.0):
            raise ValueError(f"confidence_level must be a float in the open interval (0, 1), e.g. 0.9; "
                             f"got {level!r}.")
        if not isinstance(self.conformity_score, str) or self.conformity_score not in CONFORMITY_SCORES:
            raise ValueError(f"conformity_score must be one of {list(CONFORMITY_SCORES)}; "
                             f"got {self.conformity_score!r}.")
        for name in ("randomized", "prefit"):
            if not _is_bool(getattr(self, name)):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}.")
        if not callable(getattr(self.estimator, "predict_proba", None)):
            raise TypeError(f"estimator must be a classifier with a predict_proba method; got "
                            f"{type(self.estimator).__name__}.")
        try:
            return check_random_state(self.random_state)
        except ValueError:
            raise ValueError(f"random_state must be None, an int or a numpy RandomState; "
                             f"got {self.random_state!r}.") from None

    def _fitted_estimator(self):
        if self.prefit:
            estimator = self.estimator
            try:
                if callable(getattr(estimator, "fit", None)):  # an estimator; else a fixed model, fitted by nature
                    check_is_fitted(estimator)
                if not hasattr(estimator, "classes_"):
                    raise NotFittedError
            except NotFittedError:
                raise NotFittedError(f"estimator ({type(estimator).__name__}) is not fitted (it has no classes_): "
                                     "fit it first, or pass prefit=False and call fit(X_train, y_train).") from None
            return estimator
        if not hasattr(self, "estimator_"):
            raise NotFittedError("prefit=False: call fit(X_train, y_train) before conformalize, or pass a fitted "
                                 "estimator with prefit=True.")
        return self.estimator_

    # ------------------------------------------------------------------- fit
    def fit(self, X_train, y_train, **fit_params):
        """Fit a clone of ``estimator`` (``prefit=False`` only).

        Parameters
        ----------
        X_train : array-like or sequence of str
            Training samples, passed to the estimator's ``fit`` as they are.
        y_train : array-like of shape (n_samples,)
            Their labels.
        **fit_params : dict
            Passed to the estimator's ``fit``.

        Returns
        -------
        self : SplitConformalSets
            Call :meth:`conformalize` next; a previous conformalization is
            dropped.
        """
        self._validate_params()
        if self.prefit:
            raise ValueError("prefit=True: estimator is used as it is, already fitted; call "
                             "conformalize(X_conformalize, y_conformalize), or pass prefit=False to fit a clone.")
        for name in ("classes_", "conformity_scores_", "threshold_"):
            self.__dict__.pop(name, None)
        self.estimator_ = clone(self.estimator).fit(X_train, y_train, **fit_params)
        return self

    def conformalize(self, X_conformalize, y_conformalize):
        """Compute the threshold from held-out labelled samples.

        Every argument is checked before the estimator is asked for a
        probability (a query to the model, for skprompt's estimators).

        Parameters
        ----------
        X_conformalize : array-like or sequence of str
            Samples that the estimator was not fitted on, exchangeable with
            the samples to predict; passed to ``predict_proba`` as they are.
        y_conformalize : array-like of shape (n_samples,)
            Their labels, all in the estimator's ``classes_``.

        Returns
        -------
        self : SplitConformalSets
        """
        rng = self._validate_params()
        estimator = self._fitted_estimator()
        classes = np.asarray(estimator.classes_)
        n = _n_samples(X_conformalize, "X_conformalize")
        if n == 0:
            raise ValueError("X_conformalize is empty: conformalization needs labelled samples.")
        y = _check_labels_1d(y_conformalize, n, "y_conformalize", "X_conformalize")
        true = _label_indices(y, classes, "y_conformalize", "the estimator's classes_")
        k = math.ceil((n + 1) * self.confidence_level - 1e-9)  # the exact split-conformal rank
        if k > n:
            warnings.warn(f"{n} conformalization samples are too few for confidence_level="
                          f"{self.confidence_level}: every set holds every label (at least "
                          f"{_min_conformalize(self.confidence_level)} samples are needed).", UserWarning,
                          stacklevel=2)

        self._score_setup = (self.conformity_score, bool(self.randomized))  # what predict_set must reuse
        proba = self._predict_proba(estimator, X_conformalize, n, classes)
        scores, draws = self._scores(proba, rng)
        rows = np.arange(n)
        scores, draws = scores[rows, true], draws[rows, true]
        if k > n:
            threshold, tie = np.inf, 1.0
        else:
            kth = np.lexsort((draws, scores))[k - 1]  # by score, ties by the random draw
            threshold, tie = float(scores[kth]), float(draws[kth])

        self.estimator_ = estimator
        self.classes_ = classes
        self.conformity_scores_ = scores
        self.threshold_ = threshold
        self._tie = tie
        self._rng = rng
        return self

    # --------------------------------------------------------------- predict
    def predict_set(self, X):
        """Point predictions and prediction sets of new samples.

        Parameters
        ----------
        X : array-like or sequence of str
            Samples, passed to the estimator's ``predict_proba`` (called once).

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The most probable label of each sample, ``classes_[argmax(proba)]``
            (as MAPIE does).
        y_set : ndarray of bool, shape (n_samples, n_classes)
            ``y_set[i, j]`` is True when ``classes_[j]`` is in sample ``i``'s
            set. One confidence level, so no third axis (MAPIE's sets have
            shape ``(n_samples, n_classes, n_confidence_levels)``). With
            ``randomized=True`` each call draws new tie-breaking numbers.
        """
        check_is_fitted(self, "threshold_", msg="This SplitConformalSets is not conformalized yet: call "
                                                "conformalize(X_conformalize, y_conformalize) first.")
        n = _n_samples(X, "X")
        proba = self._predict_proba(self.estimator_, X, n, self.classes_)
        scores, draws = self._scores(proba, self._rng)
        y_set = (scores < self.threshold_) | ((scores == self.threshold_) & (draws <= self._tie))
        return self.classes_[np.argmax(proba, axis=1)], y_set

    def predict(self, X):
        """The estimator's point predictions, ``estimator_.predict(X)``.

        Parameters
        ----------
        X : array-like or sequence of str

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)

    # ---------------------------------------------------------------- scores
    @staticmethod
    def _predict_proba(estimator, X, n, classes):
        proba = np.asarray(estimator.predict_proba(X), dtype=float)
        if proba.shape != (n, len(classes)):
            raise ValueError(f"{type(estimator).__name__}.predict_proba returned an array of shape {proba.shape} "
                             f"for {n} samples and {len(classes)} classes; expected {(n, len(classes))}.")
        if not np.all(np.isfinite(proba)):
            raise ValueError(f"{type(estimator).__name__}.predict_proba returned NaN or infinite values.")
        return proba

    def _scores(self, proba, rng):
        """Scores of every (sample, label), and their tie-breaking draws, shape (n, n_classes),
        with the score and randomization of the last ``conformalize`` (not of later ``set_params``)."""
        n, n_classes = proba.shape
        score, randomized = self._score_setup
        proba = np.round(proba, _SCORE_DECIMALS)
        if score == "lac":
            scores = 1.0 - proba
        else:
            scores = self._aps_scores(proba, rng, randomized)
        scores = np.round(scores, _SCORE_DECIMALS)
        if randomized:
            draws = rng.uniform(size=(n, n_classes))
        else:
            draws = np.zeros((n, n_classes))
        return scores, draws

    @staticmethod
    def _aps_scores(proba, rng, randomized):
        n, n_classes = proba.shape
        if randomized:  # most probable first, tied labels in random order
            order = np.lexsort((rng.uniform(size=(n, n_classes)), -proba), axis=-1)
        else:
            order = np.argsort(-proba, axis=1, kind="stable")
        ranked = np.take_along_axis(proba, order, axis=1)
        mass = np.cumsum(ranked, axis=1)
        if randomized:  # the mass above the label plus a uniform share of its own (Romano et al.)
            ranked_scores = mass - (1.0 - rng.uniform(size=(n, 1))) * ranked
        else:  # the mass of every label at least as probable: tied labels enter together
            last = np.ones((n, n_classes), dtype=bool)
            last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
            end = np.where(last, np.arange(n_classes), n_classes)
            end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
            ranked_scores = np.take_along_axis(mass, end, axis=1)
        scores = np.empty_like(proba)
        np.put_along_axis(scores, order, ranked_scores, axis=1)
        return scores


def coverage_and_size(y_true, y_set, classes):
    """Share of samples whose set holds the true label, and the mean set size.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels (the labels themselves, e.g. str, not their positions).
    y_set : array-like of bool, shape (n_samples, n_classes) or (n_samples, n_classes, n_levels)
        Prediction sets, columns in ``classes`` order: the second output of
        :meth:`SplitConformalSets.predict_set`, or of MAPIE's ``predict_set``
        (3-D, one slice per confidence level).
    classes : array-like of shape (n_classes,)
        The labels of the columns, e.g. the estimator's ``classes_``.

    Returns
    -------
    coverage : float or ndarray of shape (n_levels,)
        Empirical coverage, in [0, 1]: a float for 2-D sets, one value per
        confidence level for 3-D sets.
    mean_size : float or ndarray of shape (n_levels,)
        Mean number of labels per set, likewise.

    Notes
    -----
    MAPIE's ``classification_coverage_score`` wants the true labels as column
    positions; this takes the labels and ``classes``, and needs no MAPIE.

    Examples
    --------
    >>> import numpy as np
    >>> from skprompt.conformal import coverage_and_size
    >>> y_set = np.array([[True, False], [True, True], [False, False], [False, True]])
    >>> coverage_and_size(["neg", "pos", "pos", "neg"], y_set, classes=["neg", "pos"])
    (0.5, 1.0)
    """
    if hasattr(y_set, "to_numpy"):
        y_set = y_set.to_numpy()
    y_set = np.asarray(y_set)
    if y_set.ndim not in (2, 3):
        raise ValueError(f"y_set must have shape (n_samples, n_classes) or (n_samples, n_classes, n_levels); "
                         f"got shape {y_set.shape}.")
    if y_set.dtype != bool:
        if y_set.dtype.kind not in "iuf" or not np.isin(y_set, (0, 1)).all():
            raise ValueError(f"y_set must hold booleans (label in the set or not); got dtype {y_set.dtype}.")
        y_set = y_set.astype(bool)
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) != y_set.shape[1]:
        raise ValueError(f"classes must be 1-D with one label per column of y_set ({y_set.shape[1]}); "
                         f"got shape {classes.shape}.")
    y = _check_labels_1d(y_true, y_set.shape[0], "y_true", "y_set")
    if len(y) == 0:
        raise ValueError("y_true and y_set are empty: there is no coverage to measure.")
    true = _label_indices(y, classes, "y_true", "classes")
    coverage = y_set[np.arange(len(y)), true].mean(axis=0)
    mean_size = y_set.sum(axis=1).mean(axis=0)
    if y_set.ndim == 2:
        return float(coverage), float(mean_size)
    return coverage, mean_size


# ----------------------------------------------------------------------------
# RandomizedLAC: a MAPIE conformity score, built on first access (PEP 562) so
# that importing this module does not import MAPIE.
# ----------------------------------------------------------------------------
def _build_randomized_lac():
    try:
        from mapie.conformity_scores import LACConformityScore
    except ImportError as exc:
        raise ImportError(
            "skprompt.conformal.RandomizedLAC is a conformity score for MAPIE, which is not installed: "
            'pip install "skprompt[conformal]" (or "mapie>=1.0"). SplitConformalSets needs no MAPIE.'
        ) from exc

    class RandomizedLAC(LACConformityScore):
        """MAPIE's "lac" score (1 - probability of the label) with ties broken at random.

        For ``mapie.classification.SplitConformalClassifier``
        (``conformity_score=RandomizedLAC()``). It adds ``jitter * U(0, 1)``
        to every conformalization score and to every (sample, label) score at
        prediction, so that no two scores are equal: the coverage of the sets
        is then at least ``confidence_level`` and less than
        ``confidence_level + 1 / (n_conformalize + 1)`` on average, however
        few distinct values the probabilities take (vote probabilities),
        where plain "lac" includes every label tied with the threshold. A
        label whose score equals the threshold is included at random, in the
        share that makes the coverage exact. With continuous probabilities
        the jitter only reorders scores closer than ``jitter``. MAPIE accepts
        it for a binary target, as it is a subclass of its
        ``LACConformityScore``.

        MAPIE is imported when this name is first used (``pip install
        "skprompt[conformal]"``); without MAPIE, use
        :class:`SplitConformalSets`.

        Parameters
        ----------
        jitter : float, default=1e-4
            Scale of the uniform noise added to the scores, > 0; smaller than
            the gap between distinct probabilities that should stay ordered
            (with 16 votes, 1/16).

        Attributes
        ----------
        rng_ : numpy.random.RandomState
            The generator of the noise, from the ``random_state`` given to
            MAPIE's classifier (``check_random_state``), set when MAPIE
            conformalizes. Pass ``random_state`` to MAPIE for reproducible
            sets; each ``predict_set`` call draws anew.

        See Also
        --------
        SplitConformalSets : the same, exact tie-breaking without MAPIE.

        Examples
        --------
        MAPIE needs the texts of skprompt's estimators as an array
        (``np.asarray(texts, dtype=object)``); here the samples are numbers.
        The 5-neighbour vote takes 6 probability values:

        >>> from mapie.classification import SplitConformalClassifier
        >>> from sklearn.datasets import make_classification
        >>> from sklearn.neighbors import KNeighborsClassifier
        >>> from skprompt.conformal import RandomizedLAC, coverage_and_size
        >>> X, y = make_classification(n_samples=3000, flip_y=0.3, random_state=0)
        >>> knn = KNeighborsClassifier().fit(X[:1000], y[:1000])
        >>> mapie = SplitConformalClassifier(knn, confidence_level=0.9, conformity_score=RandomizedLAC(),
        ...                                  prefit=True, random_state=0)
        >>> y_pred, y_set = mapie.conformalize(X[1000:2000], y[1000:2000]).predict_set(X[2000:])
        >>> y_set.shape
        (1000, 2, 1)
        >>> coverage, size = coverage_and_size(y[2000:], y_set[:, :, 0], knn.classes_)
        >>> print(f"coverage {coverage:.3f}, mean set size {size:.3f}")
        coverage 0.890, mean set size 1.451

        MAPIE's plain "lac" score includes every label tied with the threshold:

        >>> plain = SplitConformalClassifier(knn, confidence_level=0.9, prefit=True)
        >>> y_set = plain.conformalize(X[1000:2000], y[1000:2000]).predict_set(X[2000:])[1]
        >>> coverage, size = coverage_and_size(y[2000:], y_set[:, :, 0], knn.classes_)
        >>> print(f"coverage {coverage:.3f}, mean set size {size:.3f}")
        coverage 0.955, mean set size 1.813
        """

        def __init__(self, jitter=1e-4):
            super().__init__()
            self.jitter = jitter

        def set_external_attributes(self, *, random_state=None, **kwargs):
            """Check ``jitter`` and seed the noise (MAPIE calls this before any prediction).

            Parameters
            ----------
            random_state : int, RandomState instance or None, default=None
                MAPIE's ``random_state``.
            **kwargs : dict
                MAPIE's other attributes (``classes``, ``label_encoder``...).
            """
            jitter = self.jitter
            if (not isinstance(jitter, numbers.Real) or _is_bool(jitter) or not np.isfinite(jitter)
                    or not 0.0 < jitter < 1.0):
                raise ValueError(f"RandomizedLAC's jitter must be a float in (0, 1), e.g. 1e-4; got {jitter!r}.")
            super().set_external_attributes(random_state=random_state, **kwargs)
            self.rng_ = check_random_state(random_state)

        def get_conformity_scores(self, y, y_pred, y_enc=None, **kwargs):
            """MAPIE's "lac" scores of the conformalization samples plus ``jitter * U(0, 1)``.

            Parameters
            ----------
            y : ndarray of shape (n_samples,)
                Labels.
            y_pred : ndarray of shape (n_samples, n_classes)
                Predicted probabilities.
            y_enc : ndarray of shape (n_samples,)
                Labels as column positions.
            **kwargs : dict
                Passed to MAPIE.

            Returns
            -------
            ndarray of shape (n_samples, 1)
            """
            scores = super().get_conformity_scores(y, y_pred, y_enc=y_enc, **kwargs)
            return scores + self.jitter * self.rng_.uniform(size=scores.shape)

        def get_prediction_sets(self, y_pred_proba, conformity_scores, alpha_np, cv, agg_scores="mean",
                                **kwargs):
            """MAPIE's "lac" sets, every (sample, label) score plus ``jitter * U(0, 1)``.

            Parameters
            ----------
            y_pred_proba : ndarray of shape (n_samples, n_classes, n_alpha)
                Predicted probabilities.
            conformity_scores : ndarray of shape (n_conformalize, 1)
                The conformalization scores.
            alpha_np : ndarray of shape (n_alpha,)
                1 - confidence levels.
            cv : str or None
                MAPIE's cross-validation setting.
            agg_scores : str, default="mean"
                MAPIE's aggregation.
            **kwargs : dict
                Passed to MAPIE.

            Returns
            -------
            ndarray of bool, shape (n_samples, n_classes, n_alpha)
            """
            noise = self.jitter * self.rng_.uniform(size=y_pred_proba.shape[:2] + (1,))
            return super().get_prediction_sets(y_pred_proba - noise, conformity_scores, alpha_np, cv,
                                               agg_scores=agg_scores, **kwargs)

    RandomizedLAC.__qualname__ = "RandomizedLAC"  # picklable as skprompt.conformal.RandomizedLAC
    return RandomizedLAC


def __getattr__(name):
    if name == "RandomizedLAC":
        value = globals()[name] = _build_randomized_lac()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
