"""Saving and loading fitted estimators: pickle, joblib and skops.

A fitted :class:`~skprompt.BlackBoxPromptClassifier` or
:class:`~skprompt.GradientPromptClassifier` saves as its fitted arrays (the
kept soft prompts, their weights, the projection, the read-out) plus its
backend's *recipe*: a transformers backend built from a local directory
saves the directory's path, template, verbalizer and options, never the
weights, and reloads the weights from that directory on first use; a
:class:`~skprompt.backends.FunctionBackend` saves its function (by reference
for a module-level function; with its attributes for a callable object).
The guide ``docs/persistence.md`` says what each format keeps.

`skops <https://skops.readthedocs.io>`_ loads only the types a user trusts.
:func:`skops_trusted_types` lists the ones skprompt's estimators need beyond
those skops trusts by default. This module imports neither skops nor torch.
"""

from __future__ import annotations

__all__ = ["skops_trusted_types"]

# Found by skops.io.get_untrusted_types on fitted estimators of every method
# (zero-shot, bbt, ensemble, vi, abc-smc, snpe) with a FunctionBackend, and
# with the transformers backends (tests/test_persistence.py checks that the
# list is complete and that each entry is needed). Every other object an
# estimator holds (ndarrays, numpy scalars, lists, dicts, str, float, int,
# bool, None) is a type skops trusts by default.
_SKOPS_TRUSTED_TYPES = (
    "skprompt.backends.function.FunctionBackend",
    "skprompt.backends.huggingface.CausalLMBackend",
    "skprompt.backends.huggingface.MaskedLMBackend",
    "skprompt.classifier.BlackBoxPromptClassifier",
    "skprompt.conformal.SplitConformalSets",
    "skprompt.projection.RandomProjection",
    "skprompt.whitebox.GradientPromptClassifier",
)


def skops_trusted_types():
    """The skprompt types to trust when loading a fitted estimator with skops.

    ``skops.io.load(path, trusted=skops_trusted_types() + [...])`` loads a
    :class:`~skprompt.BlackBoxPromptClassifier` (any ``method``) or a
    :class:`~skprompt.GradientPromptClassifier` saved with
    ``skops.io.dump``, and a :class:`~skprompt.conformal.SplitConformalSets`
    around one. The list holds skprompt's own classes only: the
    estimators, :class:`~skprompt.projection.RandomProjection` and the
    backends. Nothing of numpy or the standard library is in it (the fitted
    state is made of types skops trusts by default), and neither is anything
    of torch or transformers (a transformers backend saves its model
    directory's path, not the model).

    Returns
    -------
    list of str
        Fully qualified type names (``module.QualName``), sorted; a new list
        on each call.

    Notes
    -----
    **Your own function is a type to trust too.** A
    :class:`~skprompt.backends.FunctionBackend` saves its query function, and
    skops loads it only if you trust it by name: a module-level function
    ``score`` of your module ``my_api`` is ``"my_api.score"``, a callable
    object is its class (``"my_api.Client"``), a ``functools.partial`` adds
    ``"functools.partial"``. The function must be importable where the file is
    loaded (a function defined in ``__main__`` or in a notebook is not), and
    a callable object is saved with its attributes: do not keep an API key in
    one, read it from the environment when the function is called.

    Before trusting a file that someone else wrote, read what it would load
    with ``skops.io.get_untrusted_types(file=path)``: for a skprompt
    estimator that is a subset of this list plus the function type of a
    :class:`~skprompt.backends.FunctionBackend`. A file that holds a
    transformers backend names a local model directory, which the backend
    loads (``from_pretrained`` with ``local_files_only=True``) on first use:
    that directory must exist where the file is loaded, and you trust what
    it holds as you would when building the backend from it yourself.

    skops saves only backends whose model can be reloaded from a local
    directory (built from a path, or from a model object and tokenizer that
    were loaded from one); a backend around an in-memory model or tokenizer
    without a directory saves with pickle or joblib only, which then carry
    the weights (see :class:`~skprompt.backends.CausalLMBackend`).

    An estimator inside a scikit-learn :class:`~sklearn.pipeline.Pipeline`
    needs the same list (skops trusts the pipeline's types). A
    :class:`~sklearn.model_selection.GridSearchCV` adds scikit-learn types
    that skops does not trust by default (its scorer and cross-validation
    splitter, e.g. ``sklearn.model_selection._split.StratifiedKFold``):
    review them with ``get_untrusted_types``.

    Examples
    --------
    A query function in a module of your own (written here on the fly as
    ``my_api.py``; it must be importable when the file is loaded):

    >>> import sys, tempfile, textwrap
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "my_api.py").write_text(textwrap.dedent('''
    ...     import numpy as np
    ...
    ...     def score(prompts, texts):
    ...         x = np.array([t.count("good") - t.count("bad") for t in texts], dtype=float)
    ...         w = prompts[:, 0, 0] if prompts.shape[1] else np.zeros(len(prompts))
    ...         s = w[:, None] * x[None, :]
    ...         return np.stack([-s, s], axis=-1)  # scores of "neg", "pos"
    ... '''))
    >>> sys.path.insert(0, str(folder))
    >>> import my_api

    Fit, save with skops, read what the file needs, and load it trusting
    skprompt's types and the function:

    >>> import numpy as np
    >>> import skops.io as sio
    >>> from skprompt import BlackBoxPromptClassifier, skops_trusted_types
    >>> from skprompt.backends import FunctionBackend
    >>> X = ["good", "bad", "good good", "bad bad", "very good", "so bad"] * 3
    >>> y = ["pos", "neg", "pos", "neg", "pos", "neg"] * 3
    >>> clf = BlackBoxPromptClassifier(FunctionBackend(my_api.score, embedding_dim=2), method="bbt",
    ...                                intrinsic_dim=2, n_prompt_tokens=1, max_iter=5,
    ...                                random_state=0).fit(X, y)
    >>> path = folder / "clf.skops"
    >>> sio.dump(clf, path)
    >>> sio.get_untrusted_types(file=path)  # doctest: +NORMALIZE_WHITESPACE
    ['my_api.score', 'skprompt.backends.function.FunctionBackend',
     'skprompt.classifier.BlackBoxPromptClassifier', 'skprompt.projection.RandomProjection']
    >>> restored = sio.load(path, trusted=skops_trusted_types() + ["my_api.score"])
    >>> np.array_equal(restored.predict_proba(X), clf.predict_proba(X))
    True
    >>> sys.path.remove(str(folder))
    """
    return list(_SKOPS_TRUSTED_TYPES)
