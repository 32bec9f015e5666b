"""Local transformers language models as black-box backends.

- :class:`CausalLMBackend`: a decoder-only model (SmolLM2, Llama, Qwen, GPT-2
  ...). By default the soft prompt sits *after* the text, so the text's
  key/value cache is computed once and reused for every candidate prompt.
- :class:`MaskedLMBackend`: a masked LM (BERT, RoBERTa), the setting of the
  Black-Box Tuning papers: the soft prompt follows the first special token and
  the class is read at the mask.

Both read the logits of the verbalizer tokens only (a handful of rows of the
output embedding), not the full-vocabulary projection (unless the top tokens
are asked for: ``score(..., top_k=k)``, one product at the answer position
of each pair), and score many
(prompt, text) pairs per forward pass, padded so that the padding never
changes a score. The causal backend scores all of a text's prompts in one
row against one copy of its cache where the model allows it.

Prediction on new texts runs inside :meth:`CausalLMBackend.stream_texts`
(the estimators enter it): those texts are not kept in the cache that serves
fitting. Both backends set torch's threads to ``num_threads`` for the
duration of a call (see ``docs/performance.md``).

Models are loaded once per process (:func:`load_pretrained`); a backend
pickles as its recipe (model path, template, verbalizer, options), so copies
made by ``joblib`` or ``GridSearchCV`` reload the weights at most once per
worker process and never copy them.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import json
import numbers
import os
import sys
import threading
import uuid
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import torch

from .base import BackendError, ContextWarning, PromptBackend

__all__ = ["CausalLMBackend", "MaskedLMBackend", "load_pretrained", "clear_model_cache", "default_num_threads"]

# --------------------------------------------------------------------------
# Per-process model registry
# --------------------------------------------------------------------------
#
# _LOADED holds the models loaded from a local directory, keyed by
# (real path, kind, dtype, device): every backend (and every unpickled copy of
# a backend) naming the same directory shares one model object.
# _OBJECTS holds, weakly, the handles of backends built from model objects, so
# that a backend unpickled in the same process finds the very same object.

_LOAD_LOCK = threading.Lock()
_LOADED = {}
_OBJECTS = weakref.WeakValueDictionary()

_KINDS = ("causal", "masked")


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def fast_bf16(device="cpu"):
    """Whether ``device`` multiplies bfloat16 matrices in hardware.

    On a CPU: AMX (``amx_tile``) or AVX512-BF16, as torch detects them; on
    AVX2-only CPUs torch emulates bfloat16 and it is slower than float32. On
    CUDA: :func:`torch.cuda.is_bf16_supported`. This is what
    ``dtype="auto"`` reads.

    Parameters
    ----------
    device : str or torch.device, default="cpu"

    Returns
    -------
    bool

    Examples
    --------
    >>> from skprompt.backends import fast_bf16
    >>> isinstance(fast_bf16("cpu"), bool)
    True
    """
    device = torch.device(device)
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def _resolve_dtype(dtype, device=None):
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype == "auto":
        # bfloat16 only where the hardware multiplies it: measured parity and
        # speed are in docs/performance.md ("bf16").
        return torch.bfloat16 if fast_bf16(_resolve_device(device)) else torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype; got {dtype}.")
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(resolved, torch.dtype) and resolved.is_floating_point:
            return resolved
    raise ValueError(
        f"dtype must be None, \"auto\", a floating torch.dtype or its name (e.g. 'float32'); got {dtype!r}."
    )


def _resolve_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be None, a torch.device or a device string like 'cpu'; got {device!r}.") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        # A recipe pickled on a GPU machine and unpickled on a CPU one.
        return torch.device("cpu")
    return device


def _local_dir(path):
    """``path`` as a real path if it is a local model directory, else None."""
    if isinstance(path, (str, os.PathLike)):
        path = os.fspath(path)
        if path and os.path.isfile(os.path.join(path, "config.json")):
            return os.path.realpath(path)
    return None


def load_pretrained(path, *, kind="causal", dtype=None, device=None):
    """Load a model and its tokenizer from a local directory, once per process.

    Parameters
    ----------
    path : str or os.PathLike
        Local directory written by ``save_pretrained`` (never a hub name:
        nothing is downloaded).
    kind : {"causal", "masked"}, default="causal"
        Load with ``AutoModelForCausalLM`` or ``AutoModelForMaskedLM``.
    dtype : torch.dtype or str, default=None
        ``None`` means float32; ``"auto"`` means bfloat16 where the device
        multiplies it in hardware (:func:`fast_bf16`), float32 elsewhere.
    device : str or torch.device, default=None
        ``None`` means ``"cuda"`` if available, else ``"cpu"``.

    Returns
    -------
    model : transformers.PreTrainedModel
        In eval mode. The same object for every call with the same arguments.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    handle = _load_handle(path, kind=kind, dtype=dtype, device=device)
    return handle.model, handle.tokenizer


def clear_model_cache():
    """Forget the models loaded by :func:`load_pretrained` (they are freed once
    no backend uses them)."""
    with _LOAD_LOCK:
        _LOADED.clear()


def _load_handle(path, *, kind, dtype=None, device=None, tokenizer_path=None):
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}.")
    real = _local_dir(path)
    if real is None:
        raise ValueError(
            f"model must be a transformers model object or a local model directory (holding config.json); "
            f"got {path!r}. skprompt never downloads models: save one with save_pretrained first."
        )
    tok_real = real
    if tokenizer_path is not None:
        tok_real = _local_dir(tokenizer_path)
        if tok_real is None and not (os.path.isdir(os.fspath(tokenizer_path))):
            raise ValueError(f"tokenizer must be a tokenizer object or a local directory; got {tokenizer_path!r}.")
        tok_real = tok_real or os.path.realpath(os.fspath(tokenizer_path))
    dtype = _resolve_dtype(dtype, device)
    device = _resolve_device(device)
    key = (real, tok_real, kind, _dtype_name(dtype), str(device))
    with _LOAD_LOCK:
        handle = _LOADED.get(key)
        if handle is None:
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

            auto = AutoModelForCausalLM if kind == "causal" else AutoModelForMaskedLM
            model = auto.from_pretrained(real, local_files_only=True, **{_dtype_kwarg(): dtype})
            model.to(device)
            tokenizer = AutoTokenizer.from_pretrained(tok_real, local_files_only=True)
            handle = _ModelHandle(model, tokenizer, kind)
            _LOADED[key] = handle
    return handle


def _dtype_kwarg():
    """Name of from_pretrained's dtype argument (``torch_dtype`` before 4.56)."""
    import transformers

    return "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# --------------------------------------------------------------------------
# transformers cache API (4.48 ... 5.x)
# --------------------------------------------------------------------------


def _cache_layers(cache):
    """[(keys, values)] of every layer of a DynamicCache, across versions."""
    if hasattr(cache, "layers"):  # transformers >= 4.56
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _new_cache(layers=None):
    """A fresh DynamicCache, optionally filled with [(keys, values)] per layer.

    The forward pass appends to the cache it is given, so every forward gets
    its own.
    """
    from transformers import DynamicCache

    cache = DynamicCache()
    if layers is not None:
        # Cache.update(keys, values, layer_idx) is the one filling API common
        # to 4.48 ... 5.x (constructor arguments and layer classes differ).
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
    return cache


# --------------------------------------------------------------------------
# Model handle: the model plus what is derived from it once
# --------------------------------------------------------------------------


class _ModelHandle:
    """A model, its tokenizer and the facts derived from them once.

    Shared by every backend that uses the same model object.
    """

    def __init__(self, model, tokenizer, kind):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        model.eval()  # no dropout; scores must be deterministic
        self.input_embeddings = model.get_input_embeddings()
        weight = self.input_embeddings.weight
        self.device = weight.device
        self.dtype = weight.dtype
        self.base = model.base_model
        params = inspect.signature(self.base.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # transformers < 4.50 left some models (e.g. GPT-2) on tuple caches.
        self.legacy_cache = getattr(model, "_supports_cache_class", True) is False
        self.lock = threading.Lock()
        self.tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._stats = None
        self._readout = None
        self._special_prefix = None
        self.block_suffix = None  # pairs of a text in one row: None (unchecked), True, False

    def make_cache(self, layers):
        """A fresh cache holding [(keys, values)] per layer, in the form the model takes."""
        if self.legacy_cache:
            return tuple((k, v) for k, v in layers)
        return _new_cache(layers)

    # -- embeddings -------------------------------------------------------
    def embedding_stats(self):
        """Mean vector and overall std of what :meth:`embed` gives over the whole vocabulary."""
        with self.lock:
            if self._stats is None:
                self._stats = _embedding_stats(self.input_embeddings)
        mean, std = self._stats
        return mean.copy(), std

    def embed(self, ids):
        """Input embeddings of ``ids`` as the model itself computes them (the
        input embedding layer's output, so scaled where the layer scales, as
        Gemma's does): soft prompts are vectors of this space."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        return self.input_embeddings(ids)

    # -- tokenizer ----------------------------------------------------------
    def encode(self, text, add_special_tokens=False):
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def encode_batch(self, texts):
        if not texts:
            return []
        with self.tokenizer_lock:
            encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [list(ids) for ids in encoded]

    def special_prefix(self):
        """Special tokens the tokenizer puts before a text (e.g. BOS), as ids."""
        with self.lock:
            if self._special_prefix is None:
                probe = "Hello world"
                plain = self.encode(probe)
                full = self.encode(probe, add_special_tokens=True)
                prefix = []
                for start in range(len(full) - len(plain) + 1):
                    if full[start:start + len(plain)] == plain:
                        prefix = full[:start]
                        break
                self._special_prefix = prefix
        return list(self._special_prefix)

    # -- readout --------------------------------------------------------------
    def readout(self):
        """How to read class logits; decided once by comparing with the model's own logits."""
        with self.lock:
            if self._readout is None:
                self._readout = _causal_readout(self) if self.kind == "causal" else _masked_readout(self)
        return self._readout


_STATS_CHUNK_ELEMENTS = 1 << 22


def _embedding_stats(layer):
    """(mean vector, std of all entries) of the input embedding layer's output over every id.

    For a plain ``nn.Embedding`` that is its table. A layer that transforms
    the rows -- Gemma's ``Gemma3TextScaledWordEmbedding`` multiplies them by
    ``sqrt(hidden_size)`` (about 25 for Gemma 3 270M) -- is run on every id,
    in chunks, so that the statistics describe what the model adds to its
    residual stream for a real token, the space of ``embed``, of
    ``initial_prompt`` and of the soft prompts (the raw table of such a model
    is smaller by the scale). Computed in float64, two passes over chunks
    of about ``_STATS_CHUNK_ELEMENTS`` entries.
    """
    weight = layer.weight
    with torch.inference_mode():
        if type(layer).forward is torch.nn.Embedding.forward:
            table = weight.detach().to("cpu", torch.float64)
            return table.mean(dim=0).numpy(), float(table.std(unbiased=False))
        vocab, dim = weight.shape
        step = max(1, _STATS_CHUNK_ELEMENTS // dim)

        def chunks():
            for start in range(0, vocab, step):
                ids = torch.arange(start, min(start + step, vocab), device=weight.device)
                yield layer(ids[None])[0].to("cpu", torch.float64)

        total = torch.zeros(dim, dtype=torch.float64)
        for rows in chunks():
            total += rows.sum(dim=0)
        mean = total / vocab
        grand = float(mean.mean())
        squares = sum(float(((rows - grand) ** 2).sum()) for rows in chunks())
        return mean.numpy(), float(np.sqrt(squares / (vocab * dim)))


def _probe_ids(handle, n=6):
    ids = handle.encode("The quick brown fox jumps over the lazy dog")[:n]
    vocab = handle.input_embeddings.weight.shape[0]
    if len(ids) < 2:
        ids = list(range(min(n, vocab)))
    return ids


def _close(fast, full):
    scale = 1.0 + float(full.abs().max())
    return float((fast - full).abs().max()) <= 1e-4 * scale


class _Readout:
    """Computes class logits from what a forward returns at the readout positions.

    ``fast=True``: the verbalizer rows of the output layer (plus bias and the
    model's logit scaling) applied to the final hidden state of the readout
    positions only. ``fast=False``: the model's own head (full vocabulary),
    used for architectures whose head is not recognised. :meth:`forward` runs
    the model part the read-out needs; :meth:`logits` reads its output.
    """

    def __init__(self, fast, weight=None, bias=None, transform=None, scale=1.0, softcap=None):
        self.fast = fast
        self.weight = weight
        self.bias = bias
        self.transform = transform
        self.scale = scale
        self.softcap = softcap

    def forward(self, handle, **kwargs):
        """The base model's last hidden states (fast) or the model's logits, (B, T, ·)."""
        if self.fast:
            return handle.base(**kwargs).last_hidden_state
        return handle.model(**kwargs).logits

    def logits(self, x, token_ids):
        """Class logits (n, C) for the vocabulary ids ``token_ids`` from ``x``
        (n, ·), rows of what :meth:`forward` returned."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=x.device)
        if not self.fast:
            return x.index_select(-1, ids).float()
        if self.transform is not None:
            x = self.transform(x)
        out = x @ self.weight.index_select(0, ids).T
        if self.bias is not None:
            out = out + self.bias.index_select(0, ids)
        return self._finish(out)

    def full_logits(self, x):
        """Logits (n, V) of the whole vocabulary from rows of :meth:`forward`'s output."""
        if not self.fast:
            return x.float()
        if self.transform is not None:
            x = self.transform(x)
        out = x @ self.weight.T
        if self.bias is not None:
            out = out + self.bias
        return self._finish(out)

    def _finish(self, out):
        out = out.float()
        if self.scale != 1.0:
            out = out * self.scale
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


class _TopReadout:
    """A read-out that returns, after the class logits, the ``k`` largest
    log-probabilities of the whole vocabulary and their token ids (as floats:
    exact below 2**24), (n, C + 2k); what ``score(..., top_k=k)`` asks for."""

    def __init__(self, base, k):
        self.base, self.k, self.fast = base, k, base.fast

    def forward(self, handle, **kwargs):
        return self.base.forward(handle, **kwargs)

    def logits(self, x, token_ids):
        top = torch.log_softmax(self.base.full_logits(x), dim=-1).topk(self.k, dim=-1)
        return torch.cat([self.base.logits(x, token_ids), top.values, top.indices.float()], dim=-1)


def _causal_readout(handle):
    model = handle.model
    head = model.get_output_embeddings()
    config = model.config
    weight = getattr(head, "weight", None)
    candidate = None
    if isinstance(weight, torch.Tensor) and weight.ndim == 2:
        scale = 1.0
        if getattr(config, "logit_scale", None):  # Cohere
            scale *= float(config.logit_scale)
        if getattr(config, "logits_scaling", None):  # Granite
            scale /= float(config.logits_scaling)
        candidate = _Readout(True, weight=weight, bias=getattr(head, "bias", None), scale=scale,
                             softcap=getattr(config, "final_logit_softcapping", None))
    if candidate is not None:
        ids = torch.tensor([_probe_ids(handle)], device=handle.device)
        with torch.inference_mode():
            full = model(input_ids=ids).logits[0].float()
            hidden = handle.base(input_ids=ids).last_hidden_state[0]
            if _close(candidate.full_logits(hidden), full):
                return candidate
    return _Readout(False)


def _masked_readout(handle):
    model = handle.model
    transform = decoder = None
    cls = getattr(model, "cls", None)
    predictions = getattr(cls, "predictions", None)
    if predictions is not None and hasattr(predictions, "transform") and hasattr(predictions, "decoder"):
        transform, decoder = predictions.transform, predictions.decoder  # BERT family
    else:
        lm_head = getattr(model, "lm_head", None)
        if lm_head is not None and all(hasattr(lm_head, a) for a in ("dense", "layer_norm", "decoder")):
            # RoBERTa family (RoBERTa, XLM-R, CamemBERT): dense -> gelu -> layer norm -> decoder.
            def transform(h, head=lm_head):
                return head.layer_norm(torch.nn.functional.gelu(head.dense(h)))

            decoder = lm_head.decoder
    if decoder is not None and isinstance(getattr(decoder, "weight", None), torch.Tensor):
        bias = decoder.bias if getattr(decoder, "bias", None) is not None else None
        candidate = _Readout(True, weight=decoder.weight, bias=bias, transform=transform)
        ids = _probe_ids(handle)
        tok = handle.tokenizer
        if tok.mask_token_id is not None:
            ids = ids + [tok.mask_token_id]
        ids_t = torch.tensor([ids], device=handle.device)
        with torch.inference_mode():
            full = model(input_ids=ids_t).logits[0].float()
            hidden = handle.base(input_ids=ids_t).last_hidden_state[0]
            if _close(candidate.full_logits(hidden), full):
                return candidate
    return _Readout(False)


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


def _check_num_threads(value):
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"num_threads must be None or a positive int; got {value!r}.")
    return int(value)


def _available_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(len(os.sched_getaffinity(0)), 1)
        except OSError:
            pass
    return max(os.cpu_count() or 1, 1)


def default_num_threads():
    """The torch thread count of ``num_threads=None``.

    ``OMP_NUM_THREADS`` when it is set to a positive int (by the user, or by
    joblib's loky backend, which starts each worker of ``GridSearchCV(n_jobs=k)``
    or ``cross_val_score(n_jobs=k)`` with ``cpu_count // k`` threads), else
    the number of CPUs this process may run on (its CPU affinity), never more.

    Returns
    -------
    int
    """
    cpus = _available_cpus()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), cpus)
    return cpus


# torch's intra-op thread count is global to the process: the backends set it
# for the duration of their scoring calls and put it back after the last
# concurrent call ends.
_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"active": 0, "saved": None}


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another libc, another OS)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _trim_heap():
    """Give the heap's freed memory back to the OS (a no-op without glibc).

    Streaming prediction frees every micro-batch's key/value caches, but
    glibc keeps freed blocks of its heap while small long-lived objects (the
    result cache's entries, made during the same call) sit above them, so the
    process grew with the number of texts: 1,000 streamed texts left +133 MB
    behind, +7 MB with large blocks given their own mappings (measured in
    docs/performance.md). Nothing in torch or the standard library returns
    that memory, hence ctypes; one call per streamed chunk of texts costs
    well under a millisecond next to seconds of encoding.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def _torch_threads(n):
    with _THREADS_LOCK:
        if _THREADS_STATE["active"] == 0:
            _THREADS_STATE["saved"] = torch.get_num_threads()
            if n != _THREADS_STATE["saved"]:
                torch.set_num_threads(n)
        _THREADS_STATE["active"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_STATE["active"] -= 1
            if _THREADS_STATE["active"] == 0 and torch.get_num_threads() != _THREADS_STATE["saved"]:
                torch.set_num_threads(_THREADS_STATE["saved"])


def _with_threads(method):
    """Run a scoring method with torch's threads set as the backend says (``_threads``)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._threads():
            return method(self, *args, **kwargs)
    return wrapper


#: What the transformers backends do with a text too long for the model's
#: context (the ``truncation`` parameter).
TRUNCATION = ("right", "left", "error")
#: Positions kept free beyond the counted ones when fitting a text to the
#: context: a text tokenised inside the template may take a token or two more
#: than alone.
_CONTEXT_SLACK = 4


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

    def _torch_inputs(self, prompts, texts, classes):
        """The checked inputs of a differentiable ``_log_proba_torch`` call: the
        prompts cast to the model's device and dtype, the texts fitted to the
        context, the label tokens, the model handle and its read-out."""
        if not isinstance(prompts, torch.Tensor) or prompts.ndim != 3 or prompts.shape[2] != self.embedding_dim:
            raise BackendError("prompts must be a torch.Tensor of shape (n_prompts, n_prompt_tokens, "
                               f"{self.embedding_dim}); got {getattr(prompts, 'shape', type(prompts).__name__)}.")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise BackendError("texts must be a sequence of str.")
        token_ids = self._class_token_ids(list(classes))
        texts = self._fit_to_context(list(texts), prompts.shape[1])
        handle = self._get_handle()
        return prompts.to(handle.device, handle.dtype), texts, token_ids, handle, handle.readout()

    def _model_name(self):
        if self.model_path:
            return os.path.basename(os.path.normpath(self.model_path))
        handle = self._handle
        if handle is not None:
            name = getattr(handle.model, "name_or_path", "") or type(handle.model).__name__
            return os.path.basename(os.path.normpath(name)) if name else type(handle.model).__name__
        return "?"


def _length_buckets(items, length, max_items, waste=0.25, slack=16):
    """Split ``items`` (sorted by ``length``, ascending) into batches of at most
    ``max_items`` whose padding to the longest stays small: a batch is closed
    when padding would exceed ``waste`` of its real tokens plus ``slack``."""
    batch, tokens = [], 0
    for item in items:
        n = length(item)
        if batch and (len(batch) >= max_items or (len(batch) + 1) * n > (1 + waste) * (tokens + n) + slack):
            yield batch
            batch, tokens = [], 0
        batch.append(item)
        tokens += n
    if batch:
        yield batch


def _text_major_batches(order, n_prompts, batch_size):
    """Micro-batches of (text, prompt index) pairs, texts in ``order``, at most
    ``batch_size`` pairs each, that never split a text's prompts unless they
    are more than ``batch_size``: a text's pairs then share one row of the
    block layout with no padding (see ``CausalLMBackend._block_suffix_scores``)."""
    size = min(n_prompts, batch_size)
    batch = []
    for text in order:
        for start in range(0, n_prompts, size):
            unit = [(text, p) for p in range(start, min(start + size, n_prompts))]
            if batch and len(batch) + len(unit) > batch_size:
                yield batch
                batch = []
            batch.extend(unit)
    if batch:
        yield batch


def _pairs_batches(order, n_prompts, batch_size):
    """Micro-batches of (text index, prompt index) pairs, texts in ``order``."""
    batch = []
    for j in order:
        for p in range(n_prompts):
            batch.append((j, p))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------
# Causal LM
# --------------------------------------------------------------------------

_DEFAULT_BATCH_SIZE = 64
#: Most query tokens (prompts x suffix tokens) in one row of the block layout
#: (measured on SmolLM2, 20 prompts: 1.29x over one row per pair at 128 for
#: both cached layouts, 1.21-1.28x uncapped, 1.13-1.27x at 64).
_BLOCK_QUERIES = 128
_DEFAULT_TEXT_CACHE_MB = 1024


class CausalLMBackend(_HFBackend):
    """A local transformers causal (decoder-only) language model.

    Parameters
    ----------
    model : transformers.PreTrainedModel or str or os.PathLike
        A causal LM object, or the local directory of one (loaded with
        ``AutoModelForCausalLM``/``AutoTokenizer``, once per process; nothing
        is ever downloaded).
    tokenizer : transformers tokenizer, str or None, default=None
        Required with a model object unless it can be loaded from
        ``model.name_or_path``.
    template : str, default="{text}\\nAnswer:"
        Input layout; must contain ``{text}`` exactly once. Other braces are
        kept literally.
    verbalizer : dict or None, default=None
        Class label -> label word. ``None`` means each class label is its
        own word (string labels only: integer or boolean labels without a
        verbalizer are an error that shows how to pass one). A label word is
        read as the token of ``" " + word`` (no space is added if the word
        already starts with whitespace; a leading token that is only
        whitespace is skipped). A word the tokenizer splits into several
        tokens is refused at construction (or, without a verbalizer, at
        ``fit``), with its tokens in the message: the backend scores one token
        per class, and neither the first token alone (two words may share
        it) nor the sum of the tokens' log-probabilities (long words lose
        probability for their length) is a faithful class score. Two
        classes with the same token are an error.
    prompt_position : {"tail", "suffix", "prefix"}, default="tail"
        Where the soft prompt goes. ``"tail"`` is the default because it
        measured best on the bundled task: tuning starts exactly at the
        zero-shot template, and each pair costs about half the tokens of
        ``"suffix"`` (see ``docs/performance.md``).

        - ``"suffix"``: tokens of the template up to and including the text
          (the *head*), then the soft prompt, then the rest of the template
          (the *tail*, e.g. ``"\\nAnswer:"``). The head's key/value cache is
          computed once per distinct text and reused for every candidate
          prompt of every call, so each (prompt, text) pair costs only the
          ``n_prompt_tokens + len(tail)`` suffix tokens. The head and the tail
          are tokenised separately (the prompt sits between them).
        - ``"tail"``: like ``"suffix"``, but the soft prompt takes the place
          of the tail's last ``n_prompt_tokens`` tokens (all of them and
          ``n_prompt_tokens - len(tail)`` more vectors before them, if the
          prompt is longer), and :meth:`initial_prompt` returns those tokens'
          embeddings: the untuned prompt (``z = 0``) is then exactly the
          zero-shot template, and tuning starts from it. Each pair costs only
          ``max(n_prompt_tokens, len(tail))`` suffix tokens.
        - ``"prefix"``: [BOS if the tokenizer adds one] + soft prompt + the
          whole filled template; a full forward per pair (no text cache).
    batch_size : int, default=64
        Most (prompt, text) pairs per forward pass (a memory bound). The
        default was chosen by measurement on SmolLM2-135M (see
        ``docs/performance.md``).
    cache_size : int, default=100_000
        Size of the result cache of :class:`PromptBackend`.
    cache : str, os.PathLike or None, default=None
        A file keeping every answer on disk, so that an interrupted fit run
        again replays them (see :class:`PromptBackend`); keyed by the model
        directory, dtype, template, label words, layout and truncation. Only
        for a model given as a path (or an object with a local directory).
    text_cache_mb : float, default=1024
        Memory bound of the LRU cache of per-text key/value caches
        (``"tail"`` and ``"suffix"``); 0 disables it (each call still encodes
        each of its texts once). Texts scored inside :meth:`stream_texts`
        (prediction) are not added to it.
    device : str or torch.device, default=None
        Only with a path: ``None`` means ``"cuda"`` if available, else
        ``"cpu"``. A model object is used where it is.
    dtype : torch.dtype or str, default=None
        Only with a path: ``None`` means float32. ``"auto"`` means bfloat16
        where the device multiplies it in hardware (a CPU with AMX or
        AVX512-BF16, a CUDA GPU with bfloat16; :func:`fast_bf16`) and
        float32 elsewhere; :attr:`compute_dtype` says which. It is not the
        default: bfloat16 flips some predicted labels (measured in
        docs/performance.md).
    truncation : {"right", "left", "error"}, default="right"
        What happens to a text too long for the model's context
        (:meth:`context_length`, less the template, the soft prompt and the
        special tokens), checked before any scoring: ``"right"`` cuts its end
        (keeps its beginning, as most classifiers' tokenizers do), ``"left"``
        cuts its beginning, ``"error"`` raises a :class:`BackendError`. Only
        the text is cut, never the template around it; each call that cuts
        texts for the first time emits one :class:`ContextWarning` saying how
        many.
    num_threads : int or None, default=None
        torch intra-op threads while this backend scores on CPU: set with
        ``torch.set_num_threads`` when a call starts and put back when the
        last concurrent call ends (torch's setting is process-wide). ``None``
        means :func:`default_num_threads`: ``OMP_NUM_THREADS`` if set (joblib's
        loky workers, as in ``GridSearchCV(n_jobs=k)`` or
        ``cross_val_score(n_jobs=k)``, get ``cpu_count // k`` there, so
        workers never oversubscribe the CPUs), else the number of CPUs in
        the process's affinity mask. On a machine shared with other jobs,
        ``num_threads=1`` gives the steadiest throughput, and
        ``OMP_WAIT_POLICY=PASSIVE`` (set before Python starts) keeps idle
        threads from spinning; see ``docs/performance.md``.

    Notes
    -----
    Class scores are the logits of the verbalizer tokens at the last
    position, computed from the final hidden state and the verbalizer rows
    of the output embedding only (plus bias and the logit scaling of the
    architectures that have one); the full-vocabulary projection is never
    computed. On first use the backend checks this shortcut against the
    model's own logits and falls back to the model's full head if they
    disagree (an unrecognised head).

    Soft prompts are vectors of the space that the model's input embedding
    layer outputs, fed as ``inputs_embeds``: for models whose layer scales
    the table (Gemma: by ``sqrt(hidden_size)``) that is the scaled space, and
    :meth:`embedding_stats` and :meth:`initial_prompt` describe it too.

    Padding never changes a score: pairs are batched with explicit attention
    masks and position ids. Scoring runs under ``torch.inference_mode`` with
    the model in eval mode; torch's thread count is set only for the
    duration of a call (``num_threads``) and restored after it.

    ``prompt_position="suffix"`` needs a model whose layers all cache keys and
    values of the same shape (standard full attention: Llama, SmolLM, Qwen2,
    Mistral within its window, GPT-2 ...). Its batches hold padding *between*
    a text's cached head and the suffix, hidden by the attention mask: fine
    for the eager and SDPA attention implementations, not for
    flash-attention-2 (use ``prompt_position="prefix"`` there).

    Parameters and cloning: :meth:`get_params` / :meth:`set_params` expose
    the construction arguments, so ``GridSearchCV(clf, {"backend__template":
    [...], "backend__verbalizer": [...]})`` tunes them (n_jobs=1 or more).
    ``sklearn.base.clone`` builds a new backend from the same arguments; it
    shares the loaded weights through the per-process registry (or the same
    model object) and the texts' key/value caches, and starts with an empty
    result cache. ``copy.deepcopy`` returns
    the backend itself. ``pickle`` stores the recipe (model path,
    template, verbalizer, options) and the weights are reloaded lazily, on
    first use, from a per-process registry keyed by the path: unpickling in
    the same process reuses the loaded model, and each joblib worker loads it
    at most once. A backend built from a model object pickles as the path of
    its local directory (``model.name_or_path``) when it has one -- in-memory
    changes to the weights are then not carried over to another process --
    and otherwise **the pickle includes the weights**.

    Examples
    --------
    >>> from skprompt.backends import CausalLMBackend
    >>> from skprompt.models import default_model_path
    >>> backend = CausalLMBackend(default_model_path(), template="Review: {text}\\nSentiment:",
    ...                           verbalizer={"fresh": "positive", "rotten": "negative"})  # doctest: +SKIP
    >>> import numpy as np
    >>> prompts = np.zeros((2, 5, backend.embedding_dim), dtype=np.float32)  # doctest: +SKIP
    >>> backend.score(prompts, ["A delight.", "A bore."], ["fresh", "rotten"]).shape  # doctest: +SKIP
    (2, 2, 2)
    """

    _kind = "causal"

    def __init__(self, model, tokenizer=None, *, template="{text}\nAnswer:", verbalizer=None,
                 prompt_position="tail", batch_size=_DEFAULT_BATCH_SIZE, cache_size=100_000,
                 text_cache_mb=_DEFAULT_TEXT_CACHE_MB, device=None, dtype=None, truncation="right",
                 num_threads=None, cache=None):
        _check_placeholder(template, "text")
        if prompt_position not in ("suffix", "tail", "prefix"):
            raise ValueError(f"prompt_position must be 'suffix', 'tail' or 'prefix'; got {prompt_position!r}.")
        if (not isinstance(text_cache_mb, numbers.Real) or isinstance(text_cache_mb, bool)
                or not np.isfinite(text_cache_mb) or text_cache_mb < 0):
            raise ValueError(f"text_cache_mb must be a non-negative number; got {text_cache_mb!r}.")
        self.prompt_position = prompt_position
        self.text_cache_mb = text_cache_mb
        super().__init__(model, tokenizer, template=template, verbalizer=verbalizer, batch_size=batch_size,
                         cache_size=cache_size, device=device, dtype=dtype, truncation=truncation,
                         num_threads=num_threads, cache=cache)

    def _validate_template(self):
        head, tail = self.template.split("{text}")
        self._head_template, self._tail_text = head, tail

    # -- runtime state ------------------------------------------------------------
    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._text_store = _TextStore()
        self._text_stats = {"hits": 0, "misses": 0, "head_forwards": 0, "forwards": 0}
        self._tail_ids = None

    # The per-text key/value caches live in a store that clones and rebuilt
    # backends on the same loaded model share (see _share_runtime_with), so
    # that a grid search over templates or labels encodes each text once.
    @property
    def _text_cache(self):
        return self._text_store.entries  # head string -> _TextEntry

    @property
    def _text_cache_bytes(self):
        return self._text_store.nbytes

    @_text_cache_bytes.setter
    def _text_cache_bytes(self, value):
        self._text_store.nbytes = value

    def _share_runtime_with(self, other):
        """Use ``other``'s text store (and its lock, which guards the store)
        when both run the same loaded model: a text's key/value cache depends
        only on the model and the text's head string."""
        if other._get_handle() is self._get_handle():
            self._text_store = other._text_store
            self._lock = other._lock

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_text_store", "_text_stats", "_tail_ids"):
            state.pop(key, None)
        return state

    def text_cache_info(self):
        """dict: state of the per-text key/value cache.

        ``hits`` / ``misses``: texts found / not found in the cache;
        ``head_forwards``: forward passes that encoded texts; ``forwards``:
        forward passes that scored (prompt, text) pairs; ``entries``;
        ``size_mb``; ``max_mb``.
        """
        with self._lock:
            info = dict(self._text_stats)
            info.update(entries=len(self._text_cache), size_mb=self._text_cache_bytes / 2**20,
                        max_mb=float(self.text_cache_mb))
        return info

    def clear_text_cache(self):
        """Drop every cached text key/value cache."""
        with self._lock:
            self._text_cache.clear()
            self._text_cache_bytes = 0

    # -- scoring ------------------------------------------------------------------
    @_with_threads
    def _score(self, prompt_embeddings, texts, classes, top_k=0):
        token_ids = self._class_token_ids(classes)
        texts = self._fit_to_context(texts, prompt_embeddings.shape[1])
        handle = self._get_handle()
        readout = _TopReadout(handle.readout(), top_k) if top_k else handle.readout()
        n_prompts, n_texts = prompt_embeddings.shape[0], len(texts)
        out = np.empty((n_prompts, n_texts, len(token_ids) + 2 * top_k), dtype=np.float32)
        with torch.inference_mode():
            prompts = self._prompt_tensor(prompt_embeddings, handle)
            if self.prompt_position in ("suffix", "tail"):
                self._score_suffix(handle, readout, prompts, texts, token_ids, out)
            else:
                self._score_prefix(handle, readout, prompts, texts, token_ids, out)
        return out

    def _tail(self, handle):
        if self._tail_ids is None:
            self._tail_ids = handle.encode(self._tail_text) if self._tail_text else []
        return self._tail_ids

    @property
    def default_prompt_length(self):
        """int or None: with ``prompt_position="tail"``, the tail's token count
        (at least 1): a prompt of that length replaces exactly the tail."""
        if self.prompt_position != "tail":
            return None
        return max(len(self._tail(self._get_handle())), 1)

    def initial_prompt(self, n_prompt_tokens):
        """Embeddings of the tail tokens a ``"tail"`` prompt replaces (``None`` otherwise).

        With ``prompt_position="tail"``, ``z = 0`` maps to these embeddings, so
        the untuned prompt reproduces the zero-shot template exactly; vectors
        beyond the tail's length start at the mean input embedding.
        """
        if self.prompt_position != "tail" or n_prompt_tokens <= 0:
            return None
        handle = self._get_handle()
        tail = self._tail(handle)
        kept = tail[max(len(tail) - n_prompt_tokens, 0):]
        with torch.inference_mode():
            emb = handle.embed(kept).float().cpu().numpy() if kept else np.zeros((0, self.embedding_dim))
        mean, _ = self.embedding_stats()
        extra = np.tile(np.asarray(mean, dtype=np.float32), (n_prompt_tokens - len(kept), 1))
        return np.vstack([extra, emb]).astype(np.float32)

    # ---- suffix layout: cached head, batched suffix
    def _score_suffix(self, handle, readout, prompts, texts, token_ids, out):
        n_prompts = prompts.shape[0]
        tail = self._tail(handle)
        if self.prompt_position == "tail":  # the prompt replaces the tail's last tokens
            tail = tail[: max(len(tail) - prompts.shape[1], 0)]
            suffix = torch.cat([handle.embed(tail).unsqueeze(0).expand(n_prompts, -1, -1), prompts], dim=1)
        else:
            suffix = torch.cat([prompts, handle.embed(tail).unsqueeze(0).expand(n_prompts, -1, -1)], dim=1)
        n_suffix = suffix.shape[1]
        heads = [self._head_template + t for t in texts]
        columns = {}  # head string -> output columns (a text may appear twice)
        for j, head in enumerate(heads):
            columns.setdefault(head, []).append(j)

        # Lengths, to sort the texts so that a micro-batch pads little: from
        # the cache, or by tokenising the texts not in it.
        lengths, token_cache = {}, {}
        with self._lock:
            for head in columns:
                entry = self._text_cache.get(head)
                if entry is not None:
                    lengths[head] = entry.length
            self._text_stats["hits"] += len(lengths)
            self._text_stats["misses"] += len(columns) - len(lengths)
        missing = [h for h in columns if h not in lengths]
        if missing:
            for head, ids in zip(missing, self._head_ids(handle, missing)):
                token_cache[head] = ids
                lengths[head] = len(ids)
        if n_suffix == 0 and any(n == 0 for n in lengths.values()):
            raise BackendError("Nothing to score: an empty text, a template that ends with '{text}' "
                               "and no soft prompt give an empty input.")
        order = sorted(columns, key=lambda h: lengths[h])
        keep = self._streaming <= 0  # inside stream_texts(): use the cache, add nothing to it
        if not keep and n_prompts == 1:
            # One prompt: a cache would serve one pair only. Texts not cached
            # get one full forward of their whole input instead.
            with self._lock:
                fresh = [h for h in order if h not in self._text_cache]
            if fresh:
                unknown = [h for h in fresh if h not in token_cache]
                if unknown:  # evicted since this call looked: tokenise
                    token_cache.update(zip(unknown, self._head_ids(handle, unknown)))
                self._score_full(handle, readout, suffix[0], fresh, token_cache, token_ids, columns, out)
                fresh = set(fresh)
                order = [h for h in order if h not in fresh]

        # Stream the (text, prompt) pairs text-major. Texts' key/value caches
        # are fetched (or encoded, batch_size texts per forward) just ahead of
        # their pairs and dropped from this call once their pairs are done, so
        # the memory held is bounded whatever the number of texts.
        # Streaming (texts not kept) encodes only the texts of about one
        # micro-batch at a time: the encoding forward's cache is the largest
        # transient, and nothing is gained by encoding further ahead.
        fetch = self.batch_size if keep else max(1, -(-self.batch_size // n_prompts))
        live = {}
        position = {h: i for i, h in enumerate(order)}
        for batch in _text_major_batches(order, n_prompts, self.batch_size):
            needed = list(dict.fromkeys(h for h, _ in batch))
            missing = [h for h in needed if h not in live]
            if missing:
                start = position[missing[0]]
                stop = max(start + fetch, position[missing[-1]] + 1)
                chunk = [h for h in order[start:stop] if h not in live]
                if not keep and start > 0:
                    _trim_heap()  # the chunks streamed so far are freed: return their memory
                live.update(self._text_entries(handle, chunk, token_cache, store=keep))
            entries = [live[h] for h, _ in batch]
            p_idx = [p for _, p in batch]
            scores = self._suffix_scores(handle, readout, entries, suffix[p_idx], token_ids).cpu().numpy()
            for row, (head, p) in enumerate(batch):
                out[p, columns[head]] = scores[row]
            for head, p in batch:
                if p == n_prompts - 1:  # the text's last pair: drop it from this call
                    live.pop(head, None)

    def _suffix_scores(self, handle, readout, entries, suffix, token_ids):
        """Class scores (B, C) of a micro-batch: text caches ``entries``, suffixes (B, S, D).

        Pairs that share a text are scored in one row against one copy of its
        cache (:meth:`_block_suffix_scores`) where the model supports it
        (checked once per model against the one-row-per-pair path), else one
        row per pair (:meth:`_row_suffix_scores`).
        """
        device = handle.device
        n_suffix = suffix.shape[1]
        if n_suffix == 0:  # no prompt, no tail: the head's last position is the readout
            last = torch.stack([e.last_out for e in entries])
            return readout.logits(last, token_ids)
        shared = len({id(e) for e in entries}) < len(entries)
        if shared and max(e.length for e in entries) > 0 and self._blocks_supported(handle):
            if handle.block_suffix is None:  # first use on this model: compare the two paths once
                with self._lock:
                    counted = self._text_stats["forwards"]
                with torch.no_grad():
                    rows = self._row_suffix_scores(handle, readout, entries, suffix.detach(), token_ids)
                    blocks = self._block_suffix_scores(handle, readout, entries, suffix.detach(), token_ids)
                with self._lock:  # the check's forwards are not the call's
                    self._text_stats["forwards"] = counted
                handle.block_suffix = _close(blocks, rows)
            if handle.block_suffix:
                return self._block_suffix_scores(handle, readout, entries, suffix, token_ids)
        return self._row_suffix_scores(handle, readout, entries, suffix, token_ids)

    @staticmethod
    def _blocks_supported(handle):
        """Whether the model may take a custom 4-D additive attention mask with
        a cache (eager or SDPA attention, a Cache object)."""
        impl = getattr(handle.model.config, "_attn_implementation", None)
        return not handle.legacy_cache and impl in ("sdpa", "eager")

    def _block_suffix_scores(self, handle, readout, entries, suffix, token_ids):
        """All pairs of a text in one row: keys are [the text's head, padded |
        the suffixes of its prompts one after another]; a block-diagonal causal
        4-D mask lets each suffix see the head and its own earlier tokens only,
        and position ids restart after the head for every suffix. One copy of
        each text's cache, extended once, instead of one per pair."""
        device = handle.device
        n_suffix, dim = suffix.shape[1], suffix.shape[2]
        by_text = {}
        for row, e in enumerate(entries):
            by_text.setdefault(id(e), (e, []))[1].append(row)
        # A row's attention costs (its queries) x (its keys): cap the blocks
        # per row, in chunks of balanced sizes, so that it stays small next to
        # the linear layers for any number of prompts.
        cap = max(1, _BLOCK_QUERIES // n_suffix)
        groups = []
        for e, rows in by_text.values():
            n_chunks = -(-len(rows) // cap)
            size = -(-len(rows) // n_chunks)
            groups.extend((e, rows[i: i + size]) for i in range(0, len(rows), size))
        n_rows = max(len(rows) for _, rows in groups)
        width = n_rows * n_suffix  # queries per row; a shorter row is padded with whole blocks
        lengths = torch.tensor([e.length for e, _ in groups], device=device)
        max_len = int(lengths.max())
        pieces, t_of, q_of = [], [0] * len(entries), [0] * len(entries)
        for t, (_, rows) in enumerate(groups):
            x = suffix[rows].reshape(len(rows) * n_suffix, dim)
            if len(rows) < n_rows:
                x = torch.cat([x, suffix.new_zeros(((n_rows - len(rows)) * n_suffix, dim))])
            pieces.append(x)
            for k, row in enumerate(rows):
                t_of[row], q_of[row] = t, k * n_suffix + n_suffix - 1
        inputs = torch.stack(pieces)  # (T, width, D)
        q = torch.arange(width, device=device)
        block, within = q // n_suffix, q % n_suffix
        head_ok = torch.arange(max_len, device=device)[None, None, :] < lengths[:, None, None]  # (T, 1, max_len)
        suffix_ok = (block[:, None] == block[None, :]) & (within[None, :] <= within[:, None])  # (width, width)
        allowed = torch.cat([head_ok.expand(len(groups), width, max_len),
                             suffix_ok.expand(len(groups), width, width)], dim=2)
        dtype = handle.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        padded = _pad_kv([e for e, _ in groups], max_len)  # (layers, 2, T, heads, max_len, hd)
        kwargs = {"inputs_embeds": inputs, "attention_mask": mask[:, None],
                  "position_ids": lengths[:, None] + within[None, :], "use_cache": True,
                  handle.cache_kwarg: handle.make_cache((padded[i, 0], padded[i, 1]) for i in range(padded.shape[0]))}
        with self._lock:
            self._text_stats["forwards"] += 1
        t_idx = torch.tensor(t_of, device=device)
        q_idx = torch.tensor(q_of, device=device)
        return readout.logits(readout.forward(handle, **kwargs)[t_idx, q_idx], token_ids)

    def _row_suffix_scores(self, handle, readout, entries, suffix, token_ids):
        """One row per pair: each pair gets its own copy of its text's cache."""
        device = handle.device
        n_suffix = suffix.shape[1]
        lengths = torch.tensor([e.length for e in entries], device=device)
        max_len = int(lengths.max())
        # Keys are [head padded to max_len | suffix]. The 2-D mask hides each
        # row's padding; the library adds causality from the cache length, and
        # the position ids continue each text's own head.
        key_pos = torch.arange(max_len + n_suffix, device=device)
        attention = (key_pos[None, :] < lengths[:, None]) | (key_pos[None, :] >= max_len)
        position_ids = lengths[:, None] + torch.arange(n_suffix, device=device)[None, :]
        kwargs = {"inputs_embeds": suffix, "attention_mask": attention.long(), "position_ids": position_ids,
                  "use_cache": True}
        if max_len > 0:
            # Pad each distinct text's cache once; pairs of one text share it.
            distinct, pick = {}, []
            for e in entries:
                pick.append(distinct.setdefault(id(e), (len(distinct), e))[0])
            padded = _pad_kv([e for _, e in distinct.values()], max_len)  # (layers, 2, T, heads, H, hd)
            stacked = padded.index_select(2, torch.tensor(pick, device=device))
            kwargs[handle.cache_kwarg] = handle.make_cache((stacked[i, 0], stacked[i, 1])
                                                           for i in range(stacked.shape[0]))
        with self._lock:
            self._text_stats["forwards"] += 1
        return readout.logits(readout.forward(handle, **kwargs)[:, -1], token_ids)

    def _head_ids(self, handle, heads):
        prefix = handle.special_prefix()
        return [prefix + ids for ids in handle.encode_batch(heads)]

    def _text_entries(self, handle, heads, token_cache, store=True):
        """Per-text key/value caches of ``heads`` (strings), from the LRU or encoded.

        ``store=False`` (streaming): the encoded texts are not added to the
        LRU and the cached ones keep their place in it.
        """
        found, missing, waiting = {}, [], []
        pending = self._text_store.pending
        with self._lock:
            for head in heads:
                entry = self._text_cache.get(head)
                if entry is not None:
                    if store:
                        self._text_cache.move_to_end(head)
                    found[head] = entry
                elif store and head in pending:  # another thread is encoding it: wait, do not encode twice
                    waiting.append((head, pending[head]))
                else:
                    missing.append(head)
                    if store:
                        pending[head] = threading.Event()
        try:
            if missing:
                found.update(self._encode_missing(handle, missing, token_cache, store))
        finally:
            if store and missing:
                with self._lock:
                    for head in missing:
                        pending.pop(head).set()
        for head, done in waiting:
            done.wait()
            with self._lock:
                entry = self._text_cache.get(head)
            if entry is None:  # not kept (over the memory bound, or the other call failed): encode it here
                entry = self._encode_missing(handle, [head], token_cache, store=False)[head]
            found[head] = entry
        return found

    def _encode_missing(self, handle, missing, token_cache, store):
        """Encode ``missing`` heads; ``store``: add them to the LRU (within ``text_cache_mb``)."""
        unknown = [h for h in missing if h not in token_cache]
        if unknown:  # evicted since this call looked: tokenise again
            token_cache.update(zip(unknown, self._head_ids(handle, unknown)))
        computed = self._encode_heads(handle, {h: token_cache[h] for h in missing})
        if not store:
            return computed
        limit = float(self.text_cache_mb) * 2**20
        with self._lock:
            for head, entry in computed.items():
                if entry.nbytes > limit or head in self._text_cache:
                    continue
                self._text_cache[head] = entry
                self._text_cache_bytes += entry.nbytes
            while self._text_cache_bytes > limit and self._text_cache:
                _, old = self._text_cache.popitem(last=False)
                self._text_cache_bytes -= old.nbytes
        return computed

    def _encode_heads(self, handle, head_ids):
        """Run heads (dict head -> token ids) through the model, right-padded:
        no mask is needed, a causal model never looks at the padding after a text."""
        readout = handle.readout()
        result = {}
        heads = sorted(head_ids, key=lambda h: len(head_ids[h]))
        nonempty = [h for h in heads if head_ids[h]]
        for head in heads:
            if not head_ids[head]:
                result[head] = _TextEntry(None, None, 0)
        for batch in _length_buckets(nonempty, lambda h: len(head_ids[h]), self.batch_size):
            lengths = [len(head_ids[h]) for h in batch]
            input_ids = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
            for row, head in enumerate(batch):
                input_ids[row, : lengths[row]] = torch.as_tensor(head_ids[head])
            input_ids = input_ids.to(handle.device)
            kwargs = {"input_ids": input_ids, "use_cache": True}
            if not handle.legacy_cache:
                cache = kwargs[handle.cache_kwarg] = _new_cache()
            result_out = (handle.base if readout.fast else handle.model)(**kwargs)
            outputs = result_out.last_hidden_state if readout.fast else result_out.logits
            if handle.legacy_cache:
                layers = [tuple(layer[:2]) for layer in result_out.past_key_values]
            else:
                layers = _cache_layers(cache)
            shapes = {tuple(t.shape) for kv in layers for t in kv}
            if len(shapes) != 1:
                raise BackendError(
                    "prompt_position='suffix' needs a model whose layers all cache keys/values of one shape; "
                    f"{type(handle.model).__name__} does not. Use prompt_position='prefix'."
                )
            for row, head in enumerate(batch):  # one copy per text: (layers, 2, heads, n, hd)
                n = lengths[row]
                kv = torch.stack([torch.stack([k[row, :, :n], v[row, :, :n]]) for k, v in layers])
                result[head] = _TextEntry(kv, outputs[row, n - 1].clone(), n)
            with self._lock:
                self._text_stats["head_forwards"] += 1
        return result

    def _score_full(self, handle, readout, suffix, heads, head_ids, token_ids, columns, out):
        """One prompt on texts that are not cached: a full forward of
        ``[head | suffix]`` per text, right-padded (a causal model never looks
        at the padding after the readout position), texts in length buckets
        of at most ``batch_size``. Writes ``out[0, columns[head]]``."""
        n_suffix = suffix.shape[0]
        device = handle.device
        for batch in _length_buckets(heads, lambda h: len(head_ids[h]), self.batch_size):
            n_head = [len(head_ids[h]) for h in batch]
            width = max(n_head) + n_suffix
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, head in enumerate(batch):
                ids[row, : n_head[row]] = torch.as_tensor(head_ids[head], dtype=torch.long)
            x = handle.embed(ids.to(device))
            for row, n in enumerate(n_head):
                x[row, n: n + n_suffix] = suffix
            last = torch.as_tensor([n + n_suffix - 1 for n in n_head], device=device)
            scores = self._full_forward_scores(handle, readout, x, last, token_ids).cpu().numpy()
            for row, head in enumerate(batch):
                out[0, columns[head]] = scores[row]

    # ---- prefix layout: full forward
    def _score_prefix(self, handle, readout, prompts, texts, token_ids, out):
        n_prompts, n_tokens = prompts.shape[0], prompts.shape[1]
        prefix = handle.special_prefix()
        bodies = handle.encode_batch([self._head_template + t + self._tail_text for t in texts])
        lengths = np.array([len(prefix) + n_tokens + len(b) for b in bodies])
        if np.any(lengths == 0):
            raise BackendError("Nothing to score: an empty text with an empty template and no soft prompt.")
        order = np.argsort(lengths, kind="stable")
        prefix_emb = handle.embed(prefix) if prefix else None
        for batch in _pairs_batches(order, n_prompts, self.batch_size):
            width = int(max(lengths[j] for j, _ in batch))
            x = torch.zeros((len(batch), width, prompts.shape[2]), dtype=prompts.dtype, device=handle.device)
            embedded = {}
            for row, (j, p) in enumerate(batch):
                if j not in embedded:
                    embedded[j] = handle.embed(bodies[j]) if bodies[j] else None
                pos = 0
                if prefix_emb is not None:
                    x[row, : len(prefix)] = prefix_emb
                    pos = len(prefix)
                x[row, pos: pos + n_tokens] = prompts[p]
                pos += n_tokens
                if embedded[j] is not None:
                    x[row, pos: pos + len(bodies[j])] = embedded[j]
            last = torch.as_tensor(lengths[[j for j, _ in batch]] - 1, device=handle.device)
            # Right padding and a causal model: no token looks at the padding.
            scores = self._full_forward_scores(handle, readout, x, last, token_ids)
            out[[p for _, p in batch], [j for j, _ in batch]] = scores.cpu().numpy()

    def _full_forward_scores(self, handle, readout, x, last, token_ids):
        """Class scores (B, C) read at positions ``last`` of a full forward of ``x`` (B, T, D)."""
        rows = torch.arange(x.shape[0], device=handle.device)
        with self._lock:
            self._text_stats["forwards"] += 1
        return readout.logits(readout.forward(handle, inputs_embeds=x, use_cache=False)[rows, last], token_ids)

    # ==== differentiable scoring: the white-box path (skprompt.whitebox) ==========
    # Not part of the black-box protocol: only GradientPromptClassifier calls it.
    # It follows the layouts of _score_suffix / _score_prefix step by step (same
    # input, same micro-batches) but keeps the autograd graph from the prompt to
    # the class log-probabilities; tests check it against score() within 1e-5.
    @_with_threads
    def _log_proba_torch(self, prompts, texts, classes):
        """Differentiable class log-probabilities of every (prompt, text) pair.

        Parameters
        ----------
        prompts : torch.Tensor of shape (n_prompts, n_prompt_tokens, embedding_dim)
            Soft prompts, typically requiring grad. Cast (differentiably) to
            the model's device and dtype.
        texts : sequence of str
        classes : sequence
            Class labels, in the order of the output columns.

        Returns
        -------
        torch.Tensor of shape (n_prompts, n_texts, n_classes), float64
            The log-softmax over the classes' logits, the same numbers as
            :meth:`score` (up to float rounding), differentiable with respect
            to ``prompts``. With ``prompt_position="suffix"`` or ``"tail"``
            the texts' key/value caches are constants (the prompt comes after
            the text): they are taken from, or added to, the text cache, and
            only the suffix tokens are run with grad; ``"prefix"`` runs the
            full input with grad. Runs with grad unless the caller disabled it;
            the model's parameters get gradients only if they require grad.
        """
        prompts, texts, token_ids, handle, readout = self._torch_inputs(prompts, texts, classes)
        n_prompts, n_tokens, n_texts = prompts.shape[0], prompts.shape[1], len(texts)
        if n_prompts == 0 or n_texts == 0:
            return prompts.new_zeros((n_prompts, n_texts, len(token_ids)), dtype=torch.float64)
        chunks, keys = [], []  # micro-batch scores (B, C) and the (text key, prompt) of each row

        if self.prompt_position in ("suffix", "tail"):
            tail = self._tail(handle)
            if self.prompt_position == "tail":  # as in _score_suffix
                tail = tail[: max(len(tail) - n_tokens, 0)]
                suffix = torch.cat([handle.embed(tail).unsqueeze(0).expand(n_prompts, -1, -1), prompts], dim=1)
            else:
                suffix = torch.cat([prompts, handle.embed(tail).unsqueeze(0).expand(n_prompts, -1, -1)], dim=1)
            text_keys = [self._head_template + t for t in texts]
            distinct = list(dict.fromkeys(text_keys))
            with self._lock:
                n_hits = sum(h in self._text_cache for h in distinct)
                self._text_stats["hits"] += n_hits
                self._text_stats["misses"] += len(distinct) - n_hits
            with torch.no_grad():  # the heads come before the prompt: constants
                entries = self._text_entries(handle, distinct, {})
            if suffix.shape[1] == 0 and any(entries[h].length == 0 for h in distinct):
                raise BackendError("Nothing to score: an empty text, a template that ends with '{text}' "
                                   "and no soft prompt give an empty input.")
            order = sorted(distinct, key=lambda h: entries[h].length)
            for batch in _text_major_batches(order, n_prompts, self.batch_size):
                chunks.append(self._suffix_scores(handle, readout, [entries[h] for h, _ in batch],
                                                  suffix[[p for _, p in batch]], token_ids))
                keys.extend(batch)
        else:  # prefix, as in _score_prefix
            text_keys = list(range(n_texts))
            prefix = handle.special_prefix()
            bodies = handle.encode_batch([self._head_template + t + self._tail_text for t in texts])
            lengths = np.array([len(prefix) + n_tokens + len(b) for b in bodies])
            if np.any(lengths == 0):
                raise BackendError("Nothing to score: an empty text with an empty template and no soft prompt.")
            order = np.argsort(lengths, kind="stable")
            prefix_emb = handle.embed(prefix) if prefix else None
            for batch in _pairs_batches(order, n_prompts, self.batch_size):
                width = int(max(lengths[j] for j, _ in batch))
                rows = []
                for j, p in batch:  # [prefix | prompt | body | right padding], built by concatenation
                    parts = ([prefix_emb] if prefix_emb is not None else []) + [prompts[p]]
                    if bodies[j]:
                        parts.append(handle.embed(bodies[j]))
                    pad = width - int(lengths[j])
                    if pad:
                        parts.append(prompts.new_zeros((pad, prompts.shape[2])))
                    rows.append(torch.cat(parts))
                x = torch.stack(rows)
                last = torch.as_tensor(lengths[[j for j, _ in batch]] - 1, device=handle.device)
                at = torch.arange(len(batch), device=handle.device)
                with self._lock:
                    self._text_stats["forwards"] += 1
                chunks.append(readout.logits(readout.forward(handle, inputs_embeds=x, use_cache=False)[at, last],
                                             token_ids))
                keys.extend((int(j), p) for j, p in batch)

        row_of = {key: i for i, key in enumerate(keys)}
        index = torch.as_tensor([row_of[(text_keys[j], p)] for p in range(n_prompts) for j in range(n_texts)],
                                device=handle.device)
        scores = torch.cat(chunks).index_select(0, index).reshape(n_prompts, n_texts, len(token_ids))
        return torch.log_softmax(scores.double(), dim=-1)
    # ==== end of the differentiable scoring ========================================

    def __repr__(self):
        return (f"CausalLMBackend({self._model_name()!r}, template={self.template!r}, "
                f"prompt_position={self.prompt_position!r})")


class _TextStore:
    """The LRU of per-text key/value caches (head string -> :class:`_TextEntry`)
    and its size in bytes, shareable between backends on one model."""

    def __init__(self):
        self.entries = OrderedDict()
        self.nbytes = 0
        self.pending = {}  # head string -> threading.Event, set when the thread encoding it is done


class _TextEntry:
    """A text's head: key/value cache (layers, 2, kv_heads, length, head_dim),
    the output at its last token, and its length in tokens."""

    __slots__ = ("kv", "last_out", "length", "nbytes")

    def __init__(self, kv, last_out, length):
        self.kv = kv
        self.last_out = last_out  # final hidden state (or full logits with an unrecognised head)
        self.length = length
        self.nbytes = 0 if kv is None else kv.numel() * kv.element_size() + last_out.numel() * last_out.element_size()


def _pad_kv(entries, max_len):
    """Stack the entries' caches, right-padded with zeros to ``max_len`` tokens:
    (layers, 2, n_entries, kv_heads, max_len, head_dim)."""
    ref = next(e.kv for e in entries if e.kv is not None)
    n_layers, _, n_heads, _, head_dim = ref.shape
    padded = ref.new_zeros((n_layers, 2, len(entries), n_heads, max_len, head_dim))
    for i, e in enumerate(entries):
        if e.length:
            padded[:, :, i, :, : e.length] = e.kv
    return padded


# --------------------------------------------------------------------------
# Masked LM
# --------------------------------------------------------------------------


class MaskedLMBackend(_HFBackend):
    """A local transformers masked language model (BERT, RoBERTa ...).

    The setting of the Black-Box Tuning papers: the input is the first
    special token (``[CLS]`` / ``<s>``), the soft prompt, the tokens of the
    filled template with the tokenizer's mask token where ``{mask}`` is, and
    the closing special token (``[SEP]`` / ``</s>``); the class scores are the
    masked-LM logits of the verbalizer tokens at the mask (those rows of the
    output layer only). A full forward per (prompt, text) pair, batched with
    right padding and an attention mask, so padding never changes a score.

    Parameters
    ----------
    model : transformers.PreTrainedModel or str or os.PathLike
        A masked-LM object (``...ForMaskedLM``), or its local directory
        (loaded with ``AutoModelForMaskedLM``; nothing is downloaded).
    tokenizer : transformers tokenizer, str or None, default=None
        Needs a mask token. Required with a model object unless loadable from
        ``model.name_or_path``.
    template : str, default="{text} It was {mask}."
        Must contain ``{text}`` and ``{mask}`` exactly once each. The part
        before ``{mask}`` is tokenised without its trailing whitespace: the
        label token carries its own leading space (see ``verbalizer``).
    verbalizer : dict or None, default=None
        Class label -> label word, read as in :class:`CausalLMBackend` (first
        token of ``" " + word``). ``None`` uses ``str(label)``.
    batch_size : int, default=64
        Most (prompt, text) pairs per forward pass.
    cache_size : int, default=100_000
        Size of the result cache of :class:`PromptBackend`.
    cache : str, os.PathLike or None, default=None
        As in :class:`CausalLMBackend`.
    device, dtype
        As in :class:`CausalLMBackend` (only with a path).
    num_threads : int or None, default=None
        As in :class:`CausalLMBackend`.
    truncation : {"right", "left", "error"}, default="right"
        As in :class:`CausalLMBackend`: texts too long for the model's
        position limit are cut (with a :class:`ContextWarning`) or refused.

    Notes
    -----
    No real masked LM with its MLM head is available offline in this
    project's environment (only the causal SmolLM2 ships as a package). This
    backend is therefore tested with tiny, randomly initialised BERT and
    RoBERTa models built from their configs, with small word-level tokenizers
    built in the tests (``tokenizers.Tokenizer`` wrapped in
    ``PreTrainedTokenizerFast`` with CLS/SEP/MASK/PAD tokens), against a naive
    full-vocabulary forward. Texts longer than the model's position limit are
    cut as ``truncation`` says, with a warning (never silently).

    Pickling and cloning behave as in :class:`CausalLMBackend`.
    """

    _kind = "masked"

    def __init__(self, model, tokenizer=None, *, template="{text} It was {mask}.", verbalizer=None,
                 batch_size=_DEFAULT_BATCH_SIZE, cache_size=100_000, device=None, dtype=None, truncation="right",
                 num_threads=None, cache=None):
        _check_placeholder(template, "text")
        _check_placeholder(template, "mask")
        super().__init__(model, tokenizer, template=template, verbalizer=verbalizer, batch_size=batch_size,
                         cache_size=cache_size, device=device, dtype=dtype, truncation=truncation,
                         num_threads=num_threads, cache=cache)

    def _validate_template(self):
        tok = self._get_handle().tokenizer
        if tok.mask_token_id is None:
            raise ValueError(f"The tokenizer of {self._model_name()!r} has no mask token; MaskedLMBackend needs one.")
        left, right = self.template.split("{mask}")
        self._left_template, self._right_template = left, right

    def _specials(self, handle):
        tok = handle.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return ([first] if first is not None else []), ([last] if last is not None else [])

    def _masked_inputs(self, handle, texts, n_tokens):
        """Token layout of each text: ``[first | prompt | left, mask, right | last]``.

        Returns the special first and last ids, each text's body (left, the
        mask token, right), the mask's position and the input's length; a
        text too long for the model's positions is an error.
        """
        first, last = self._specials(handle)
        left_ids = handle.encode_batch([self._left_template.replace("{text}", t).rstrip() for t in texts])
        right_ids = handle.encode_batch([self._right_template.replace("{text}", t) for t in texts])
        bodies = [li + [handle.tokenizer.mask_token_id] + ri for li, ri in zip(left_ids, right_ids)]
        mask_pos = np.array([len(first) + n_tokens + len(li) for li in left_ids])
        lengths = np.array([len(first) + n_tokens + len(b) + len(last) for b in bodies])
        usable = self.context_length()
        too_long = np.flatnonzero(lengths > usable) if usable else np.array([], dtype=int)
        if too_long.size:
            raise BackendError(
                f"{too_long.size} text(s) are too long for {self._model_name()!r}: e.g. text {too_long[0]} "
                f"needs {lengths[too_long[0]]} positions (soft prompt included), the model has {usable}."
            )
        return first, last, bodies, mask_pos, lengths

    @_with_threads
    def _score(self, prompt_embeddings, texts, classes, top_k=0):
        token_ids = self._class_token_ids(classes)
        texts = self._fit_to_context(texts, prompt_embeddings.shape[1])
        handle = self._get_handle()
        readout = _TopReadout(handle.readout(), top_k) if top_k else handle.readout()
        n_prompts, n_tokens, dim = prompt_embeddings.shape
        first, last, bodies, mask_pos, lengths = self._masked_inputs(handle, texts, n_tokens)
        out = np.empty((n_prompts, len(texts), len(token_ids) + 2 * top_k), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        with torch.inference_mode():
            prompts = self._prompt_tensor(prompt_embeddings, handle)
            first_emb = handle.embed(first) if first else None
            last_emb = handle.embed(last) if last else None
            for batch in _pairs_batches(order, n_prompts, self.batch_size):
                width = int(max(lengths[j] for j, _ in batch))
                x = torch.zeros((len(batch), width, dim), dtype=prompts.dtype, device=handle.device)
                attention = torch.zeros((len(batch), width), dtype=torch.long, device=handle.device)
                embedded = {}
                for row, (j, p) in enumerate(batch):
                    if j not in embedded:
                        embedded[j] = handle.embed(bodies[j])
                    pos = 0
                    if first_emb is not None:
                        x[row, :1] = first_emb
                        pos = 1
                    x[row, pos: pos + n_tokens] = prompts[p]
                    pos += n_tokens
                    x[row, pos: pos + len(bodies[j])] = embedded[j]
                    pos += len(bodies[j])
                    if last_emb is not None:
                        x[row, pos: pos + 1] = last_emb
                    attention[row, : lengths[j]] = 1
                at = torch.as_tensor(mask_pos[[j for j, _ in batch]], device=handle.device)
                rows = torch.arange(len(batch), device=handle.device)
                scores = readout.logits(readout.forward(handle, inputs_embeds=x, attention_mask=attention)[rows, at],
                                        token_ids)
                out[[p for _, p in batch], [j for j, _ in batch]] = scores.cpu().numpy()
        return out

    # ==== differentiable scoring: the white-box path (skprompt.whitebox) ==========
    # Not part of the black-box protocol: only GradientPromptClassifier calls it.
    # The same input and micro-batches as _score, with the autograd graph kept
    # from the prompt to the class log-probabilities; tests check it against
    # score() within 1e-5.
    @_with_threads
    def _log_proba_torch(self, prompts, texts, classes):
        """Differentiable class log-probabilities of every (prompt, text) pair.

        Parameters
        ----------
        prompts : torch.Tensor of shape (n_prompts, n_prompt_tokens, embedding_dim)
            Soft prompts, typically requiring grad. Cast (differentiably) to
            the model's device and dtype.
        texts : sequence of str
        classes : sequence
            Class labels, in the order of the output columns.

        Returns
        -------
        torch.Tensor of shape (n_prompts, n_texts, n_classes), float64
            The log-softmax over the classes' logits at the mask, the same
            numbers as :meth:`score` (up to float rounding), differentiable
            with respect to ``prompts`` (a full forward with grad per pair).
        """
        prompts, texts, token_ids, handle, readout = self._torch_inputs(prompts, texts, classes)
        n_prompts, n_tokens, dim = prompts.shape
        n_texts = len(texts)
        if n_prompts == 0 or n_texts == 0:
            return prompts.new_zeros((n_prompts, n_texts, len(token_ids)), dtype=torch.float64)
        first, last, bodies, mask_pos, lengths = self._masked_inputs(handle, texts, n_tokens)
        order = np.argsort(lengths, kind="stable")
        first_emb = handle.embed(first) if first else None
        last_emb = handle.embed(last) if last else None
        chunks, keys = [], []
        for batch in _pairs_batches(order, n_prompts, self.batch_size):
            width = int(max(lengths[j] for j, _ in batch))
            rows = []
            attention = torch.zeros((len(batch), width), dtype=torch.long, device=handle.device)
            for row, (j, p) in enumerate(batch):  # [first | prompt | body | last | padding]
                parts = [e for e in (first_emb,) if e is not None] + [prompts[p], handle.embed(bodies[j])]
                if last_emb is not None:
                    parts.append(last_emb)
                pad = width - int(lengths[j])
                if pad:
                    parts.append(prompts.new_zeros((pad, dim)))
                rows.append(torch.cat(parts))
                attention[row, : lengths[j]] = 1
            x = torch.stack(rows)
            at = torch.as_tensor(mask_pos[[j for j, _ in batch]], device=handle.device)
            idx = torch.arange(len(batch), device=handle.device)
            chunks.append(readout.logits(readout.forward(handle, inputs_embeds=x, attention_mask=attention)[idx, at],
                                         token_ids))
            keys.extend((int(j), p) for j, p in batch)
        row_of = {key: i for i, key in enumerate(keys)}
        index = torch.as_tensor([row_of[(j, p)] for p in range(n_prompts) for j in range(n_texts)],
                                device=handle.device)
        scores = torch.cat(chunks).index_select(0, index).reshape(n_prompts, n_texts, len(token_ids))
        return torch.log_softmax(scores.double(), dim=-1)
    # ==== end of the differentiable scoring ========================================

    def __repr__(self):
        return f"MaskedLMBackend({self._model_name()!r}, template={self.template!r})"
