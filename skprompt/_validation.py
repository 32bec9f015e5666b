"""Input validation for text classifiers (sklearn's own checks expect numbers)."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

__all__ = ["check_texts", "check_labels", "check_param"]


def check_texts(X, name="X"):
    """Return ``X`` as a list of str, or raise a clear error.

    Accepts a 1-D sequence of str (list, tuple, ndarray of str or object,
    pandas Series) or a single-column 2-D array / DataFrame, as a
    ``ColumnTransformer`` passes it.
    """
    if isinstance(X, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str (one text per sample), not a single {type(X).__name__}.")
    if hasattr(X, "iloc") and getattr(X, "ndim", 1) == 2:  # pandas DataFrame
        if X.shape[1] != 1:
            raise ValueError(f"{name} must have a single column of texts; got a DataFrame with {X.shape[1]} columns.")
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy"):  # pandas Series / Index
        X = X.to_numpy(dtype=object)
    try:
        arr = np.asarray(X, dtype=object)
    except Exception as exc:  # pragma: no cover - exotic containers
        raise TypeError(f"{name} must be a sequence of str; got {type(X).__name__}.") from exc
    if arr.ndim == 2:
        if arr.shape[1] != 1:
            raise ValueError(f"{name} must be 1-D or a single column of texts; got shape {arr.shape}.")
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of str; got an array of shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one text is required.")
    texts = []
    for i, item in enumerate(arr):
        if isinstance(item, np.str_):
            item = str(item)
        if not isinstance(item, str):
            raise TypeError(
                f"{name}[{i}] is {item!r} of type {type(item).__name__}; every sample must be a str."
            )
        texts.append(item)
    return texts


def label_vector(y, n_samples, name="y", *, x_name="X", unit="text",
                 required="this is a supervised classifier"):
    """Return ``y`` as a 1-D ndarray of ``n_samples`` labels (a column or a
    pandas Series accepted), or raise a clear error naming ``name``."""
    if y is None:
        raise ValueError(f"{name} is required: {required}.")
    if hasattr(y, "to_numpy"):
        y = y.to_numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per {unit}); got shape {y.shape}.")
    if y.shape[0] != n_samples:
        raise ValueError(f"{x_name} and {name} have different lengths: {n_samples} {unit}s and "
                         f"{y.shape[0]} labels.")
    return y


def check_labels(y, n_samples, name="y"):
    """Return ``y`` as a 1-D ndarray of hashable labels, or raise a clear error."""
    y = label_vector(y, n_samples, name)
    if y.dtype.kind == "f" and np.isnan(y).any() or y.dtype == object and any(
        (isinstance(v, float) and np.isnan(v)) or v is None for v in y
    ):
        raise ValueError(f"{name} contains missing labels (NaN or None).")
    check_classification_targets(y)
    try:
        classes = np.unique(y)
    except TypeError as exc:
        raise TypeError(f"{name} mixes label types that cannot be sorted: {exc}") from None
    if len(classes) < 2:
        raise ValueError(
            f"{name} has a single class ({classes[0]!r}); a classifier needs at least two classes."
        )
    return y, classes


def check_param(name, value, kind, *, low=None, high=None, low_inclusive=True, allow_none=False, options=None):
    """Validate one hyper-parameter; raise ``ValueError`` naming it."""
    if value is None and allow_none:
        return value
    if options is not None:
        if value not in options:
            raise ValueError(f"{name} must be one of {list(options)}; got {value!r}.")
        return value
    ok_type = {
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "real": isinstance(value, numbers.Real) and not isinstance(value, bool),
    }[kind]
    if not ok_type or (kind == "real" and not np.isfinite(value)):
        expected = "an int" if kind == "int" else "a finite number"
        raise ValueError(f"{name} must be {expected}{' or None' if allow_none else ''}; got {value!r}.")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}; got {value!r}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}; got {value!r}.")
    return value
