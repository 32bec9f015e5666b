"""The model handle (a model plus what is derived from it once) and the class read-outs."""

from __future__ import annotations

import inspect
import threading

import numpy as np
import torch


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


def _checked_readout(candidate, handle, ids):
    """``candidate`` if it gives the model's own logits on the tokens ``ids``,
    else the model's own head (``_Readout(False)``)."""
    ids = torch.tensor([ids], device=handle.device)
    with torch.inference_mode():
        full = handle.model(input_ids=ids).logits[0].float()
        hidden = handle.base(input_ids=ids).last_hidden_state[0]
        return candidate if _close(candidate.full_logits(hidden), full) else _Readout(False)


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
        return _checked_readout(candidate, handle, _probe_ids(handle))
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
        return _checked_readout(candidate, handle, ids)
    return _Readout(False)
