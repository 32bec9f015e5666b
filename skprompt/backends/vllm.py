"""A model served by vLLM (its OpenAI-compatible HTTP API) as a black-box backend.

This is the paper's setting: the client holds the model's tokenizer and its
input-embedding table (as for any open model) and sends soft prompts as
input embeddings (``prompt_embeds``); everything else of the model stays on
the server, which may be one GPU, several, or several nodes.

The backend builds the very inputs :class:`~skprompt.backends.CausalLMBackend`
builds (the same template, layouts, truncation and label words), so on the
same model, prompts and texts the two give the same class log-probabilities
(up to the server's arithmetic: within 1e-3 with a float32 server).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import logging
import math
import numbers
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._tokenized import (_CausalInputs, _check_choice, _check_non_negative_int, _check_positive_int,
                         _TokenizedBackend, _TokenizerHandle)
from .base import BackendError, PromptBackend, TransientBackendError, call_with_retries

__all__ = ["VLLMBackend", "API_KEY_ENV"]

_LOG = logging.getLogger("skprompt")

#: The environment variable the API key is read from by default (the name
#: vLLM's own server reads its key from).
API_KEY_ENV = "VLLM_API_KEY"

#: Models whose input embedding layer multiplies the table by sqrt(hidden_size)
#: (transformers' ``*ScaledWordEmbedding``): soft prompts live on that scale.
_SCALED_EMBEDDINGS = ("gemma", "gemma2", "gemma3", "gemma3_text")

#: What an HTTP answer means for a retry: 429 (rate limited) and 5xx (the
#: server failed or is overloaded) may succeed later; other 4xx never will.
_RETRY_STATUS = {429} | set(range(500, 600))

#: What vLLM lists for a token its processed log-probabilities masked out
#: (``-9999.0``); a raw log-probability is never this low.
_PROCESSED_FILLER = -9000.0


class _ClientHandle(_TokenizerHandle):
    """The client's half of a served model: its tokenizer and input-embedding
    table, read from a local model directory (the table alone, from the
    safetensors files, never the whole model)."""

    def __init__(self, model_dir):
        from transformers import AutoConfig, AutoTokenizer

        self.config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        table = _load_embedding_table(model_dir)
        text_config = getattr(self.config, "text_config", None) or self.config
        if getattr(text_config, "model_type", self.config.model_type) in _SCALED_EMBEDDINGS:
            # As Gemma's embedding layer does: the scale in the table's dtype.
            scale = torch.tensor(float(text_config.hidden_size) ** 0.5, dtype=table.dtype)
            table = table * scale
        self.input_embeddings = torch.nn.Embedding.from_pretrained(table.float(), freeze=True)
        self._init_tokenizer_state()


def _load_embedding_table(model_dir):
    """The input-embedding matrix of the model in ``model_dir``, read from its
    safetensors file(s) without loading any other tensor."""
    from safetensors import safe_open

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh)["weight_map"]
        names = list(weight_map)
    else:
        weight_map = None
        single = os.path.join(model_dir, "model.safetensors")
        if not os.path.isfile(single):
            raise ValueError(f"model_dir {model_dir!r} holds no model.safetensors (or its index); the client reads "
                             "the input-embedding table from it.")
        with safe_open(single, framework="pt") as fh:
            names = list(fh.keys())
    suffixes = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight")
    found = [n for n in names if n.endswith(suffixes) and "vision" not in n]
    if not found:
        raise ValueError(f"no input-embedding tensor (a name ending in one of {suffixes}) in {model_dir!r}.")
    name = sorted(found, key=len)[0]
    path = os.path.join(model_dir, weight_map[name]) if weight_map else os.path.join(model_dir, "model.safetensors")
    with safe_open(path, framework="pt") as fh:
        return fh.get_tensor(name)


def _encode_embeds(tensor):
    """vLLM's ``prompt_embeds`` wire format: base64 of ``torch.save`` of a (length, hidden) tensor."""
    buffer = io.BytesIO()
    torch.save(tensor.contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VLLMBackend(_CausalInputs, _TokenizedBackend):
    """A causal language model served by vLLM, over its OpenAI-compatible API.

    Soft prompts are sent as input embeddings (vLLM's ``prompt_embeds``; the
    server runs with ``--enable-prompt-embeds``), built on the client from
    the model's tokenizer and input-embedding table exactly as
    :class:`~skprompt.backends.CausalLMBackend` builds them. See
    docs/remote.md for serving a model and tuning against it.

    Parameters
    ----------
    base_url : str
        The server, e.g. ``"http://127.0.0.1:8000"`` (``/v1`` is added).
    model_dir : str or os.PathLike
        A local directory with the served model's ``config.json``, tokenizer
        and safetensors weights; only the input-embedding tensor is read.
    served_model : str or None, default=None
        The model name the server knows (its ``--served-model-name`` or
        ``--model``); ``None`` takes the only model it lists.
    template, verbalizer, prompt_position, truncation
        As for :class:`~skprompt.backends.CausalLMBackend` (default layout
        ``"tail"``: the soft prompt replaces the template's last tokens).
    labels_only : bool, default=False
        ``False``: class scores, the label words' log-probabilities from the
        server's ``logprobs``. ``True``: a label-only API; only the generated
        text is read and mapped to a class by the verbalizer.
    restrict_answers : bool, default=True
        With ``labels_only=True``, ask the server to answer with a label word
        only (vLLM's ``allowed_token_ids``, the constrained decoding that
        label-only APIs offer as enums or logit biases): the answer is then
        the arg-max of the class scores. ``False`` lets the model answer
        anything, and an answer that is no label word goes to
        ``unknown_answer``.
    unknown_answer : {"random", "error"}, default="random"
        What an answer that is no label word becomes (counted in
        ``stats["unknown_answers"]``). ``"random"``: a class drawn uniformly,
        fixed by the prompt and the text (so a replay gives the same), that
        is, a vote that carries no information. ``"error"``: a
        :class:`~skprompt.backends.BackendError`.
    api_key : str or None, default=None
        The server's key. Never stored in ``get_params``, ``repr``, logs or
        pickles (an unpickled backend, e.g. in a joblib worker, reads
        ``api_key_env`` again). ``None`` reads ``api_key_env``; a server
        without a key needs neither.
    api_key_env : str, default="VLLM_API_KEY"
        The environment variable the key is read from.
    pairs_per_request : int, default=16
        (prompt, text) pairs sent in one request (vLLM's list form of
        ``prompt_embeds``).
    max_concurrency : int, default=4
        Requests in flight at once.
    timeout : float, default=120.0
        Seconds a request may take before it counts as failed (and is retried).
    max_retries : int, default=5
        Retries of a failed request: connection errors, timeouts, HTTP 429
        and 5xx, with exponential backoff and jitter (see
        :func:`~skprompt.backends.base.call_with_retries`). Other HTTP errors
        (a wrong key, a bad request) fail at once with the server's message.
    retry_backoff : float, default=0.5
        Seconds before the first retry.
    top_logprobs : int, default=20
        Log-probabilities asked per request (at most the server's
        ``--max-logprobs``, 20 by default). A label word outside them is read
        with one more request that allows only that word.
    cache_size, cache
        The in-memory and the persistent (on-disk) query caches (see
        :class:`~skprompt.backends.PromptBackend`). Answers in ``cache`` are
        keyed by the served model's name (and its ``root`` where the server
        reports one), a digest of ``model_dir``'s input-embedding table, its
        tokenizer, the template, label words and layout, not by
        ``base_url``: a restarted server on another port replays them, a
        model redeployed under the same name with other weights does not.

    Notes
    -----
    Requests are idempotent (greedy decoding of one token), so retries never
    change a result. ``stats`` adds ``http_requests`` (every HTTP request,
    retries and key checks included), ``label_requests`` (those of them
    that read a label word outside the top log-probabilities; none from a
    server started with ``--logprobs-mode processed_logprobs``, see
    :attr:`processed_logprobs`) and ``unknown_answers``.

    The key is checked (``GET /v1/models``) before any query of a fit, so a
    wrong or missing key fails with a clear error at once.

    Examples
    --------
    >>> from skprompt import BlackBoxPromptClassifier
    >>> from skprompt.backends import VLLMBackend
    >>> backend = VLLMBackend("http://127.0.0.1:8000", "/models/SmolLM2-135M-Instruct",
    ...                       template="Review: {text}\\nSentiment:",
    ...                       verbalizer={"fresh": "positive", "rotten": "negative"})  # doctest: +SKIP
    >>> clf = BlackBoxPromptClassifier(backend, method="ensemble").fit(texts, y)  # doctest: +SKIP
    """

    _kind = "causal"

    def __init__(self, base_url, model_dir, *, served_model=None, template="{text}\nAnswer:", verbalizer=None,
                 prompt_position="tail", labels_only=False, restrict_answers=True, unknown_answer="random",
                 api_key=None, api_key_env=API_KEY_ENV, pairs_per_request=16, max_concurrency=4, timeout=120.0,
                 max_retries=5, retry_backoff=0.5, top_logprobs=20, truncation="right", cache_size=100_000,
                 cache=None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8000'; got {base_url!r}.")
        if not isinstance(model_dir, (str, os.PathLike)) or not os.path.isfile(
                os.path.join(os.fspath(model_dir), "config.json")):
            raise ValueError(f"model_dir must be a local model directory (holding config.json, the tokenizer and "
                             f"the safetensors weights of the served model); got {model_dir!r}.")
        _check_choice("unknown_answer", unknown_answer, ("random", "error"))
        for name, value in (("pairs_per_request", pairs_per_request), ("max_concurrency", max_concurrency),
                            ("top_logprobs", top_logprobs)):
            _check_positive_int(name, value)
        _check_non_negative_int("max_retries", max_retries)
        for name, value in (("timeout", timeout), ("retry_backoff", retry_backoff)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number of seconds; got {value!r}.")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ValueError("api_key must be a non-empty str or None (then it is read from api_key_env).")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ValueError(f"api_key_env must be the name of an environment variable; got {api_key_env!r}.")
        super().__init__(prompt_position=prompt_position, template=template, verbalizer=verbalizer,
                         truncation=truncation, cache_size=cache_size, cache=cache)
        self.base_url = base_url.rstrip("/")
        self.model_dir = os.fspath(model_dir)
        self.served_model = served_model
        self.labels_only = bool(labels_only)
        self.restrict_answers = bool(restrict_answers)
        self.unknown_answer = unknown_answer
        self.api_key = None  # the key itself is never a parameter (see _api_key)
        self._api_key = api_key
        self.api_key_env = api_key_env
        self.pairs_per_request = int(pairs_per_request)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.top_logprobs = int(top_logprobs)
        self.batch_size = self.pairs_per_request
        self._handle = None
        self._get_handle()  # a bad model directory fails here, not mid-fit
        if self.verbalizer is not None:
            self._class_token_ids(list(self.verbalizer))

    # ------------------------------------------------------------- state
    _STATS_KEYS = PromptBackend._STATS_KEYS + ("http_requests", "label_requests", "unknown_answers")

    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._client = None
        self._server = None  # {"model": name, "max_model_len": int}, after the key check

    def _get_handle(self):
        if self._handle is None:
            with self._lock:
                if self._handle is None:
                    self._handle = _client_handle(os.path.realpath(self.model_dir))
        return self._handle

    def _share_runtime_with(self, other):
        # set_params / clone rebuild from get_params, which never holds the key.
        if self._api_key is None:
            self._api_key = other._api_key

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_handle", "_client", "_server", "_api_key"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._handle = None
        self._api_key = None  # read from api_key_env again

    # ------------------------------------------------------------- facts
    @property
    def model(self):
        """str: the served model's name (after the first request)."""
        return self._server_info()["model"]

    @property
    def embedding_dim(self):
        return self._get_handle().embedding_dim

    def embedding_stats(self):
        return self._get_handle().embedding_stats()

    def context_length(self):
        """int: the server's ``max_model_len`` (asked once)."""
        return int(self._server_info()["max_model_len"])

    def _model_name(self):
        return self.served_model or os.path.basename(os.path.normpath(self.model_dir))

    def _source_name(self):
        return f"VLLMBackend({self.base_url})"

    def _cache_identity(self):
        return json.dumps({
            "backend": "VLLMBackend", "served_model": self._server_info()["model"],
            "served_root": self._server_info().get("root"), "weights": self._get_handle().fingerprint(),
            "tokenizer": os.path.realpath(self.model_dir), "template": self.template,
            "verbalizer": None if self.verbalizer is None else {repr(k): v for k, v in self.verbalizer.items()},
            "prompt_position": self.prompt_position, "truncation": self.truncation,
            "labels_only": self.labels_only, "restrict_answers": self.restrict_answers,
            "unknown_answer": self.unknown_answer,
        }, sort_keys=True)

    @property
    def compute_dtype(self):
        """None: the server computes in the dtype it was started with (vLLM's ``--dtype``)."""
        return None

    def check_classes(self, classes):
        """Check the label words, the server, its key and what its log-probabilities are (before any query of a fit)."""
        self._class_token_ids(list(classes))
        self._server_info()
        self.processed_logprobs  # noqa: B018 -- asked here so that logits fail before any query

    # ------------------------------------------------------------- HTTP
    def _key(self):
        return self._api_key if self._api_key is not None else os.environ.get(self.api_key_env) or None

    def _http(self):
        if self._client is None:
            import httpx

            with self._lock:
                if self._client is None:
                    limits = httpx.Limits(max_connections=self.max_concurrency + 2,
                                          max_keepalive_connections=self.max_concurrency + 2)
                    self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout, limits=limits)
        return self._client

    def _request(self, method, path, payload=None, what=None):
        """One HTTP request with retries; the decoded JSON answer."""
        import httpx

        headers = {}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        what = what or f"{method} {self.base_url}{path}"

        def once():
            with self._lock:
                self._stats["http_requests"] += 1
            try:
                response = self._http().request(method, path, json=payload, headers=headers)
            except (httpx.TransportError, httpx.TimeoutException) as exc:  # connection lost, reset, timed out
                raise TransientBackendError(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError as exc:  # a proxy cut the body short: worth another try
                    raise TransientBackendError(f"unreadable answer (HTTP {response.status_code}): {exc}") from exc
            message = _server_message(response)
            if response.status_code in _RETRY_STATUS:
                raise TransientBackendError(f"HTTP {response.status_code}: {message}")
            if response.status_code in (401, 403):
                raise BackendError(
                    f"{self.base_url} refused the API key (HTTP {response.status_code}: {message}). "
                    + ("No key was sent: " if not key else "")
                    + f"pass api_key=... or set the environment variable {self.api_key_env}."
                )
            raise BackendError(f"{what} failed: HTTP {response.status_code}: {message}")

        return call_with_retries(once, max_retries=self.max_retries, backoff=self.retry_backoff, what=what,
                                 on_retry=self._count_retry)

    def _server_info(self):
        """The served model's name and context, from ``GET /v1/models`` (which checks the key)."""
        if self._server is None:
            listing = self._request("GET", "/v1/models", what=f"reaching the vLLM server at {self.base_url}")
            models = {m.get("id"): m for m in listing.get("data", [])}
            if self.served_model is None:
                if len(models) != 1:
                    raise BackendError(f"{self.base_url} serves {sorted(models)}; pass served_model= to pick one.")
                name = next(iter(models))
            elif self.served_model in models:
                name = self.served_model
            else:
                raise BackendError(f"{self.base_url} does not serve {self.served_model!r}; it serves "
                                   f"{sorted(models)}.")
            self._server = {"model": name, "max_model_len": int(models[name].get("max_model_len") or 2048),
                            "root": models[name].get("root")}  # where the server loaded it from, if it says
        return self._server

    # ------------------------------------------------------------- requests
    def _run_pairs(self, prompt_embeddings, texts, classes, answer):
        """``answer(the pairs' input embeddings, token ids, model name)`` per request
        over all pairs, ``max_concurrency`` requests at once; results in pair order."""
        token_ids = self._class_token_ids(classes)
        server = self._server_info()
        texts = self._fit_to_context(texts, prompt_embeddings.shape[1])
        prompts = torch.from_numpy(np.ascontiguousarray(prompt_embeddings, dtype=np.float32))
        # The same inputs as CausalLMBackend's, laid out by the shared _CausalLayout.
        _, build = self._layout.pair_inputs(self._get_handle(), prompts, texts)
        pairs = [(p, j) for j in range(len(texts)) for p in range(prompts.shape[0])]
        # Text-major; where the text comes before the prompt, each text's first
        # pair goes in a first wave, so that the server's prefix cache holds the
        # text when its other pairs arrive (pairs computed in one step of the
        # server share nothing). See docs/remote.md, "Prefix reuse".
        if self.prompt_position != "prefix" and prompts.shape[0] > 1:
            waves = [[pair for pair in pairs if pair[0] == 0], [pair for pair in pairs if pair[0] != 0]]
        else:
            waves = [pairs]

        def job(chunk):
            return answer(build([(j, p) for p, j in chunk]), token_ids, server["model"])

        chunked = [[wave[k:k + self.pairs_per_request] for k in range(0, len(wave), self.pairs_per_request)]
                   for wave in waves]
        workers = min(self.max_concurrency, max(len(chunks) for chunks in chunked))
        answers = {}
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
            for wave, chunks in zip(waves, chunked):  # one wave after the other, its chunks concurrently
                results = pool.map(job, chunks) if pool is not None else map(job, chunks)
                answers.update(zip(wave, (r for chunk_result in results for r in chunk_result)))
        return pairs, [answers[pair] for pair in pairs]

    # ------------------------------------------------------------- scoring
    @property
    def max_top_k(self):
        """The ``top_logprobs`` asked of the server with every answer: 0 for a
        label-only backend, and for a server that reports processed
        log-probabilities (its top tokens are then the label words only)."""
        if self.labels_only or self.processed_logprobs:
            return 0
        return self.top_logprobs

    @property
    def processed_logprobs(self):
        """bool: whether the server reports log-probabilities after the
        ``allowed_token_ids`` restriction (vLLM's ``--logprobs-mode
        processed_logprobs``): every label word is then in every answer, and
        no label word costs another request. Asked once (one request of one
        input), after the key check; ``False`` for a label-only backend."""
        if self.labels_only:
            return False
        info = self._server_info()
        if "processed_logprobs" not in info:  # two threads may both ask: the same answer
            info["processed_logprobs"] = self._detect_logprobs_mode(info["model"])
        return info["processed_logprobs"]

    def _detect_logprobs_mode(self, model):
        """True for processed log-probabilities, False for raw ones; an error for logits."""
        # One input (the embedding of token 0), two allowed tokens, three
        # values asked. Raw log-probabilities: three tokens of the whole
        # vocabulary, probabilities summing to at most 1. Processed: the two
        # allowed tokens, summing to 1, and vLLM's -9999 (or nothing) for the
        # rest. Logits (the *_logits modes) are no probabilities at all.
        probe = self._get_handle().input_embeddings.weight[:1].detach()
        asked = max(self.top_logprobs, 3)  # as many as a scoring request asks: the server's cap shows here
        try:
            choice = self._completions(model, [_encode_embeds(probe)], logprobs=asked, allowed_token_ids=[0, 1],
                                       return_tokens_as_token_ids=True)[0]
        except BackendError as exc:
            message = str(exc)
            if "prompt-embeds" in message or "prompt_embeds" in message:
                raise BackendError(f"{self.base_url} does not take soft prompts: start the server with "
                                   f"--enable-prompt-embeds ({message})") from exc
            if "logprobs" in message:
                raise BackendError(f"{self.base_url} allows fewer log-probabilities than top_logprobs={asked}: start "
                                   f"the server with --max-logprobs {asked}, or pass a smaller top_logprobs "
                                   f"({message})") from exc
            raise
        top = _top_logprobs(choice, sampled=False)
        listed = [v for v in top.values() if v > _PROCESSED_FILLER]
        others = [v for t, v in top.items() if t not in (0, 1) and v > _PROCESSED_FILLER]
        total = sum(math.exp(min(v, 50.0)) for v in listed)
        if not listed or total > 1 + 1e-3:
            raise BackendError(
                f"{self.base_url} does not report log-probabilities (its answer lists {len(top)} values summing to "
                f"{total:.3g} in probability): start the server with --logprobs-mode raw_logprobs (the default) or "
                "processed_logprobs, not raw_logits or processed_logits.")
        return not others and all(t in top for t in (0, 1)) and abs(math.log(total)) < 1e-3

    def _score(self, prompt_embeddings, texts, classes, top_k=0):
        if self.labels_only:
            return PromptBackend._score(self, None, None, None)
        out = np.empty((prompt_embeddings.shape[0], len(texts), len(classes) + 2 * top_k), dtype=np.float64)
        answer = functools.partial(self._answer_scores, top_k=top_k)
        pairs, rows = self._run_pairs(prompt_embeddings, texts, classes, answer)
        for (p, j), row in zip(pairs, rows):
            out[p, j] = row
        return out

    def _completions(self, model, embeds, **options):
        payload = {"model": model, "prompt_embeds": embeds, "max_tokens": 1, "temperature": 0.0, **options}
        reply = self._request("POST", "/v1/completions", payload,
                              what=f"POST {self.base_url}/v1/completions ({len(embeds)} inputs)")
        choices = sorted(reply.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(embeds):
            raise BackendError(f"{self.base_url} answered {len(choices)} choices for {len(embeds)} inputs.")
        return choices

    def _answer_scores(self, tensors, token_ids, model, top_k=0):
        embeds = [_encode_embeds(t) for t in tensors]
        choices = self._completions(model, embeds, logprobs=max(self.top_logprobs, len(token_ids)),
                                    allowed_token_ids=list(token_ids), return_tokens_as_token_ids=True)
        rows, tops = [], []
        for choice in choices:
            top = _top_logprobs(choice)
            rows.append([top.get(t) for t in token_ids])
            if top_k:  # the server's top log-probabilities (of the whole vocabulary, as it reports them)
                listed = _top_logprobs(choice, sampled=False)
                best = sorted(listed.items(), key=lambda item: -item[1])[:top_k]
                if len(best) < top_k:
                    raise BackendError(f"{self.base_url} returned {len(best)} top log-probabilities; "
                                       f"top_k={top_k} were asked for.")
                tops.append([v for _, v in best] + [float(t) for t, _ in best])
        # A label word outside the top-k log-probabilities: one more request
        # per such word, for all the inputs that miss it, allowing only that
        # word, whose (unrestricted) log-probability the server then reports.
        for c, token in enumerate(token_ids):
            missing = [i for i, row in enumerate(rows) if row[c] is None]
            if missing:
                with self._lock:
                    self._stats["label_requests"] += 1
                only = self._completions(model, [embeds[i] for i in missing], logprobs=1, allowed_token_ids=[token],
                                         return_tokens_as_token_ids=True)
                for i, choice in zip(missing, only):
                    rows[i][c] = _sampled_logprob(choice, token)
        if top_k:
            rows = [row + top for row, top in zip(rows, tops)]
        return [np.asarray(row, dtype=np.float64) for row in rows]

    def _predict_labels(self, prompt_embeddings, texts, classes):
        if not self.labels_only:
            return super()._predict_labels(prompt_embeddings, texts, classes)
        out = np.empty((prompt_embeddings.shape[0], len(texts)), dtype=np.int64)
        pairs, labels = self._run_pairs(prompt_embeddings, texts, classes, self._answer_labels)
        for (p, j), label in zip(pairs, labels):
            out[p, j] = label
        return out

    def _answer_labels(self, tensors, token_ids, model):
        options = {"allowed_token_ids": list(token_ids)} if self.restrict_answers else {}
        choices = self._completions(model, [_encode_embeds(t) for t in tensors], **options)
        handle = self._get_handle()
        words = {handle.tokenizer.decode([t]).strip(): c for c, t in enumerate(token_ids)}
        labels = []
        for tensor, choice in zip(tensors, choices):
            answer = (choice.get("text") or "").strip()
            label = words.get(answer)
            if label is None:
                with self._lock:
                    self._stats["unknown_answers"] += 1
                if self.unknown_answer == "error":
                    raise BackendError(f"the model answered {answer!r}, which is no label word "
                                       f"(expected one of {sorted(words)}); unknown_answer='error'.")
                # A vote that carries no information, fixed by the input so that a replay gives the same.
                label = zlib.crc32(tensor.numpy().tobytes()) % len(token_ids)
            labels.append(label)
        return labels

    def __repr__(self):
        return (f"VLLMBackend({self.base_url!r}, {self._model_name()!r}, template={self.template!r}, "
                f"prompt_position={self.prompt_position!r}, labels_only={self.labels_only})")


_HANDLES = {}
_HANDLES_LOCK = threading.Lock()


def _client_handle(real_dir):
    """One client handle (tokenizer and table) per model directory and process."""
    with _HANDLES_LOCK:
        handle = _HANDLES.get(real_dir)
        if handle is None:
            handle = _HANDLES[real_dir] = _ClientHandle(real_dir)
    return handle


def _server_message(response):
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(body)[:300]


def _top_logprobs(choice, sampled=True):
    """{token id: log-probability} of the first generated position (with the
    sampled token's unless ``sampled=False``)."""
    logprobs = choice.get("logprobs") or {}
    top = (logprobs.get("top_logprobs") or [None])[0] or {}
    out = {}
    for token, value in top.items():
        if token.startswith("token_id:"):
            out[int(token.split(":", 1)[1])] = float(value)
    tokens = logprobs.get("tokens") or []
    value_sampled = (logprobs.get("token_logprobs") or [None])[0]
    if tokens and value_sampled is not None and tokens[0].startswith("token_id:") and sampled:
        out.setdefault(int(tokens[0].split(":", 1)[1]), float(value_sampled))
    return out


def _sampled_logprob(choice, token_id):
    logprobs = choice.get("logprobs") or {}
    tokens = logprobs.get("tokens") or []
    if not tokens or tokens[0] != f"token_id:{token_id}":
        raise BackendError(f"the server did not answer with the only allowed token {token_id} (got {tokens[:1]}).")
    return float(logprobs["token_logprobs"][0])
