"""A calibrated read-out of class scores: per-class offsets and a temperature.

A small language model reads a label word with a prior bias of its own (it
says " positive" or " business" more often than the data warrant), and a
prompt search spends its queries undoing that bias before it learns anything
about the task. The read-out removes it for free: for each candidate prompt,
the class scores ``s`` (log-probabilities of the label words) of the
training texts already queried are mapped to calibrated logits

    ``"bias"``:    s_c + b_c
    ``"affine"``:  a * s_c + b_c

by a multinomial logistic fit of ``b`` (and ``a``) on those texts, with a
little L2 toward ``b = 0, a = 1`` (the untouched scores), as strong as half
a text's log loss, whatever the number of texts (so its pull vanishes as
texts grow). No query is made:
the fit uses scores the search had to ask for anyway. The same idea is known
as contextual or batch calibration of a prompt (removing a label word's
prior); here it is fitted for every candidate, so that the search ranks
prompts by what they can do once calibrated.

Written by hand, not with scikit-learn's ``LogisticRegression``: the model is
a conditional logit with one *shared* coefficient ``a`` on a per-class
feature (the score), which ``LogisticRegression`` cannot express, and a
generation of CMA-ES needs dozens of these (C + 1)-parameter fits at once; a
vectorised Newton method with backtracking does all of them in a few
milliseconds. The objective is convex in ``(b, a)`` and strictly convex with
the L2 term, so Newton converges to the unique optimum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CALIBRATIONS", "DEFAULT_L2", "fit_readout", "apply_readout", "identity_readout"]

#: Values of the estimators' ``calibration`` parameter that fit a read-out.
CALIBRATIONS = ("bias", "affine")
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
    """Calibrated class log-probabilities ``log_softmax(a_k * s + b_k)``.

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
    offsets : ndarray of shape (n_candidates, n_classes)
    scales : ndarray of shape (n_candidates,)

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
    logits = np.asarray(scales, dtype=np.float64)[:, None, None] * s + np.asarray(offsets, dtype=np.float64)[:, None, :]
    return _log_softmax(logits)


def fit_readout(log_proba, y, kind, *, l2=DEFAULT_L2, sample_weight=None, max_iter=50, tol=1e-9):
    """Fit each candidate's read-out on its training scores.

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes)
        Class log-probabilities of each candidate prompt on the training texts.
    y : ndarray of shape (n_texts,)
        True class indices.
    kind : {"bias", "affine"}
        ``"bias"``: per-class offsets; ``"affine"``: offsets and a scale
        (an inverse temperature) shared by the classes.
    l2 : float, default=DEFAULT_L2
        Pull toward the identity read-out: ``l2 / 2 * (|b|^2 + (a - 1)^2)``
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
    scales : ndarray of shape (n_candidates,)
        1 for ``"bias"``.

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
