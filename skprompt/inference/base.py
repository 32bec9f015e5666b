"""What every prompt-distribution learner sees and returns.

A learner never sees a text, a tokenizer or a model. It gets a *problem*: an
object that evaluates batches of candidate vectors ``Z`` (shape ``(n, dim)``)
on the training or validation split and keeps the query budget. It returns
prompt samples with weights. The estimator builds the problem (see
``skprompt._problem``); tests build small synthetic ones.

The problem protocol (duck-typed)
---------------------------------
``dim`` : int
    Dimension of the search space.
``labels_only`` : bool
    ``True`` when only predicted labels are available (``outputs`` then
    returns int labels of shape ``(n, n_texts)``).
``n_classes`` : int
    Number of classes.
``loss_name`` : str
    The training loss (see :mod:`skprompt.losses`).
``y(split)`` -> ndarray of int
    True class indices of ``"train"`` or ``"val"``.
``has_split(split)`` -> bool
    Whether the split exists (``"val"`` may not).
``n_texts(split)`` -> int
    Number of texts in the split.
``outputs(Z, split)`` -> ndarray
    Class log-probabilities ``(n, n_texts, n_classes)`` or labels
    ``(n, n_texts)``. Raises :class:`BudgetExhausted` *before* querying if the
    request does not fit in the budget.
``loss(Z, split)`` -> ndarray of shape (n,)
    Mean ``loss_name`` of each candidate.
``remaining`` : float
    Queries ((prompt, text) pairs) left in the budget; ``inf`` without one.
``fits_readout`` : bool, optional
    ``True`` when every candidate's outputs go through a read-out fitted on
    its training scores: a candidate asked for on the validation split
    without training scores costs those too (see :func:`request_cost`).
``report(**info)``
    Progress hook, called once per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "BudgetExhausted",
    "PosteriorWarning",
    "LearnerResult",
    "SelectionSlot",
    "select_without",
    "slot_choice",
    "Learner",
    "aggregate_outputs",
    "predictive_log_loss",
    "predictive_error",
    "request_cost",
]


class BudgetExhausted(RuntimeError):
    """Raised by a problem when a request would exceed the query budget.

    Nothing is queried when it is raised: the learner stops and keeps the best
    it has found so far.
    """


class PosteriorWarning(UserWarning):
    """A learner's posterior over prompts is suspect (for example, ``snpe``'s
    is indistinguishable from its prior); the message says why and what to try."""


@dataclass
class SelectionSlot:
    """One kept part of a learner's result and the validated options it was chosen from.

    A learner that keeps what scores best on the validation split records,
    for each independently chosen part of its result (a CMA-ES member, the
    population of a round), every option it validated, so that the choice
    can be re-made without any one validation text (:func:`select_without`)
    from answers already paid for: what a prompt would have been had a text
    not chosen it.

    Attributes
    ----------
    options : list of (ndarray of shape (n, dim), ndarray of shape (n,))
        The candidate prompt sets and their weights, in the order the learner
        met them.
    losses : ndarray of shape (n_options, n_val)
        Each option's selection loss on each validation text; an option's
        validation loss is the mean of its row.
    tiebreak : ndarray of shape (n_options,)
        Second key: among options of equal validation loss the lowest wins,
        then the first in order.
    weight : float
        Share of the result's weight this slot carries.
    """

    options: list
    losses: np.ndarray
    tiebreak: np.ndarray
    weight: float = 1.0


def slot_choice(slot, mask=None):
    """Index of the option ``slot`` keeps when only ``mask``'s validation texts
    choose (``None``: all): lowest mean loss, then tiebreak, then order."""
    losses = np.asarray(slot.losses, dtype=np.float64)
    kept = losses if mask is None else losses[:, np.asarray(mask, dtype=bool)]
    mean = kept.mean(axis=1) if kept.shape[1] else np.zeros(len(losses))
    return int(np.lexsort((np.arange(len(mean)), np.asarray(slot.tiebreak, dtype=np.float64), mean))[0])


def select_without(slots, mask=None):
    """Re-make each slot's choice on the validation texts where ``mask`` is True.

    Parameters
    ----------
    slots : list of SelectionSlot
    mask : ndarray of bool of shape (n_val,) or None
        Texts allowed to choose; ``None``: all of them (the learner's own choice).

    Returns
    -------
    samples : ndarray of shape (n_samples, dim)
    weights : ndarray of shape (n_samples,)
        Summing to 1.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = (np.zeros((1, 2)), np.ones(1)), (np.ones((1, 2)), np.ones(1))
    >>> slot = SelectionSlot([a, b], np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]), np.zeros(2))
    >>> select_without([slot])[0].tolist()       # b errs on 2 of 3 texts, a on 1
    [[0.0, 0.0]]
    >>> select_without([slot], np.array([False, True, True]))[0].tolist()
    [[0.0, 0.0]]
    >>> select_without([slot], np.array([True, False, False]))[0].tolist()
    [[1.0, 1.0]]
    """
    samples, weights = [], []
    for slot in slots:
        Z, w = slot.options[slot_choice(slot, mask)]
        w = np.asarray(w, dtype=np.float64)
        samples.append(np.atleast_2d(Z))
        weights.append(slot.weight * w / w.sum())
    weights = np.concatenate(weights)
    return np.vstack(samples), weights / weights.sum()


@dataclass
class LearnerResult:
    """What a learner returns.

    Attributes
    ----------
    samples : ndarray of shape (n_samples, dim)
        The kept prompt vectors z_k.
    weights : ndarray of shape (n_samples,)
        Their weights, summing to 1.
    history : ndarray of shape (n_iter, n_members)
        Best training loss found so far, per iteration and per independent
        run (one column for single-run learners); NaN after a run stopped.
    n_iter : int
        Iterations (generations, rounds) done.
    budget_exhausted : bool
        Whether the learner stopped because the query budget ran out.
    info : dict
        Learner-specific diagnostics (validation scores, tolerances, ...).
    warnings : list of (Warning subclass, str)
        Advice for the user. Learners do not warn themselves: the estimator
        emits these from its ``fit``, so that they point at the user's call.
    selection : list of SelectionSlot or None
        How the samples were chosen on the validation split, for
        leave-one-out re-selection (:func:`select_without`); ``None`` when
        nothing was chosen there. Recorded for label-only problems.
    """

    samples: np.ndarray
    weights: np.ndarray
    history: np.ndarray
    n_iter: int
    budget_exhausted: bool = False
    info: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    selection: list | None = None


class Learner:
    """Base class: ``fit(problem, random_state) -> LearnerResult``.

    Subclasses set ``needs_scores`` (``True`` if they need class scores and so
    cannot run on a label-only API) and implement :meth:`fit` and
    :meth:`minimum_budget`.
    """

    needs_scores = True

    def minimum_budget(self, problem):
        """Queries needed for one iteration: a budget below it is rejected up front."""
        raise NotImplementedError

    def fit(self, problem, random_state):
        raise NotImplementedError


def request_cost(problem, n_candidates, split, fresh=False):
    """Queries used to evaluate ``n_candidates`` on ``split``.

    ``fresh``: the candidates were never scored on the training split. A
    problem that fits a read-out per candidate (``problem.fits_readout``)
    then also asks for their training scores, which the read-out is fitted
    on, before it can answer on another split.
    """
    cost = int(n_candidates) * problem.n_texts(split)
    if fresh and split != "train" and getattr(problem, "fits_readout", False):
        cost += int(n_candidates) * problem.n_texts("train")
    return cost


def aggregate_outputs(outputs, weights, n_classes, vote_prior=0.0, error_rates=None):
    """Predictive class probabilities of a weighted set of prompts.

    Parameters
    ----------
    outputs : ndarray
        Log-probabilities ``(n_samples, n_texts, n_classes)`` (score
        backends) or labels ``(n_samples, n_texts)`` (label-only).
    weights : ndarray of shape (n_samples,)
    n_classes : int
    vote_prior : float, default=0.0
        Label-only only: pseudo-count added to every class of the weighted
        vote histogram (a symmetric Dirichlet prior), counted in units of the
        total weight of one prompt among ``n_samples`` -- i.e. the histogram is
        ``(votes + vote_prior / n_samples) / (1 + n_classes * vote_prior / n_samples)``.
    error_rates : ndarray of shape (n_samples,), optional
        Label-only only, instead of ``vote_prior``: each prompt's vote is
        read through a symmetric noisy channel with its own error rate
        ``e_k``: it puts ``1 - e_k`` on its label and ``e_k / (n_classes - 1)``
        on every other class.

    Returns
    -------
    ndarray of shape (n_texts, n_classes)
        Rows sum to 1. Score outputs: ``sum_k w_k softmax(scores_k)``.
        Labels: the weighted histogram of the votes, smoothed.
    """
    outputs = np.asarray(outputs)
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    if outputs.ndim == 3:
        log_w = np.log(np.maximum(weights, 1e-300))[:, None, None]
        # log-sum-exp over the samples, for stability with tiny probabilities
        a = outputs + log_w
        m = a.max(axis=0)
        m = np.where(np.isfinite(m), m, 0.0)  # a class at -inf for every sample: probability 0, not NaN
        proba = np.exp(m) * np.exp(a - m).sum(axis=0)
    else:
        n_samples, n_texts = outputs.shape
        proba = np.zeros((n_texts, n_classes))
        if error_rates is not None:
            e = np.asarray(error_rates, dtype=np.float64)
            for k in range(n_samples):
                proba += weights[k] * e[k] / (n_classes - 1)
                proba[np.arange(n_texts), outputs[k]] += weights[k] * (1.0 - e[k] - e[k] / (n_classes - 1))
            return proba / proba.sum(axis=1, keepdims=True)
        for k in range(n_samples):
            proba[np.arange(n_texts), outputs[k]] += weights[k]
        if vote_prior:
            alpha = float(vote_prior) / n_samples
            proba = (proba + alpha) / (1.0 + n_classes * alpha)
    return proba / proba.sum(axis=1, keepdims=True)


def predictive_log_loss(proba, y):
    """Mean negative log-probability of the true classes under ``proba``."""
    p = proba[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.clip(p, 1e-15, None))))


def predictive_error(proba, y):
    """Error rate of the arg-max of ``proba``."""
    return float(np.mean(np.argmax(proba, axis=1) != y))
