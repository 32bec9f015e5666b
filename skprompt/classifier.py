"""The estimator: ``BlackBoxPromptClassifier``.

It validates the data, builds the search space (a random projection of
z in R^d to a soft prompt), hands a learner a :class:`~skprompt._problem.PromptProblem`
(candidate vectors in, losses out) and aggregates the prompt samples it
returns into ``predict_proba``. Learners never see texts or models; backends
never see learners.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ._problem import PromptProblem
from ._validation import check_labels, check_param, check_texts
from .backends.base import PromptBackend
from .exceptions import BudgetWarning
from .inference.base import aggregate_outputs
from .inference.cmaes import CMAEnsembleLearner
from .losses import LOSSES, SCORE_LOSSES
from .projection import RandomProjection

__all__ = ["BlackBoxPromptClassifier", "METHODS"]

#: Learners by ``method`` name.
METHODS = ("zero-shot", "bbt", "ensemble")


class BlackBoxPromptClassifier(ClassifierMixin, BaseEstimator):
    """Soft-prompt tuning of a black-box language model, as a classifier.

    The model is only queried: for candidate soft prompts (continuous vectors
    placed among the input embeddings) and texts it returns class scores, or
    only labels. The prompt is searched without gradients by CMA-ES in a
    random ``intrinsic_dim``-dimensional subspace (Black-Box Tuning), and
    ``method="ensemble"`` keeps several independently tuned prompts whose
    averaged probabilities are better calibrated than one prompt's (Shen et
    al., "Reliable Gradient-free and Likelihood-free Prompt Tuning", 2023).

    Parameters
    ----------
    backend : PromptBackend or None, default=None
        The black box (see :mod:`skprompt.backends`). ``None`` loads the
        bundled SmolLM2-135M-Instruct model (:func:`skprompt.models.default_backend`)
        with the class labels themselves as label words.
    method : {"ensemble", "bbt", "zero-shot"}, default="ensemble"
        ``"bbt"``: one CMA-ES run, one prompt. ``"ensemble"``: ``n_prompts``
        independent runs, uniform weights. ``"zero-shot"``: no soft prompt
        and no tuning (a baseline; ``fit`` queries nothing).
    n_prompts : int, default=5
        Ensemble size (ignored by ``"bbt"`` and ``"zero-shot"``).
    n_prompt_tokens : int, default=5
        Number of soft-prompt vectors.
    intrinsic_dim : int, default=50
        Dimension of the search space z.
    popsize : int, default=10
        CMA-ES population size.
    max_iter : int, default=20
        CMA-ES generations per run.
    sigma0 : float, default=1.0
        Initial CMA-ES step size; z starts at 0.
    loss : {"ce", "hinge", "brier", "zero_one"}, default="ce"
        Training loss. A label-only backend allows only ``"zero_one"``.
    validation_fraction : float in (0, 1) or None, default=0.25
        Share of the fit data held out (stratified) to select each run's
        kept prompt by validation loss, as the paper selects by dev
        accuracy. ``None`` selects by training loss. When a class has too
        few examples to split, selection falls back to training loss with a
        warning.
    budget : int or None, default=None
        Maximum number of (prompt, text) pairs scored during ``fit``,
        validation included. When the next step would exceed it, ``fit``
        stops, keeps the best prompts found so far and emits a
        :class:`~skprompt.exceptions.BudgetWarning`.
    method_params : dict or None, default=None
        Reserved for method-specific options of later learners.
    n_jobs : int or None, default=None
        Number of concurrent backend requests during ``fit`` and prediction
        (useful for remote or function backends; a local model already uses
        all cores). ``None`` means 1; ``-1`` means one per CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection, the validation split and CMA-ES. The same
        value gives the same ``predict_proba``.
    verbose : int, default=0
        ``> 0`` shows a tqdm progress bar during ``fit``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    backend_ : PromptBackend
        The backend used (``backend``, or the default one).
    projection_ : RandomProjection
        The fixed map from z to soft prompts.
    samples_ : ndarray of shape (n_samples, intrinsic_dim)
        The kept prompt vectors z_k.
    weights_ : ndarray of shape (n_samples,)
        Their weights (sum to 1).
    prompt_embeddings_ : ndarray of shape (n_samples, n_prompt_tokens, embedding_dim)
        The kept soft prompts.
    n_queries_ : int
        (prompt, text) pairs asked for during ``fit``.
    n_iter_ : int
        CMA-ES generations done.
    history_ : ndarray of shape (n_iter_, n_runs)
        Best training loss so far, per generation and per run.
    budget_exhausted_ : bool
        Whether ``fit`` stopped on ``budget``.

    See Also
    --------
    skprompt.backends.CausalLMBackend, skprompt.backends.FunctionBackend

    Examples
    --------
    A toy black box whose class scores are the dot product of the first
    prompt vector with a feature of the text:

    >>> import numpy as np
    >>> from skprompt import BlackBoxPromptClassifier
    >>> from skprompt.backends import FunctionBackend
    >>> def api(prompts, texts):
    ...     x = np.array([[t.count("good") - t.count("bad"), 1.0] for t in texts])
    ...     w = prompts[:, 0, :2] if prompts.shape[1] else np.zeros((len(prompts), 2))
    ...     s = w @ x.T                       # (n_prompts, n_texts)
    ...     return np.stack([-s, s], axis=-1)  # scores of "neg", "pos"
    >>> X = ["good", "bad", "good good", "bad bad", "very good", "so bad"] * 3
    >>> y = ["pos", "neg", "pos", "neg", "pos", "neg"] * 3
    >>> clf = BlackBoxPromptClassifier(FunctionBackend(api, embedding_dim=2), method="bbt",
    ...                                intrinsic_dim=2, n_prompt_tokens=1, max_iter=10,
    ...                                random_state=0).fit(X, y)
    >>> clf.predict(["good good good", "bad"]).tolist()
    ['pos', 'neg']
    >>> clf.predict_proba(["good"]).shape
    (1, 2)
    """

    def __init__(
        self,
        backend=None,
        *,
        method="ensemble",
        n_prompts=5,
        n_prompt_tokens=5,
        intrinsic_dim=50,
        popsize=10,
        max_iter=20,
        sigma0=1.0,
        loss="ce",
        validation_fraction=0.25,
        budget=None,
        method_params=None,
        n_jobs=None,
        random_state=None,
        verbose=0,
    ):
        self.backend = backend
        self.method = method
        self.n_prompts = n_prompts
        self.n_prompt_tokens = n_prompt_tokens
        self.intrinsic_dim = intrinsic_dim
        self.popsize = popsize
        self.max_iter = max_iter
        self.sigma0 = sigma0
        self.loss = loss
        self.validation_fraction = validation_fraction
        self.budget = budget
        self.method_params = method_params
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------------- sklearn
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    # -------------------------------------------------------------- checking
    def _validate_params(self):
        check_param("method", self.method, None, options=METHODS)
        check_param("n_prompts", self.n_prompts, "int", low=1)
        check_param("n_prompt_tokens", self.n_prompt_tokens, "int", low=1)
        check_param("intrinsic_dim", self.intrinsic_dim, "int", low=1)
        check_param("popsize", self.popsize, "int", low=2)
        check_param("max_iter", self.max_iter, "int", low=1)
        check_param("sigma0", self.sigma0, "real", low=0, low_inclusive=False)
        check_param("loss", self.loss, None, options=sorted(LOSSES))
        check_param("validation_fraction", self.validation_fraction, "real", low=0, high=1,
                    low_inclusive=False, allow_none=True)
        if self.validation_fraction is not None and self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be < 1; got {self.validation_fraction!r}.")
        check_param("budget", self.budget, "int", low=1, allow_none=True)
        if self.method_params is not None and not isinstance(self.method_params, dict):
            raise ValueError(f"method_params must be a dict or None; got {type(self.method_params).__name__}.")
        if self.n_jobs is not None:
            check_param("n_jobs", self.n_jobs, "int")
            if self.n_jobs == 0:
                raise ValueError("n_jobs must be a non-zero int or None; got 0.")
        check_param("verbose", self.verbose, "int", low=0)

    def _resolve_backend(self):
        backend = self.backend
        if backend is None:
            from .models import default_backend

            backend = default_backend()
        if not isinstance(backend, PromptBackend):
            raise TypeError(
                "backend must be a skprompt PromptBackend (e.g. CausalLMBackend, MaskedLMBackend, "
                f"FunctionBackend) or None; got {type(backend).__name__}."
            )
        return backend

    def _make_learner(self):
        n_members = self.n_prompts if self.method == "ensemble" else 1
        return CMAEnsembleLearner(n_members, self.popsize, self.max_iter, self.sigma0)

    def _split(self, texts, y_idx, rng):
        if self.validation_fraction is None:
            return {"train": (texts, y_idx)}
        idx = np.arange(len(texts))
        try:
            tr, va = train_test_split(idx, test_size=self.validation_fraction, stratify=y_idx,
                                      random_state=rng.randint(0, 2**31 - 1))
        except ValueError as exc:
            warnings.warn(
                f"validation_fraction={self.validation_fraction} cannot hold out every class "
                f"({exc}); selecting prompts by training loss instead.",
                UserWarning,
                stacklevel=3,
            )
            return {"train": (texts, y_idx)}
        tr, va = np.sort(tr), np.sort(va)
        return {"train": ([texts[i] for i in tr], y_idx[tr]), "val": ([texts[i] for i in va], y_idx[va])}

    # ------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Tune the prompt distribution on texts ``X`` with labels ``y``.

        Parameters
        ----------
        X : sequence of str of length n_samples
            1-D (list, tuple, ndarray, pandas Series) or a single column.
        y : array-like of shape (n_samples,)
            Class labels (str, int, any sortable hashable), at least two classes.

        Returns
        -------
        self : BlackBoxPromptClassifier
        """
        self._validate_params()
        texts = check_texts(X)
        y, classes = check_labels(y, len(texts))
        backend = self._resolve_backend()
        labels_only = bool(backend.labels_only)
        if labels_only and self.method == "zero-shot":
            pass
        elif labels_only and self.loss in SCORE_LOSSES:
            raise ValueError(
                f"loss={self.loss!r} needs class scores, but {backend!r} is label-only; use loss='zero_one'."
            )
        backend.check_classes(list(classes))

        rng = check_random_state(self.random_state)
        y_idx = np.searchsorted(classes, y)
        zero_shot = self.method == "zero-shot"
        n_tokens = 0 if zero_shot else self.n_prompt_tokens
        dim = 0 if zero_shot else self.intrinsic_dim
        mean, std = backend.embedding_stats()
        projection = RandomProjection(n_tokens, backend.embedding_dim, dim, embedding_mean=mean,
                                      embedding_std=std, sigma0=self.sigma0, random_state=rng)
        splits = self._split(texts, y_idx, rng)

        if zero_shot:
            samples, weights = np.zeros((1, 0)), np.ones(1)
            history, n_iter, exhausted, n_queries = np.empty((0, 1)), 0, False, 0
        else:
            learner = self._make_learner()
            problem = PromptProblem(backend, projection, classes, splits, self.loss, labels_only,
                                    budget=self.budget, n_jobs=self.n_jobs)
            needed = learner.minimum_budget(problem)
            if self.budget is not None and self.budget < needed:
                raise ValueError(
                    f"budget={self.budget} is below the {needed} queries one iteration of "
                    f"method={self.method!r} needs on {len(texts)} texts; raise budget or lower popsize."
                )
            with tqdm(total=self.max_iter, desc=f"skprompt {self.method}", disable=not self.verbose,
                      leave=False) as bar:
                problem.progress = bar
                result = learner.fit(problem, rng)
                problem.progress = None
            samples, weights, history = result.samples, result.weights, result.history
            n_iter, exhausted, n_queries = result.n_iter, result.budget_exhausted, problem.queries
            if exhausted:
                warnings.warn(
                    f"budget={self.budget} reached after {n_iter} iteration(s) and {n_queries} queries; "
                    "keeping the best prompts found so far.",
                    BudgetWarning,
                    stacklevel=2,
                )

        self.classes_ = classes
        self.backend_ = backend
        self.projection_ = projection
        self.samples_ = np.asarray(samples, dtype=np.float64)
        self.weights_ = np.asarray(weights, dtype=np.float64)
        self.prompt_embeddings_ = projection(self.samples_)
        self.n_queries_ = int(n_queries)
        self.n_iter_ = int(n_iter)
        self.history_ = history
        self.budget_exhausted_ = bool(exhausted)
        return self

    # --------------------------------------------------------------- predict
    def _outputs(self, X):
        check_is_fitted(self, "samples_")
        texts = check_texts(X)
        problem = PromptProblem(self.backend_, self.projection_, self.classes_, {}, "zero_one",
                                self.backend_.labels_only, n_jobs=self.n_jobs)
        return problem.query(self.prompt_embeddings_, texts)

    def predict_proba(self, X):
        """Class probabilities averaged over the prompt samples.

        Parameters
        ----------
        X : sequence of str

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            ``sum_k weights_[k] * softmax(scores_k)``; columns in ``classes_``
            order, rows sum to 1.
        """
        outputs = self._outputs(X)
        return aggregate_outputs(outputs, self.weights_, len(self.classes_))

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
        check_is_fitted(self, "samples_")
        log_proba = self.predict_log_proba(X)
        if len(self.classes_) == 2:
            return log_proba[:, 1] - log_proba[:, 0]
        return log_proba

    def predict(self, X):
        """Most probable class of each text: ``classes_[argmax(predict_proba)]``."""
        check_is_fitted(self, "samples_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]
