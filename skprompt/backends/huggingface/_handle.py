"""The model handle (a model plus what is derived from it once) and the class read-outs."""

from __future__ import annotations

import inspect

import torch

from .._tokenized import _TokenizerHandle


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


class _ModelHandle(_TokenizerHandle):
    """A model, its tokenizer and the facts derived from them once.

    Shared by every backend that uses the same model object.
    """

    def __init__(self, model, tokenizer, kind):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        model.eval()  # no dropout; scores must be deterministic
        self.input_embeddings = model.get_input_embeddings()
        self._init_tokenizer_state()
        self.base = model.base_model
        params = inspect.signature(self.base.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        # transformers < 4.50 left some models (e.g. GPT-2) on tuple caches.
        self.legacy_cache = getattr(model, "_supports_cache_class", True) is False
        self._readout = None
        self.block_suffix = None  # pairs of a text in one row: None (unchecked), True, False

    def make_cache(self, layers):
        """A fresh cache holding [(keys, values)] per layer, in the form the model takes."""
        if self.legacy_cache:
            return tuple((k, v) for k, v in layers)
        return _new_cache(layers)

    def readout(self):
        """How to read class logits; decided once by comparing with the model's own logits."""
        with self.lock:
            if self._readout is None:
                self._readout = _causal_readout(self) if self.kind == "causal" else _masked_readout(self)
        return self._readout


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
