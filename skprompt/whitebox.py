"""The white-box reference: soft-prompt tuning by gradient descent.

``GradientPromptClassifier`` tunes the same soft prompt as
:class:`~skprompt.BlackBoxPromptClassifier`, placed the same way by the same
backend, but with what a black-box API never gives: the model's weights and
gradients. It backpropagates the training loss through the frozen model into
the full ``n_prompt_tokens x embedding_dim`` prompt and updates it with Adam
(prompt tuning, Lester et al., 2021). It is the full-access reference the
gradient-free methods are compared against, so it only accepts a local
transformers backend (:class:`~skprompt.backends.CausalLMBackend`,
:class:`~skprompt.backends.MaskedLMBackend`).

It lives apart from the black-box estimator on purpose: the black-box
learners never see a model, this one must.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from ._estimator import PromptEstimator, streaming, validation_split
from ._validation import check_param, check_texts
from .backends.base import PromptBackend
from .backends.huggingface import CausalLMBackend, MaskedLMBackend
from .inference.base import aggregate_outputs
from .losses import HINGE_MARGIN, compute_loss
from .projection import RandomProjection

__all__ = ["GradientPromptClassifier", "GRADIENT_LOSSES"]

#: Progress of verbose fits, one line per step at INFO (as the black-box estimator).
_LOGGER = logging.getLogger("skprompt")

#: Training losses with a gradient (``"zero_one"`` has none).
GRADIENT_LOSSES = ("ce", "hinge", "brier")

#: Standard deviation of the noise added to the mean-embedding start, in units
#: of the embedding table's standard deviation.
INIT_NOISE = 0.1


def _torch_loss(name, log_proba, y):
    """Mean training loss of log-probabilities (n, C) and labels (n,): the
    definitions of :mod:`skprompt.losses`, written in torch for autograd."""
    rows = torch.arange(len(y), device=log_proba.device)
    true = log_proba[rows, y]
    if name == "ce":
        return -true.mean()
    onehot = torch.nn.functional.one_hot(y, log_proba.shape[1]).bool()
    if name == "hinge":
        others = log_proba.masked_fill(onehot, -math.inf).max(dim=1).values
        return torch.clamp(HINGE_MARGIN - (true - others), min=0.0).mean()
    return ((log_proba.exp() - onehot.to(log_proba.dtype)) ** 2).sum(dim=1).mean()  # brier


class _FrozenModel:
    """Context: the model's parameters stop requiring grad and every module is
    in eval mode; both are put back exactly as they were on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self._grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self._modes = [(m, m.training) for m in self.model.modules()]
        for p, _ in self._grad:
            p.requires_grad_(False)
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for p, flag in self._grad:
            p.requires_grad_(flag)
        for m, flag in self._modes:
            m.training = flag


class GradientPromptClassifier(PromptEstimator):
    """White-box reference: soft-prompt tuning with gradients (needs the weights).

    The full-access counterpart of
    :class:`~skprompt.BlackBoxPromptClassifier`: the same soft prompt
    (``n_prompt_tokens`` vectors placed by the backend's layout) is tuned by
    backpropagating the training loss through the frozen model and updating
    *all* ``n_prompt_tokens x embedding_dim`` prompt entries with Adam -- the
    prompt tuning of Lester et al. (2021), with no random projection. A
    black-box API gives neither weights nor gradients, so this estimator is
    not a black-box method: it is the reference the gradient-free methods
    are compared against, and it refuses any backend that is not a local
    transformers model (:class:`~skprompt.backends.CausalLMBackend` or
    :class:`~skprompt.backends.MaskedLMBackend`).

    Parameters
    ----------
    backend : CausalLMBackend, MaskedLMBackend or None, default=None
        A local transformers model. ``None`` loads the bundled
        SmolLM2-135M-Instruct model (:func:`skprompt.models.default_backend`)
        with the class labels themselves as label words. A
        :class:`~skprompt.backends.FunctionBackend`, a label-only backend or
        any other backend is refused (``TypeError`` / ``ValueError``) before
        any model call.
    n_prompt_tokens : int or None, default=None
        Number of soft-prompt vectors. ``None``: the backend's suggestion
        (:attr:`~skprompt.backends.PromptBackend.default_prompt_length`; for a
        ``CausalLMBackend`` with ``prompt_position="tail"``, the length of the
        template's tail), else 5 -- as in the black-box estimator.
    learning_rate : float, default=0.01
        Adam step size, in embedding units (an Adam step moves each prompt
        entry by about ``learning_rate``; SmolLM2's embedding entries have a
        standard deviation of about 0.14).
    max_iter : int, default=50
        Number of Adam steps (one per mini-batch).
    batch_size : int or None, default=None
        Training texts per step; ``None`` uses every training text (full-batch
        gradient descent). Mini-batches are drawn without replacement, a fresh
        permutation per epoch. A step's forward and backward passes run in
        micro-batches of ``backend.batch_size`` texts whose gradients are
        accumulated, so memory does not grow with ``batch_size``.
    loss : {"ce", "hinge", "brier"}, default="ce"
        Training loss (as in :mod:`skprompt.losses`), also used for model
        selection.
    validation_fraction : float in (0, 1) or None, default=0.25
        Share of the fit data held out (stratified, as the black-box
        estimator does) for model selection: the validation loss is computed
        for the initial prompt and after every step, and the prompt with the
        lowest one is kept (the earliest on ties). ``None`` selects by
        training loss: with full-batch steps every iterate's training loss is
        known (the final prompt's is computed once more) and the lowest one
        is kept; with mini-batches the final prompt is kept. When a class has
        too few examples to split, selection falls back to training loss with
        a warning.
    intrinsic_dim : int or None, default=None
        A research tool, not a tuning method: tune ``z`` in R^d through the
        black-box search's fixed random projection instead of the whole
        prompt (the prompt is ``projection_(z)``; ``learning_rate`` is then
        in units of ``z``, whose unit step moves the prompt by about the
        embeddings' spread). With the same ``random_state``,
        ``n_prompt_tokens`` and ``intrinsic_dim`` as a
        :class:`~skprompt.BlackBoxPromptClassifier`, the projection, the
        start (``z = 0``) and the validation split are that estimator's, so
        the fit tells whether the searched subspace holds a better prompt
        than the search found (docs/defaults.md). ``None``: the full prompt.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split, the noise of the initial prompt and the
        mini-batch order (numpy only: torch's global generator is never
        used), and with ``intrinsic_dim`` the projection. The same value
        gives the same ``predict_proba`` (on CPU).
    verbose : int, default=0
        ``> 0`` shows a tqdm progress bar during ``fit`` and logs one line
        per step to the ``logging`` logger ``"skprompt"`` at level INFO (as
        :class:`~skprompt.BlackBoxPromptClassifier` does).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    backend_ : CausalLMBackend or MaskedLMBackend
        The backend used (``backend``, or the default one).
    prompt_embeddings_ : ndarray of shape (1, n_prompt_tokens, embedding_dim), float32
        The kept soft prompt.
    weights_ : ndarray of shape (1,)
        ``[1.0]`` (one prompt; for uniformity with the black-box estimator).
    n_iter_ : int
        Adam steps done.
    history_ : ndarray of shape (n_iter_, 1)
        Training loss of each step: the mean loss on the step's (mini-)batch
        of the prompt before that step's update.
    validation_history_ : ndarray of shape (n_iter_ + 1,) or None
        Validation loss of the initial prompt and of the prompt after each
        step; ``None`` without a validation split.
    best_iter_ : int
        Steps after which the kept prompt was reached (0: the initial prompt).
    n_queries_ : int
        (prompt, text) pairs run through the model during ``fit``: the
        training texts of every step (a forward pass with its backward pass
        counts once), the validation texts of every selection check, and the
        final training pass when selecting by full-batch training loss.
    labels_only_ : bool
        ``False``: predictions are softmax probabilities of the class scores.
    projection_ : RandomProjection or None
        With ``intrinsic_dim``: the fixed map from ``z`` to the prompt.
    z_ : ndarray of shape (intrinsic_dim,) or None
        With ``intrinsic_dim``: the kept ``z`` (``prompt_embeddings_ =
        projection_(z_)``).

    See Also
    --------
    skprompt.BlackBoxPromptClassifier : the gradient-free, black-box estimator.

    Notes
    -----
    The prompt starts where the black-box search is centred:
    ``backend.initial_prompt(n_prompt_tokens)`` when the backend gives one
    (with ``prompt_position="tail"``, the embeddings of the template's tail:
    the untuned prompt is the zero-shot input), else the mean input embedding
    plus Gaussian noise of ``0.1 x`` the embedding table's standard deviation
    (seeded by ``random_state``).

    The model's weights are frozen during ``fit`` (their ``requires_grad``
    flags are switched off and restored afterwards, so they never get a
    gradient) and every module runs in eval mode (no dropout). The gradients
    come from the backend's differentiable scoring path, which builds exactly
    the input that :meth:`~skprompt.backends.PromptBackend.score` builds: with
    ``prompt_position="suffix"`` or ``"tail"`` the texts' key/value caches
    are constants (the prompt comes after the text) and only the suffix
    tokens are run with grad; ``"prefix"`` and masked LMs run the full input
    with grad. Predictions use the backend's ordinary :meth:`score`, as the
    black-box estimator's do.

    References
    ----------
    B. Lester, R. Al-Rfou, N. Constant. "The Power of Scale for
    Parameter-Efficient Prompt Tuning", EMNLP 2021.

    Examples
    --------
    >>> from skprompt.whitebox import GradientPromptClassifier
    >>> from skprompt.models import default_backend
    >>> backend = default_backend("Review: {text}\\nSentiment:",
    ...                           verbalizer={"fresh": "positive", "rotten": "negative"})  # doctest: +SKIP
    >>> X = ["A delight.", "A bore.", "Moving and funny.", "Dull and overlong."] * 4
    >>> y = ["fresh", "rotten", "fresh", "rotten"] * 4
    >>> clf = GradientPromptClassifier(backend, max_iter=10, random_state=0).fit(X, y)  # doctest: +SKIP
    >>> clf.predict(["What a delight!"])  # doctest: +SKIP
    array(['fresh'], dtype='<U6')
    """

    _fitted_attribute = "prompt_embeddings_"

    def __init__(
        self,
        backend=None,
        *,
        n_prompt_tokens=None,
        learning_rate=0.01,
        max_iter=50,
        batch_size=None,
        loss="ce",
        validation_fraction=0.25,
        intrinsic_dim=None,
        random_state=None,
        verbose=0,
    ):
        self.backend = backend
        self.n_prompt_tokens = n_prompt_tokens
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.loss = loss
        self.validation_fraction = validation_fraction
        self.intrinsic_dim = intrinsic_dim
        self.random_state = random_state
        self.verbose = verbose

    # -------------------------------------------------------------- checking
    def _validate_params(self):
        check_param("n_prompt_tokens", self.n_prompt_tokens, "int", low=1, allow_none=True)
        check_param("learning_rate", self.learning_rate, "real", low=0, low_inclusive=False)
        check_param("max_iter", self.max_iter, "int", low=1)
        check_param("batch_size", self.batch_size, "int", low=1, allow_none=True)
        check_param("loss", self.loss, None, options=GRADIENT_LOSSES)
        check_param("validation_fraction", self.validation_fraction, "real", low=0, high=1,
                    low_inclusive=False, allow_none=True)
        if self.validation_fraction is not None and self.validation_fraction >= 1:
            raise ValueError(f"validation_fraction must be < 1; got {self.validation_fraction!r}.")
        check_param("intrinsic_dim", self.intrinsic_dim, "int", low=1, allow_none=True)
        check_param("verbose", self.verbose, "int", low=0)

    def _resolve_backend(self):
        backend = self.backend
        if backend is None:
            from .models import default_backend

            backend = default_backend()
        need = ("GradientPromptClassifier is the white-box reference: it needs full access (weights and "
                "gradients) to a local transformers model, i.e. a CausalLMBackend or MaskedLMBackend")
        if not isinstance(backend, PromptBackend):
            raise TypeError(f"backend must be a CausalLMBackend, MaskedLMBackend or None; got "
                            f"{type(backend).__name__}. {need}.")
        if backend.labels_only:
            raise ValueError(f"{need}; {backend!r} is label-only (it returns predicted labels, not scores, "
                             "let alone gradients). Use BlackBoxPromptClassifier with a label-only method.")
        if not isinstance(backend, (CausalLMBackend, MaskedLMBackend)):
            raise TypeError(f"{need}; got {backend!r}, which only answers queries. Use "
                            "BlackBoxPromptClassifier for black-box backends.")
        return backend

    # ------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Tune the soft prompt by gradient descent on texts ``X`` with labels ``y``.

        Parameters
        ----------
        X : sequence of str of length n_samples
            1-D (list, tuple, ndarray, pandas Series) or a single column.
        y : array-like of shape (n_samples,)
            Class labels (str, int, any sortable hashable), at least two classes.

        Returns
        -------
        self : GradientPromptClassifier
        """
        texts, y, classes, backend = self._start_fit(X, y)
        backend.check_classes(list(classes))

        rng = check_random_state(self.random_state)
        y_idx = np.searchsorted(classes, y)
        n_tokens = self._prompt_length(backend)
        init = backend.initial_prompt(n_tokens)
        projection = None
        if self.intrinsic_dim is not None:  # drawn as BlackBoxPromptClassifier draws it, before the split
            mean, std = backend.embedding_stats()
            projection = RandomProjection(n_tokens, backend.embedding_dim, self.intrinsic_dim,
                                          embedding_mean=mean if init is None else init, embedding_std=std,
                                          random_state=rng)
            init = np.zeros(self.intrinsic_dim, dtype=np.float32)  # z = 0: the black-box search's start
        elif init is None:
            mean, std = backend.embedding_stats()
            noise = rng.standard_normal((n_tokens, backend.embedding_dim))
            init = np.asarray(mean)[None, :] + INIT_NOISE * float(std) * noise
        if projection is None:
            init = np.asarray(init, dtype=np.float32).reshape(n_tokens, backend.embedding_dim)
        splits = validation_split(texts, y_idx, self.validation_fraction, rng)

        with _FrozenModel(backend.model):
            result = _Trainer(self, backend, list(classes), splits, rng, projection).run(init)

        self.classes_ = classes
        self.backend_ = backend
        self.projection_ = projection
        self.z_ = None if projection is None else result["prompt"].astype(np.float64)
        self.prompt_embeddings_ = (result["prompt"][None].astype(np.float32) if projection is None
                                   else projection(self.z_[None]))
        self.weights_ = np.ones(1)
        self.n_iter_ = result["n_iter"]
        self.history_ = np.asarray(result["history"], dtype=np.float64).reshape(-1, 1)
        self.validation_history_ = result["val_history"]
        self.best_iter_ = result["best_iter"]
        self.n_queries_ = result["n_queries"]
        self.labels_only_ = False
        return self

    # --------------------------------------------------------------- predict
    def predict_proba(self, X):
        """Class probabilities: softmax of the class scores of the kept prompt.

        Scored by ``backend_.score`` (the same path as the black-box
        estimator's predictions).

        Parameters
        ----------
        X : sequence of str

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in ``classes_`` order; rows sum to 1.
        """
        check_is_fitted(self, "prompt_embeddings_")
        texts = check_texts(X)
        with streaming(self.backend_):  # new texts pass through; the fit's text cache is kept as it is
            outputs = self.backend_.score(self.prompt_embeddings_, texts, list(self.classes_))
        return aggregate_outputs(outputs, self.weights_, len(self.classes_))


class _Trainer:
    """One ``fit``: Adam on the prompt, model selection, query accounting."""

    def __init__(self, est, backend, classes, splits, rng, projection=None):
        self.est = est
        self.backend = backend
        self.classes = classes
        self.splits = splits
        self.rng = rng
        self.device = backend._get_handle().device
        self.projection = projection
        if projection is not None:  # the prompt as a differentiable function of z
            self.matrix = torch.as_tensor(projection.matrix, device=self.device)
            self.offset = torch.as_tensor(projection.offset, device=self.device)
        # Texts per forward (one prompt): the backend's micro-batch size.
        self.chunk = int(backend.batch_size)
        self.n_queries = 0

    def _prompt(self, param):
        """The soft prompt (n_prompt_tokens, D) of the parameter: itself, or ``projection(z)``."""
        if self.projection is None:
            return param
        return (self.offset + self.matrix @ param).reshape(self.projection.n_prompt_tokens,
                                                            self.projection.embedding_dim)

    def _chunks(self, idx):
        return [idx[i: i + self.chunk] for i in range(0, len(idx), self.chunk)]

    def _loss_value(self, prompt, split):
        """Mean loss (numpy definition) of a prompt on a whole split, without grad."""
        texts, y = self.splits[split]
        parts = []
        with torch.inference_mode():
            for chunk in self._chunks(np.arange(len(texts))):
                lp = self.backend._log_proba_torch(self._prompt(prompt)[None], [texts[i] for i in chunk],
                                                   self.classes)
                parts.append(lp[0].cpu().numpy())
        self.n_queries += len(texts)
        return float(compute_loss(self.est.loss, np.concatenate(parts)[None], y)[0])

    def _batches(self, n_train):
        size = self.est.batch_size
        if size is None or size >= n_train:
            while True:
                yield np.arange(n_train)
        while True:
            perm = self.rng.permutation(n_train)
            for start in range(0, n_train, size):
                yield perm[start: start + size]

    def run(self, init):
        est, backend = self.est, self.backend
        train_texts, train_y = self.splits["train"]
        n_train = len(train_texts)
        full_batch = est.batch_size is None or est.batch_size >= n_train
        use_val = "val" in self.splits
        y_all = torch.as_tensor(np.asarray(train_y, dtype=np.int64), device=self.device)

        prompt = torch.nn.Parameter(torch.as_tensor(init, dtype=torch.float32, device=self.device).clone())
        optimizer = torch.optim.Adam([prompt], lr=float(est.learning_rate))
        best_prompt, best_iter = init.copy(), 0
        val_history = []
        if use_val:
            val_history.append(self._loss_value(prompt.detach(), "val"))
            best = val_history[0]
        else:
            best = math.inf
        history, n_iter = [], 0
        batches = self._batches(n_train)
        with torch.enable_grad(), tqdm(total=est.max_iter, desc="skprompt gradient",
                                       disable=not est.verbose, leave=False) as bar:
            for step in range(est.max_iter):
                idx = next(batches)
                optimizer.zero_grad(set_to_none=True)
                total = 0.0
                for chunk in self._chunks(idx):
                    lp = backend._log_proba_torch(self._prompt(prompt)[None], [train_texts[i] for i in chunk],
                                                  self.classes)[0]
                    part = _torch_loss(est.loss, lp, y_all[torch.as_tensor(chunk, device=self.device)])
                    part = part * (len(chunk) / len(idx))
                    part.backward()
                    total += float(part.detach())
                self.n_queries += len(idx)
                if not (math.isfinite(total) and bool(torch.isfinite(prompt.grad).all())):
                    warnings.warn(f"the training loss or its gradient is not finite at step {step + 1}; "
                                  "stopping and keeping the best prompt so far (lower learning_rate).",
                                  RuntimeWarning, stacklevel=3)
                    break
                if not use_val and full_batch and total < best:  # the prompt before this step
                    best, best_prompt, best_iter = total, prompt.detach().cpu().numpy().copy(), step
                optimizer.step()
                history.append(total)
                n_iter += 1
                if use_val:
                    val = self._loss_value(prompt.detach(), "val")
                    val_history.append(val)
                    if val < best:
                        best, best_prompt, best_iter = val, prompt.detach().cpu().numpy().copy(), n_iter
                bar.set_postfix({"train_loss": f"{total:.4g}", "best": f"{best:.4g}"}, refresh=False)
                bar.update(1)
                if est.verbose:
                    _LOGGER.info("gradient step %d/%d: train_loss=%.4g%s best=%.4g (queries %d)", step + 1,
                                 est.max_iter, total, f" val_loss={val_history[-1]:.4g}" if use_val else "",
                                 best, self.n_queries)
        final = prompt.detach().cpu().numpy().copy()
        if not use_val:
            if full_batch and n_iter > 0:
                last = self._loss_value(prompt.detach(), "train")
                if last < best:
                    best_prompt, best_iter = final, n_iter
            else:
                best_prompt, best_iter = final, n_iter
        return {
            "prompt": best_prompt,
            "n_iter": n_iter,
            "history": history,
            "val_history": np.asarray(val_history, dtype=np.float64) if use_val else None,
            "best_iter": int(best_iter),
            "n_queries": int(self.n_queries),
        }
