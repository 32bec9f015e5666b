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

The package, one responsibility per module (read top-down):
``_loading`` (the registry, dtype and device), ``_threads`` (torch's
threads, heap trimming), ``_handle`` (the model handle and read-outs),
``_batching``, ``_textcache`` (the per-text key/value caches), ``_base``
(what both backends share), ``causal``, ``masked``; the tokenizer side
(parameters, label words, context, the causal layout) is
:mod:`skprompt.backends._tokenized`, shared with the served model. Import
the public names from here.
"""

from __future__ import annotations

from ._loading import clear_model_cache, fast_bf16, load_pretrained
from ._threads import default_num_threads
from .causal import CausalLMBackend
from .masked import MaskedLMBackend

# Pickles and skops files name a class by its module: keep the public one, so
# that files saved before the package existed and after it name the same thing.
CausalLMBackend.__module__ = MaskedLMBackend.__module__ = __name__

__all__ = ["CausalLMBackend", "MaskedLMBackend", "load_pretrained", "clear_model_cache", "default_num_threads", "fast_bf16"]
