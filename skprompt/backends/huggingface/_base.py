"""What both transformers backends share: loading, threads, streaming, pickling as a recipe."""

from __future__ import annotations

import contextlib
import json
import os
import uuid

import numpy as np
import torch

from .._tokenized import _check_positive_int, _TokenizedBackend
from ..base import BackendError
from ._handle import _ModelHandle, _TopReadout
from ._loading import _dtype_name, _load_handle, _local_dir, _OBJECTS, _resolve_device, _resolve_dtype
from ._threads import _check_num_threads, _torch_threads, default_num_threads


#: Pairs per forward pass unless ``batch_size`` says otherwise.
_DEFAULT_BATCH_SIZE = 64


class _HFBackend(_TokenizedBackend):
    """What the transformers backends share beyond :class:`_TokenizedBackend`:
    loading the model (from a path or an object), dtype and device, torch
    threads, streaming prediction, pickling as a recipe."""

    def __init__(self, model, tokenizer, *, template, verbalizer, batch_size, cache_size, device, dtype,
                 truncation="right", num_threads=None, cache=None):
        super().__init__(template=template, verbalizer=verbalizer, truncation=truncation, cache_size=cache_size,
                         cache=cache)
        self.num_threads = _check_num_threads(num_threads)
        self.batch_size = _check_positive_int("batch_size", batch_size)
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

    def _validate_template(self):
        """Check the template against the loaded tokenizer (a subclass's hook)."""

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
            "dtype": self.compute_dtype, "weights": self._get_handle().fingerprint(),
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

    # -- batching helpers -------------------------------------------------------
    def _prompt_tensor(self, prompts, handle):
        return torch.from_numpy(np.ascontiguousarray(prompts, dtype=np.float32)).to(handle.device, handle.dtype)

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
