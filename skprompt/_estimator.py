"""What both estimators (black-box and white-box) derive from ``predict_proba``.

A mixin rather than a base estimator: each estimator keeps its own
``__init__``, ``fit`` and ``predict_proba``; this adds the methods every
sklearn classifier with probabilities has, written once.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_is_fitted

__all__ = ["ProbaMethodsMixin"]


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
