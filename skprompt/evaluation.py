"""Scoring a fitted classifier on held-out texts, and tables of the results.

Shared by ``skprompt demo`` and ``skprompt bench``: one ``predict_proba`` call
per test set (queries are the cost), every metric computed from it.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, log_loss

from .metrics import (
    expected_calibration_error,
    max_prob_uncertainty,
    misclassification_auroc,
    ood_auroc,
    predictive_entropy,
    risk_rejection_auc,
)

__all__ = ["prediction_metrics", "ood_metrics", "multiclass_brier", "mean_std_table"]


def multiclass_brier(y_idx, proba):
    """Brier score ``mean_i sum_c (p_ic - [y_i = c])^2`` (the paper's multi-class form)."""
    onehot = np.zeros_like(proba)
    onehot[np.arange(len(y_idx)), y_idx] = 1.0
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def prediction_metrics(y_true, proba, classes, *, n_bins=10):
    """Accuracy, macro-F1, ECE, log loss, Brier and misclassification detection.

    Parameters
    ----------
    y_true : array-like of labels
    proba : ndarray of shape (n, n_classes)
        Columns in ``classes`` order.
    classes : ndarray

    Returns
    -------
    dict
        ``accuracy``, ``f1_macro``, ``ece`` (``n_bins`` equal-width bins on
        the max-probability), ``log_loss``, ``brier``, and for the detection
        of the classifier's own mistakes with two uncertainty scores
        (predictive entropy, 1 - max-prob): ``mis_rra_*`` (area under the
        risk-rejection curve, lower is better) and ``mis_auroc_*``.
    """
    y_true = np.asarray(y_true)
    classes = np.asarray(classes)
    y_idx = np.searchsorted(classes, y_true)
    pred = classes[np.argmax(proba, axis=1)]
    errors = pred != y_true
    out = {
        "accuracy": float(np.mean(~errors)),
        "f1_macro": float(f1_score(y_true, pred, labels=classes, average="macro", zero_division=0)),
        "ece": expected_calibration_error(y_idx, proba, n_bins=n_bins),
        "log_loss": float(log_loss(y_idx, np.clip(proba, 1e-15, 1.0), labels=np.arange(len(classes)))),
        "brier": multiclass_brier(y_idx, proba),
    }
    for name, unc in (("entropy", predictive_entropy(proba)), ("maxprob", max_prob_uncertainty(proba))):
        out[f"mis_rra_{name}"] = risk_rejection_auc(errors, unc, n_bins=n_bins)
        out[f"mis_auroc_{name}"] = (
            misclassification_auroc(y_true, pred, unc) if 0 < errors.sum() < len(errors) else math.nan
        )
    return out


def ood_metrics(proba_in, proba_out, *, n_bins=10):
    """Out-of-distribution detection from in- and out-of-distribution probabilities.

    Returns ``ood_rra_*`` (risk = share of OOD texts among the kept, lower is
    better) and ``ood_auroc_*`` for the entropy and 1 - max-prob scores.
    """
    is_ood = np.r_[np.zeros(len(proba_in), bool), np.ones(len(proba_out), bool)]
    proba = np.vstack([proba_in, proba_out])
    out = {}
    for name, unc in (("entropy", predictive_entropy(proba)), ("maxprob", max_prob_uncertainty(proba))):
        out[f"ood_rra_{name}"] = risk_rejection_auc(is_ood, unc, n_bins=n_bins)
        out[f"ood_auroc_{name}"] = ood_auroc(is_ood, unc)
    return out


def _fmt(values, digits):
    values = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                        dtype=float)
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def mean_std_table(rows, group_by, columns, *, digits=None, count=None):
    """A markdown table of mean ± std (sample std over runs) per group.

    Parameters
    ----------
    rows : list of dict
        One dict per run (e.g. per seed).
    group_by : list of str
        Keys identifying a group (shown as the first columns, in first-seen order).
    columns : list of (key, header) pairs
        Metric columns.
    digits : dict, optional
        Decimals per key (default 3; 0 for keys containing "queries").
    count : str, optional
        Header of a column with the number of runs of each group (none by default).
    """
    digits = digits or {}
    groups = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    extra = [count] if count else []
    header = "| " + " | ".join(list(group_by) + extra + [h for _, h in columns]) + " |"
    sep = "|" + "|".join(["---"] * (len(group_by) + len(extra) + len(columns))) + "|"
    lines = [header, sep]
    for key, members in groups.items():
        cells = [str(k) for k in key] + ([str(len(members))] if count else [])
        for col, _ in columns:
            d = digits.get(col, 0 if "queries" in col else 1 if "time" in col else 3)
            cells.append(_fmt([m.get(col) for m in members], d))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
