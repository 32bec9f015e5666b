"""Probabilities from label-only votes, learnt on texts that chose nothing.

A vote-based fit (likelihood-free methods, label-only backends) predicts with
the weighted histogram of its prompts' votes. Two read-outs turn it into
probabilities without any query beyond the fit's, both learnt on validation
texts that did not choose the prompts they judge (leave-one-out: the
learner's choice is re-made without each text, :func:`~skprompt.inference.base.select_without`):

- :func:`vote_error_rates`: each kept prompt's error rate, for the noisy
  vote channel of ``vote_smoothing="error"``;
- :class:`VoteReadout`: a temperature and per-class offsets on the log of
  the smoothed vote shares (``vote_smoothing="calibrated"``), fitted on the
  validation texts' out-of-fold votes.

The reasoning and the measurements are in docs/defaults.md ("Vote read-out").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .inference.base import aggregate_outputs, slot_choice
from .readout import apply_readout, fit_readout

__all__ = ["VOTE_PRIOR", "out_of_fold_votes", "vote_error_rates", "vote_shares", "VoteReadout"]

#: Pseudo-count (in units of one prompt's vote) that keeps the vote shares
#: the calibrated read-out takes the log of away from zero.
VOTE_PRIOR = 1.0


def _labels(outputs):
    out = np.asarray(outputs)
    return out.argmax(axis=2) if out.ndim == 3 else out


def out_of_fold_votes(problem, slots):
    """Each validation text's votes by the prompts chosen without it.

    Parameters
    ----------
    problem : PromptProblem
        The fit's problem; every option of ``slots`` was validated during the
        fit, so its answers are known and nothing is queried.
    slots : list of SelectionSlot

    Returns
    -------
    shares : ndarray of shape (n_val, n_classes)
        Weighted vote histogram of the out-of-fold prompt set, per text
        (rows sum to 1, unsmoothed).
    n_prompts : ndarray of shape (n_val,)
        Size of each text's out-of-fold prompt set.
    slot_errors : ndarray of shape (n_slots, n_val)
        Whether each slot's out-of-fold choice errs on the text, for slots
        whose options are single prompts (NaN for population slots).
    """
    n_val, n_classes = problem.n_texts("val"), problem.n_classes
    y = np.asarray(problem.y("val"))
    labels = [[_labels(problem.known_outputs(Z, "val")) for Z, _ in slot.options] for slot in slots]
    shares = np.zeros((n_val, n_classes))
    n_prompts = np.zeros(n_val, dtype=np.int64)
    slot_errors = np.full((len(slots), n_val), np.nan)
    for i in range(n_val):
        mask = np.ones(n_val, dtype=bool)
        mask[i] = False
        for s, slot in enumerate(slots):
            best = slot_choice(slot, mask)
            votes = labels[s][best][:, i]
            w = np.asarray(slot.options[best][1], dtype=np.float64)
            np.add.at(shares[i], votes, slot.weight * w / w.sum())
            n_prompts[i] += len(votes)
            if len(votes) == 1:
                slot_errors[s, i] = float(votes[0] != y[i])
    return shares / shares.sum(axis=1, keepdims=True), n_prompts, slot_errors


def vote_error_rates(problem, samples, slots=None, slot_errors=None):
    """Laplace-smoothed error rate of each kept prompt on texts that did not choose it.

    A prompt chosen among single candidates by validation (a CMA-ES member
    of ``bbt`` / ``ensemble``) is judged by leave-one-out: on each validation
    text, the candidate its run keeps without that text. A prompt of a
    population chosen by round (``abc-smc``, ``snpe``: the round was chosen by
    the population's vote, not by the prompt) is judged on its own
    validation answers. ``(errors + 1) / (n_val + 2)``.

    Parameters
    ----------
    problem : PromptProblem
    samples : ndarray of shape (n_samples, dim)
        The kept prompts, in the order of the slots' kept options.
    slots : list of SelectionSlot or None
    slot_errors : ndarray of shape (n_slots, n_val) or None
        From :func:`out_of_fold_votes`.

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    n_val = problem.n_texts("val")
    outputs = _labels(problem.known_outputs(samples, "val"))
    errors = (outputs != np.asarray(problem.y("val"))[None, :]).sum(axis=1).astype(np.float64)
    if slots is not None and slot_errors is not None:
        start = 0
        for s, slot in enumerate(slots):
            size = len(slot.options[slot_choice(slot)][0])
            if size == 1 and np.all(np.isfinite(slot_errors[s])):
                errors[start] = slot_errors[s].sum()
            start += size
    return (errors + 1.0) / (n_val + 2.0)


@dataclass
class VoteReadout:
    """A temperature and per-class offsets on the log of smoothed vote shares.

    ``p = softmax(scale * log(shares_smoothed) + offsets)``, where
    ``shares_smoothed`` is the weighted vote histogram with a pseudo-count of
    :data:`VOTE_PRIOR` votes spread over the classes. Fitted by the
    calibrated read-out's L2-penalised logistic fit
    (:func:`~skprompt.readout.fit_readout`, ``"affine"``), pulled toward the
    smoothed shares themselves.

    Examples
    --------
    Three prompts whose unanimous votes are right on half of four texts:

    >>> import numpy as np
    >>> shares = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> r = VoteReadout.fit(shares, np.full(4, 3), np.array([0, 1, 1, 0]), l2=1e-6)
    >>> r.proba(shares, 3).round(2)[0].tolist()
    [0.5, 0.5]
    """

    offsets: np.ndarray
    scale: float

    @staticmethod
    def log_shares(shares, n_prompts):
        """Log of the vote shares smoothed by :data:`VOTE_PRIOR` votes."""
        shares = np.asarray(shares, dtype=np.float64)
        alpha = VOTE_PRIOR / np.asarray(n_prompts, dtype=np.float64).reshape(-1, 1)
        return np.log((shares + alpha) / (1.0 + shares.shape[1] * alpha))

    @classmethod
    def fit(cls, shares, n_prompts, y, **kwargs):
        """Fit on out-of-fold vote shares ``(n_texts, n_classes)`` and true class indices ``y``."""
        s = cls.log_shares(shares, n_prompts)[None]
        offsets, scales = fit_readout(s, np.asarray(y), "affine", **kwargs)
        return cls(offsets[0], float(scales[0]))

    def proba(self, shares, n_prompts):
        """Calibrated class probabilities of vote shares ``(n_texts, n_classes)``."""
        s = self.log_shares(shares, n_prompts)[None]
        return np.exp(apply_readout(s, self.offsets[None], np.array([self.scale]))[0])


def vote_shares(outputs, weights, n_classes):
    """The weighted vote histogram of label ``outputs`` ``(n_samples, n_texts)`` (rows sum to 1)."""
    return aggregate_outputs(_labels(outputs), weights, n_classes)
