"""Predictive uncertainty of a weighted set of prompts, and its decomposition.

For score-based prompt distributions, with member class probabilities
``p_k(x)`` and weights ``w_k`` (natural logarithms throughout):

* total      ``H[sum_k w_k p_k(x)]``  -- entropy of the predictive distribution;
* aleatoric  ``sum_k w_k H[p_k(x)]``   -- expected entropy: what each prompt
  itself is unsure of;
* epistemic  ``total - aleatoric``     -- the mutual information between the
  label and the prompt: how much the prompts disagree.

For label-only prompt distributions each member answers a single label
(``p_k`` is one-hot, entropy 0), so the expected entropy is 0 and the total
and the epistemic part are both the *vote entropy*, the entropy of the
weighted histogram of the votes (without smoothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .inference.base import aggregate_outputs

__all__ = ["PredictiveUncertainty", "decompose_uncertainty", "entropy"]


def entropy(proba, axis=-1):
    """Shannon entropy (nats) of probability vectors along ``axis``; 0 log 0 = 0."""
    proba = np.asarray(proba, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(proba > 0, -proba * np.log(proba), 0.0)
    return terms.sum(axis=axis)


@dataclass(frozen=True)
class PredictiveUncertainty:
    """Per-text uncertainty of a prompt distribution (arrays of shape (n_texts,), nats).

    Attributes
    ----------
    total : ndarray
        Entropy of the predictive distribution (vote entropy for label-only methods).
    aleatoric : ndarray
        Expected entropy of the members' predictions (0 for label-only methods).
    epistemic : ndarray
        Mutual information ``total - aleatoric``: disagreement between prompts.
    """

    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray

    def as_dict(self):
        """The three arrays in a dict."""
        return {"total": self.total, "aleatoric": self.aleatoric, "epistemic": self.epistemic}


def decompose_uncertainty(outputs, weights, n_classes):
    """Decompose the predictive entropy of member ``outputs``.

    Parameters
    ----------
    outputs : ndarray
        Member log-probabilities ``(n_members, n_texts, n_classes)``, or
        labels ``(n_members, n_texts)``.
    weights : ndarray of shape (n_members,)
    n_classes : int

    Returns
    -------
    PredictiveUncertainty

    Examples
    --------
    Two confident prompts that disagree: no aleatoric, all epistemic.

    >>> import numpy as np
    >>> logp = np.log(np.array([[[1 - 1e-12, 1e-12]], [[1e-12, 1 - 1e-12]]]))
    >>> u = decompose_uncertainty(logp, np.array([0.5, 0.5]), 2)
    >>> round(float(u.total[0]), 4), round(float(u.aleatoric[0]), 4), round(float(u.epistemic[0]), 4)
    (0.6931, 0.0, 0.6931)
    """
    outputs = np.asarray(outputs)
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    predictive = aggregate_outputs(outputs, weights, n_classes)
    total = entropy(predictive)
    if outputs.ndim == 2:
        aleatoric = np.zeros_like(total)
    else:
        aleatoric = np.tensordot(weights, entropy(np.exp(outputs)), axes=1)
    epistemic = np.maximum(total - aleatoric, 0.0)
    return PredictiveUncertainty(total=total, aleatoric=aleatoric, epistemic=epistemic)
