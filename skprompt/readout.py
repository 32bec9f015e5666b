"""A calibrated read-out of class scores: offsets, a temperature, or a linear map.

A small language model reads a label word with a prior bias of its own (it
says " positive" or " business" more often than the data warrant), and a
prompt search spends its queries undoing that bias before it learns anything
about the task. The read-out removes it for free: for each candidate prompt,
the class scores ``s`` (log-probabilities of the label words) of the
training texts already queried are mapped to calibrated logits

    ``"bias"``:    s_c + b_c
    ``"affine"``:  a * s_c + b_c
    ``"linear"``:  sum_j W_cj s_j + b_c

by a multinomial logistic fit of ``b`` (and ``a``, or ``W``) on those texts,
with a little L2 toward ``b = 0, a = 1, W = I`` (the untouched scores), as
strong as half a text's log loss, whatever the number of texts (so its pull
vanishes as texts grow). No query is made:
the fit uses scores the search had to ask for anyway. The same idea is known
as contextual or batch calibration of a prompt (removing a label word's
prior); here it is fitted for every candidate, so that the search ranks
prompts by what they can do once calibrated.

Written by hand, not with scikit-learn's ``LogisticRegression``: the model is
a conditional logit with one *shared* coefficient ``a`` on a per-class
feature (the score), which ``LogisticRegression`` cannot express, its L2
pulls toward the identity map rather than toward 0, and a
generation of CMA-ES needs dozens of these (C + 1)-parameter fits at once; a
vectorised Newton method with backtracking does all of them in a few
milliseconds. The objective is convex in ``(b, a)`` and strictly convex with
the L2 term, so Newton converges to the unique optimum.

The families are compared on the fit texts by :func:`cross_validated_log_loss`
(``calibration="auto"``); docs/defaults.md has the measurements.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["AUTO_CALIBRATIONS", "CALIBRATIONS", "DEFAULT_L2", "apply_readout", "choose_readout",
           "cross_validated_log_loss", "fit_readout", "identity_readout"]

#: Values of the estimators' ``calibration`` parameter that fit a read-out.
CALIBRATIONS = ("bias", "affine", "linear")
#: The families ``calibration="auto"`` chooses from, simplest first (ties
#: keep the simpler; :func:`choose_readout`).
AUTO_CALIBRATIONS = ("affine", "linear")
#: Strength of the L2 pull of ``b`` toward 0 and ``a`` toward 1, added to the
#: *summed* log loss of the texts (in units of one text's log loss), so that
#: the read-out tends to the unpenalised fit as texts grow.
DEFAULT_L2 = 0.5


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def identity_readout(n_candidates, n_classes):
    """Offsets 0 and scales 1: the untouched scores.

    Returns
    -------
    offsets : ndarray of shape (n_candidates, n_classes)
    scales : ndarray of shape (n_candidates,)
    """
    return np.zeros((n_candidates, n_classes)), np.ones(n_candidates)


def apply_readout(log_proba, offsets, scales):
    """Calibrated class log-probabilities ``log_softmax(a_k * s + b_k)``
    (or ``log_softmax(W_k s + b_k)`` for a linear map).

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
    offsets : ndarray of shape (n_candidates, n_classes)
    scales : ndarray of shape (n_candidates,) or (n_candidates, n_classes, n_classes)
        A temperature per candidate, or a linear map (``"linear"``).

    Returns
    -------
    ndarray of shape (n_candidates, n_texts, n_classes)

    Examples
    --------
    >>> import numpy as np
    >>> s = np.log(np.array([[[0.9, 0.1]]]))
    >>> np.exp(apply_readout(s, np.array([[0.0, np.log(9.0)]]), np.ones(1))).round(3).tolist()
    [[[0.5, 0.5]]]
    """
    s = np.asarray(log_proba, dtype=np.float64)
    scales = np.asarray(scales, dtype=np.float64)
    mapped = np.einsum("ncd,nid->nic", scales, s) if scales.ndim == 3 else scales[:, None, None] * s
    return _log_softmax(mapped + np.asarray(offsets, dtype=np.float64)[:, None, :])


def fit_readout(log_proba, y, kind, *, l2=DEFAULT_L2, sample_weight=None, max_iter=50, tol=1e-9):
    """Fit each candidate's read-out on its training scores.

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
        Class log-probabilities of each candidate prompt on the training texts.
    y : ndarray of shape (n_texts,)
        True class indices.
    kind : {"bias", "affine", "linear"}
        ``"bias"``: per-class offsets; ``"affine"``: offsets and a scale
        (an inverse temperature) shared by the classes; ``"linear"``:
        offsets and a full ``n_classes x n_classes`` map of the scores.
    l2 : float, default=DEFAULT_L2
        Pull toward the identity read-out: ``l2 / 2 * (|b|^2 + (a - 1)^2)``
        (``|W - I|^2`` for ``"linear"``)
        added to the summed log loss of the texts (with ``sample_weight``,
        the weighted sum: a text of weight 2 counts as two texts).
    sample_weight : ndarray of shape (n_texts,) or (n_candidates, n_texts), optional
        Weights of the texts in the mean log loss (normalised per candidate).
    max_iter : int, default=50
        Newton steps.
    tol : float, default=1e-9
        Stop when every candidate's gradient norm is below it.

    Returns
    -------
    offsets : ndarray of shape (n_candidates, n_classes)
    scales : ndarray of shape (n_candidates,) or (n_candidates, n_classes, n_classes)
        1 for ``"bias"``; the map ``W`` for ``"linear"``.

    Examples
    --------
    Scores that always favour class 0 by log(4), on balanced labels:

    >>> import numpy as np
    >>> s = np.log(np.array([[[0.8, 0.2], [0.8, 0.2], [0.8, 0.2], [0.8, 0.2]]]))
    >>> b, a = fit_readout(s, np.array([0, 1, 0, 1]), "bias", l2=1e-6)
    >>> np.exp(apply_readout(s, b, a))[0, 0].round(3).tolist()
    [0.5, 0.5]
    """
    if kind not in CALIBRATIONS:
        raise ValueError(f"kind must be one of {list(CALIBRATIONS)}; got {kind!r}.")
    s = np.asarray(log_proba, dtype=np.float64)
    n, n_texts, n_classes = s.shape
    y = np.asarray(y, dtype=np.int64)
    y_onehot = np.zeros((n, n_texts, n_classes))
    y_onehot[:, np.arange(n_texts), y] = 1.0
    if sample_weight is None:
        w = np.full((n, n_texts), 1.0 / n_texts)
        total = np.full(n, float(n_texts))
    else:
        w = np.broadcast_to(np.asarray(sample_weight, dtype=np.float64), (n, n_texts)).copy()
        total = w.sum(axis=1)
        w /= total[:, None]
    # features of logit c: one-hot offset columns, plus the score itself for "affine";
    # "bias" keeps the score as a fixed offset (coefficient 1, not fitted)
    eye = np.broadcast_to(np.eye(n_classes), (n, n_texts, n_classes, n_classes))
    if kind == "affine":
        feats = np.concatenate([eye, s[..., None]], axis=3)
        prior = np.concatenate([np.zeros(n_classes), [1.0]])
        fixed = np.zeros_like(s)
    elif kind == "linear":  # logit c: b_c + sum_j W_cj s_j; W flattened row by row
        rows = np.einsum("cd,nij->nicdj", np.eye(n_classes), s).reshape(n, n_texts, n_classes, -1)
        feats = np.concatenate([eye, rows], axis=3)
        prior = np.concatenate([np.zeros(n_classes), np.eye(n_classes).ravel()])
        fixed = np.zeros_like(s)
    else:
        feats = np.ascontiguousarray(eye)
        prior = np.zeros(n_classes)
        fixed = s
    prior = np.broadcast_to(prior, (n, prior.size))
    theta = prior.copy()

    l2_mean = float(l2) / total  # per candidate: the objective below is the (weighted) mean log loss

    def evaluate(th):
        return _objective(th, feats, fixed, y_onehot, w, l2_mean, prior)

    loss, grad, hess = evaluate(theta)
    for _ in range(max_iter):
        if np.all(np.linalg.norm(grad, axis=1) < tol):
            break
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        t = np.ones(n)
        for _ in range(30):  # backtracking, per candidate
            trial = theta - t[:, None] * step
            new_loss, new_grad, new_hess = evaluate(trial)
            # a converged candidate, or a loss change below rounding, must not hold the others back
            ok = (new_loss <= loss - 1e-4 * t * np.einsum("np,np->n", grad, step) + 1e-12 * np.abs(loss)) | (
                np.linalg.norm(grad, axis=1) < tol)
            if ok.all():
                break
            t = np.where(ok, t, 0.5 * t)
        theta, loss, grad, hess = trial, new_loss, new_grad, new_hess
    offsets = theta[:, :n_classes]
    if kind == "linear":
        scales = theta[:, n_classes:].reshape(n, n_classes, n_classes)
    else:
        scales = theta[:, n_classes] if kind == "affine" else np.ones(n)
    return offsets.copy(), scales.copy()


def _objective(theta, feats, offset, y_onehot, w, l2, prior):
    """Penalised weighted mean log loss of each candidate, its gradient and Hessian
    (``l2``: each candidate's pull, shape (n,)).

    ``feats``: (n, N, C, P) features of each class logit; ``offset``: (n, N, C)
    a fixed part; logit = feats @ theta + offset.
    """
    logits = np.einsum("nicp,np->nic", feats, theta) + offset
    logp = _log_softmax(logits)
    p = np.exp(logp)
    loss = -np.einsum("ni,nic,nic->n", w, y_onehot, logp) + 0.5 * l2 * np.sum((theta - prior) ** 2, axis=1)
    resid = p - y_onehot
    grad = np.einsum("ni,nic,nicp->np", w, resid, feats) + l2[:, None] * (theta - prior)
    mean_feat = np.einsum("nic,nicp->nip", p, feats)
    second = np.einsum("ni,nic,nicp,nicq->npq", w, p, feats, feats)
    outer = np.einsum("ni,nip,niq->npq", w, mean_feat, mean_feat)
    hess = second - outer + l2[:, None, None] * np.eye(theta.shape[1])[None]
    return loss, grad, hess


def cross_validated_log_loss(log_proba, y, kind, *, n_splits=5, l2=DEFAULT_L2):
    """Held-out log loss of a read-out family, by stratified K-fold on the texts.

    Each fold's read-out is fitted on the other folds' texts, as
    :func:`fit_readout` fits it on the training texts, and scored on the
    fold's own; the mean over all texts is returned. It uses scores already
    asked for, so comparing families costs no query.

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
    y : ndarray of shape (n_texts,)
        True class indices.
    kind : {"bias", "affine", "linear"} or None
        ``None``: the untouched scores (no fit).
    n_splits : int, default=5
        Folds; fewer when a class has fewer texts (at least 2 of each are needed).
    l2 : float, default=DEFAULT_L2

    Returns
    -------
    ndarray of shape (n_candidates,)
        Mean held-out log loss per candidate.

    Examples
    --------
    Scores that say class 0 twice as often as the labels do:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 60)
    >>> s = np.log(np.where(y[:, None] == [0, 1], 0.7, 0.3))[None] + np.log([[2.0, 1.0]])
    >>> s = s - np.log(np.exp(s).sum(-1, keepdims=True))
    >>> bool(cross_validated_log_loss(s, y, "bias")[0] < cross_validated_log_loss(s, y, None)[0])
    True
    """

    return _held_out_log_loss(log_proba, y, kind, n_splits, l2).mean(axis=1)


def _held_out_log_loss(log_proba, y, kind, n_splits, l2):
    """Per-text held-out log loss ``(n_candidates, n_texts)`` of :func:`cross_validated_log_loss`."""
    s = np.asarray(log_proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    idx = np.arange(len(y))
    if kind is None:
        return -s[:, idx, y]
    smallest = np.bincount(y).min() if len(y) else 0
    if smallest < 2:
        raise ValueError(f"cross-validating a read-out needs at least 2 texts of each class; got {smallest}.")
    held_out = np.empty(s.shape[:2])
    for fit, test in StratifiedKFold(n_splits=min(n_splits, smallest)).split(idx, y):
        offsets, scales = fit_readout(s[:, fit], y[fit], kind, l2=l2)
        held_out[:, test] = -apply_readout(s[:, test], offsets, scales)[:, np.arange(len(test)), y[test]]
    return held_out


def choose_readout(log_proba, y, *, kinds=AUTO_CALIBRATIONS, n_splits=5, l2=DEFAULT_L2):
    """The read-out family ``calibration="auto"`` fits, chosen on scores already asked for.

    The family with the lowest held-out log loss
    (:func:`cross_validated_log_loss`, averaged over the candidates) is
    chosen; ties keep the earlier (simpler) one. A stricter rule (a richer
    family only where it wins by more than one standard error of the
    per-text differences) was measured and rejected: on the standard split
    of three real tasks it kept ``"affine"`` in 3 of 6 cases where the linear
    map had the lower held-out loss and the better test log loss
    (docs/defaults.md, "Read-out families").

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
        The first candidates' training scores.
    y : ndarray of shape (n_texts,)
    kinds : tuple of str, default=AUTO_CALIBRATIONS
        Simplest first.
    n_splits : int, default=5
    l2 : float, default=DEFAULT_L2

    Returns
    -------
    kind : str
    report : dict
        ``cv_log_loss`` (per family), ``standard_error`` (of each family's
        per-text difference to the first, for reading the margin),
        ``n_texts``, ``n_candidates``, ``chosen`` and ``reason``.

    Examples
    --------
    Label words that swap two of three classes: only a linear map undoes it.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> s = np.log(np.where(y[:, None] == [1, 0, 2], 0.8, 0.1))[None]
    >>> choose_readout(s, y)[0]
    'linear'
    """
    y = np.asarray(y)
    smallest = np.bincount(y).min() if len(y) else 0
    if smallest < 2:
        return kinds[0], {"chosen": kinds[0], "cv_log_loss": {}, "standard_error": {}, "n_texts": int(len(y)),
                          "n_candidates": int(np.shape(log_proba)[0]),
                          "reason": f"a class has {smallest} training text(s): too few to cross-validate"}
    losses = {kind: _held_out_log_loss(log_proba, y, kind, n_splits, l2).mean(axis=0) for kind in kinds}
    means = {kind: float(v.mean()) for kind, v in losses.items()}
    chosen = min(kinds, key=lambda kind: (means[kind], kinds.index(kind)))
    ses = {}
    for kind in kinds[1:]:
        diff = losses[kind] - losses[kinds[0]]
        ses[kind] = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    others = ", ".join(f"{k!r} {means[k]:.4f}" for k in kinds if k != chosen)
    reason = f"lowest {len(np.atleast_1d(y))}-text cross-validated log loss: {means[chosen]:.4f} (against {others})"
    report = {"chosen": chosen, "cv_log_loss": means,
              "standard_error": ses, "n_texts": int(len(y)), "n_candidates": int(np.shape(log_proba)[0]),
              "reason": reason}
    return chosen, report
