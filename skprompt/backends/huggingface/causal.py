""":class:`CausalLMBackend`: a decoder-only transformers model as a black-box backend."""

from __future__ import annotations

import numbers
import threading
import weakref

import numpy as np
import torch

from .._tokenized import _CausalInputs
from ..base import BackendError
from ._base import _DEFAULT_BATCH_SIZE, _HFBackend
from ._batching import _length_buckets, _pairs_batches, _text_major_batches
from ._handle import _close
from ._textcache import _pad_kv, _TextCache
from ._threads import _trim_heap, _with_threads


# --------------------------------------------------------------------------
# Causal LM
# --------------------------------------------------------------------------

class _SharedTexts:
    """A text store and the lock that guards it, shared by the copies of one
    backend unpickled in one process (weakly registered: gone with its last user)."""

    def __init__(self, store, lock):
        self.store, self.lock = store, lock


_UNPICKLED_TEXTS = weakref.WeakValueDictionary()
_UNPICKLED_LOCK = threading.Lock()

#: Most query tokens (prompts x suffix tokens) in one row of the block layout
#: (measured on SmolLM2, 20 prompts: 1.29x over one row per pair at 128 for
#: both cached layouts, 1.21-1.28x uncapped, 1.13-1.27x at 64).
_BLOCK_QUERIES = 128
_DEFAULT_TEXT_CACHE_MB = 1024


class CausalLMBackend(_CausalInputs, _HFBackend):
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
        if (not isinstance(text_cache_mb, numbers.Real) or isinstance(text_cache_mb, bool)
                or not np.isfinite(text_cache_mb) or text_cache_mb < 0):
            raise ValueError(f"text_cache_mb must be a non-negative number; got {text_cache_mb!r}.")
        self.text_cache_mb = text_cache_mb
        super().__init__(model, tokenizer, prompt_position=prompt_position, template=template, verbalizer=verbalizer, batch_size=batch_size,
                         cache_size=cache_size, device=device, dtype=dtype, truncation=truncation,
                         num_threads=num_threads, cache=cache)

    # -- runtime state ------------------------------------------------------------
    def _init_runtime_state(self):
        super()._init_runtime_state()
        self._texts = _TextCache(lock=self._lock)

    def _share_runtime_with(self, other):
        """Use ``other``'s text store (and its lock, which guards the store)
        when both run the same loaded model: a text's key/value cache depends
        only on the model and the text's head string."""
        if other._get_handle() is self._get_handle():
            self._lock = other._lock
            self._texts = _TextCache(other._texts.store, other._lock)

    def __getstate__(self):
        state = super().__getstate__()
        for key in ("_texts", "_shared_texts"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # Copies of one backend unpickled in one process (the tasks a Dask or
        # loky worker runs: each gets its own copy of the estimator) share the
        # texts' key/value caches, as clones in one process do; otherwise every
        # task of a grid search would encode its texts again.
        key = self._recipe_key()
        if key is None:
            return
        with _UNPICKLED_LOCK:
            shared = _UNPICKLED_TEXTS.get(key)
            if shared is None:
                shared = _UNPICKLED_TEXTS[key] = _SharedTexts(self._texts.store, self._lock)
        self._shared_texts = shared  # keeps the store alive while a copy uses it
        self._lock = shared.lock
        self._texts = _TextCache(shared.store, shared.lock)

    def _recipe_key(self):
        """What the unpickled copy's model will be loaded from (None where each
        copy gets its own handle: weights or a tokenizer that travel in the pickle)."""
        if self._pickled:
            return None
        if self._object_key:
            return ("object", self._object_key)
        return ("path", self.model_path, self.tokenizer_path, self.dtype, self.device)

    def text_cache_info(self):
        """dict: state of the per-text key/value cache.

        ``hits`` / ``misses``: texts found / not found in the cache;
        ``head_forwards``: forward passes that encoded texts; ``forwards``:
        forward passes that scored (prompt, text) pairs; ``entries``;
        ``size_mb``; ``max_mb``.
        """
        return self._texts.info(self.text_cache_mb)

    def clear_text_cache(self):
        """Drop every cached text key/value cache."""
        self._texts.clear()

    # -- scoring ------------------------------------------------------------------
    @_with_threads
    def _score(self, prompt_embeddings, texts, classes, top_k=0):
        token_ids, texts, handle, readout = self._score_inputs(prompt_embeddings, texts, classes, top_k)
        n_prompts, n_texts = prompt_embeddings.shape[0], len(texts)
        out = np.empty((n_prompts, n_texts, len(token_ids) + 2 * top_k), dtype=np.float32)
        with torch.inference_mode():
            prompts = self._prompt_tensor(prompt_embeddings, handle)
            if self.prompt_position in ("suffix", "tail"):
                self._score_suffix(handle, readout, prompts, texts, token_ids, out)
            else:
                self._score_prefix(handle, readout, prompts, texts, token_ids, out)
        return out

    # ---- suffix layout: cached head, batched suffix
    def _score_suffix(self, handle, readout, prompts, texts, token_ids, out):
        n_prompts = prompts.shape[0]
        suffix = self._layout.suffix(handle, prompts)
        n_suffix = suffix.shape[1]
        heads = self._layout.heads(texts)
        columns = {}  # head string -> output columns (a text may appear twice)
        for j, head in enumerate(heads):
            columns.setdefault(head, []).append(j)

        # Lengths, to sort the texts so that a micro-batch pads little: from
        # the cache, or by tokenising the texts not in it.
        lengths, token_cache = self._texts.lengths(list(columns)), {}
        missing = [h for h in columns if h not in lengths]
        if missing:
            for head, ids in zip(missing, self._layout.head_ids(handle, missing)):
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
                fresh = [h for h in order if h not in self._texts.entries]
            if fresh:
                unknown = [h for h in fresh if h not in token_cache]
                if unknown:  # evicted since this call looked: tokenise
                    token_cache.update(zip(unknown, self._layout.head_ids(handle, unknown)))
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
                live.update(self._text_entries(handle, chunk, token_cache, keep=keep))
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
        n_suffix = suffix.shape[1]
        if n_suffix == 0:  # no prompt, no tail: the head's last position is the readout
            last = torch.stack([e.last_out for e in entries])
            return readout.logits(last, token_ids)
        shared = len({id(e) for e in entries}) < len(entries)
        if shared and max(e.length for e in entries) > 0 and self._blocks_supported(handle):
            if handle.block_suffix is None:  # first use on this model: compare the two paths once
                with torch.no_grad():
                    rows = self._row_suffix_scores(handle, readout, entries, suffix.detach(), token_ids)
                    blocks = self._block_suffix_scores(handle, readout, entries, suffix.detach(), token_ids)
                self._texts.count("forwards", -2)  # the check's forwards are not the call's
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
        self._texts.count("forwards")
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
        self._texts.count("forwards")
        return readout.logits(readout.forward(handle, **kwargs)[:, -1], token_ids)

    def _text_entries(self, handle, heads, token_ids, keep=True):
        """The text caches of ``heads`` (see :meth:`_TextCache.fetch`)."""
        return self._texts.fetch(handle, heads, token_ids, lambda missing: self._layout.head_ids(handle, missing),
                                 keep=keep, max_mb=self.text_cache_mb, batch_size=self.batch_size)

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
        lengths, build = self._layout.pair_inputs(handle, prompts, texts)
        for batch in _pairs_batches(np.argsort(lengths, kind="stable"), prompts.shape[0], self.batch_size):
            scores = self._whole_input_scores(handle, readout, build, lengths, batch, token_ids)
            out[[p for _, p in batch], [j for j, _ in batch]] = scores.cpu().numpy()

    def _whole_input_scores(self, handle, readout, build, lengths, batch, token_ids):
        """Class scores (B, C) of the pairs ``batch`` [(text, prompt)], their
        whole inputs right-padded: a causal model never looks at the padding."""
        x = torch.nn.utils.rnn.pad_sequence(build(batch), batch_first=True)
        last = torch.as_tensor(lengths[[j for j, _ in batch]] - 1, device=handle.device)
        return self._full_forward_scores(handle, readout, x, last, token_ids)

    def _full_forward_scores(self, handle, readout, x, last, token_ids):
        """Class scores (B, C) read at positions ``last`` of a full forward of ``x`` (B, T, D)."""
        rows = torch.arange(x.shape[0], device=handle.device)
        self._texts.count("forwards")
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
        n_prompts, n_texts = prompts.shape[0], len(texts)
        if n_prompts == 0 or n_texts == 0:
            return prompts.new_zeros((n_prompts, n_texts, len(token_ids)), dtype=torch.float64)
        chunks, keys = [], []  # micro-batch scores (B, C) and the (text key, prompt) of each row

        if self.prompt_position in ("suffix", "tail"):  # as in _score_suffix
            suffix = self._layout.suffix(handle, prompts)
            text_keys = self._layout.heads(texts)
            distinct = list(dict.fromkeys(text_keys))
            self._texts.lengths(distinct)  # counts the hits and misses
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
            lengths, build = self._layout.pair_inputs(handle, prompts, texts)
            for batch in _pairs_batches(np.argsort(lengths, kind="stable"), n_prompts, self.batch_size):
                chunks.append(self._whole_input_scores(handle, readout, build, lengths, batch, token_ids))
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
