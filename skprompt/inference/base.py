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
    """

    samples: np.ndarray
    weights: np.ndarray
    history: np.ndarray
    n_iter: int
    budget_exhausted: bool = False
    info: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


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


def request_cost(problem, n_candidates, split):
    """Queries used to evaluate ``n_candidates`` on ``split``."""
    return int(n_candidates) * problem.n_texts(split)


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
