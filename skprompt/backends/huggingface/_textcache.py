"""The per-text key/value caches of :class:`~skprompt.backends.huggingface.CausalLMBackend`."""

from __future__ import annotations

from collections import OrderedDict


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
