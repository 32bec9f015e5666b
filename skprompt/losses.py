"""Training losses on batches of candidate outputs.

Every loss takes the outputs of ``n_candidates`` prompts on the same ``n``
texts and the true class indices, and returns the loss of every (candidate,
text) pair, shape ``(n_candidates, n)``; :func:`compute_loss` averages it per
candidate, optionally with text weights (a Bayesian bootstrap of the texts).
Score losses take class log-probabilities of shape
``(n_candidates, n, n_classes)``; ``"zero_one"`` also takes predicted labels
of shape ``(n_candidates, n)`` (the only loss a label-only API allows).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOSSES", "SCORE_LOSSES", "compute_loss", "cross_entropy", "hinge", "brier", "zero_one"]

#: Margin of the multi-class hinge loss, on log-probabilities.
HINGE_MARGIN = 1.0


def _true_column(log_proba, y):
    n = log_proba.shape[1]
    return log_proba[:, np.arange(n), y]


def cross_entropy(log_proba, y):
    """Negative log-probability of the true class: ``-log p(y_i)``."""
    return -_true_column(log_proba, y)


def hinge(log_proba, y, margin=HINGE_MARGIN):
    """Multi-class margin loss ``max(0, margin - (s_y - max_{c != y} s_c))``
    on log-probabilities ``s`` (Crammer–Singer form)."""
    true = _true_column(log_proba, y)
    others = log_proba.copy()
    others[:, np.arange(log_proba.shape[1]), y] = -np.inf
    return np.maximum(0.0, margin - (true - others.max(axis=2)))


def brier(log_proba, y):
    """Multi-class Brier score ``sum_c (p_ic - [y_i = c])^2``."""
    proba = np.exp(log_proba)
    onehot = np.zeros_like(proba[0])
    onehot[np.arange(len(y)), y] = 1.0
    return ((proba - onehot[None]) ** 2).sum(axis=2)


def zero_one(outputs, y):
    """Errors (0 or 1). ``outputs`` are log-probabilities (n_candidates, n, n_classes)
    or predicted labels (n_candidates, n)."""
    outputs = np.asarray(outputs)
    labels = outputs.argmax(axis=2) if outputs.ndim == 3 else outputs
    return (labels != np.asarray(y)[None, :]).astype(np.float64)


LOSSES = {"ce": cross_entropy, "hinge": hinge, "brier": brier, "zero_one": zero_one}
#: Losses that need class scores (not available from a label-only API).
SCORE_LOSSES = ("ce", "hinge", "brier")


def compute_loss(name, outputs, y, sample_weight=None):
    """Mean loss ``name`` of each candidate: an ndarray of shape (n_candidates,).

    ``sample_weight``, of shape ``(n,)`` or ``(n_candidates, n)``, weights the
    texts (normalised per candidate); ``None`` is the plain mean.
    """
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}; got {name!r}.") from None
    outputs = np.asarray(outputs)
    y = np.asarray(y, dtype=np.int64)
    if name != "zero_one" and outputs.ndim != 3:
        raise ValueError(f"loss={name!r} needs class scores; a label-only backend allows only 'zero_one'.")
    per_text = np.asarray(fn(outputs, y), dtype=np.float64)
    if sample_weight is None:
        return per_text.mean(axis=1)
    w = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), per_text.shape)
    return (per_text * w).sum(axis=1) / w.sum(axis=1)
