"""How (text, prompt) pairs are grouped into micro-batches."""

from __future__ import annotations


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
