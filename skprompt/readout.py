"""A calibrated read-out of class scores: offsets, a temperature, a linear map,
or weights on the top tokens the model names at the answer position.

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

``"topk"`` (:func:`fit_token_readout`) adds to the affine read-out weights
on the log-probabilities of the tokens among each answer's top ones
(``score(..., top_k=k)``, for backends with ``max_top_k``): what else the
model would say tells classes apart that its label words confuse.

The families are compared on the fit texts by :func:`cross_validated_log_loss`
(``calibration="auto"``); docs/defaults.md has the measurements.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["AUTO_CALIBRATIONS", "CALIBRATIONS", "DEFAULT_L2", "DEFAULT_TOKEN_L2", "DEFAULT_TOP_K", "apply_readout",
           "choose_readout", "cross_validated_log_loss", "fit_readout", "fit_token_readout", "identity_readout",
           "token_features"]

#: Values of the estimators' ``calibration`` parameter that fit a read-out.
CALIBRATIONS = ("bias", "affine", "linear", "topk")
#: The families ``calibration="auto"`` chooses from, simplest first (ties
#: keep the simpler; :func:`choose_readout`).
AUTO_CALIBRATIONS = ("affine", "linear", "topk")
#: Top log-probabilities the ``"topk"`` read-out asks for per answer.
DEFAULT_TOP_K = 50
#: Pull of the ``"topk"`` read-out's token weights toward 0, in units of one
#: text's log loss, on standardised features (docs/defaults.md).
DEFAULT_TOKEN_L2 = 80.0
#: At most this many tokens (the most frequent among the training texts'
#: top ones) are features of the ``"topk"`` read-out.
MAX_TOKENS = 256
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


def apply_readout(log_proba, offsets, scales, token_maps=None):
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
    outputs = np.asarray(log_proba, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.float64)
    s = outputs[..., : offsets.shape[1]]  # answers with top tokens carry them after the class scores
    scales = np.asarray(scales, dtype=np.float64)
    mapped = np.einsum("ncd,nid->nic", scales, s) if scales.ndim == 3 else scales[:, None, None] * s
    if token_maps is not None:
        mapped = mapped + np.stack([
            ((_readout_features(out, offsets.shape[1], m["vocabulary"]) - m["centre"]) / m["spread"])
            @ m["weights"].T
            for out, m in zip(outputs, token_maps)])
    return _log_softmax(mapped + offsets[:, None, :])


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
    if kind == "topk":
        raise ValueError("kind='topk' reads the top tokens too: fit it with fit_token_readout.")
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


def token_features(outputs, n_classes, vocabulary):
    """Features of the ``"topk"`` read-out: each text's log-probability of the
    tokens of ``vocabulary``, from its top log-probabilities; a token outside a
    text's top ones gets that text's smallest top log-probability (it is at
    most as likely).

    Parameters
    ----------
    outputs : ndarray of shape (n_texts, n_classes + 2 * k)
        One candidate's answers with the top tokens (``score(..., top_k=k)``).
    n_classes : int
    vocabulary : ndarray of shape (n_tokens,)
        Sorted token ids.

    Returns
    -------
    ndarray of shape (n_texts, n_tokens)
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    k = (outputs.shape[-1] - n_classes) // 2
    values, ids = outputs[:, n_classes: n_classes + k], outputs[:, n_classes + k:].astype(np.int64)
    feats = np.repeat(values[:, -1:], len(vocabulary), axis=1)
    pos = np.searchsorted(vocabulary, ids)
    found = (pos < len(vocabulary)) & (vocabulary[np.minimum(pos, len(vocabulary) - 1)] == ids)
    rows = np.broadcast_to(np.arange(len(outputs))[:, None], ids.shape)
    feats[rows[found], pos[found]] = values[found]
    return feats


def _readout_features(outputs, n_classes, vocabulary):
    """The ``"topk"`` read-out's features: the tokens' log-probabilities, then the class scores."""
    return np.concatenate([token_features(outputs, n_classes, vocabulary), outputs[:, :n_classes]], axis=1)


def fit_token_readout(outputs, y, n_classes, *, l2=DEFAULT_L2, token_l2=DEFAULT_TOKEN_L2, sample_weight=None,
                      max_tokens=MAX_TOKENS):
    """Fit each candidate's ``"topk"`` read-out on its training answers.

    Logit of class ``c``: ``a * s_c + b_c + sum_v W_cv f_v``, where ``s`` are
    the class scores and ``f`` the standardised log-probabilities of the
    tokens that were among a training text's top ones (:func:`token_features`;
    the ``max_tokens`` most frequent) followed by the standardised class
    scores (so that ``W`` also holds a linear map of the scores). The pull
    toward the identity read-out is ``l2 / 2 * (|b|^2 + (a - 1)^2) +
    token_l2 / 2 * |W|^2``, added to the summed log loss; with a large
    ``token_l2`` it is the ``"affine"`` read-out.

    Written by hand for the same reasons as :func:`fit_readout` (a shared
    coefficient on a per-class feature, a pull toward the identity); the
    optimiser is scipy's L-BFGS, one candidate at a time (the problem has
    ``n_classes * n_tokens`` weights, too many for Newton steps).

    Parameters
    ----------
    outputs : ndarray of shape (n_candidates, n_texts, n_classes + 2 * k)
    y : ndarray of shape (n_texts,)
    n_classes : int
    l2, token_l2 : float
    sample_weight : ndarray of shape (n_texts,) or (n_candidates, n_texts), optional
    max_tokens : int

    Returns
    -------
    offsets : ndarray of shape (n_candidates, n_classes)
    scales : ndarray of shape (n_candidates,)
    token_maps : list of dict
        Per candidate: ``vocabulary`` (token ids), ``centre`` and ``spread``
        (the standardisation of the features) and ``weights`` (``W``,
        ``(n_classes, n_tokens + n_classes)``).

    Examples
    --------
    A token other than the label words tells the classes apart:

    >>> import numpy as np
    >>> y = np.array([0, 1] * 20)
    >>> top = np.where(y[:, None] == 1, [-0.5, -2.0], [-0.6, -3.0])   # token 9's log-probability
    >>> ids = np.where(y[:, None] == 1, [5, 9], [5, 7])
    >>> out = np.concatenate([np.log(np.full((40, 2), 0.5)), top, ids], axis=1)[None]
    >>> b, a, maps = fit_token_readout(out, y, 2, token_l2=1.0)
    >>> p = np.exp(apply_readout(out, b, a, maps))[0]
    >>> bool(p[y == 1, 1].min() > 0.9 and p[y == 0, 0].min() > 0.9)
    True
    """
    from scipy.optimize import minimize

    outputs = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, n_texts = outputs.shape[:2]
    k = (outputs.shape[-1] - n_classes) // 2
    if k < 1:
        raise ValueError("the 'topk' read-out needs answers with top tokens (score(..., top_k=k)).")
    y_onehot = np.eye(n_classes)[y]
    offsets, scales, maps = np.zeros((n, n_classes)), np.ones(n), []
    for i in range(n):
        w = np.full(n_texts, 1.0) if sample_weight is None else np.broadcast_to(
            np.asarray(sample_weight, dtype=np.float64), (n, n_texts))[i].copy()
        total = w.sum()  # as in fit_readout: a text of weight 2 counts as two texts
        w = w / total
        ids, counts = np.unique(outputs[i, :, n_classes + k:].astype(np.int64), return_counts=True)
        vocabulary = np.sort(ids[np.argsort(-counts, kind="stable")[:max_tokens]])
        raw = _readout_features(outputs[i], n_classes, vocabulary)
        centre = raw.mean(axis=0)
        spread = raw.std(axis=0)
        spread[spread < 1e-8] = 1.0
        feats = (raw - centre) / spread
        s = outputs[i, :, :n_classes]
        l2m, tl2m = l2 / total, token_l2 / total
        n_tok = raw.shape[1]

        def objective(theta):
            b, a, W = theta[:n_classes], theta[n_classes], theta[n_classes + 1:].reshape(n_classes, n_tok)
            logp = _log_softmax(a * s + b + feats @ W.T)
            resid = w[:, None] * (np.exp(logp) - y_onehot)
            loss = -np.sum(w[:, None] * y_onehot * logp) + 0.5 * l2m * (b @ b + (a - 1.0) ** 2) \
                + 0.5 * tl2m * np.sum(W * W)
            grad = np.concatenate([resid.sum(axis=0) + l2m * b, [np.sum(resid * s) + l2m * (a - 1.0)],
                                   (resid.T @ feats + tl2m * W).ravel()])
            return loss, grad

        start = np.concatenate([np.zeros(n_classes), [1.0], np.zeros(n_classes * n_tok)])
        theta = minimize(objective, start, jac=True, method="L-BFGS-B",
                         options={"maxiter": 1000, "gtol": 1e-8, "ftol": 1e-13}).x
        offsets[i], scales[i] = theta[:n_classes], theta[n_classes]
        maps.append({"vocabulary": vocabulary, "centre": centre, "spread": spread,
                     "weights": theta[n_classes + 1:].reshape(n_classes, n_tok)})
    return offsets, scales, maps


def fit_family(outputs, y, kind, n_classes, *, sample_weight=None, **l2):
    """Read-outs of family ``kind`` on raw answers ``outputs`` (n, n_texts,
    ...) with labels ``y``: ``(offsets, scales, token maps)``, the maps a
    list of ``None`` except for ``"topk"``. ``l2``: ``fit_readout``'s."""
    if kind == "topk":
        return fit_token_readout(outputs, y, n_classes, sample_weight=sample_weight, **l2)
    offsets, scales = fit_readout(outputs[..., :n_classes], y, kind, sample_weight=sample_weight, **l2)
    return offsets, scales, [None] * len(outputs)


def cross_validated_log_loss(log_proba, y, kind, *, n_splits=5, l2=DEFAULT_L2, n_classes=None):
    """Held-out log loss of a read-out family, by stratified K-fold on the texts.

    Each fold's read-out is fitted on the other folds' texts, as
    :func:`fit_readout` fits it on the training texts, and scored on the
    fold's own; the mean over all texts is returned. It uses scores already
    asked for, so comparing families costs no query.

    Parameters
    ----------
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes [+ 2 * k])
        Class scores, with the top tokens after them for ``"topk"``.
    y : ndarray of shape (n_texts,)
        True class indices.
    kind : {"bias", "affine", "linear", "topk"} or None
        ``None``: the untouched scores (no fit).
    n_splits : int, default=5
        Folds; fewer when a class has fewer texts (at least 2 of each are needed).
    l2 : float, default=DEFAULT_L2
    n_classes : int, optional
        Needed when ``log_proba`` carries top tokens.

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

    return _held_out_log_loss(log_proba, y, kind, n_splits, l2, n_classes).mean(axis=1)


def _held_out_log_loss(log_proba, y, kind, n_splits, l2, n_classes=None):
    """Per-text held-out log loss ``(n_candidates, n_texts)`` of :func:`cross_validated_log_loss`."""
    outputs = np.asarray(log_proba, dtype=np.float64)
    n_classes = outputs.shape[-1] if n_classes is None else n_classes
    s = outputs[..., :n_classes]
    y = np.asarray(y, dtype=np.int64)
    idx = np.arange(len(y))
    if kind is None:
        return -s[:, idx, y]
    smallest = np.bincount(y).min() if len(y) else 0
    if smallest < 2:
        raise ValueError(f"cross-validating a read-out needs at least 2 texts of each class; got {smallest}.")
    held_out = np.empty(s.shape[:2])
    for fit, test in StratifiedKFold(n_splits=min(n_splits, smallest)).split(idx, y):
        if kind == "topk":
            readout = fit_token_readout(outputs[:, fit], y[fit], n_classes, l2=l2)
            log_p = apply_readout(outputs[:, test], *readout)
        else:
            log_p = apply_readout(s[:, test], *fit_readout(s[:, fit], y[fit], kind, l2=l2))
        held_out[:, test] = -log_p[:, np.arange(len(test)), y[test]]
    return held_out


def choose_readout(log_proba, y, *, kinds=AUTO_CALIBRATIONS, n_splits=5, l2=DEFAULT_L2, n_classes=None):
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
    log_proba : ndarray of shape (n_candidates, n_texts, n_classes [+ 2 * k])
        The first candidates' training scores (with top tokens for ``"topk"``).
    y : ndarray of shape (n_texts,)
    kinds : tuple of str, default=AUTO_CALIBRATIONS
        Simplest first. ``"topk"`` is left out when ``log_proba`` carries no
        top tokens (or ``n_classes`` is not given).
    n_splits : int, default=5
    l2 : float, default=DEFAULT_L2
    n_classes : int, optional
        Needed when ``log_proba`` carries top tokens.

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
    if n_classes is None or np.shape(log_proba)[-1] == n_classes:  # no top tokens: nothing for "topk"
        kinds = tuple(kind for kind in kinds if kind != "topk")
    smallest = np.bincount(y).min() if len(y) else 0
    if smallest < 2:
        return kinds[0], {"chosen": kinds[0], "cv_log_loss": {}, "standard_error": {}, "n_texts": int(len(y)),
                          "n_candidates": int(np.shape(log_proba)[0]),
                          "reason": f"a class has {smallest} training text(s): too few to cross-validate"}
    losses = {kind: _held_out_log_loss(log_proba, y, kind, n_splits, l2, n_classes).mean(axis=0) for kind in kinds}
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
