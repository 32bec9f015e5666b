"""The per-text key/value caches of :class:`~skprompt.backends.huggingface.CausalLMBackend`."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..base import BackendError
from ._batching import _length_buckets
from ._handle import _cache_layers, _new_cache


class _TextEntry:
    """A text's head: key/value cache (layers, 2, kv_heads, length, head_dim),
    the output at its last token, and its length in tokens."""

    __slots__ = ("kv", "last_out", "length", "nbytes")

    def __init__(self, kv, last_out, length):
        self.kv = kv
        self.last_out = last_out  # final hidden state (or full logits with an unrecognised head)
        self.length = length
        self.nbytes = 0 if kv is None else kv.numel() * kv.element_size() + last_out.numel() * last_out.element_size()


class _TextStore:
    """The LRU of per-text key/value caches (head string -> :class:`_TextEntry`)
    and its size in bytes, shareable between backends on one model."""

    def __init__(self):
        self.entries = OrderedDict()
        self.nbytes = 0
        self.pending = {}  # head string -> threading.Event, set when the thread encoding it is done


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


class _TextCache:
    """One backend's access to the per-text key/value caches.

    The store (the LRU and its size) is shared by the backends that run the
    same loaded model, with the lock that guards it: a text's cache depends
    only on the model and the head string, so a grid search over templates
    or labels encodes each text once. The counters are this backend's.
    """

    def __init__(self, store=None, lock=None):
        self.store = _TextStore() if store is None else store
        self.lock = threading.RLock() if lock is None else lock
        self.stats = {"hits": 0, "misses": 0, "head_forwards": 0, "forwards": 0}

    @property
    def entries(self):
        """The LRU (head string -> :class:`_TextEntry`), oldest first."""
        return self.store.entries

    def count(self, key, n=1):
        with self.lock:
            self.stats[key] += n

    def lengths(self, heads):
        """{head: token count} of the ``heads`` already cached (counted as hits,
        the others as misses)."""
        with self.lock:
            found = {h: self.entries[h].length for h in heads if h in self.entries}
            self.stats["hits"] += len(found)
            self.stats["misses"] += len(heads) - len(found)
        return found

    def info(self, max_mb):
        with self.lock:
            return dict(self.stats, entries=len(self.entries), size_mb=self.store.nbytes / 2**20,
                        max_mb=float(max_mb))

    def clear(self):
        with self.lock:
            self.entries.clear()
            self.store.nbytes = 0

    # -- fetching and encoding ----------------------------------------------------
    def fetch(self, handle, heads, token_ids, tokenize, *, keep, max_mb, batch_size):
        """The :class:`_TextEntry` of each of ``heads``, from the LRU or encoded.

        ``token_ids`` (head -> ids) holds the heads already tokenised,
        ``tokenize(heads)`` tokenises the others. ``keep=False`` (streaming):
        the encoded texts are not added to the LRU and the cached ones keep
        their place in it. A head another thread is encoding is waited for,
        not encoded twice.
        """
        found, missing, waiting = {}, [], []
        pending = self.store.pending
        with self.lock:
            for head in heads:
                entry = self.entries.get(head)
                if entry is not None:
                    if keep:
                        self.entries.move_to_end(head)
                    found[head] = entry
                elif keep and head in pending:
                    waiting.append((head, pending[head]))
                else:
                    missing.append(head)
                    if keep:
                        pending[head] = threading.Event()
        try:
            if missing:
                unknown = [h for h in missing if h not in token_ids]
                if unknown:  # evicted since the caller looked: tokenise
                    token_ids.update(zip(unknown, tokenize(unknown)))
                computed = self.encode(handle, {h: token_ids[h] for h in missing}, batch_size)
                if keep:
                    self._keep(computed, float(max_mb) * 2**20)
                found.update(computed)
        finally:
            if keep and missing:
                with self.lock:
                    for head in missing:
                        pending.pop(head).set()
        for head, done in waiting:
            done.wait()
            with self.lock:
                entry = self.entries.get(head)
            if entry is None:  # not kept (over the memory bound, or the other call failed): encode it here
                ids = token_ids[head] if head in token_ids else tokenize([head])[0]
                entry = self.encode(handle, {head: ids}, batch_size)[head]
            found[head] = entry
        return found

    def _keep(self, computed, limit):
        with self.lock:
            for head, entry in computed.items():
                if entry.nbytes > limit or head in self.entries:
                    continue
                self.entries[head] = entry
                self.store.nbytes += entry.nbytes
            while self.store.nbytes > limit and self.entries:
                _, old = self.entries.popitem(last=False)
                self.store.nbytes -= old.nbytes

    def encode(self, handle, head_ids, batch_size):
        """Run heads (dict head -> token ids) through the model, right-padded
        (no mask is needed: a causal model never looks at the padding after a
        text), ``batch_size`` heads of similar length per forward."""
        readout = handle.readout()
        result = {}
        heads = sorted(head_ids, key=lambda h: len(head_ids[h]))
        nonempty = [h for h in heads if head_ids[h]]
        for head in heads:
            if not head_ids[head]:
                result[head] = _TextEntry(None, None, 0)
        for batch in _length_buckets(nonempty, lambda h: len(head_ids[h]), batch_size):
            lengths = [len(head_ids[h]) for h in batch]
            input_ids = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
            for row, head in enumerate(batch):
                input_ids[row, : lengths[row]] = torch.as_tensor(head_ids[head])
            kwargs = {"input_ids": input_ids.to(handle.device), "use_cache": True}
            if not handle.legacy_cache:
                cache = kwargs[handle.cache_kwarg] = _new_cache()
            result_out = (handle.base if readout.fast else handle.model)(**kwargs)
            outputs = result_out.last_hidden_state if readout.fast else result_out.logits
            if handle.legacy_cache:
                layers = [tuple(layer[:2]) for layer in result_out.past_key_values]
            else:
                layers = _cache_layers(cache)
            if len({tuple(t.shape) for kv in layers for t in kv}) != 1:
                raise BackendError(
                    "prompt_position='suffix' needs a model whose layers all cache keys/values of one shape; "
                    f"{type(handle.model).__name__} does not. Use prompt_position='prefix'."
                )
            for row, head in enumerate(batch):  # one copy per text: (layers, 2, heads, n, hd)
                n = lengths[row]
                kv = torch.stack([torch.stack([k[row, :, :n], v[row, :, :n]]) for k, v in layers])
                result[head] = _TextEntry(kv, outputs[row, n - 1].clone(), n)
            self.count("head_forwards")
        return result
