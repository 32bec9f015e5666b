"""The machinery both transformers backends share: parameters, label words, context, batching of calls."""

from __future__ import annotations

import contextlib
import inspect
import json
import numbers
import os
import uuid
import warnings

import numpy as np
import torch

from ..base import BackendError, ContextWarning, PromptBackend
from ._handle import _ModelHandle, _TopReadout
from ._loading import _dtype_name, _load_handle, _local_dir, _OBJECTS, _resolve_device, _resolve_dtype
from ._threads import _check_num_threads, _torch_threads, default_num_threads


# --------------------------------------------------------------------------
# Shared backend machinery
# --------------------------------------------------------------------------


def _check_positive_int(name, value):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def _check_placeholder(template, name):
    if not isinstance(template, str):
        raise ValueError(f"template must be a str; got {type(template).__name__}.")
    count = template.count("{" + name + "}")
    if count != 1:
        raise ValueError(
            f"template must contain '{{{name}}}' exactly once (where the {name} goes); "
            f"found it {count} times in {template!r}."
        )



TRUNCATION = ("right", "left", "error")
#: Positions kept free beyond the counted ones when fitting a text to the
#: context: a text tokenised inside the template may take a token or two more
#: than alone.
_CONTEXT_SLACK = 4
#: Pairs per forward pass unless ``batch_size`` says otherwise.
_DEFAULT_BATCH_SIZE = 64


class _TokenizedBackend(PromptBackend):
    """What every backend built on a tokenizer shares (the transformers
    backends and :class:`~skprompt.backends.VLLMBackend`): the construction
    arguments as scikit-learn parameters, the verbalizer and its label
    tokens, and fitting texts to the context.

    A subclass sets ``template``, ``verbalizer`` and ``truncation`` in its
    ``__init__`` and provides ``_get_handle()`` (an object with
    ``tokenizer``, ``tokenizer_lock``, ``encode``, ``special_prefix`` and
    ``embedding_stats``), ``context_length()`` and ``_model_name()``.
    """

    _kind = None  # "causal" or "masked"

    # -- parameters (scikit-learn's protocol) ----------------------------------
    @classmethod
    def _param_names(cls):
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep=True):
        """The construction arguments, as scikit-learn's ``get_params``.

        With them a backend is tunable like an estimator's parameter:
        ``GridSearchCV(clf, {"backend__template": [...]})``. ``model`` and
        ``tokenizer`` are the paths the backend was built from, or the
        objects it was given; ``deep`` is accepted for scikit-learn and has
        no effect (a backend holds no estimators).

        Returns
        -------
        dict
        """
        handle_objects = not getattr(self, "_model_given_as_path", True)
        params = {}
        for name in self._param_names():
            if name == "model":
                params[name] = self._get_handle().model if handle_objects else self.model_path
            elif name == "tokenizer":
                params[name] = self._get_handle().tokenizer if handle_objects else self.tokenizer_path
            elif name in ("device", "dtype") and handle_objects:
                params[name] = None  # they apply only to a path (see the class docstring)
            else:
                params[name] = getattr(self, name)
        return params

    def set_params(self, **params):
        """Set construction arguments, as scikit-learn's ``set_params``.

        The backend is rebuilt from the new arguments (checked as the
        constructor checks them; on an error the backend is left as it was):
        the weights come from the per-process model registry, so nothing is
        reloaded; the result cache, which holds answers under the old
        settings, starts empty, while the texts' key/value caches (which
        depend only on the model and the text) are kept.

        Returns
        -------
        self
        """
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(
                f"Invalid parameter(s) {unknown} for {type(self).__name__}; valid parameters: {sorted(current)}."
            )
        current.update(params)
        rebuilt = type(self)(**current)  # validated before anything of self changes
        if hasattr(rebuilt, "_share_runtime_with"):
            rebuilt._share_runtime_with(self)
        self.__dict__.clear()
        self.__dict__.update(rebuilt.__dict__)
        return self

    def __sklearn_clone__(self):
        # sklearn.base.clone: a new backend from the same arguments. It shares
        # the loaded weights (the per-process registry, or the same model
        # object) and the texts' key/value caches, not the result cache, so
        # that set_params on the clone (as GridSearchCV does) never changes
        # the original's answers.
        params = self.get_params()
        if params["verbalizer"] is not None:
            params["verbalizer"] = dict(params["verbalizer"])
        clone = type(self)(**params)
        if hasattr(clone, "_share_runtime_with"):
            clone._share_runtime_with(self)
        return clone

    # -- construction helpers ---------------------------------------------------
    @staticmethod
    def _check_verbalizer(verbalizer):
        if verbalizer is None:
            return None
        if not isinstance(verbalizer, dict) or not verbalizer:
            raise ValueError(
                "verbalizer must be None or a non-empty dict mapping each class label to its label word; "
                f"got {verbalizer!r}."
            )
        for label, word in verbalizer.items():
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"verbalizer[{label!r}] must be a non-empty str (the label word); got {word!r}.")
        return dict(verbalizer)

    # -- runtime state ----------------------------------------------------------
    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._token_ids = {}
        self._fitted_texts = {}  # text -> the text cut to the context (only texts that were cut)
        self._context_checked = {}  # (n_prompt_tokens, text) -> True for texts known to fit

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_token_ids", "_fitted_texts", "_context_checked"):
            state.pop(key, None)
        return state

    # -- public facts ---------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer object."""
        return self._get_handle().tokenizer

    def embedding_stats(self):
        return self._get_handle().embedding_stats()

    # -- verbalizer -------------------------------------------------------------
    def label_word(self, label):
        """The label word of class ``label`` (before tokenisation)."""
        if self.verbalizer is None:
            return str(label)
        try:
            return self.verbalizer[label]
        except (KeyError, TypeError):
            raise BackendError(f"class {label!r} is missing from the verbalizer.") from None

    def label_token_id(self, word):
        """Vocabulary id that stands for ``word``.

        The word is tokenised with a leading space (``" " + word``, unless it
        already starts with whitespace) and its first token that is not pure
        whitespace is kept: the token the model would produce right after
        ``"...Answer:"`` or at the mask of ``"It was <mask>"``.
        """
        handle = self._get_handle()
        text = word if word[:1].isspace() else " " + word
        ids = handle.encode(text)
        tok = handle.tokenizer
        # A leading token that is only whitespace (some tokenizers split the
        # space off) is skipped; the word itself must be one token.
        word_ids = [int(i) for i in ids if tok.decode([i]).strip()]
        if not word_ids:
            raise BackendError(f"label word {word!r} has no token; choose another word in the verbalizer.")
        if len(word_ids) > 1:
            # Refused rather than scored by its first token (which silently
            # confuses words that share it) or by the sum of its tokens'
            # log-probabilities (which penalises long words and needs extra
            # positions per class): see the verbalizer's documentation.
            pieces = tok.convert_ids_to_tokens(word_ids)
            raise BackendError(
                f"label word {word!r} is {len(word_ids)} tokens {pieces!r} for this tokenizer, but each class "
                "is read as the logit of one token; choose a single-token word for it in the verbalizer "
                "(a synonym, or a shorter or lower-case form)."
            )
        if tok.unk_token_id is not None and word_ids[0] == tok.unk_token_id:
            raise BackendError(f"label word {word!r} is not in the tokenizer's vocabulary (it maps to the "
                               "unknown token); choose another word in the verbalizer.")
        return word_ids[0]

    def check_classes(self, classes):
        self._class_token_ids(list(classes))

    def _class_token_ids(self, classes):
        key = tuple(map(repr, classes))
        ids = self._token_ids.get(key)
        if ids is not None:
            return ids
        if self.verbalizer is not None:
            missing = [c for c in classes if not self._in_verbalizer(c)]
            if missing:
                raise BackendError(
                    f"classes {missing!r} are missing from the verbalizer (it has {list(self.verbalizer)!r}); "
                    "give a label word for every class."
                )
        else:
            not_words = [c for c in classes if not isinstance(c, str)]
            if not_words:
                # str(True) or str(3) as a label word is almost never what was meant
                example = {c: f"<word for {c!r}>" for c in list(classes)[:3]}
                raise BackendError(
                    f"classes {list(classes)!r} are not strings and the backend has no verbalizer, so their "
                    f"label words would be {[str(c) for c in classes]!r}. Pass the words the model should "
                    f"answer with, e.g. verbalizer={example!r} (one single-token word per class)."
                )
        ids, owner = [], {}
        for label in classes:
            word = self.label_word(label)
            tid = self.label_token_id(word)
            if tid in owner:
                token = self._get_handle().tokenizer.convert_ids_to_tokens(tid)
                raise BackendError(
                    f"classes {owner[tid]!r} and {label!r} share the same first token {token!r} "
                    f"(label words {self.label_word(owner[tid])!r} and {word!r}); the verbalizer must give "
                    "each class a label word with a distinct first token."
                )
            owner[tid] = label
            ids.append(tid)
        self._token_ids[key] = ids
        return ids

    def _in_verbalizer(self, label):
        try:
            return label in self.verbalizer
        except TypeError:
            return False

    # -- context ------------------------------------------------------------------
    def _fixed_positions(self, n_prompt_tokens):
        """Positions an input takes besides its text's own tokens (counted
        generously: the template without the text, the soft prompt, specials)."""
        handle = self._get_handle()
        template = self.template.replace("{text}", "").replace("{mask}", " ")
        specials = len(handle.special_prefix()) + 2
        return len(handle.encode(template)) + n_prompt_tokens + specials + _CONTEXT_SLACK

    def _fit_to_context(self, texts, n_prompt_tokens):
        """``texts`` with the overlong ones cut to the model's context, as
        ``truncation`` says, before any scoring.

        Only the text is cut, never the template (whose tail holds the
        question the label word answers) or the soft prompt. One
        :class:`ContextWarning` per call names how many texts were cut for the
        first time; ``truncation="error"`` raises a :class:`BackendError`
        instead.
        """
        limit = self.context_length()
        if limit is None:
            return list(texts)
        unknown = [t for t in dict.fromkeys(texts)
                   if (n_prompt_tokens, t) not in self._context_checked and t not in self._fitted_texts]
        if unknown:
            room = limit - self._fixed_positions(n_prompt_tokens)
            if room < 1:
                raise BackendError(
                    f"the template and a soft prompt of {n_prompt_tokens} tokens leave no room for a text in "
                    f"the {limit}-position context of {self._model_name()!r}; use fewer prompt tokens."
                )
            handle = self._get_handle()
            tok = handle.tokenizer
            with handle.tokenizer_lock:
                enc = tok(unknown, add_special_tokens=False, return_offsets_mapping=bool(tok.is_fast))
            cut = []
            for i, text in enumerate(unknown):
                ids = enc["input_ids"][i]
                if len(ids) <= room:
                    self._context_checked[(n_prompt_tokens, text)] = True
                    continue
                cut.append((text, len(ids)))
                if self.truncation == "error":
                    continue
                if tok.is_fast:
                    offsets = enc["offset_mapping"][i]
                    short = text[:offsets[room - 1][1]] if self.truncation == "right" else text[offsets[-room][0]:]
                else:
                    short = tok.decode(ids[:room] if self.truncation == "right" else ids[-room:])
                self._fitted_texts[text] = short
            if cut:
                longest = max(n for _, n in cut)
                if self.truncation == "error":
                    raise BackendError(
                        f"{len(cut)} text(s) are too long for the {limit}-position context of "
                        f"{self._model_name()!r} (up to {longest} tokens; {room} fit beside the template and "
                        f"the prompt), and truncation='error'. Shorten them, or pass truncation='right' "
                        "(keep their beginning) or 'left' (keep their end)."
                    )
                warnings.warn(
                    f"{len(cut)} text(s) longer than the {room} tokens that fit in the {limit}-position context "
                    f"of {self._model_name()!r} (up to {longest} tokens) were cut: truncation="
                    f"{self.truncation!r} keeps their {'beginning' if self.truncation == 'right' else 'end'}; "
                    "the template around them is kept whole.",
                    ContextWarning, stacklevel=4,
                )
        return [self._fitted_texts.get(t, t) for t in texts]

    # -- batching helpers -------------------------------------------------------
    def _prompt_tensor(self, prompts, handle):
        return torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.float32)).to(handle.device, handle.dtype)


class _HFBackend(_TokenizedBackend):
    """What the transformers backends share beyond :class:`_TokenizedBackend`:
    loading the model (from a path or an object), dtype and device, torch
    threads, streaming prediction, pickling as a recipe."""

    def __init__(self, model, tokenizer, *, template, verbalizer, batch_size, cache_size, device, dtype,
                 truncation="right", num_threads=None, cache=None):
        super().__init__(cache_size=cache_size, cache=cache)
        self.num_threads = _check_num_threads(num_threads)
        if not isinstance(cache_size, numbers.Integral) or isinstance(cache_size, bool) or cache_size < 0:
            raise ValueError(f"cache_size must be a non-negative int; got {cache_size!r}.")
        if truncation not in TRUNCATION:
            raise ValueError(f"truncation must be one of {list(TRUNCATION)}; got {truncation!r}.")
        self.truncation = truncation
        self.template = template
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.verbalizer = self._check_verbalizer(verbalizer)
        self._object_key = None
        self._pickled = {}
        self._tokenizer_in_pickle = False
        self._model_given_as_path = isinstance(model, (str, os.PathLike))
        if isinstance(model, (str, os.PathLike)):
            self.model_path = os.fspath(model)
            if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
                raise ValueError("With model given as a path, tokenizer must be None or a path too; "
                                 f"got {type(tokenizer).__name__}.")
            self.tokenizer_path = os.fspath(tokenizer) if tokenizer is not None else None
            # "auto" is kept as asked, so that a pickled backend picks again on
            # the machine that loads it; the dtype in use is compute_dtype.
            self.dtype = "auto" if isinstance(dtype, str) and dtype == "auto" else _dtype_name(
                _resolve_dtype(dtype, device))
            self.device = str(_resolve_device(device))
            self._handle = None
            self._get_handle()  # load now: a wrong path fails here, not mid-fit
        else:
            self._handle = self._handle_from_object(model, tokenizer, device, dtype)
        self._validate_template()
        # Resolve the verbalizer now so that a bad one fails at construction.
        if self.verbalizer is not None:
            self._class_token_ids(list(self.verbalizer))

    def _handle_from_object(self, model, tokenizer, device, dtype):
        from transformers import AutoTokenizer, PreTrainedModel

        if not isinstance(model, PreTrainedModel):
            raise ValueError(
                "model must be a transformers model object or a local model directory; "
                f"got {type(model).__name__}."
            )
        if device is not None or dtype is not None:
            raise ValueError(
                "device and dtype apply only when the model is given as a path; move or cast the model "
                "object yourself (model.to(...)) before passing it."
            )
        self.model_path = _local_dir(getattr(model, "name_or_path", None))
        if tokenizer is None:
            if self.model_path is None:
                raise ValueError(
                    "tokenizer is required when the model object has no local directory to load it from "
                    f"(model.name_or_path={getattr(model, 'name_or_path', None)!r})."
                )
            self.tokenizer_path = None  # the model's directory
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        elif isinstance(tokenizer, (str, os.PathLike)):
            self.tokenizer_path = os.fspath(tokenizer)
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
        else:
            if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
                raise ValueError(
                    f"tokenizer must be a transformers tokenizer, a path or None; got {type(tokenizer).__name__}."
                )
            # A tokenizer object is reloaded from its own directory when it has one,
            # and pickled with the backend otherwise (it is small).
            self.tokenizer_path = _local_dir(getattr(tokenizer, "name_or_path", None))
            self._tokenizer_in_pickle = self.tokenizer_path is None
        handle = _ModelHandle(model, tokenizer, self._kind)
        self.dtype = _dtype_name(handle.dtype)
        self.device = str(handle.device)
        self._object_key = uuid.uuid4().hex
        _OBJECTS[self._object_key] = handle
        return handle

    def _get_handle(self):
        handle = self._handle
        if handle is not None:
            return handle
        with self._lock:
            if self._handle is None:
                found = _OBJECTS.get(self._object_key) if self._object_key else None
                if found is None:
                    pickled = self._pickled
                    if "model" in pickled:
                        found = _ModelHandle(pickled["model"], pickled["tokenizer"], self._kind)
                    else:
                        found = _load_handle(self.model_path, kind=self._kind, dtype=self.dtype,
                                             device=self.device, tokenizer_path=self.tokenizer_path)
                        if "tokenizer" in pickled:
                            found = _ModelHandle(found.model, pickled["tokenizer"], self._kind)
                    if self._object_key:
                        _OBJECTS[self._object_key] = found
                self._pickled = {}
                self._handle = found
        return self._handle

    # -- runtime state and pickling -------------------------------------------
    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._streaming = 0  # > 0 inside stream_texts(): new texts are not kept

    @contextlib.contextmanager
    def stream_texts(self):
        """Context in which scoring does not keep the texts it encodes.

        The estimators enter it around ``predict_proba`` (and everything built
        on it), where the texts are new and seen once: each micro-batch of
        texts not already in the per-text key/value cache is encoded, serves
        every prompt of the call and is dropped, so that memory stays bounded
        by about ``batch_size`` texts whatever the number of texts, and the
        cache that serves fitting (the training texts' keys and values, and
        their LRU order) is left untouched. Texts already cached are used as
        they are. With ``prompt_position="tail"`` or ``"suffix"`` and a single
        prompt, a text that is not cached is scored by one full forward of
        its whole input (cheaper than building a cache used once); the scores
        are the same up to float rounding. Outside the context nothing
        changes. Re-entrant; it applies to this backend object (a clone has
        its own), whatever thread scores.

        Backends without this method are scored as usual: it is an optional
        addition to the black-box protocol, looked up by the estimators with
        ``getattr``.

        Yields
        ------
        self
        """
        with self._lock:
            self._streaming += 1
        try:
            yield self
        finally:
            with self._lock:
                self._streaming -= 1

    def __getstate__(self):
        state = super().__getstate__()
        handle = state.pop("_handle", None)
        state.pop("_streaming", None)
        if handle is None:  # never loaded since unpickling: pass the recipe on as is
            return state
        pickled = {}
        if self.model_path is None:
            # No directory to reload from: the weights travel with the pickle.
            pickled["model"] = handle.model
            pickled["tokenizer"] = handle.tokenizer
        elif self._tokenizer_in_pickle:
            pickled["tokenizer"] = handle.tokenizer
        state["_pickled"] = pickled
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._handle = None  # loaded lazily, from the per-process registry

    # -- threads ----------------------------------------------------------------
    def effective_num_threads(self):
        """int: the torch thread count this backend scores with
        (``num_threads``, or :func:`default_num_threads` for ``None``)."""
        return self.num_threads if self.num_threads is not None else default_num_threads()

    def _threads(self):
        """Context: torch's intra-op threads set to :meth:`effective_num_threads`
        (on CPU; a GPU model is left alone), put back after the call."""
        if self._get_handle().device.type != "cpu":
            return contextlib.nullcontext()
        return _torch_threads(self.effective_num_threads())

    def _cache_identity(self):
        """The model directory and every setting that changes a score (see ``cache``)."""
        if not self.model_path:
            raise BackendError(
                "cache= needs a model with a local directory (a path, or an object whose name_or_path is one): "
                "the answers on disk are keyed by it."
            )
        settings = {name: getattr(self, name, None) for name in ("template", "prompt_position", "truncation")}
        return json.dumps({
            "backend": type(self).__name__, "model": os.path.realpath(self.model_path),
            "tokenizer": os.path.realpath(self.tokenizer_path) if self.tokenizer_path else None,
            "dtype": self.compute_dtype,
            "verbalizer": None if self.verbalizer is None else {repr(k): v for k, v in self.verbalizer.items()},
            **settings,
        }, sort_keys=True)

    # -- public facts ---------------------------------------------------------
    @property
    def compute_dtype(self):
        """The dtype the model computes in, as a name (``"float32"``,
        ``"bfloat16"``): what ``dtype="auto"`` chose on this machine."""
        return _dtype_name(self._get_handle().dtype)

    @property
    def model(self):
        """The transformers model object (loaded on first access after unpickling)."""
        return self._get_handle().model

    @property
    def embedding_dim(self):
        return int(self._get_handle().input_embeddings.weight.shape[1])

    @property
    def max_top_k(self):
        """The whole vocabulary: the model's own output at the answer position is at hand."""
        head = self._get_handle().model.get_output_embeddings()
        weight = getattr(head, "weight", None)
        return int(weight.shape[0]) if weight is not None else len(self.tokenizer)

    # -- context ------------------------------------------------------------------
    def context_length(self):
        """int or None: positions the model can attend to
        (``max_position_embeddings`` of its config, less RoBERTa's offset)."""
        config = self._get_handle().model.config
        limit = getattr(config, "max_position_embeddings", None)
        if not limit:
            return None
        if config.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after padding
            limit -= getattr(config, "pad_token_id", 0) + 1
        return int(limit)

    def _score_inputs(self, prompt_embeddings, texts, classes, top_k):
        """What a ``_score`` call reads with: the label tokens, the texts fitted
        to the context, the model handle and its read-out (with the top
        ``top_k`` tokens after the class logits when asked)."""
        token_ids = self._class_token_ids(classes)
        texts = self._fit_to_context(texts, prompt_embeddings.shape[1])
        handle = self._get_handle()
        return token_ids, texts, handle, _TopReadout(handle.readout(), top_k) if top_k else handle.readout()

    def _torch_inputs(self, prompts, texts, classes):
        """The checked inputs of a differentiable ``_log_proba_torch`` call: the
        prompts cast to the model's device and dtype, the texts fitted to the
        context, the label tokens, the model handle and its read-out."""
        if not isinstance(prompts, torch.Tensor) or prompts.ndim != 3 or prompts.shape[2] != self.embedding_dim:
            raise BackendError("prompts must be a torch.Tensor of shape (n_prompts, n_prompt_tokens, "
                               f"{self.embedding_dim}); got {getattr(prompts, 'shape', type(prompts).__name__)}.")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BackendError("texts must be a sequence of str.")
        token_ids, texts, handle, readout = self._score_inputs(prompts, list(texts), list(classes), 0)
        return prompts.to(handle.device, handle.dtype), texts, token_ids, handle, readout

    def _model_name(self):
        if self.model_path:
            return os.path.basename(os.path.normpath(self.model_path))
        handle = self._handle
        if handle is not None:
            name = getattr(handle.model, "name_or_path", "") or type(handle.model).__name__
            return os.path.basename(os.path.normpath(name)) if name else type(handle.model).__name__
        return "?"
