""":class:`MaskedLMBackend`: a masked LM (BERT, RoBERTa) as a black-box backend."""

from __future__ import annotations

import numpy as np
import torch

from ..base import BackendError
from ._base import _DEFAULT_BATCH_SIZE, _HFBackend
from ._batching import _pairs_batches
from ._threads import _with_threads


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
    _placeholders = ("text", "mask")

    def __init__(self, model, tokenizer=None, *, template="{text} It was {mask}.", verbalizer=None,
                 batch_size=_DEFAULT_BATCH_SIZE, cache_size=100_000, device=None, dtype=None, truncation="right",
                 num_threads=None, cache=None):
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
        token_ids, texts, handle, readout = self._score_inputs(prompt_embeddings, texts, classes, top_k)
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
        """Differentiable class log-probabilities of every (prompt, text) pair,
        read at the mask: as :meth:`CausalLMBackend._log_proba_torch
        <skprompt.backends.CausalLMBackend._log_proba_torch>` (same arguments
        and result), with a full forward with grad per pair."""
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
