"""What both estimators (black-box and white-box) share: the methods derived
from ``predict_proba``, the start of ``fit``, the tags, the prompt length and
the validation split. Each estimator keeps its own ``__init__``, ``fit`` and
``predict_proba``.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from ._validation import check_labels, check_texts

__all__ = ["ProbaMethodsMixin", "PromptEstimator", "validation_split", "streaming"]


def streaming(backend):
    """The backend's ``stream_texts()`` context, or a context that does nothing.

    Prediction scores new texts once each: a backend that caches per-text
    work for fitting (the transformers backends' key/value caches) offers
    ``stream_texts()`` so that those texts pass through without filling the
    cache that serves fitting. Backends without it (``FunctionBackend``,
    user backends) are called as always.
    """
    stream = getattr(backend, "stream_texts", None)
    return stream() if callable(stream) else contextlib.nullcontext()


def validation_split(texts, y_idx, fraction, rng, positions=False):
    """The stratified train / validation split both estimators select with.

    Returns ``{"train": (texts, y)}`` plus ``"val"`` when ``fraction`` is not
    None and every class can be held out; otherwise it warns and selects by
    training loss. Indices are kept in input order. The seed is drawn from
    ``rng`` (a ``RandomState``) in both cases that split. ``positions=True``
    also returns each split's positions in the input (``{split: indices}``).
    """
    idx = np.arange(len(texts))
    split = {"train": idx}
    if fraction is not None:
        try:
            tr, va = train_test_split(idx, test_size=fraction, stratify=y_idx,
                                      random_state=rng.randint(0, 2**31 - 1))
            split = {"train": np.sort(tr), "val": np.sort(va)}
        except ValueError as exc:
            warnings.warn(
                f"validation_fraction={fraction} cannot hold out every class ({exc}); "
                "selecting by training loss instead.",
                UserWarning,
                stacklevel=3,  # the user's call of fit
            )
    if "val" not in split:
        splits = {"train": (texts, y_idx)}
    else:
        splits = {name: ([texts[i] for i in pos], y_idx[pos]) for name, pos in split.items()}
    return (splits, split) if positions else splits


class ProbaMethodsMixin:
    """``predict_log_proba``, ``decision_function`` and ``predict`` from ``predict_proba``.

    Subclasses set ``_fitted_attribute``, the fitted attribute whose absence
    means "not fitted" (for :class:`~sklearn.exceptions.NotFittedError`).
    """

    _fitted_attribute = "classes_"

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def decision_function(self, X):
        """Confidence scores.

        Returns
        -------
        ndarray of shape (n_samples,) for two classes
            ``log p(classes_[1]) - log p(classes_[0])``;
        ndarray of shape (n_samples, n_classes) otherwise
            the log-probabilities.
        """
        check_is_fitted(self, self._fitted_attribute)
        log_proba = self.predict_log_proba(X)
        if len(self.classes_) == 2:
            return log_proba[:, 1] - log_proba[:, 0]
        return log_proba

    def predict(self, X):
        """Most probable class of each text: ``classes_[argmax(predict_proba)]``."""
        check_is_fitted(self, self._fitted_attribute)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


class PromptEstimator(ProbaMethodsMixin, ClassifierMixin, BaseEstimator):
    """Base of the estimators that tune a soft prompt (private).

    Subclasses define ``_validate_params`` and ``_resolve_backend``.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    def _start_fit(self, X, y):
        """Check the parameters and the data, then resolve the backend (no model call).

        Returns
        -------
        texts : list of str
        y : ndarray
        classes : ndarray
            The sorted class labels.
        backend : PromptBackend
        """
        self._validate_params()
        texts = check_texts(X)
        y, classes = check_labels(y, len(texts))
        return texts, y, classes, self._resolve_backend()

    def _prompt_length(self, backend):
        """``n_prompt_tokens``, else the backend's suggestion, else 5."""
        if self.n_prompt_tokens is not None:
            return int(self.n_prompt_tokens)
        return int(backend.default_prompt_length or 5)
